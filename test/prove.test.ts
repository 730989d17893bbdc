/**
 * The proof in CI: every part of prove/ (prove/N-name.mjs) runs its short version here, in-process,
 * one subtest per part, and each of its rows must hold; a row the part could not check in this run
 * (`skip`: its reason) is reported to tap as a skip with that reason, never as a pass. `npm run prove`
 * runs the full versions and prints the table (prove/run.mjs); the parts import the build (dist/),
 * which `npm test` makes first. Figures (counts, times) are printed in the assertions' names, never
 * asserted on. PROVE_ONLY=4,5 runs only those parts.
 */
import t from 'tap';

type Row = { check: string; figure: string; ok: boolean } | { check: string; figure: string; skip: string };
interface PartEntry {
  number: number;
  name: string;
  file: string;
}
interface Harness {
  discover(): Promise<PartEntry[]>;
  loadPart(entry: PartEntry): Promise<{ part: number; title: string }>;
  runPart(
    entry: PartEntry,
    o: { short: boolean; log: (text: string) => void },
  ): Promise<{ part: number; title: string; rows: Row[]; ms: number }>;
  table(results: { part: number; rows: Row[] }[]): string;
  parseOnly(text: string): Set<number>;
  validRow(row: unknown): boolean;
}

const harness = (await import('../prove/lib/harness.mjs')) as Harness;
// PROVE_ONLY=4,5 runs some parts (as prove/run.mjs --only does).
const only = process.env.PROVE_ONLY ? harness.parseOnly(process.env.PROVE_ONLY) : undefined;
const parts = (await harness.discover()).filter((p) => !only || only.has(p.number));

// The parts start daemons, kill processes and fuzz: more than the default per-file limit of 300 s.
t.setTimeout(20 * 60_000);

t.test('the parts keep the contract: numbered files, sorted, exporting part, title and run', async (t) => {
  t.ok(parts.length > 0, `${parts.length} parts: ${parts.map((p) => p.name).join(', ')}`);
  t.same(
    parts.map((p) => p.number),
    [...parts.map((p) => p.number)].sort((a, b) => a - b),
    'in the order of their numbers',
  );
  for (const p of parts) {
    const mod = await harness.loadPart(p);
    t.equal(mod.part, p.number, `${p.name}: part ${mod.part}, "${mod.title}"`);
  }
  t.match(
    harness.table([{ part: 9, rows: [{ check: 'a | b', figure: '1\n2', ok: false }] }]),
    /\| 9 \| a \\\| b \| 1 2 \| \*\*FAILED\*\* \|/,
    'the table escapes cells and marks failures',
  );
  t.match(
    harness.table([{ part: 9, rows: [{ check: 'c', figure: '', skip: 'no mounts' }] }]),
    /\| 9 \| c \| not checked: no mounts \| skipped \|/,
    'a skipped row says skipped, with its reason',
  );
  t.notOk(
    harness.validRow({ check: 'c', figure: '', ok: true, skip: 'why' }),
    'a row is either checked or skipped, not both',
  );
  t.notOk(harness.validRow({ check: 'c', figure: '', skip: '' }), 'a skip names its reason');
});

for (const p of parts) {
  t.test(`part ${p.number} (${p.name}), short version`, async (t) => {
    const progress: string[] = [];
    const r = await harness.runPart(p, { short: true, log: (text) => void progress.push(text) });
    t.comment(`${r.title}: ${(r.ms / 1000).toFixed(1)} s`);
    for (const row of r.rows) {
      if ('skip' in row) t.pass(`${row.check}${row.figure ? `: ${row.figure}` : ''}`, { skip: row.skip });
      else t.ok(row.ok, `${row.check}: ${row.figure}`);
    }
    if (r.rows.some((row) => 'ok' in row && !row.ok)) t.comment(`progress:\n${progress.join('\n')}`);
  });
}
