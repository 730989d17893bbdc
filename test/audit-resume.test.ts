/**
 * Resuming a verification (ChainVerifier `from` and addFile's `firstLine`): checking the rest of a log
 * from a verified state gives exactly the result of checking the whole log, good or bad, with the same
 * file, line and code. The proof (prove/6-audit-chain.mjs) relies on this to check every
 * single tampering of a 10,000-entry log without re-reading the lines before it.
 */
import t from 'tap';
import type { AuditEntry, ChainState, VerifyResult } from '../src/audit/index.js';
import {
  ChainVerifier,
  GENESIS,
  lineHash,
  sealEntry,
  serializeBody,
  verifyChain,
  withHash,
  ZERO_HASH,
} from '../src/audit/index.js';

/** 300 entries over two months: lines of 2026-01.jsonl, then 2026-02.jsonl. */
function build(): { file: string; line: string; entry: AuditEntry }[] {
  const out: { file: string; line: string; entry: AuditEntry }[] = [];
  let prev = ZERO_HASH;
  for (let i = 0; i < 300; i++) {
    const time = new Date(Date.parse('2026-01-31T00:00:00.000Z') + i * 10 * 60_000).toISOString();
    const { entry, line } = sealEntry({
      seq: i + 1,
      time,
      event: i % 2 ? 'rotated' : 'created',
      secret: `s/${i % 7}`,
      stateSeq: i,
      prev,
    });
    out.push({ file: `${time.slice(0, 7)}.jsonl`, line, entry });
    prev = lineHash(line);
  }
  return out;
}

const LOG = build();
const FILES = [...new Set(LOG.map((r) => r.file))];
const HEAD = { seq: LOG.length, hash: LOG.at(-1)!.entry.hash };

function filesOf(lines: { file: string; line: string }[]): { path: string; text: string }[] {
  return FILES.map((f) => ({
    path: f,
    text: lines
      .filter((r) => r.file === f)
      .map((r) => `${r.line}\n`)
      .join(''),
  }));
}

/** Verifies `lines` from line `k` on (0-based, over the whole log), starting from the state after line k-1 of the intact log. */
function resumeAt(lines: { file: string; line: string }[], k: number, anchor = HEAD): VerifyResult {
  const before: ChainState =
    k === 0
      ? GENESIS
      : { seq: LOG[k - 1]!.entry.seq, hash: LOG[k - 1]!.entry.hash, lineHash: lineHash(LOG[k - 1]!.line) };
  const v = new ChainVerifier({ from: before, anchor });
  const file = lines[k]?.file ?? lines.at(-1)!.file;
  const firstLine = lines.slice(0, k).filter((r) => r.file === file).length + 1;
  const rest = lines.slice(k);
  for (const f of FILES.filter((f) => f >= file)) {
    const text = rest
      .filter((r) => r.file === f)
      .map((r) => `${r.line}\n`)
      .join('');
    if (v.addFile(f, text, f === file ? firstLine : 1)) break;
  }
  return v.finish();
}

t.test('an intact log verifies the same from any line on', async (t) => {
  const whole = verifyChain(filesOf(LOG), { anchor: HEAD });
  t.same(whole, { ok: true, entries: 300, files: 2, head: HEAD });
  for (const k of [0, 1, 150, 151, 299])
    t.same(
      resumeAt(LOG, k),
      { ...whole, files: k < LOG.findIndex((r) => r.file === FILES[1]) ? 2 : 1 },
      `from line ${k}`,
    );
});

t.test('a tampered log gives the same first bad line, code and seq from the state before the change', async (t) => {
  const boundary = LOG.findIndex((r) => r.file === FILES[1]);
  for (const k of [0, 5, boundary - 1, boundary, 298]) {
    const edit = LOG.map((r) => ({ ...r }));
    const e = { ...LOG[k]!.entry, secret: 'forged' };
    edit[k]!.line = withHash(serializeBody(e), e.hash);
    const swapped = LOG.map((r) => ({ ...r }));
    [swapped[k]!.line, swapped[k + 1]!.line] = [swapped[k + 1]!.line, swapped[k]!.line];
    const deleted = LOG.filter((_, i) => i !== k);
    for (const [what, lines] of [
      ['edited', edit],
      ['swapped', swapped],
      ['deleted', deleted],
    ] as const) {
      const whole = verifyChain(filesOf(lines), { anchor: HEAD });
      t.equal(whole.ok, false, `${what} at ${k}: refused`);
      t.same(resumeAt(lines, k), whole, `${what} at ${k}: the same failure from the state before it`);
    }
  }
  const cut = LOG.slice(0, 200);
  t.same(
    resumeAt(cut, 199),
    verifyChain(filesOf(cut), { anchor: HEAD }),
    'a truncated log: AUDIT_TRUNCATED at the same line',
  );
});

t.test('bad states and first lines are refused', async (t) => {
  t.throws(() => new ChainVerifier({ from: { seq: -1, hash: ZERO_HASH, lineHash: ZERO_HASH } }), TypeError);
  t.throws(() => new ChainVerifier({ from: { seq: 1, hash: 'x', lineHash: ZERO_HASH } }), TypeError);
  t.throws(() => new ChainVerifier().addFile('2026-01.jsonl', '', 0), TypeError);
});
