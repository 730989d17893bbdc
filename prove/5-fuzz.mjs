// Proof, issue 7 part 5: the declaration loader against mutated declarations.
//
// The example repository (policies/, seven files) is mutated 10,000 times (the short version: 400) by
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
// The loads run in a worker thread watched from here: a case that does not finish within HANG_MS is
// a hang (the worker is stopped and the case printed). Times are figures, not claims.
import os from 'node:os';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { clip, int, ms, percentile, ROOT, tally } from './lib/harness.mjs';

export const part = 5;
export const title = 'The declaration loader against 10,000 mutated declarations (fast-check)';

/** A load that takes this long is a hang. */
const HANG_MS = 30_000;
/** Codes that show the hostile shapes reached the loader's limits (full run: each at least once). */
const LIMIT_CODES = ['FILE_TOO_LARGE', 'FILE_NOT_UTF8', 'YAML_SYNTAX', 'YAML_DUPLICATE_KEY', 'YAML_ALIAS_LIMIT', 'YAML_TOO_DEEP', 'YAML_TOO_MANY_DOCUMENTS', 'SCHEMA_TYPE', 'CONFIG_MISSING'];

function fuzz({ runs, seed, log }) {
  return new Promise((resolve) => {
    const worker = new Worker(new URL('./lib/fuzz-worker.mjs', import.meta.url), { workerData: { dir: path.join(ROOT, 'policies'), runs, seed } });
    let current = { n: 0, desc: 'starting' };
    let since = performance.now();
    let watchdog;
    let settled = false;
    const finish = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(watchdog);
      resolve(result);
    };
    const arm = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        void worker.terminate();
        finish({ hang: { ...current, ms: performance.now() - since } });
      }, HANG_MS);
    };
    arm(); // also bounds the worker's start
    worker.on('message', (msg) => {
      if (msg.type === 'case') {
        current = msg;
        since = performance.now();
        arm();
        if (msg.n % 1000 === 0) log(`worker of seed ${seed}: ${int(msg.n)} cases`);
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
  const s = { ...all[0], times: all.flatMap((x) => x.times), codes: {}, kinds: {} };
  for (const x of all.slice(1)) {
    for (const k of ['cases', 'accepted', 'rejected', 'unwritable', 'errors']) s[k] += x[k];
    if (x.slowest.ms > s.slowest.ms) s.slowest = x.slowest;
    if (x.mostProblems.count > s.mostProblems.count) s.mostProblems = x.mostProblems;
    s.pastEnd = { count: s.pastEnd.count + x.pastEnd.count, example: s.pastEnd.example || x.pastEnd.example };
    s.failure ??= x.failure;
    s.processWarnings = { count: s.processWarnings.count + x.processWarnings.count, example: s.processWarnings.example || x.processWarnings.example };
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
  log(`${int(runs)} mutations of policies/ in ${workers} worker${workers > 1 ? 's' : ''}, seed ${seed}`);
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: workers }, (_, w) => fuzz({ runs: Math.floor(runs / workers) + (w < runs % workers ? 1 : 0), seed: seed + w, log })));
  const elapsed = performance.now() - t0;
  const bad = results.find((r) => r.crashed || r.hang);
  if (bad) {
    const why = bad.crashed ?? `case ${bad.hang.n} did not finish within ${HANG_MS / 1000} s: ${bad.hang.desc}`;
    return { rows: [{ check: 'the fuzzer ran every case (no hang, no crash of the worker)', figure: `seed ${seed}: ${why}`, ok: false }] };
  }
  const s = merge(results.map((r) => r.stats));
  const f = s.failure;
  const rows = [];
  rows.push({
    check: 'no exception escapes loadModel; every problem has a known code and a one-line message; valid means no errors',
    figure: `${int(s.cases)} mutated repositories (${s.files} files of policies/, seed ${seed}) in ${ms(elapsed)} (${workers} worker${workers > 1 ? 's' : ''}): ${int(s.accepted)} accepted, ${int(s.rejected)} rejected${s.processWarnings.count ? `; the yaml library printed ${int(s.processWarnings.count)} Node warnings on stderr, e.g. "${clip(s.processWarnings.example, 90)}"` : ''}${f ? `; FAILED: ${f.error} (shrunk ${f.shrinks} times to: ${f.counterexample}; replay: PROVE_SEED=${f.replay.seed} path ${f.replay.path})` : ''}`,
    ok: !f && s.cases === runs,
  });
  rows.push({
    check: `no hang: every load returns (a load over ${HANG_MS / 1000} s would be one)`,
    figure: `median ${ms(percentile(s.times, 50))}, p99 ${ms(percentile(s.times, 99))}, max ${ms(s.slowest.ms)} (${clip(s.slowest.desc, 160)})`,
    ok: s.times.length === s.cases,
  });
  rows.push({
    check: 'every rejection (each problem of severity error) names a file and a line >= 1, on a line the file has',
    figure: `${int(s.errors)} error problems in ${int(s.rejected)} rejected repositories, at most ${int(s.mostProblems.count)} in one${s.mostProblems.count ? ` (${clip(s.mostProblems.desc, 120)})` : ''}; without a position: ${f && /without a file/.test(f.error) ? 'some (see above)' : 0}; past the file's last line: ${int(s.pastEnd.count)}${s.pastEnd.example ? ` (${s.pastEnd.example})` : ''}`,
    ok: !(f && /without a file/.test(f.error)) && s.pastEnd.count === 0,
  });
  const missing = LIMIT_CODES.filter((c) => !s.codes[c]);
  rows.push({
    check: 'the mutations reach the limits and checks of hostile input (full run: each of the limit codes at least once)',
    figure: `${Object.keys(s.codes).length} distinct error codes; repositories refused with: ${tally(Object.fromEntries(Object.entries(s.codes).filter(([c]) => LIMIT_CODES.includes(c))))}${missing.length ? `; not seen: ${missing.join(', ')}` : ''}; structured edits that could not be written back: ${int(s.unwritable)}`,
    ok: short || missing.length === 0,
  });
  rows.push({
    check: 'edits made (a repository gets 1 to 8)',
    figure: tally(s.kinds),
    ok: s.cases === runs,
  });
  return { rows };
}
