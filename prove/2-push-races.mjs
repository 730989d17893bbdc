// Proof, part 2: push races. Five writers push to one branch of one bare remote: the daemon (secrets
// rotating every 2 s, its audit log committed about every 200 ms of entries and pushed) and four
// scripts, each committing its own file (docs/writer-N.txt). The races are made certain, not left to
// chance:
//   - the four scripts go in rounds: each brings its clone up to date and commits, all wait at a
//     barrier, then all push at once. At most one of them can land (they start from the same head, or
//     an older one); the others are rejected (non-fast-forward) and retry with `git pull --rebase &&
//     git push` until they land. Every round therefore has at least three rejected pushes.
//   - before some of the daemon's pushes (never two in a row), the git wrapper first on its PATH has
//     another writer push a commit (docs/racer.txt) just before it: that push of the daemon is certain
//     to be rejected, and rotor must fetch, rebase and push again (GIT_PUSH_RETRY), never force.
// The remote accepts non-fast-forward pushes (as an unprotected branch does) and keeps a reflog of main,
// so that a force-push would land and show: in the reflog (an update whose old head is not an ancestor
// of its new one) and as other writers' commits missing; the wrapper also logs every push's arguments.
// At the end: every audit entry the daemon wrote is on the remote exactly once (sequence numbers
// contiguous, none twice, the chain verifies with src/audit), every writer's and the racer's commits are
// all on the remote, each once, races happened (rejections counted, and the daemon's retries), and no
// push forced anything.

import { randomInt } from 'node:crypto';
import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { forcedPush, gitFaults } from './lib/faults-git.mjs';
import {
  auditEntries,
  declarations,
  forcedUpdates,
  git,
  gitRun,
  localSeq,
  makeWorld,
  remoteAudit,
  remoteSeq,
  secondsOf,
  seqProblems,
  startDaemon,
  status,
  waitFor,
} from './lib/faults-world.mjs';

export const part = 2;
export const title = 'Push races: the daemon and four other writers on one branch';

const WRITERS = 4;

/**
 * A reusable barrier for `n` parties: `wait(decide)` resolves, for all of them at once, when the n-th
 * arrives, with what the last one's `decide()` returned (so that all take the same decision).
 */
function barrier(n) {
  let waiting = [];
  let decideLast = () => true;
  const release = () => {
    if (waiting.length === 0 || waiting.length < n) return;
    const all = waiting;
    waiting = [];
    const verdict = decideLast();
    for (const r of all) r(verdict);
  };
  return {
    wait(decide = () => true) {
      return new Promise((resolve) => {
        waiting.push(resolve);
        decideLast = decide;
        release();
      });
    },
    /** A party that failed: the others no longer wait for it. */
    leave() {
      n--;
      release();
    },
  };
}

/** A push rejected because another push moved the branch first (the client's check or the remote's ref lock). */
const STALE =
  /\[rejected\].*\((fetch first|non-fast-forward)\)|\[remote rejected\].*(cannot lock ref|failed to update ref|incorrect old value|but expected)/;

/** `git push --porcelain`: { code, stale (rejected by a race), stderr }. */
async function push(dir) {
  const r = await gitRun(dir, ['push', '--porcelain', 'origin', 'HEAD:refs/heads/main']);
  return { ...r, stale: r.code !== 0 && STALE.test(`${r.stdout}\n${r.stderr}`) };
}

/**
 * One writer, in rounds until the barrier says stop: up to date, one commit of docs/writer-N.txt, wait
 * for the others, push at once; when rejected, `git pull --rebase && git push` until it lands.
 */
async function writer(w, i, gate, stats) {
  try {
    await rounds(w, i, gate, stats);
  } catch (e) {
    gate.leave();
    throw e;
  }
}

async function rounds(w, i, gate, stats) {
  const dir = path.join(w.root, `writer-${i}`);
  git(w.root, 'clone', '-q', w.remote, dir);
  mkdirSync(path.join(dir, 'docs'), { recursive: true });
  for (let k = 1; ; k++) {
    if (!(await gate.start())) return;
    const pull = await gitRun(dir, ['pull', '-q', '--rebase', 'origin', 'main']);
    if (pull.code !== 0) throw new Error(`writer ${i}: git pull failed: ${pull.stderr}`);
    appendFileSync(path.join(dir, 'docs', `writer-${i}.txt`), `commit ${k}\n`);
    await gitRun(dir, ['add', 'docs']);
    const c = await gitRun(dir, ['commit', '-q', '-m', `writer-${i} commit ${k}`]);
    if (c.code !== 0) throw new Error(`writer ${i}: git commit failed: ${c.stderr}`);
    await gate.go(); // all four push at once
    let p = await push(dir);
    if (p.code === 0) stats.firstLanded[k] = (stats.firstLanded[k] ?? 0) + 1;
    else stats.firstRejected++;
    for (let attempt = 1; p.code !== 0; attempt++) {
      if (p.stale) stats.stale[i]++;
      else stats.other[i]++;
      if (attempt >= 200) throw new Error(`writer ${i}: commit ${k} not pushed after 200 attempts: ${p.stderr}`);
      await sleep(randomInt(0, 50)); // a little backoff, as a CI job would
      const again = await gitRun(dir, ['pull', '-q', '--rebase', 'origin', 'main']);
      p = again.code === 0 ? await push(dir) : { ...again, stale: false };
    }
    stats.pushed[i]++;
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
  const races = short ? 3 : 8;
  const w = await makeWorld('push-races', declarations({ n: 10, every: '2s', overlap: '1s' }));
  const gf = gitFaults(path.join(w.root, 'git-log')); // rate 0: it logs the daemon's pushes, and races them
  gf.race(w.remote, races);
  let d;
  try {
    d = await startDaemon(w, { env: gf.env, commitDelayMs: 200 });
    log(
      `part 2: daemon started; ${WRITERS} writers pushing in rounds for ${writeMs / 1000} s; ${races} of the daemon's pushes raced`,
    );
    const stats = {
      pushed: Array(WRITERS).fill(0),
      stale: Array(WRITERS).fill(0),
      other: Array(WRITERS).fill(0),
      firstLanded: {},
      firstRejected: 0,
      rounds: 0,
    };
    const t0 = Date.now();
    const start = barrier(WRITERS);
    const go = barrier(WRITERS);
    const gate = {
      start: () =>
        start.wait(() => {
          const more = Date.now() < t0 + writeMs;
          if (more) stats.rounds++;
          return more;
        }),
      go: () => go.wait(),
      leave: () => {
        start.leave();
        go.leave();
      },
    };
    // How long the daemon's entries take to reach the remote: local and remote heads, sampled.
    const samples = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push([Date.now(), localSeq(w), remoteSeq(w)]);
        await sleep(500);
      }
    })();
    const results = await Promise.allSettled(Array.from({ length: WRITERS }, (_, i) => writer(w, i, gate, stats)));
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
      return {
        commits: mine.length,
        pushed: stats.pushed[i],
        missing: want.filter((s) => !distinct.has(s)).length,
        twice: mine.length - distinct.size,
      };
    });
    const lineCount = (file) => {
      try {
        return git(w.remote, 'show', `main:${file}`).split('\n').length;
      } catch {
        return 0; // not on main (a force-push would do that)
      }
    };
    const files = Array.from({ length: WRITERS }, (_, i) => lineCount(`docs/writer-${i}.txt`));
    const logLines = d.logLines();
    const retries = logLines.filter((l) => l.code === 'GIT_PUSH_RETRY');
    const daemonBehind = retries.filter((l) => /rejected because the remote moved on/.test(l.msg ?? '')).length;
    const daemonGaveUp = logLines.filter(
      (l) => l.code === 'GIT_PUSH_GAVE_UP' || /audit commit or push failed/.test(l.msg ?? ''),
    ).length;
    const pushes = gf.pushes();
    const forced = pushes.filter(forcedPush).length;
    const reflog = forcedUpdates(w);
    const daemonCommits = Number(git(w.remote, 'rev-list', '--count', '--author=rotor@localhost', 'main'));
    const raced = gf.races();
    const racerLanded = gf.racerCommits();
    const racerOnRemote = subjects.filter((x) => /^racer commit \d+$/.test(x));
    const racerMissing = Array.from({ length: racerLanded }, (_, k) => `racer commit ${k + 1}`).filter(
      (x) => !racerOnRemote.includes(x),
    ).length;
    const stale = stats.stale.reduce((a, b) => a + b, 0);
    const other = stats.other.reduce((a, b) => a + b, 0);
    // Each round, at most one of the four simultaneous first pushes can land: at least three are rejected.
    const landedAtOnce = Math.max(0, ...Object.values(stats.firstLanded));
    const racesOk =
      writerErrors.length === 0 &&
      stats.rounds > 0 &&
      stats.firstRejected >= stats.rounds * (WRITERS - 1) &&
      landedAtOnce <= 1 &&
      stale > 0 &&
      raced.raced > 0 &&
      daemonBehind > 0;
    return {
      rows: [
        {
          check: 'commits per writer, all on the remote, each once',
          figure: `daemon ${daemonCommits} audit commits; writers ${perWriter.map((p) => p.commits).join(', ')} in ${stats.rounds} rounds, ${secondsOf(writersMs)} (${perWriter.reduce((a, p) => a + p.missing, 0)} missing, ${perWriter.reduce((a, p) => a + p.twice, 0)} twice); racer ${racerOnRemote.length} of ${racerLanded} (${racerMissing} missing)`,
          ok:
            writerErrors.length === 0 &&
            perWriter.every((p) => p.pushed > 0 && p.commits === p.pushed && p.missing === 0 && p.twice === 0) &&
            files.every((n, i) => n === stats.pushed[i]) &&
            racerMissing === 0 &&
            racerOnRemote.length === racerLanded,
        },
        {
          check:
            'races happened and were retried: each round at least three of the four writers rejected (non-fast-forward), and each push of the daemon that another writer raced rejected and retried',
          figure: `writers: ${stats.rounds} rounds, ${stats.firstRejected} of their ${stats.rounds * WRITERS} simultaneous first pushes rejected (at most ${landedAtOnce} of a round's landed); ${stale} pushes in all rejected by a race (${stats.stale.join(', ')}), ${other} failed otherwise, each retried until it landed; daemon: ${raced.raced} pushes raced by another writer${raced.failed ? ` (${raced.failed} races the racer could not land)` : ''}, ${daemonBehind} rejected as behind and retried (fetch, rebase, push; ${retries.length} retries in all), ${daemonGaveUp} push calls given up and sent later${writerErrors.length ? `; writer errors: ${writerErrors.join('; ')}` : ''}`,
          ok: racesOk,
        },
        {
          check: 'every audit entry the daemon wrote is on the remote exactly once',
          figure: `${remote.entries.length} entries pushed of ${local.length} written; ${missing} missing, ${duplicates} twice; seq ${seqProblems(remote.entries).length ? seqProblems(remote.entries).join('; ') : 'contiguous'}; time to reach the remote: median ${secondsOf(lag.median)}, max ${secondsOf(lag.max)}`,
          ok:
            local.length > 0 &&
            missing === 0 &&
            duplicates === 0 &&
            remote.entries.length === local.length &&
            seqProblems(remote.entries).length === 0 &&
            Boolean(caughtUp),
        },
        {
          check: 'the chain verifies on the remote (src/audit verify)',
          figure: remote.verified.ok
            ? `ok, ${remote.verified.entries ?? remote.entries.length} entries`
            : `${remote.verified.code} at line ${remote.verified.line}`,
          ok: remote.verified.ok && remote.entries.length > 0,
        },
        {
          check: 'never a force-push (the remote accepts non-fast-forward pushes: one would land and show)',
          figure: `${pushes.length} pushes by the daemon, ${forced} with --force or +refspec; remote reflog: ${reflog.updates} updates of main, ${reflog.forced} not a fast-forward of the head before, ${reflog.gaps} not starting where the one before ended${reflog.examples.length ? ` (${reflog.examples.join('; ')})` : ''}`,
          ok: pushes.length > 0 && forced === 0 && reflog.updates > 0 && reflog.forced === 0 && reflog.gaps === 0,
        },
        {
          check: 'the daemon ends with nothing failing',
          figure: `push failures ${before.audit.pushFailures}; failing secrets ${before.secrets.filter((s) => s.failing).length}; exit ${stop.code ?? stop.signal}`,
          ok: before.audit.pushFailures === 0 && before.secrets.every((s) => !s.failing) && stop.code === 0,
        },
      ],
    };
  } finally {
    await d?.stop().catch(() => undefined);
    w.cleanup();
  }
}
