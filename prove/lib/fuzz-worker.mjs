// The loader fuzzer's worker thread (started by prove/5-fuzz.mjs, which watches it for hangs): loads
// the targeted hostile inputs (fuzz-mutations.mjs, TARGETED; when workerData.targeted), then `runs`
// mutated copies of the repository in workerData.dir, with the real loader (dist/), checking each
// result, under fast-check (a failure is shrunk to a smallest case). Messages to the parent:
//   { type: 'case', n, desc }     load n is about to start (the parent's watchdog starts its deadline)
//   { type: 'returned', n }       load n returned or threw (the parent counts it finished)
//   { type: 'done', stats }       the summary (see `stats` below); stats.failure is set when a check failed
import { parentPort, workerData } from 'node:worker_threads';
import fc from 'fast-check';
import { applyMutation, describe, kindsOf, mutation, TARGETED } from './fuzz-mutations.mjs';
import { dist } from './harness.mjs';
import { MemorySource, readTree } from './memory-source.mjs';

const { loadModel } = await dist('src/model/load.js');
const { CODES } = await dist('src/model/problems.js');

const { dir, runs, seed, targeted } = workerData;
// Warnings the loader's libraries print on the process (stderr): counted, not printed.
const processWarnings = { count: 0, example: '' };
process.emitWarning = (w) => {
  processWarnings.count++;
  processWarnings.example ||= String(w?.message ?? w)
    .split('\n')[0]
    .slice(0, 120);
};
const NOW = Date.parse('2026-11-26T00:00:00Z');
const base = readTree(dir);

const stats = {
  files: base.size,
  cases: 0,
  accepted: 0,
  rejected: 0,
  unwritable: 0,
  errors: 0,
  times: [],
  slowest: { ms: 0, desc: '' },
  mostProblems: { count: 0, desc: '' },
  codes: {},
  kinds: {},
  pastEnd: { count: 0, example: '' },
  failure: undefined,
  /** The targeted inputs: { code, what, got: [error codes], error? }. */
  targeted: [],
};

/** Lines of a file as an editor shows them (\n, \r\n and a lone \r each end one). */
function lineCount(buf) {
  let n = 1;
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (c === 10 || (c === 13 && buf[i + 1] !== 10)) n++;
  }
  return n;
}

let failed = false;
let n = 0;

/**
 * Loads one repository and checks the result: never a throw; every error problem with a file, a line
 * and a column >= 1; every problem with a known code and a one-line message; valid = no errors.
 * Throws an Error naming the first violation. Returns { r, errors, took }.
 */
async function loadAndCheck(files, desc) {
  const id = ++n;
  parentPort.postMessage({ type: 'case', n: id, desc });
  const t0 = performance.now();
  let r;
  try {
    r = await loadModel(new MemorySource(files), { now: NOW });
  } catch (e) {
    throw new Error(
      `loadModel threw ${e?.name ?? typeof e}: ${String(e?.message ?? e)
        .split('\n')[0]
        .slice(0, 200)}`,
    );
  } finally {
    parentPort.postMessage({ type: 'returned', n: id });
  }
  const took = performance.now() - t0;
  const errors = r.problems.filter((p) => p.severity === 'error');
  for (const p of r.problems) {
    const where = `${p.code} at ${JSON.stringify(p.file)}:${p.line}:${p.col}`;
    if (
      p.severity === 'error' &&
      (typeof p.file !== 'string' ||
        p.file === '' ||
        !Number.isSafeInteger(p.line) ||
        p.line < 1 ||
        !Number.isSafeInteger(p.col) ||
        p.col < 1)
    ) {
      throw new Error(`an error problem without a file and a line: ${where}`);
    }
    if (!(p.code in CODES)) throw new Error(`a problem with an unknown code: ${where}`);
    if (typeof p.message !== 'string' || p.message === '' || /[\n\r]/.test(p.message))
      throw new Error(`a problem whose message is empty or not one line: ${where}`);
  }
  if (r.valid !== (errors.length === 0)) throw new Error(`valid is ${r.valid} with ${errors.length} errors`);
  return { r, errors, took };
}

// The targeted inputs first (in one worker): each must be refused with its code (and pass the same checks).
for (const t of targeted ? TARGETED : []) {
  const files = new Map(base);
  t.edit(files);
  try {
    const { errors } = await loadAndCheck(files, `targeted: ${t.what} (${t.code})`);
    stats.targeted.push({ code: t.code, what: t.what, got: [...new Set(errors.map((p) => p.code))] });
  } catch (e) {
    stats.targeted.push({ code: t.code, what: t.what, got: [], error: e.message });
  }
}

const property = fc.asyncProperty(mutation, async (m) => {
  const { files, target, unwritable } = applyMutation(base, m);
  const desc = describe(m, target);
  let checked;
  try {
    checked = await loadAndCheck(files, desc);
  } catch (e) {
    failed = true;
    throw e;
  }
  const { r, errors, took } = checked;
  if (failed) return; // shrinking: the summary counts the search only
  stats.cases++;
  stats.times.push(took);
  if (took > stats.slowest.ms) stats.slowest = { ms: took, desc };
  if (unwritable) stats.unwritable++;
  for (const k of kindsOf(m)) stats.kinds[k] = (stats.kinds[k] ?? 0) + 1;
  if (r.valid) stats.accepted++;
  else stats.rejected++;
  stats.errors += errors.length;
  if (errors.length > stats.mostProblems.count) stats.mostProblems = { count: errors.length, desc };
  for (const code of new Set(errors.map((p) => p.code))) stats.codes[code] = (stats.codes[code] ?? 0) + 1;
  for (const p of errors) {
    const buf = files.get(p.file);
    if (buf && p.line > lineCount(buf)) {
      stats.pastEnd.count++;
      stats.pastEnd.example ||= `${p.code} at ${p.file}:${p.line} (the file has ${lineCount(buf)} lines) after ${desc}`;
    }
  }
});

const details = await fc.check(property, { numRuns: runs, seed, endOnFailure: false });
if (details.failed) {
  const m = details.counterexample?.[0];
  stats.failure = {
    error: String(details.errorInstance?.message ?? details.error ?? 'failed').slice(0, 400),
    counterexample: m ? describe(m, applyMutation(base, m).target) : 'none',
    replay: { seed: details.seed, path: details.counterexamplePath },
    shrinks: details.numShrinks,
  };
}
stats.processWarnings = processWarnings;
parentPort.postMessage({ type: 'done', stats });
