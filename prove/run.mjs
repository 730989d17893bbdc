#!/usr/bin/env node
// The proof: runs every part (prove/N-name.mjs, in the order of N), prints one markdown table of
// | part | check | figure | result | on stdout (progress goes to stderr), and writes the same table
// with the date, the machine and the durations to prove/RESULTS.md. Exits 1 if any row failed; a row
// a part could not check in this run is "skipped" (with its reason), counted apart, never as held.
//
//   npm run prove                       build, then every part in full (under 20 minutes)
//   npm run prove:short                 build, then the short versions (what CI runs, via npm test)
//   npm run prove -- --only 4,5,6       some parts
//
// Parts import the built code from dist/; `node prove/run.mjs` alone runs on the last build.
// The contract of a part and the helpers are in prove/lib/harness.mjs.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { discover, machine, outcome, PROVE_DIR, parseOnly, runPart, table } from './lib/harness.mjs';

const USAGE = 'usage: node prove/run.mjs [--short] [--only N[,M...]] [--results FILE]\n';

let args;
try {
  args = parseArgs({
    options: {
      short: { type: 'boolean', default: false },
      only: { type: 'string' },
      results: { type: 'string', default: path.join(PROVE_DIR, 'RESULTS.md') },
      help: { type: 'boolean', short: 'h' },
    },
  }).values;
} catch (e) {
  process.stderr.write(`${e.message}\n${USAGE}`);
  process.exit(2);
}
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

let parts = await discover();
if (args.only !== undefined) {
  let only;
  try {
    only = parseOnly(args.only);
  } catch (e) {
    process.stderr.write(`${e.message}\n${USAGE}`);
    process.exit(2);
  }
  const known = new Set(parts.map((p) => p.number));
  const unknown = [...only].filter((n) => !known.has(n));
  if (unknown.length > 0) {
    process.stderr.write(`no part ${unknown.join(', ')} in ${PROVE_DIR} (there are: ${[...known].join(', ')})\n`);
    process.exit(2);
  }
  parts = parts.filter((p) => only.has(p.number));
}

const mode = args.short ? 'short' : 'full';
const started = new Date();
const t0 = performance.now();
const results = [];
for (const entry of parts) {
  const since = performance.now();
  const log = (text) =>
    process.stderr.write(`[part ${entry.number} +${((performance.now() - since) / 1000).toFixed(1)}s] ${text}\n`);
  log(`${entry.name}: starting (${mode})`);
  const r = await runPart(entry, { short: args.short, log });
  const o = outcome([r]);
  log(
    `${r.title}: ${r.rows.length} rows, ${o.failed.length} failed, ${o.skipped.length} skipped, ${(r.ms / 1000).toFixed(1)} s`,
  );
  results.push(r);
}
const totalMs = performance.now() - t0;
const { failed: failedRows, held, skipped } = outcome(results);
const failed = failedRows.length;
const skips = skipped.length === 0 ? '' : `; ${skipped.length} skipped (not counted as held)`;

const out = table(results);
process.stdout.write(`${out}\n`);

const m = machine();
const seconds = (x) => `${(x / 1000).toFixed(1)} s`;
const doc = [
  '# rotor: proof under faults, load and hostile input',
  '',
  `Written by \`node prove/run.mjs${args.short ? ' --short' : ''}${args.only !== undefined ? ` --only ${args.only}` : ''}\` (the ${mode} version${args.only !== undefined ? ` of part${parts.length === 1 ? '' : 's'} ${parts.map((p) => p.number).join(', ')}` : ''}).`,
  '',
  `- date: ${started.toISOString()}`,
  `- machine: ${m.cpu}, ${m.cores} cores, ${m.ramGiB} GiB RAM, Node ${m.node}, ${m.platform}`,
  `- duration: ${seconds(totalMs)} (${results.map((r) => `part ${r.part} ${seconds(r.ms)}`).join(', ')})`,
  `- result: ${failed === 0 ? `every check held (${held.length})` : `${failed} check${failed === 1 ? '' : 's'} FAILED, ${held.length} held`}${skips}`,
  '',
  ...results.map((r) => `Part ${r.part}: ${r.title}.`),
  '',
  out,
  '',
  ...results.filter((r) => r.details).flatMap((r) => [`## Part ${r.part}: ${r.title}`, '', r.details, '']),
].join('\n');
writeFileSync(args.results, doc);
process.stderr.write(
  `${failed === 0 ? 'all' : `${failed} of`} ${failed + held.length} checks ${failed === 0 ? 'held' : 'FAILED'}${skips} in ${seconds(totalMs)}; written to ${path.relative(process.cwd(), args.results) || args.results}\n`,
);
process.exit(failed === 0 ? 0 : 1);
