// Proof, issue 7 part 2: push races. Five writers push to one branch of one bare remote: the daemon
// (secrets rotating every 2 s, its audit log committed about every 200 ms of entries and pushed) and
// four scripts, each committing its own file (docs/writer-N.txt) in a loop and pushing with
// `git pull --rebase && git push`, retried until it lands. The remote refuses non-fast-forward pushes
// (receive.denyNonFastForwards) and keeps a reflog of main; a git wrapper first on the daemon's PATH
// logs every push it runs. At the end: every audit entry the daemon wrote is on the remote exactly
// once (sequence numbers contiguous, none twice, the chain verifies with src/audit), every writer's
// commits are all on the remote, each once, and no push forced anything.
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { appendFileSync, mkdirSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { forcedPush, gitFaults } from './lib/faults-git.mjs';
import {
  auditEntries, declarations, forcedUpdates, git, gitRun, localSeq, makeWorld, remoteAudit, remoteSeq, secondsOf, seqProblems, startDaemon, status, waitFor,
} from './lib/faults-world.mjs';

export const part = 2;
export const title = 'Push races: the daemon and four other writers on one branch';

const WRITERS = 4;

/** One writer: until `deadline`, commits docs/writer-N.txt and pushes it with pull --rebase + push until it lands. */
async function writer(w, i, deadline, stats) {
  const dir = path.join(w.root, `writer-${i}`);
  git(w.root, 'clone', '-q', w.remote, dir);
  mkdirSync(path.join(dir, 'docs'), { recursive: true });
  for (let k = 1; Date.now() < deadline; k++) {
    appendFileSync(path.join(dir, 'docs', `writer-${i}.txt`), `commit ${k}\n`);
    await gitRun(dir, ['add', 'docs']);
    const c = await gitRun(dir, ['commit', '-q', '-m', `writer-${i} commit ${k}`]);
    if (c.code !== 0) throw new Error(`writer ${i}: git commit failed: ${c.stderr}`);
    for (let attempt = 1; ; attempt++) {
      const pull = await gitRun(dir, ['pull', '-q', '--rebase', 'origin', 'main']);
      const push = pull.code === 0 ? await gitRun(dir, ['push', '-q', 'origin', 'HEAD:refs/heads/main']) : pull;
      if (push.code === 0) break;
      stats.rejected[i]++;
      if (attempt >= 200) throw new Error(`writer ${i}: commit ${k} not pushed after 200 attempts: ${push.stderr}`);
      await sleep(randomInt(0, 50)); // a little backoff, as a CI job would
    }
    stats.pushed[i]++;
    await sleep(randomInt(0, 100));
  }
}

/** From samples [time, local seq, remote seq]: how long each entry took from written to on the remote (median, max). */
function lags(samples) {
  const out = [];
  const last = samples.at(-1)?.[1] ?? 0;
  for (let seq = 1; seq <= last; seq++) {
    const written = samples.find(([, l]) => l >= seq)?.[0];
    const pushed = samples.find(([, , r]) => r >= seq)?.[0];
    if (written !== undefined && pushed !== undefined) out.push(pushed - written);
  }
  out.sort((a, b) => a - b);
  return { median: out[Math.floor(out.length / 2)] ?? 0, max: out.at(-1) ?? 0 };
}

export async function run({ short, log }) {
  const writeMs = short ? 10_000 : 60_000;
  const w = await makeWorld('push-races', declarations({ n: 10, every: '2s', overlap: '1s' }));
  const gf = gitFaults(path.join(w.root, 'git-log')); // rate 0: it only logs the daemon's pushes
  let d;
  try {
    d = await startDaemon(w, { env: gf.env, commitDelayMs: 200 });
    log(`part 2: daemon started; ${WRITERS} writers committing for ${writeMs / 1000} s`);
    const stats = { pushed: Array(WRITERS).fill(0), rejected: Array(WRITERS).fill(0) };
    const t0 = Date.now();
    // How long the daemon's entries take to reach the remote: local and remote heads, sampled.
    const samples = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push([Date.now(), localSeq(w), remoteSeq(w)]);
        await sleep(500);
      }
    })();
    const results = await Promise.allSettled(Array.from({ length: WRITERS }, (_, i) => writer(w, i, t0 + writeMs, stats)));
    const writersMs = Date.now() - t0;
    const writerErrors = results.filter((r) => r.status === 'rejected').map((r) => r.reason.message);
    log(`part 2: writers done in ${secondsOf(writersMs)}; ${writerErrors.length} failed`);

    // The daemon's entries written so far must reach the remote by themselves (bounded), then a stop.
    const seqAtEnd = localSeq(w);
    const caughtUp = await waitFor(() => remoteSeq(w) >= seqAtEnd, { timeoutMs: 60_000 });
    sampling = false;
    await sampler;
    const lag = lags(samples);
    const before = await status(w);
    const stop = await d.stop();

    const local = auditEntries(path.join(w.dataDir, 'repo', 'audit'));
    const remote = await remoteAudit(w);
    const seen = new Set();
    let duplicates = 0;
    for (const e of remote.entries) {
      if (seen.has(e.hash)) duplicates++;
      seen.add(e.hash);
    }
    const missing = local.filter((e) => !seen.has(e.hash)).length;
    const subjects = git(w.remote, 'log', '--format=%s', 'main').split('\n');
    const perWriter = Array.from({ length: WRITERS }, (_, i) => {
      const mine = subjects.filter((s) => s.startsWith(`writer-${i} commit `));
      const distinct = new Set(mine);
      const want = Array.from({ length: stats.pushed[i] }, (_, k) => `writer-${i} commit ${k + 1}`);
      return { commits: mine.length, pushed: stats.pushed[i], missing: want.filter((s) => !distinct.has(s)).length, twice: mine.length - distinct.size };
    });
    const files = Array.from({ length: WRITERS }, (_, i) => git(w.remote, 'show', `main:docs/writer-${i}.txt`).split('\n').length);
    const logLines = d.logLines();
    const daemonRetries = logLines.filter((l) => l.code === 'GIT_PUSH_RETRY').length;
    const daemonGaveUp = logLines.filter((l) => l.code === 'GIT_PUSH_GAVE_UP' || /audit commit or push failed/.test(l.msg ?? '')).length;
    const pushes = gf.pushes();
    const forced = pushes.filter(forcedPush).length;
    const reflog = forcedUpdates(w);
    const daemonCommits = Number(git(w.remote, 'rev-list', '--count', '--author=rotor@localhost', 'main'));
    const rejected = stats.rejected.reduce((a, b) => a + b, 0);

    return {
      rows: [
        { check: 'commits per writer, all on the remote, each once', figure: `daemon ${daemonCommits} audit commits; writers ${perWriter.map((p) => p.commits).join(', ')} in ${secondsOf(writersMs)} (${perWriter.reduce((a, p) => a + p.missing, 0)} missing, ${perWriter.reduce((a, p) => a + p.twice, 0)} twice)`, ok: writerErrors.length === 0 && perWriter.every((p) => p.pushed > 0 && p.commits === p.pushed && p.missing === 0 && p.twice === 0) && files.every((n, i) => n === stats.pushed[i]) },
        { check: 'rejected pushes, retried', figure: `writers ${rejected} (${stats.rejected.join(', ')}); daemon ${daemonRetries} push retries (fetch, rebase, push), ${daemonGaveUp} push calls given up and sent later${writerErrors.length ? `; writer errors: ${writerErrors.join('; ')}` : ''}`, ok: writerErrors.length === 0 },
        { check: 'every audit entry the daemon wrote is on the remote exactly once', figure: `${remote.entries.length} entries pushed of ${local.length} written; ${missing} missing, ${duplicates} twice; seq ${seqProblems(remote.entries).length ? seqProblems(remote.entries).join('; ') : 'contiguous'}; time to reach the remote: median ${secondsOf(lag.median)}, max ${secondsOf(lag.max)}`, ok: missing === 0 && duplicates === 0 && remote.entries.length === local.length && seqProblems(remote.entries).length === 0 && Boolean(caughtUp) },
        { check: 'the chain verifies on the remote (src/audit verify)', figure: remote.verified.ok ? `ok, ${remote.verified.entries ?? remote.entries.length} entries` : `${remote.verified.code} at line ${remote.verified.line}`, ok: remote.verified.ok },
        { check: 'never a force-push', figure: `${pushes.length} pushes by the daemon, ${forced} with --force or +refspec; remote reflog: ${reflog.updates} updates of main, ${reflog.forced} not fast-forward (receive.denyNonFastForwards on)`, ok: forced === 0 && reflog.forced === 0 && pushes.length > 0 },
        { check: 'the daemon ends with nothing failing', figure: `push failures ${before.audit.pushFailures}; failing secrets ${before.secrets.filter((s) => s.failing).length}; exit ${stop.code ?? stop.signal}`, ok: before.audit.pushFailures === 0 && before.secrets.every((s) => !s.failing) && stop.code === 0 },
      ],
    };
  } finally {
    await d?.stop().catch(() => undefined);
    w.cleanup();
  }
}
