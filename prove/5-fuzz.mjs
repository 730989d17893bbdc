// Proof, part 5: the declaration loader against mutated declarations.
//
// The example repository (policies/, seven files) is mutated 10,000 times (the short version: 250) by
// fast-check: structured edits of the parsed YAML documents (values set to other types and awkward
// scalars, keys removed, renamed and duplicated, anchors and aliases, nodes retyped and restyled,
// documents copied and dropped, values swapped), text edits (byte flips, deletions, insertions of
// YAML-special characters, duplicated and swapped lines, tab and odd indentation, truncation, huge
// scalars, deep flow and block nesting, alias bombs, other line ends, BOMs, many documents,
// directives, invalid UTF-8) and edits of the file set (a file dropped, copied, renamed, emptied).
// Each mutated repository is loaded from memory by the real loader (dist/src/model/load.js), which must
// return, never throw; every problem of severity error must name a file and a line and column >= 1;
// every problem has a known code and a one-line message; `valid` must mean "no errors". A failure is
// shrunk by fast-check to a smallest case, printed with the seed that replays it (PROVE_SEED=...).
// Before the random cases, one targeted hostile input per limit (fuzz-mutations.mjs, TARGETED) must be
// refused with that limit's code, in the short run too.
// The loads run in worker threads watched from here: each load's start and return is a message, and
// a watchdog gives each load HANG_MS; a load that has not returned by then is a hang (the worker is
// stopped, the case printed). "No hang" is counted here, from the messages: loads started, loads that
// returned, workers the watchdog stopped. Times are figures, not claims.

import { randomInt } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { EDIT_KINDS, TARGETED } from './lib/fuzz-mutations.mjs';
import { clip, int, ms, percentile, ROOT, tally } from './lib/harness.mjs';

export const part = 5;
export const title = 'The declaration loader against 10,000 mutated declarations (fast-check)';

/** A load that takes this long is a hang (PROVE_HANG_MS to change it, e.g. to try the watchdog). */
const HANG_MS = Number(process.env.PROVE_HANG_MS) || 30_000;
/** Codes that show the hostile shapes reached the loader's limits and checks: one targeted input each. */
const LIMIT_CODES = TARGETED.map((t) => t.code);

/**
 * One worker: resolves { stats } when it is done, or { hang } / { crashed }, always with what the
 * watchdog saw: { started, returned, killed, longest: { ms, desc } }.
 */
function fuzz({ runs, seed, targeted, log }) {
  return new Promise((resolve) => {
    const worker = new Worker(new URL('./lib/fuzz-worker.mjs', import.meta.url), {
      workerData: { dir: path.join(ROOT, 'policies'), runs, seed, targeted },
    });
    const seen = { started: 0, returned: 0, killed: 0, longest: { ms: 0, desc: '' } };
    let current; // the load under way: { n, desc, since }
    let watchdog;
    let settled = false;
    const finish = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(watchdog);
      resolve({ ...result, seen });
    };
    // The deadline runs from the start of each load (and from the worker's start, and between loads).
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        seen.killed++;
        void worker.terminate();
        finish({
          hang: current
            ? { n: current.n, desc: current.desc, ms: performance.now() - current.since }
            : { n: 0, desc: 'not within a load (the worker starting, or between loads)', ms: HANG_MS },
        });
      }, HANG_MS);
    };
    arm();
    worker.on('message', (msg) => {
      if (msg.type === 'case') {
        seen.started++;
        current = { n: msg.n, desc: msg.desc, since: performance.now() };
        arm();
        if (msg.n % 1000 === 0) log(`worker of seed ${seed}: ${int(msg.n)} cases`);
      } else if (msg.type === 'returned') {
        if (current?.n === msg.n) {
          seen.returned++;
          const took = performance.now() - current.since;
          if (took > seen.longest.ms) seen.longest = { ms: took, desc: current.desc };
          current = undefined;
        }
        arm();
      } else if (msg.type === 'done') {
        finish({ stats: msg.stats });
        void worker.terminate();
      }
    });
    worker.on('error', (e) => finish({ crashed: `${e.name}: ${e.message}` }));
    worker.on('exit', (code) => finish({ crashed: `the worker exited with ${code} before it was done` }));
  });
}

/** The summaries of several workers as one. */
function merge(all) {
  const s = {
    ...all[0],
    times: all.flatMap((x) => x.times),
    targeted: all.flatMap((x) => x.targeted),
    codes: {},
    kinds: {},
  };
  for (const x of all.slice(1)) {
    for (const k of ['cases', 'accepted', 'rejected', 'unwritable', 'errors']) s[k] += x[k];
    if (x.slowest.ms > s.slowest.ms) s.slowest = x.slowest;
    if (x.mostProblems.count > s.mostProblems.count) s.mostProblems = x.mostProblems;
    s.pastEnd = { count: s.pastEnd.count + x.pastEnd.count, example: s.pastEnd.example || x.pastEnd.example };
    s.failure ??= x.failure;
    s.processWarnings = {
      count: s.processWarnings.count + x.processWarnings.count,
      example: s.processWarnings.example || x.processWarnings.example,
    };
  }
  for (const x of all) {
    for (const [k, v] of Object.entries(x.codes)) s.codes[k] = (s.codes[k] ?? 0) + v;
    for (const [k, v] of Object.entries(x.kinds)) s.kinds[k] = (s.kinds[k] ?? 0) + v;
  }
  return s;
}

export async function run({ short, log }) {
  const runs = short ? 250 : 10_000;
  // The full run uses every core (each worker its own seed: seed, seed + 1, ...); the short one, one.
  const workers = short ? 1 : Math.max(1, Math.min(4, os.cpus().length));
  const seed = Number(process.env.PROVE_SEED) || randomInt(1, 2 ** 31 - 1 - workers);
  log(
    `${TARGETED.length} targeted inputs, then ${int(runs)} mutations of policies/ in ${workers} worker${workers > 1 ? 's' : ''}, seed ${seed}`,
  );
  const t0 = performance.now();
  const results = await Promise.all(
    Array.from({ length: workers }, (_, w) =>
      fuzz({ runs: Math.floor(runs / workers) + (w < runs % workers ? 1 : 0), seed: seed + w, targeted: w === 0, log }),
    ),
  );
  const elapsed = performance.now() - t0;

  // No hang, from what the watchdog saw: every load that started returned, no worker was stopped.
  const started = results.reduce((a, r) => a + r.seen.started, 0);
  const returned = results.reduce((a, r) => a + r.seen.returned, 0);
  const killed = results.reduce((a, r) => a + r.seen.killed, 0);
  const longest = results.map((r) => r.seen.longest).reduce((a, b) => (b.ms > a.ms ? b : a));
  const hang = results.find((r) => r.hang)?.hang;
  const crashed = results.find((r) => r.crashed)?.crashed;
  const noHang = {
    check: `no hang: every load returns within the watchdog's ${HANG_MS / 1000} s (loads started = loads returned, no worker stopped)`,
    figure: `${int(started)} loads started, ${int(returned)} returned, ${killed} worker${killed === 1 ? '' : 's'} stopped by the watchdog${hang ? ` (load ${hang.n} still running after ${ms(hang.ms)}: ${clip(hang.desc, 200)}; seed ${seed})` : ''}; longest load as the watchdog saw it ${ms(longest.ms)}${longest.desc ? ` (${clip(longest.desc, 160)})` : ''}`,
    ok: killed === 0 && started === returned && started >= runs + TARGETED.length,
  };
  if (hang || crashed) {
    return {
      rows: [
        {
          check: 'the fuzzer ran every case (no hang, no crash of the worker)',
          figure: `seed ${seed}: ${crashed ?? `a load did not return within ${HANG_MS / 1000} s`}`,
          ok: false,
        },
        noHang,
      ],
    };
  }
  const s = merge(results.map((r) => r.stats));
  const f = s.failure;
  const rows = [];
  rows.push({
    check:
      'no exception escapes loadModel; every problem has a known code and a one-line message; valid means no errors',
    figure: `${int(s.cases)} mutated repositories (${s.files} files of policies/, seed ${seed}) in ${ms(elapsed)} (${workers} worker${workers > 1 ? 's' : ''}): ${int(s.accepted)} accepted, ${int(s.rejected)} rejected${s.processWarnings.count ? `; the yaml library printed ${int(s.processWarnings.count)} Node warnings on stderr, e.g. "${clip(s.processWarnings.example, 90)}"` : ''}${f ? `; FAILED: ${f.error} (shrunk ${f.shrinks} times to: ${f.counterexample}; replay: PROVE_SEED=${f.replay.seed} path ${f.replay.path})` : ''}`,
    ok: !f && s.cases === runs,
  });
  noHang.figure += `; load times (the loader's own): median ${ms(percentile(s.times, 50))}, p99 ${ms(percentile(s.times, 99))}`;
  rows.push(noHang);
  rows.push({
    check: 'every rejection (each problem of severity error) names a file and a line >= 1, on a line the file has',
    figure: `${int(s.errors)} error problems in ${int(s.rejected)} rejected repositories, at most ${int(s.mostProblems.count)} in one${s.mostProblems.count ? ` (${clip(s.mostProblems.desc, 120)})` : ''}; without a position: ${f && /without a file/.test(f.error) ? 'some (see above)' : 0}; past the file's last line: ${int(s.pastEnd.count)}${s.pastEnd.example ? ` (${s.pastEnd.example})` : ''}`,
    ok: s.rejected > 0 && s.errors > 0 && !(f && /without a file/.test(f.error)) && s.pastEnd.count === 0,
  });
  // Each limit reached by its targeted input: a limit that stopped working fails here, in every run.
  const targeted = s.targeted;
  const missed = targeted.filter((t) => t.error || !t.got.includes(t.code));
  rows.push({
    check: `one targeted hostile input per limit and check is refused with its code (${LIMIT_CODES.length} codes)`,
    figure: `${targeted.length - missed.length}/${targeted.length} refused with their code${missed.length ? `; WRONG: ${missed.map((t) => `${t.what}: ${t.error ?? `expected ${t.code}, got ${t.got.join(', ') || 'no error'}`}`).join(' / ')}` : `: ${targeted.map((t) => t.code).join(', ')}`}`,
    ok: targeted.length === LIMIT_CODES.length && missed.length === 0,
  });
  // The random mutations reach the limits too: judged in the full run (10,000 cases); 250 reach the
  // rarer codes only by chance (YAML_TOO_MANY_DOCUMENTS in about 2% of repositories).
  const missing = LIMIT_CODES.filter((c) => !s.codes[c]);
  const reach = {
    check: 'the random mutations reach the limits and checks of hostile input (each limit code at least once)',
    figure: `${Object.keys(s.codes).length} distinct error codes; repositories refused with: ${tally(Object.fromEntries(Object.entries(s.codes).filter(([c]) => LIMIT_CODES.includes(c))))}${missing.length ? `; not seen: ${missing.join(', ')}` : ''}; structured edits that could not be written back: ${int(s.unwritable)}`,
  };
  rows.push(
    short
      ? {
          ...reach,
          skip: `${int(runs)} random cases reach the rarer codes only by chance (about 2% of repositories each); judged in the full run, while the targeted row above checks every code in each run`,
        }
      : { ...reach, ok: missing.length === 0 },
  );
  const unused = EDIT_KINDS.filter((k) => !s.kinds[k]);
  rows.push({
    check: `edits made (a repository gets 1 to 8; each of the ${EDIT_KINDS.length} kinds at least once)`,
    figure: `${tally(s.kinds)}${unused.length ? `; never made: ${unused.join(', ')}` : ''}`,
    ok: s.cases === runs && unused.length === 0,
  });
  return { rows };
}
