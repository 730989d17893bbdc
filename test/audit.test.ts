/**
 * The audit log: the writer (reopen, month rollover, order under concurrency, failing closed on a bad
 * disk), the verifier against every single tampering of a 10,000-entry log at many positions, keyed
 * fingerprints, and `rotor audit verify` on a real repository directory.
 */
import { createHmac } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import type { AuditEntry, AuditFs, AuditInput, VerifyResult } from '../src/audit/index.js';
import {
  AuditLog,
  canonicalJson,
  fingerprint,
  lineHash,
  MAX_TEXT,
  nodeAuditFs,
  sealEntry,
  serializeEntry,
  verifyAuditDir,
  verifyChain,
  ZERO_HASH,
} from '../src/audit/index.js';
import { copyFixture, rotor, tempDir } from './helpers.js';
import { prng } from './lib/prng.js';

// ---------------------------------------------------------------------------------------------------
// A 10,000-entry log, built with the serializer, spanning five months.

interface Rec {
  file: string;
  text: string;
  entry: AuditEntry;
}

const EVENTS = [
  'created',
  'rotated',
  'retired',
  'purged',
  'removed',
  'rotation-failed',
  'config-applied',
  'config-rejected',
  'access-denied',
];
const TRIGGERS = ['schedule', 'request', 'cli', 'new', 'removal', 'config'] as const;

function input(i: number, startMs: number): AuditInput {
  const event = EVENTS[i % EVENTS.length]!;
  return {
    time: new Date(startMs + i * 15 * 60_000).toISOString(),
    event,
    ...(event !== 'config-applied' && event !== 'config-rejected'
      ? { secret: `team-${i % 37}/secret-${i % 101}` }
      : {}),
    ...(event === 'rotated'
      ? {
          from: (i % 50) + 1,
          to: (i % 50) + 2,
          fingerprint: `hmac-sha256:${Buffer.alloc(16, i % 256).toString('base64url')}`,
        }
      : {}),
    trigger: TRIGGERS[i % TRIGGERS.length]!,
    ...(i % 7 === 0 ? { reason: `ticket ${i}: "leaked"\nin a log \u2028 ${'é'.repeat(i % 5)}` } : {}),
    commit: (i % 4096).toString(16).padStart(40, 'a'),
    stateSeq: i * 2,
    storeId: 'store-7f3a',
    ...(event === 'config-rejected' ? { problems: i % 9 } : {}),
    ...(i % 11 === 0 ? { detail: `step ${i % 4}` } : {}),
  };
}

function buildLog(n: number, start = '2026-09-20T00:00:00.000Z'): Rec[] {
  const out: Rec[] = [];
  let prev = ZERO_HASH;
  const startMs = Date.parse(start);
  for (let i = 0; i < n; i++) {
    const { entry, line } = sealEntry({ seq: i + 1, ...input(i, startMs), prev });
    out.push({ file: `${entry.time.slice(0, 7)}.jsonl`, text: line, entry });
    prev = lineHash(line);
  }
  return out;
}

/** The files of a list of records (consecutive records of one file are that file's lines). */
function filesOf(
  recs: readonly { file: string; text: string }[],
  partialLast = false,
): { path: string; text: string }[] {
  const files = new Map<string, { file: string; text: string }[]>();
  for (const r of recs) {
    const group = files.get(r.file) ?? [];
    group.push(r);
    files.set(r.file, group);
  }
  return [...files].map(([file, group]) => {
    const last = partialLast && group.at(-1) === recs.at(-1);
    // A file whose records are the original ones (the same objects) is not joined again.
    const cached = TEXTS.get(file);
    const text =
      !last && cached && cached.recs.length === group.length && group.every((r, i) => r === cached.recs[i])
        ? cached.text
        : group.map((r, i) => (last && i === group.length - 1 ? r.text : `${r.text}\n`)).join('');
    return { path: `audit/${file}`, text };
  });
}

/** The text of each file of the intact log, by file name. */
const TEXTS = new Map<string, { recs: readonly Rec[]; text: string }>();

/** Where record `i` of `recs` is: its file and 1-based line. */
function posOf(recs: readonly { file: string }[], i: number): { file: string; line: number } {
  let line = 1;
  for (let j = i - 1; j >= 0 && recs[j]!.file === recs[i]!.file; j--) line++;
  return { file: `audit/${recs[i]!.file}`, line };
}

/** Where the line after the last one would be. */
function afterLast(recs: readonly { file: string }[]): { file: string; line: number } {
  const p = posOf(recs, recs.length - 1);
  return { file: p.file, line: p.line + 1 };
}

function brief(r: VerifyResult): unknown {
  return r.ok ? { ok: true, entries: r.entries } : { ok: false, file: r.file, line: r.line, code: r.code };
}

const N = 10_000;
const LOG = buildLog(N);
for (const month of new Set(LOG.map((r) => r.file))) {
  const recs = LOG.filter((r) => r.file === month);
  TEXTS.set(month, { recs, text: recs.map((r) => `${r.text}\n`).join('') });
}
const HEAD = { seq: N, hash: LOG[N - 1]!.entry.hash };
/** Indices of the first record of each month after the first. */
const BOUNDARIES = LOG.map((_r, i) => i).filter((i) => i > 0 && LOG[i]!.file !== LOG[i - 1]!.file);
const rand = prng(20261126);
/** 20 random positions strictly inside the log, different per call. */
const randoms = () => Array.from({ length: 20 }, () => 1 + Math.floor(rand() * (N - 2)));
/** A month boundary: the first record of a month. */
const B = BOUNDARIES[1]!;
/** first line, last line, both sides of a month boundary, 20 random positions. */
const positions = () => [0, N - 1, B - 1, B, ...randoms()];

t.test('the 10,000-entry log is intact, spans months, and names its head', async (t) => {
  t.ok(BOUNDARIES.length >= 3, `${BOUNDARIES.length} month boundaries`);
  const files = filesOf(LOG);
  t.same(
    files.map((f) => f.path),
    ['audit/2026-09.jsonl', 'audit/2026-10.jsonl', 'audit/2026-11.jsonl', 'audit/2026-12.jsonl', 'audit/2027-01.jsonl'],
  );
  t.same(verifyChain(files), { ok: true, entries: N, files: 5, head: HEAD });
  t.same(
    verifyChain([...files].reverse(), { anchor: HEAD }),
    { ok: true, entries: N, files: 5, head: HEAD },
    'files are taken in name order',
  );
  const mid = LOG[4321]!.entry;
  t.same(
    brief(verifyChain(files, { anchor: { seq: mid.seq, hash: mid.hash } })),
    { ok: true, entries: N },
    'an older anchor that is in the log',
  );
});

t.test('an edited field is caught at its line (AUDIT_HASH_MISMATCH)', async (t) => {
  const edits: ((e: AuditEntry) => AuditEntry)[] = [
    (e) => ({ ...e, event: 'tampered' }),
    (e) => ({ ...e, secret: 'someone/else' }),
    (e) => ({ ...e, to: (e.to ?? 0) + 1 }),
    (e) => ({ ...e, reason: 'nothing to see' }),
    (e) => ({ ...e, seq: e.seq + 1 }),
    (e) => ({ ...e, prev: `${e.prev.slice(0, -1)}${e.prev.endsWith('0') ? '1' : '0'}` }),
    (e) => ({ ...e, stateSeq: (e.stateSeq ?? 0) + 1 }),
  ];
  for (const [n, k] of positions().entries()) {
    const recs = [...LOG];
    recs[k] = { ...recs[k]!, text: serializeEntry(edits[n % edits.length]!(LOG[k]!.entry)) };
    t.same(
      brief(verifyChain(filesOf(recs))),
      { ok: false, ...posOf(recs, k), code: 'AUDIT_HASH_MISMATCH' },
      `edit ${n % edits.length} at ${k}`,
    );
  }
});

t.test('an edit that recomputes the hash is caught at the next line (AUDIT_CHAIN_BROKEN)', async (t) => {
  const edits: ((e: AuditEntry) => Omit<AuditEntry, 'hash'>)[] = [
    ({ hash: _, ...e }) => ({ ...e, event: 'tampered' }),
    ({ hash: _, ...e }) => ({ ...e, secret: 'someone/else' }),
    ({ hash: _, ...e }) => ({ ...e, reason: 'rewritten' }),
    ({ hash: _, ...e }) => ({ ...e, stateSeq: 1 }),
  ];
  for (const [n, k] of positions().entries()) {
    const recs = [...LOG];
    recs[k] = { ...recs[k]!, text: sealEntry(edits[n % edits.length]!(LOG[k]!.entry)).line };
    const files = filesOf(recs);
    if (k < N - 1) {
      t.same(
        brief(verifyChain(files, n % 2 ? { anchor: HEAD } : {})),
        { ok: false, ...posOf(recs, k + 1), code: 'AUDIT_CHAIN_BROKEN' },
        `rehashed edit at ${k}${n % 2 ? ', anchored' : ''}`,
      );
    } else {
      t.same(
        brief(verifyChain(files)),
        { ok: true, entries: N },
        'a rehashed last line is undetectable without an anchor',
      );
      t.same(
        brief(verifyChain(files, { anchor: HEAD })),
        { ok: false, ...posOf(recs, k), code: 'AUDIT_CHAIN_BROKEN' },
        'and caught with one',
      );
    }
  }
});

t.test('a deleted line is caught at the line after it (AUDIT_SEQ_GAP)', async (t) => {
  for (const k of positions()) {
    const recs = LOG.filter((_, i) => i !== k);
    const files = filesOf(recs);
    if (k < N - 1) {
      t.same(brief(verifyChain(files)), { ok: false, ...posOf(recs, k), code: 'AUDIT_SEQ_GAP' }, `delete ${k}`);
    } else {
      t.same(
        brief(verifyChain(files)),
        { ok: true, entries: N - 1 },
        'deleting the last line is undetectable without an anchor',
      );
      t.same(
        brief(verifyChain(files, { anchor: HEAD })),
        { ok: false, ...afterLast(recs), code: 'AUDIT_TRUNCATED' },
        'and caught with one',
      );
    }
  }
  // A whole month file missing in the middle.
  const month = LOG[B]!.file;
  const recs = LOG.filter((r) => r.file !== month);
  t.same(brief(verifyChain(filesOf(recs))), { ok: false, ...posOf(recs, B), code: 'AUDIT_SEQ_GAP' }, 'a missing file');
});

t.test('an inserted copy of another line is caught where it stands (AUDIT_SEQ_GAP)', async (t) => {
  const cases: { at: number; file?: string; from: number }[] = [];
  for (const k of positions()) cases.push({ at: k, from: Math.floor(rand() * N) });
  cases.push({ at: N, file: LOG[N - 1]!.file, from: 17 }, { at: N, file: LOG[N - 1]!.file, from: N - 1 }); // appended at the end
  cases.push({ at: B, file: LOG[B - 1]!.file, from: B + 3 }); // at the end of the earlier month
  cases.push({ at: 500, from: 500 }, { at: 0, from: 0 }, { at: 501, from: 500 }); // a line duplicated
  for (const c of cases) {
    const recs: { file: string; text: string }[] = [...LOG];
    recs.splice(c.at, 0, { file: c.file ?? LOG[c.at]!.file, text: LOG[c.from]!.text });
    // A copy placed right before its original is where the original belongs: the original is then out of place.
    const bad = c.from === c.at && c.file === undefined ? c.at + 1 : c.at;
    t.same(
      brief(verifyChain(filesOf(recs), { anchor: HEAD })),
      { ok: false, ...posOf(recs, bad), code: 'AUDIT_SEQ_GAP' },
      `copy of ${c.from} inserted at ${c.at}`,
    );
  }
});

t.test('two swapped adjacent lines are caught at the first (AUDIT_SEQ_GAP)', async (t) => {
  for (const p of positions()) {
    const k = Math.min(p, N - 2);
    const recs = [...LOG];
    recs[k] = { ...recs[k]!, text: LOG[k + 1]!.text };
    recs[k + 1] = { ...recs[k + 1]!, text: LOG[k]!.text };
    t.same(
      brief(verifyChain(filesOf(recs))),
      { ok: false, ...posOf(recs, k), code: 'AUDIT_SEQ_GAP' },
      `swap ${k} and ${k + 1}`,
    );
  }
});

t.test('truncation is caught with an anchor (AUDIT_TRUNCATED), and only with one', async (t) => {
  for (const p of [1, ...positions().filter((k) => k > 1)]) {
    const recs = LOG.slice(0, p);
    const files = filesOf(recs);
    if (p === 1 || p === B || p === N - 1)
      t.same(brief(verifyChain(files)), { ok: true, entries: p }, `cut after ${p}: a valid, shorter chain`);
    const r = verifyChain(files, { anchor: HEAD });
    t.same(brief(r), { ok: false, ...afterLast(recs), code: 'AUDIT_TRUNCATED' }, `cut after ${p}, anchored`);
    t.equal(!r.ok && r.seq, p + 1, 'names the first missing entry');
  }
  // Every line gone; a last file emptied rather than removed.
  t.same(brief(verifyChain([], { anchor: HEAD })), { ok: false, file: '', line: 1, code: 'AUDIT_TRUNCATED' });
  const b = BOUNDARIES.at(-1)!;
  const files = [...filesOf(LOG.slice(0, b)), { path: `audit/${LOG[b]!.file}`, text: '' }];
  t.same(
    brief(verifyChain(files, { anchor: HEAD })),
    { ok: false, file: `audit/${LOG[b]!.file}`, line: 1, code: 'AUDIT_TRUNCATED' },
    'a last file emptied',
  );
  // An anchor whose entry is there but different: the log was rewritten from there (or before).
  for (const k of [0, N - 1, B, ...randoms().slice(0, 2)]) {
    const anchor = { seq: k + 1, hash: lineHash(`not ${k}`) };
    t.same(
      brief(verifyChain(filesOf(LOG), { anchor })),
      { ok: false, ...posOf(LOG, k), code: 'AUDIT_CHAIN_BROKEN' },
      `anchor ${k + 1} differs`,
    );
  }
  // A log cut and then regrown with new entries past the anchor.
  const regrown = [...LOG.slice(0, 9000), ...buildLog(N + 5, '2027-03-01T00:00:00.000Z').slice(9000)];
  const cut = regrown.map((r) => ({ ...r }));
  // Re-chain the new tail onto the kept head, as an attacker would.
  let prev = lineHash(cut[8999]!.text);
  for (let i = 9000; i < cut.length; i++) {
    const { hash: _, ...e } = cut[i]!.entry;
    const s = sealEntry({ ...e, prev });
    cut[i] = { file: cut[i]!.file, text: s.line, entry: s.entry };
    prev = lineHash(s.line);
  }
  t.same(brief(verifyChain(filesOf(cut))), { ok: true, entries: N + 5 }, 'a rewritten tail verifies without an anchor');
  t.same(
    brief(verifyChain(filesOf(cut), { anchor: HEAD })),
    { ok: false, ...posOf(cut, N - 1), code: 'AUDIT_CHAIN_BROKEN' },
    'not with one',
  );
});

t.test('a partial last line is caught at that line (AUDIT_MALFORMED)', async (t) => {
  for (const [n, k] of positions().entries()) {
    // Alternately: cut inside the line, or a whole line without its newline.
    const recs = LOG.slice(0, k + 1).map((r, i) =>
      i === k && n % 2 === 0 ? { ...r, text: r.text.slice(0, Math.floor(r.text.length / 2)) } : r,
    );
    t.same(
      brief(verifyChain(filesOf(recs, true))),
      { ok: false, ...posOf(recs, k), code: 'AUDIT_MALFORMED' },
      n % 2 ? `line ${k} without its newline` : `cut inside line ${k}`,
    );
  }
});

t.test('a malformed line is caught at that line (AUDIT_MALFORMED)', async (t) => {
  const breakers: ((s: string) => string)[] = [
    () => 'not json',
    () => '',
    (s) => `${s}\r`,
    (s) => ` ${s}`,
    (s) => s.replace('"seq":', '"seq": '),
    (s) => s.replace(/"time":"([^"]*)"/, '"time":"yesterday"'),
    (s) => s.replace('{', '{"extra":1,'),
    (s) => s.replace(/,"hash":/, ',"hash":"x","hash":'),
    (s) => `${s}${' '.repeat(70_000)}`,
    () => '[1,2,3]',
  ];
  // Each breaker once, at the first and last lines, both sides of a boundary and random positions.
  for (const [n, k] of positions().slice(0, breakers.length).entries()) {
    const recs = [...LOG];
    recs[k] = { ...recs[k]!, text: breakers[n]!(LOG[k]!.text) };
    const r = verifyChain(filesOf(recs));
    t.same(brief(r), { ok: false, ...posOf(recs, k), code: 'AUDIT_MALFORMED' }, `breaker ${n} at ${k}`);
    t.notOk(!r.ok && /[\n\r]/.test(r.message), 'the message is one line');
  }
  // A file that is not a month, and an entry filed under an earlier month.
  t.same(brief(verifyChain([...filesOf(LOG.slice(0, 3)), { path: 'audit/notes.jsonl', text: '' }])), {
    ok: false,
    file: 'audit/notes.jsonl',
    line: 1,
    code: 'AUDIT_MALFORMED',
  });
  const early = LOG.slice(0, 3).map((r) => ({ ...r, file: '2026-08.jsonl' }));
  t.same(brief(verifyChain(filesOf(early))), {
    ok: false,
    file: 'audit/2026-08.jsonl',
    line: 1,
    code: 'AUDIT_MALFORMED',
  });
});

// ---------------------------------------------------------------------------------------------------
// The writer.

const NOV = '2026-11-26T02:00:00.000Z';

function ev(time: string, extra: Partial<AuditInput> = {}): AuditInput {
  return { time, event: 'rotated', secret: 'payments/webhook', from: 1, to: 2, trigger: 'schedule', ...extra };
}

function readLog(dir: string): { path: string; text: string }[] {
  return readdirSync(dir)
    .sort()
    .map((f) => ({ path: f, text: readFileSync(path.join(dir, f), 'utf8') }));
}

t.test('the writer chains entries and picks up where it left off after reopening', async (t) => {
  const dir = path.join(tempDir(t), 'repo', 'audit');
  const log = await AuditLog.open(dir);
  t.same(log.head, { seq: 0, hash: ZERO_HASH });
  const a = await log.append([ev(NOV), ev(NOV, { event: 'retired', to: undefined, reason: undefined })]);
  t.same(
    a.map((e) => e.seq),
    [1, 2],
  );
  t.equal(a[0]!.prev, ZERO_HASH);
  t.notOk('to' in a[1]!, 'undefined fields are omitted');
  const b = await log.append([
    ev('2026-11-27T00:00:00.000Z', { event: 'created', from: undefined, to: 1, trigger: 'new' }),
  ]);
  t.same(log.head, { seq: 3, hash: b[0]!.hash });
  t.same(await log.append([]), [], 'an empty append writes nothing');

  const seen: AuditEntry[] = [];
  const again = await AuditLog.open(dir, { onEntry: (e) => seen.push(e) });
  t.same(again.head, log.head);
  t.same(seen, [...a, ...b], 'reading gives back exactly what was written');
  const c = await again.append([ev('2026-11-28T00:00:00.000Z')]);
  t.equal(c[0]!.seq, 4);
  t.equal(c[0]!.prev, lineHash(readLog(dir)[0]!.text.split('\n')[2]!));
  const r = verifyChain(readLog(dir));
  t.same(r, { ok: true, entries: 4, files: 1, head: again.head });
  t.equal(readLog(dir)[0]!.text.split('\n').length, 5, 'four lines and a final newline');
  await again.close();
  await t.rejects(again.append([ev(NOV)]), { code: 'AUDIT_UNUSABLE' }, 'a closed log refuses appends');
});

t.test('month rollover: one file per UTC month, and a clock that goes back stays in the latest file', async (t) => {
  const dir = tempDir(t);
  const log = await AuditLog.open(dir);
  await log.append([ev('2026-11-30T23:59:59.999Z')]);
  await log.append([ev('2026-12-01T00:00:00.000Z'), ev('2026-12-31T23:59:59.999Z'), ev('2027-01-01T00:00:00.000Z')]);
  await log.append([ev('2026-12-31T23:00:00.000Z', { reason: 'the clock went back' })]);
  t.same(readdirSync(dir).sort(), ['2026-11.jsonl', '2026-12.jsonl', '2027-01.jsonl']);
  t.same(
    readLog(dir).map((f) => f.text.split('\n').length - 1),
    [1, 2, 2],
  );
  t.same(brief(verifyChain(readLog(dir))), { ok: true, entries: 5 });
  const again = await AuditLog.open(dir);
  t.same(again.head, log.head);
});

t.test('concurrent appends are written in call order, sharing fsyncs', async (t) => {
  const dir = tempDir(t);
  let fileSyncs = 0;
  const log = await AuditLog.open(dir, { fs: faultyFs({ sync: () => void fileSyncs++ }) });
  const calls: Promise<AuditEntry[]>[] = [];
  const expected: string[] = [];
  for (let i = 0; i < 200; i++) {
    const batch = Array.from({ length: 1 + (i % 3) }, (_, j) =>
      ev(i < 100 ? NOV : '2026-12-02T00:00:00.000Z', { detail: `call ${i} entry ${j}` }),
    );
    if (i === 50) calls.push(log.append([{ ...ev(NOV), bogus: 1 } as AuditInput]).catch(() => []));
    calls.push(log.append(batch));
    expected.push(...batch.map((e) => e.detail!));
  }
  const results = await Promise.all(calls);
  const written = results.flat();
  t.same(
    written.map((e) => e.detail),
    expected,
    'each call gets its entries, in call order',
  );
  t.same(
    written.map((e) => e.seq),
    expected.map((_, i) => i + 1),
    'a refused call takes no seq',
  );
  const onDisk: string[] = [];
  await verifyAuditDir(dir, { onEntry: (e) => onDisk.push(e.detail!) });
  t.same(onDisk, expected);
  t.same(log.head.seq, expected.length);
  t.ok(fileSyncs < 20, `200 appends made at once took ${fileSyncs} file fsyncs (group commit)`);
  t.same(await log.append([]), [], 'an empty append writes nothing');
});

t.test('reasons and details with line breaks and control characters stay on one line', async (t) => {
  const dir = tempDir(t);
  const log = await AuditLog.open(dir);
  const nasty = [
    'two\nlines',
    'cr\rlf\r\n',
    'nul\u0000bell\u0007esc\u001b[31m',
    'del\u007f nel\u0085',
    'ls\u2028ps\u2029',
    'rtl\u202eevil\u2066',
    'bom\ufeff',
    '"}\n{"seq":999,"time":"2026-11-26T02:00:00.000Z","event":"rotated"}',
    'emoji 🔑 and é',
    '\\n is not a newline',
  ];
  const entries = nasty.map((reason, i) => ev(NOV, { reason, detail: reason, ...(i === 0 ? { secret: 'a/b' } : {}) }));
  const long = 'x'.repeat(MAX_TEXT - 4) + '🔑'.repeat(10);
  entries.push(ev(NOV, { reason: long }));
  await log.append(entries);
  const [file] = readLog(dir);
  const raw = file!.text;
  t.equal(raw.split('\n').length, entries.length + 1, 'one line per entry');
  t.notMatch(
    raw,
    /[\r\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029\u202e\u2066\ufeff]/,
    'no raw control, line-break or bidi characters',
  );
  const back: AuditEntry[] = [];
  const r = (await verifyAuditDir(dir, { onEntry: (e) => back.push(e) })).result;
  t.same(brief(r), { ok: true, entries: entries.length });
  t.same(
    back.slice(0, nasty.length).map((e) => e.reason),
    nasty,
    'and read back unchanged',
  );
  const bounded = back.at(-1)!.reason!;
  t.ok(bounded.length <= MAX_TEXT && bounded.endsWith('...'), 'a long reason is cut to the bound');
  t.doesNotThrow(() => encodeURIComponent(bounded), 'never inside a surrogate pair');
});

t.test('the writer refuses bad entries and writes nothing', async (t) => {
  const dir = tempDir(t);
  const log = await AuditLog.open(dir);
  const bad: unknown[] = [
    { ...ev(NOV), seq: 5 },
    { ...ev(NOV), hash: ZERO_HASH },
    { ...ev(NOV), value: 's3cret' },
    ev('2026-11-26T02:00:00Z'),
    ev('yesterday'),
    ev(NOV, { event: 'Rotated!' }),
    ev(NOV, { to: -1 }),
    ev(NOV, { from: 1.5 }),
    ev(NOV, { fingerprint: 'sha256:abc' }),
    ev(NOV, { commit: 'HEAD' }),
    ev(NOV, { trigger: 'whim' as 'cli' }),
    ev(NOV, { secret: 'x'.repeat(300) }),
    ev(NOV, { reason: 42 as unknown as string }),
    null,
  ];
  for (const b of bad)
    await t.rejects(log.append([ev(NOV), b as AuditInput]), { code: 'AUDIT_INVALID_ENTRY' }, JSON.stringify(b));
  t.same(readdirSync(dir), []);
  t.same(log.head.seq, 0);
});

/** node's fs with faults: each hook may throw before (or, for write, after part of) the real call. */
interface Hooks {
  /** Return a byte count to write that much and then fail with ENOSPC. */
  write?: (file: string, data: Uint8Array) => number | undefined;
  sync?: (file: string) => void;
  open?: (file: string, flags: string) => void;
  truncate?: (file: string) => void;
}

function faultyFs(hooks: Hooks): AuditFs {
  const fail = (code: string) => Object.assign(new Error(`${code}: injected`), { code });
  return {
    ...nodeAuditFs,
    open: async (file, flags) => {
      hooks.open?.(file, flags);
      const fh = await nodeAuditFs.open(file, flags);
      return {
        write: async (buf, off, len) => {
          const allow = hooks.write?.(file, buf.subarray(off, off + len));
          if (allow !== undefined) {
            if (allow > 0) await fh.write(buf, off, allow);
            throw fail('ENOSPC');
          }
          return fh.write(buf, off, len);
        },
        sync: async () => {
          if (flags !== 'r') hooks.sync?.(file);
          return fh.sync();
        },
        truncate: async (n) => {
          hooks.truncate?.(file);
          return fh.truncate(n);
        },
        close: () => fh.close(),
      };
    },
  };
}

t.test(
  'the writer fails closed on a full, failing or read-only disk, leaves the log as it was, and recovers',
  async (t) => {
    const dir = tempDir(t);
    const MODES = ['full', 'full-new-file', 'fsync-new-file', 'readonly'] as const;
    let mode: 'ok' | (typeof MODES)[number] = 'ok';
    const fs = faultyFs({
      // A full disk: half of the existing file's lines, or of the new month file's, then ENOSPC.
      write: (file, data) =>
        (mode === 'full' && file.endsWith('2026-11.jsonl')) ||
        (mode === 'full-new-file' && file.endsWith('2026-12.jsonl'))
          ? Math.floor(data.length / 2)
          : undefined,
      sync: (file) => {
        if (mode === 'fsync-new-file' && file.endsWith('2026-12.jsonl'))
          throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
      },
      open: (_file, flags) => {
        if (mode === 'readonly' && flags !== 'r') throw Object.assign(new Error('EROFS: injected'), { code: 'EROFS' });
      },
    });
    const log = await AuditLog.open(dir, { fs });
    await log.append([ev(NOV), ev(NOV)]);
    const before = readLog(dir);
    for (const [i, m] of MODES.entries()) {
      mode = m;
      const err = await log.append([ev(NOV, { detail: m }), ev('2026-12-01T00:00:00.000Z', { detail: m })]).then(
        () => undefined,
        (e: unknown) => e,
      );
      t.match(err, { code: 'AUDIT_WRITE_FAILED', message: /EROFS|ENOSPC|EIO/ }, `${m}: the append rejects`);
      t.same(readLog(dir), before, `${m}: the files are as they were (no partial line, no new month file)`);
      t.equal(log.head.seq, 2 + i, `${m}: the head did not move`);
      mode = 'ok';
      const ok = await log.append([ev(NOV, { detail: `after ${m}` })]);
      t.equal(ok[0]!.seq, 3 + i, `${m}: the next append works and takes the next seq`);
      before.splice(0, before.length, ...readLog(dir));
    }
    t.same(brief(verifyChain(readLog(dir))), { ok: true, entries: 2 + MODES.length });
  },
);

t.test(
  'when the cleanup fails too, it is done again before the next append, and the log works again once the disk does',
  async (t) => {
    const dir = tempDir(t);
    let full = false;
    let truncateFails = false;
    const fs = faultyFs({
      write: () => (full ? 10 : undefined),
      truncate: () => {
        if (truncateFails) throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
      },
    });
    const log = await AuditLog.open(dir, { fs });
    await log.append([ev(NOV)]);
    full = true;
    truncateFails = true;
    await t.rejects(log.append([ev(NOV)]), {
      code: 'AUDIT_WRITE_FAILED',
      message: /undoing the partial append failed too/,
    });
    const err = await AuditLog.open(dir).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.match(
      err,
      { code: 'AUDIT_MALFORMED', at: { file: path.join(dir, '2026-11.jsonl'), line: 2 } },
      'meanwhile the partial line is on disk (reopening names it)',
    );
    full = false;
    await t.rejects(
      log.append([ev(NOV)]),
      { code: 'AUDIT_WRITE_FAILED', message: /earlier failed append/ },
      'appends fail while the cleanup still fails',
    );
    t.equal(log.head.seq, 1, 'the head did not move');
    truncateFails = false;
    const ok = await log.append([ev(NOV)]);
    t.equal(ok[0]!.seq, 2, 'once the disk works, the cleanup is done and the append works, with the next seq');
    t.equal((await AuditLog.open(dir)).head.seq, 2, 'the files verify: no partial line is left');
  },
);

t.test("opening refuses a broken log with the verifier's code and position", async (t) => {
  const dir = tempDir(t);
  const log = await AuditLog.open(dir);
  await log.append([ev(NOV), ev(NOV), ev(NOV)]);
  const file = path.join(dir, '2026-11.jsonl');
  const lines = readFileSync(file, 'utf8').split('\n');
  lines[1] = lines[1]!.replace('"to":2', '"to":3');
  writeFileSync(file, lines.join('\n'));
  await t.rejects(AuditLog.open(dir), {
    code: 'AUDIT_HASH_MISMATCH',
    at: { file, line: 2, seq: 2 },
    message: new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: `),
  });
  writeFileSync(file, Buffer.concat([Buffer.from(`${lines[0]}\n`), Buffer.from([0xff, 0xfe, 0x0a])]));
  await t.rejects(
    AuditLog.open(dir),
    { code: 'AUDIT_MALFORMED', at: { line: 2 } },
    'invalid UTF-8 is named at its line',
  );
  await t.rejects(
    AuditLog.open(dir, { anchor: { seq: 5, hash: ZERO_HASH.replace(/^0/, 'a') } }),
    { code: 'AUDIT_MALFORMED' },
    'the first bad line comes before the anchor',
  );
  writeFileSync(file, `${lines[0]}\n`);
  await t.rejects(AuditLog.open(dir, { anchor: { seq: 3, hash: ZERO_HASH.replace(/^0/, 'a') } }), {
    code: 'AUDIT_TRUNCATED',
  });
});

// ---------------------------------------------------------------------------------------------------
// Fingerprints.

t.test('fingerprints are keyed, canonical and never the value', async (t) => {
  const key = Buffer.alloc(32, 7);
  const f = fingerprint(key, 's3cret-value');
  t.match(f, /^hmac-sha256:[A-Za-z0-9_-]{22}$/);
  t.equal(
    f,
    `hmac-sha256:${createHmac('sha256', key).update('"s3cret-value"').digest().subarray(0, 16).toString('base64url')}`,
    'HMAC-SHA256 of the canonical JSON, first 16 bytes',
  );
  t.equal(fingerprint(key, 's3cret-value'), f, 'deterministic: a candidate value can be checked');
  t.not(fingerprint(Buffer.alloc(32, 8), 's3cret-value'), f, 'depends on the key');
  t.not(fingerprint(key, 's3cret-valuf'), f);
  t.notMatch(f, /s3cret/);
  t.equal(
    fingerprint(key, { user: 'app', password: 'p' }),
    fingerprint(key, { password: 'p', user: 'app' }),
    'field order does not matter',
  );
  t.not(fingerprint(key, { v: 'abc' }), fingerprint(key, 'abc'));
  t.equal(canonicalJson({ b: [1, { d: 1, c: 'x' }], a: null }), '{"a":null,"b":[1,{"c":"x","d":1}]}');
  t.throws(() => fingerprint(Buffer.alloc(8), 'x'), /at least 16/);
  t.throws(() => canonicalJson({ a: undefined }));
  t.throws(() => canonicalJson(Number.NaN));
});

// ---------------------------------------------------------------------------------------------------
// rotor audit verify.

async function repoWithLog(t: Test, auditDir?: string): Promise<{ dir: string; audit: string; log: AuditLog }> {
  const dir = copyFixture(t, 'test/corpus/base');
  if (auditDir) writeFileSync(path.join(dir, 'rotor.yaml'), `kind: Config\naudit: { dir: ${auditDir}, push: true }\n`);
  const audit = path.join(dir, auditDir ?? 'audit');
  const log = await AuditLog.open(audit);
  await log.append([
    ev('2026-11-30T10:00:00.000Z', { event: 'created', from: undefined, to: 1, trigger: 'new' }),
    ev('2026-11-30T11:00:00.000Z'),
    ev('2026-12-01T00:00:00.000Z'),
  ]);
  return { dir, audit, log };
}

t.test('rotor audit verify: an intact log, in text and json, from the repository or another directory', async (t) => {
  const { dir, log } = await repoWithLog(t);
  let r = await rotor(['audit', 'verify', dir]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, `${path.join(dir, 'audit')}: 3 entries in 2 files, chain intact, head 3:${log.head.hash}\n`);
  r = await rotor(['audit', 'verify'], { cwd: dir });
  t.equal(
    r.stdout,
    `audit: 3 entries in 2 files, chain intact, head 3:${log.head.hash}\n`,
    'DIR defaults to the current directory',
  );
  r = await rotor(['audit', 'verify', '--format', 'json'], { cwd: dir });
  t.equal(r.code, 0);
  t.same(JSON.parse(r.stdout), { ok: true, dir: 'audit', files: 2, entries: 3, head: log.head });
  // The head it prints is what --anchor takes.
  const printed = /head (\d+:[0-9a-f]{64})\n$/.exec((await rotor(['audit', 'verify'], { cwd: dir })).stdout)![1]!;
  r = await rotor(['audit', 'verify', '--anchor', printed], { cwd: dir });
  t.equal(r.code, 0, r.stdout + r.stderr);
  t.match(r.stdout, /, anchor 3 matches\n$/);
});

t.test('rotor audit verify: audit.dir from rotor.yaml, and a repository without a log', async (t) => {
  const { dir } = await repoWithLog(t, 'logs/audit');
  const r = await rotor(['audit', 'verify', '.'], { cwd: dir });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^logs\/audit: 3 entries in 2 files, chain intact/);
  const empty = copyFixture(t, 'test/corpus/base');
  const e = await rotor(['audit', 'verify', '.'], { cwd: empty });
  t.equal(e.code, 1, 'no log: nothing to vouch for');
  t.match(e.stdout, /^audit: error: no audit log here: no YYYY-MM\.jsonl file in audit .*\[AUDIT_EMPTY\]\n$/);
  const ej = await rotor(['audit', 'verify', '.', '--format', 'json'], { cwd: empty });
  t.match(JSON.parse(ej.stdout), { ok: false, code: 'AUDIT_EMPTY' });
  const anchored = await rotor(['audit', 'verify', '.', '--anchor', `3:${'a'.repeat(64)}`], { cwd: empty });
  t.equal(anchored.code, 1);
  t.equal(
    anchored.stdout,
    'audit:1: error: the log ends at entry 0 but the anchor is entry 3: 3 entries were removed [AUDIT_TRUNCATED]\n',
  );
  writeFileSync(path.join(empty, 'rotor.yaml'), 'kind: Config\naudit: { dir: ../../etc }\n');
  const bad = await rotor(['audit', 'verify', '.'], { cwd: empty });
  t.equal(bad.code, 3);
  t.match(bad.stderr, /audit.dir "..\/..\/etc" is not a relative path inside the repository.*\[AUDIT_DIR_INVALID\]/);
  writeFileSync(path.join(empty, 'rotor.yaml'), 'kind: Config\naudit: [unclosed\n');
  const broken = await rotor(['audit', 'verify', '.'], { cwd: empty });
  t.equal(broken.code, 1, 'it falls back to "audit", where there is no log');
  t.match(broken.stderr, /rotor.yaml does not parse \(run rotor validate\); using "audit"/);
});

t.test('rotor audit verify: a broken log exits 1 naming the first bad line', async (t) => {
  const { dir, audit, log } = await repoWithLog(t);
  const file = path.join(audit, '2026-11.jsonl');
  const text = readFileSync(file, 'utf8');
  writeFileSync(file, text.replace('"event":"rotated"', '"event":"retired"'));
  let r = await rotor(['audit', 'verify'], { cwd: dir });
  t.equal(r.code, 1);
  t.equal(
    r.stdout,
    'audit/2026-11.jsonl:2: error: entry 2 does not match its hash: the line was edited [AUDIT_HASH_MISMATCH]\n',
  );
  r = await rotor(['audit', 'verify', '--format', 'json'], { cwd: dir });
  t.equal(r.code, 1);
  t.same(JSON.parse(r.stdout), {
    ok: false,
    dir: 'audit',
    file: 'audit/2026-11.jsonl',
    line: 2,
    seq: 2,
    code: 'AUDIT_HASH_MISMATCH',
    message: 'entry 2 does not match its hash: the line was edited',
  });
  writeFileSync(file, text);
  const dec = path.join(audit, '2026-12.jsonl');
  writeFileSync(dec, '');
  r = await rotor(['audit', 'verify'], { cwd: dir, env: { ROTOR_ANCHOR: `${log.head.seq}:${log.head.hash}` } });
  t.equal(r.code, 1, 'ROTOR_ANCHOR is read');
  t.match(
    r.stdout,
    /^audit\/2026-12.jsonl:1: error: the log ends at entry 2 but the anchor is entry 3: the last entry was removed \[AUDIT_TRUNCATED\]\n$/,
  );
  r = await rotor(['audit', 'verify'], { cwd: dir });
  t.equal(r.code, 0, 'without the anchor the cut tail goes unnoticed');
});

t.test('rotor audit: help and usage errors', async (t) => {
  let r = await rotor(['audit', '--help']);
  t.equal(r.code, 0);
  t.match(r.stdout, /verify \[DIR\]/);
  t.match(r.stdout, /does NOT detect/);
  t.match(r.stdout, /--anchor SEQ:HASH/);
  t.match(r.stdout, /Exit status: 0 intact, 1 broken or empty, 2 usage error/);
  r = await rotor(['audit', 'verify', '-h']);
  t.equal(r.code, 0);
  r = await rotor(['--help']);
  t.match(r.stdout, /audit verify \[DIR\]/);
  for (const args of [
    ['audit'],
    ['audit', 'check'],
    ['audit', 'verify', 'no/such/dir'],
    ['audit', 'verify', '.', 'extra'],
    ['audit', 'verify', '--anchor', '3:abc'],
    ['audit', 'verify', '--anchor', `0:${'a'.repeat(64)}`],
    ['audit', 'verify', '--format', 'github'],
  ]) {
    r = await rotor(args);
    t.equal(r.code, 2, args.join(' '));
    t.match(r.stderr, /Run "rotor audit --help" for usage/);
  }
  r = await rotor(['audit', 'verify'], { env: { ROTOR_FORMAT: 'github' } });
  t.not(r.code, 2, 'a ROTOR_FORMAT meant for another command (validate --format github) is not a usage error here');
});
