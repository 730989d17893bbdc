#!/usr/bin/env node
// bench/push: how late do audit entries reach the remote while other writers push to the same branch?
// (The Flux image-automation anchor: with several writers, commits landed 13-29 minutes late.)
// A bare repository on disk, the daemon's clone (src/git/repo.ts) and W writer clones that commit a
// file outside the audit directory and push (with their own fetch/rebase retry after 0-100 ms) every `--pause` ms
// on average. The daemon appends an audit line, commits and pushes, E times. Reports the latency from
// commit to "on the remote" (p50/p95/max), push attempts, push calls that gave up (their entries go
// out with the next push), and checks that every entry and every writer commit is on the remote.
// Usage: npm run build && node bench/push.mjs [--writers 5] [--entries 50] [--pause 1000]
import { execFile } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { openRepo } from '../dist/src/git/repo.js';

const { values } = parseArgs({
  options: {
    writers: { type: 'string', default: '5' },
    entries: { type: 'string', default: '50' },
    pause: { type: 'string', default: '1000' },
  },
});
const WRITERS = Number(values.writers);
const ENTRIES = Number(values.entries);
const PAUSE = Number(values.pause);

const env = {
  ...process.env,
  GIT_AUTHOR_NAME: 'writer',
  GIT_AUTHOR_EMAIL: 'w@bench.invalid',
  GIT_COMMITTER_NAME: 'writer',
  GIT_COMMITTER_EMAIL: 'w@bench.invalid',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
};
const git = (cwd, ...args) =>
  new Promise((resolve, reject) =>
    execFile('git', args, { cwd, env }, (e, out, err) => (e ? reject(new Error(err)) : resolve(out.trim()))),
  );

const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-push-'));
try {
  const remote = path.join(root, 'remote.git');
  await git(root, 'init', '-q', '--bare', '-b', 'main', remote);
  const seed = path.join(root, 'seed');
  await git(root, 'clone', '-q', remote, seed);
  mkdirSync(path.join(seed, 'audit'));
  writeFileSync(path.join(seed, 'audit', 'log.jsonl'), '');
  writeFileSync(path.join(seed, 'rotor.yaml'), 'kind: Config\n');
  await git(seed, 'add', '-A');
  await git(seed, 'commit', '-q', '-m', 'seed', '--author', 'seed <seed@bench.invalid>');
  await git(seed, 'push', '-q', 'origin', 'HEAD:refs/heads/main');

  const repo = await openRepo({
    url: remote,
    dir: path.join(root, 'daemon'),
    branch: 'main',
    retry: { attempts: 8, baseMs: 50, maxDelayMs: 2000, totalMs: 60_000 },
    onWarning: (w) => process.env.BENCH_DEBUG && console.error(performance.now().toFixed(0), w.code, w.message),
  });
  let stop = false;
  let writerPushes = 0;
  let writerRejections = 0;
  const writer = async (i) => {
    const dir = path.join(root, `w${i}`);
    await git(root, 'clone', '-q', remote, dir);
    mkdirSync(path.join(dir, 'apps'), { recursive: true });
    for (let r = 0; !stop; r++) {
      writeFileSync(path.join(dir, 'apps', `w${i}-${r}.yaml`), `kind: Secret\nname: w${i}/${r}\n`);
      await git(dir, 'add', '-A');
      await git(dir, 'commit', '-q', '-m', `w${i} ${r}`);
      for (;;) {
        try {
          await git(dir, 'push', '-q', 'origin', 'HEAD:refs/heads/main');
          writerPushes++;
          break;
        } catch {
          writerRejections++;
          await sleep(randomInt(0, 101)); // a little backoff, as a CI job or a person would
          await git(dir, 'fetch', '-q', 'origin', 'main');
          await git(dir, 'rebase', '-q', 'origin/main');
        }
      }
      await sleep(randomInt(0, 2 * PAUSE + 1));
    }
  };
  const writers = Array.from({ length: WRITERS }, (_, i) => writer(i));

  const latencies = [];
  let attempts = 0;
  let gaveUp = 0;
  const pending = []; // commit times of entries not yet on the remote
  for (let e = 1; e <= ENTRIES; e++) {
    await repo.exclusive(async () => {
      appendFileSync(path.join(repo.dir, 'audit', 'log.jsonl'), `{"seq":${e}}\n`);
      await repo.commitAudit(['audit/log.jsonl'], `audit ${e}`);
    });
    pending.push(performance.now());
    try {
      const r = await repo.push();
      attempts += r.attempts;
      const now = performance.now();
      for (const t of pending.splice(0)) latencies.push(now - t);
    } catch (err) {
      if (err.code !== 'GIT_PUSH_GAVE_UP') throw err;
      gaveUp++;
    }
  }
  stop = true;
  await Promise.all(writers);
  if (pending.length) {
    await repo.push();
    const now = performance.now();
    for (const t of pending.splice(0)) latencies.push(now - t);
  }

  const lines = (await git(remote, 'show', 'main:audit/log.jsonl')).split('\n').filter(Boolean);
  const ok = lines.length === ENTRIES && lines.every((l, i) => l === `{"seq":${i + 1}}`);
  const merges = Number(await git(remote, 'rev-list', '--merges', '--count', 'main'));
  const writerCommits = Number(await git(remote, 'rev-list', '--count', '--author=w@bench.invalid', 'main'));
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(0);
  console.log(`writers ${WRITERS} (a push every ~${PAUSE} ms each), entries ${ENTRIES}`);
  console.log(`audit entry commit -> on the remote: p50 ${q(0.5)} ms, p95 ${q(0.95)} ms, max ${q(1)} ms`);
  console.log(
    `daemon push attempts ${attempts} for ${ENTRIES - gaveUp} successful calls; calls that gave up ${gaveUp}`,
  );
  console.log(
    `writers: ${writerPushes} pushes, ${writerRejections} rejections; on the remote: ${writerCommits} writer commits`,
  );
  console.log(
    `every entry once and in order: ${ok}; merges: ${merges}; writer commits all there: ${writerCommits === writerPushes}`,
  );
  if (!ok || merges !== 0 || writerCommits !== writerPushes) process.exitCode = 1;
} finally {
  rmSync(root, { recursive: true, force: true });
}
