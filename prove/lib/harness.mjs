// The proof harness, shared by prove/run.mjs (the command) and test/prove.test.ts (CI's short run):
// finding the part modules, checking that each keeps the contract, running them, and printing their
// rows. No part knows about another.
//
// A part is a file prove/N-name.mjs (N its number) that exports
//   export const part = 4;                      // the same N
//   export const title = 'State tampering';
//   export async function run({ short, log }) { return { rows: [{ check, figure, ok } | { check, figure, skip }], details? }; }
// (details: optional markdown, e.g. the soak's memory curve, written to RESULTS.md under the table)
// `short` asks for the version CI runs (well under a minute); `log(text)` reports progress (stderr in the
// command, a comment in the test). A row is one claim: what was checked, the figure measured (counts,
// times: a string), and either whether the claim held (`ok`, a boolean that must be able to be false:
// a claim about zero cases does not hold) or why it was not checked in this run (`skip`, the reason, a
// non-empty string). A skipped row is never counted as held: the table says "skipped", the command
// prints how many, and test/prove.test.ts reports it to tap as a skip. A part that throws fails as one
// row naming the error.
// Parts import the built code from dist/ (build first), never from src/.
import { readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const PROVE_DIR = path.join(ROOT, 'prove');

/** Imports a module of the build (dist/), e.g. dist('src/state/store.js'). */
export function dist(rel) {
  return import(pathToFileURL(path.join(ROOT, 'dist', rel)).href);
}

const PART_FILE = /^(\d+)-[a-z0-9][a-z0-9-]*\.mjs$/;

/** The part files of DIR, sorted by their number: [{ number, name, file }]. */
export async function discover(dir = PROVE_DIR) {
  const names = await readdir(dir);
  const parts = [];
  for (const name of names) {
    const m = PART_FILE.exec(name);
    if (m) parts.push({ number: Number(m[1]), name, file: path.join(dir, name) });
  }
  parts.sort((a, b) => a.number - b.number || (a.name < b.name ? -1 : 1));
  return parts;
}

/** Parses "4,5,6" (or "4 5") into a set of part numbers; throws on anything else. */
export function parseOnly(text) {
  const numbers = String(text)
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((s) => {
      if (!/^\d+$/.test(s)) throw new Error(`--only takes part numbers separated by commas (4,5,6), not "${s}"`);
      return Number(s);
    });
  if (numbers.length === 0) throw new Error('--only needs at least one part number');
  return new Set(numbers);
}

/** Imports a part file and checks its exports against the contract. */
export async function loadPart(entry) {
  const mod = await import(pathToFileURL(entry.file).href);
  const problems = [];
  if (mod.part !== entry.number)
    problems.push(`exports part = ${JSON.stringify(mod.part)}, but its file name says ${entry.number}`);
  if (typeof mod.title !== 'string' || mod.title === '') problems.push('exports no title');
  if (typeof mod.run !== 'function') problems.push('exports no run({ short, log }) function');
  if (problems.length > 0) throw new Error(`${entry.name}: ${problems.join('; ')}`);
  return mod;
}

/** Whether a row is well formed: { check, figure, ok: boolean } or { check, figure, skip: reason }, not both. */
export function validRow(r) {
  if (typeof r?.check !== 'string' || r.check === '' || typeof r.figure !== 'string') return false;
  if ('skip' in r) return !('ok' in r) && typeof r.skip === 'string' && r.skip.trim() !== '';
  return typeof r.ok === 'boolean';
}

function checkRows(result, name) {
  if (!result || !Array.isArray(result.rows) || result.rows.length === 0)
    throw new Error(`${name}: run() returned no rows`);
  for (const r of result.rows) {
    if (!validRow(r)) {
      throw new Error(
        `${name}: a row is not { check: string, figure: string, ok: boolean } nor { check: string, figure: string, skip: reason }: ${JSON.stringify(r)?.slice(0, 200)}`,
      );
    }
  }
  return result.rows;
}

/** The rows of results that failed, held and were skipped: { failed, held, skipped } (arrays of rows). */
export function outcome(results) {
  const rows = results.flatMap((r) => r.rows);
  return {
    failed: rows.filter((row) => !('skip' in row) && !row.ok),
    held: rows.filter((row) => !('skip' in row) && row.ok),
    skipped: rows.filter((row) => 'skip' in row),
  };
}

/**
 * Runs one part; never throws. Returns { part, title, rows, ms }: a part that fails to load, throws,
 * or returns malformed rows gives one failed row that says why.
 */
export async function runPart(entry, { short, log }) {
  const t0 = performance.now();
  let title = entry.name;
  try {
    const mod = await loadPart(entry);
    title = mod.title;
    const result = await mod.run({ short, log });
    const rows = checkRows(result, entry.name);
    // `details`: optional markdown (a table, a curve) written under the results table.
    return {
      part: entry.number,
      title,
      rows,
      ms: performance.now() - t0,
      ...(typeof result?.details === 'string' ? { details: result.details } : {}),
    };
  } catch (e) {
    const why = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    return {
      part: entry.number,
      title,
      rows: [{ check: 'the part ran to its end', figure: why.split('\n')[0].slice(0, 300), ok: false }],
      ms: performance.now() - t0,
    };
  }
}

function cell(text) {
  return String(text).replace(/\r?\n/g, ' ').replace(/\|/g, '\\|');
}

/** The markdown table of the results: | part | check | figure | result | (a skipped row: its reason as the figure). */
export function table(results) {
  const lines = ['| part | check | figure | result |', '|---|---|---|---|'];
  for (const r of results) {
    for (const row of r.rows) {
      const skipped = 'skip' in row;
      const figure = skipped ? `${row.figure ? `${row.figure}; ` : ''}not checked: ${row.skip}` : row.figure;
      lines.push(
        `| ${r.part} | ${cell(row.check)} | ${cell(figure)} | ${skipped ? 'skipped' : row.ok ? 'ok' : '**FAILED**'} |`,
      );
    }
  }
  return lines.join('\n');
}

/** The machine, as the results file names it. */
export function machine() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model?.trim() ?? 'unknown CPU',
    cores: cpus.length,
    ramGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    platform: `${os.platform()} ${os.arch()}`,
  };
}

// --- small helpers for the parts ---------------------------------------------------------------------

/** 12345 -> "12,345". */
export function int(n) {
  return Math.round(n).toLocaleString('en-US');
}

/** Milliseconds as "0.84 ms", "12.3 ms", "1.52 s". */
export function ms(x) {
  if (x >= 1000) return `${(x / 1000).toFixed(2)} s`;
  if (x >= 10) return `${x.toFixed(1)} ms`;
  return `${x.toFixed(2)} ms`;
}

/** The p-th percentile (0..100) of numbers (nearest rank). */
export function percentile(values, p) {
  if (values.length === 0) return NaN;
  const s = Float64Array.from(values).sort();
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** { a: 3, b: 1 } -> "a 3, b 1" (largest first). */
export function tally(counts) {
  const entries = Object.entries(counts).sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1));
  return entries.length === 0 ? 'none' : entries.map(([k, v]) => `${k} ${int(v)}`).join(', ');
}

/** Adds one to counts[key]. */
export function count(counts, key, by = 1) {
  counts[key] = (counts[key] ?? 0) + by;
}

/** Runs fn(item, lane) over items with at most `width` at a time (lane: 0..width-1); results in order. */
export async function pool(items, width, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async (_, lane) => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i], lane);
      }
    }),
  );
  return out;
}

/** 1 -> "1st", 22 -> "22nd", 53 -> "53rd", 13 -> "13th". */
export function nth(n) {
  const s = ['th', 'st', 'nd', 'rd'];
  const v = n % 100;
  return `${n}${s[(v - 20) % 10] ?? s[v] ?? s[0]}`;
}

/** A text cut to about `max` characters at a word boundary, marked with "...". */
export function clip(text, max) {
  const s = String(text);
  if (s.length <= max) return s;
  const cut = s.lastIndexOf(' ', max);
  return `${s.slice(0, cut > max * 0.6 ? cut : max)}...`;
}
