// Proof, part 6: the audit chain against every single tampering of a 10,000-entry log.
//
// The log is written by the real AuditLog (src/audit/log.ts: month files, fsynced appends) and read back
// from disk. Then, at EVERY line (the short version: every 37th), each kind of tampering is made and
// the verifier must name the first line where the log stops being what was written, with its code:
//   edit        one field of the line changed, its hash left as it was (fields taken in turn)
//   re-hashed   one field changed and the line's hash recomputed, as a forger would
//   character   one character of the line replaced by another printable one
//   deletion    the line removed
//   swap        the line and the next one exchanged
//   duplicate   a copy of another line of the log inserted before the line (and after the last one)
//   forged      a new, correctly chained and hashed entry inserted before the line
//   cut         the log cut just before the line (the line and everything after it gone)
//   cut inside  the log cut inside the line (in its middle, and just before its newline)
//   rewritten   a field changed and every later line re-chained (a sample of positions)
// With the anchor the daemon keeps (the state store's copy of the head), as `rotor audit verify
// --anchor` does. The expected place is exact, and where it is not the changed line itself it is
// because nothing at that line can show the change (see EXPECT below).
//
// Speed: each case is verified from the chain state before the changed line (ChainVerifier's `from`,
// the same checks as a verification from the start), and the line after the change; only when the
// verifier accepts those does it go on to the end of the log. A sample of cases of every kind is also
// written to disk and verified from scratch by verifyAuditDir, which must give the same answer.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { count, dist, int, ms, tally } from './lib/harness.mjs';

export const part = 6;
export const title =
  'The audit chain: every single edit, deletion, reordering, insertion and truncation of a 10,000-entry log';

const N = 10_000;
const EVENTS = [
  'created',
  'rotated',
  'retired',
  'rotated',
  'config-applied',
  'rotation-failed',
  'purged',
  'removed',
  'config-rejected',
];
const TRIGGERS = ['schedule', 'request', 'cli', 'new', 'removal', 'config'];

/** The i-th entry the log is given: the events and fields the daemon writes, some with awkward text. */
function input(i) {
  const event = EVENTS[i % EVENTS.length];
  const secret = `team-${i % 41}/secret-${i % 103}`;
  return {
    time: new Date(Date.parse('2026-01-01T00:00:00.000Z') + i * 47 * 60_000).toISOString(),
    event,
    ...(event.startsWith('config') ? {} : { secret }),
    ...(event === 'rotated'
      ? { from: (i % 60) + 1, to: (i % 60) + 2 }
      : event === 'created'
        ? { to: 1 }
        : event === 'retired'
          ? { from: i % 60 }
          : {}),
    ...(event === 'config-applied' || event === 'config-rejected' ? {} : { trigger: TRIGGERS[i % TRIGGERS.length] }),
    ...(i % 13 === 0 ? { reason: `ticket ${i}: "seen" in a log\nline two \u2028 ${'é'.repeat(i % 4)}\u202e` } : {}),
    commit: ((i * 2654435761) >>> 0).toString(16).padStart(40, 'c'),
    ...(event === 'rotated' || event === 'created'
      ? { fingerprint: `hmac-sha256:${Buffer.alloc(16, i % 251).toString('base64url')}` }
      : {}),
    stateSeq: i * 2,
    storeId: '6d1f9c2a-prove-store',
    ...(event === 'config-rejected' ? { problems: (i % 9) + 1 } : {}),
    ...(event === 'rotation-failed' ? { detail: `DB_UNREACHABLE: try ${i % 5}` } : {}),
  };
}

/** A different value of the same type and form for field `f` of entry `e` (the line stays canonical). */
function edited(e, f) {
  const v = e[f];
  const hexFlip = (s) => (s[0] === 'a' ? 'b' : 'a') + s.slice(1);
  switch (f) {
    case 'seq':
    case 'from':
    case 'to':
    case 'stateSeq':
    case 'problems':
      return v + 1;
    case 'time':
      return new Date(Date.parse(v) + 1).toISOString();
    case 'event':
      return v === 'rotated' ? 'created' : 'rotated';
    case 'trigger':
      return v === 'schedule' ? 'cli' : 'schedule';
    case 'commit':
    case 'prev':
    case 'hash':
      return hexFlip(v);
    case 'fingerprint':
      return v.slice(0, -1) + (v.endsWith('A') ? 'B' : 'A');
    default: // secret, reason, storeId, detail
      return v.slice(0, -1) + (v.endsWith('x') ? 'y' : 'x');
  }
}

export async function run({ short, log }) {
  const A = await dist('src/audit/index.js');
  const { AuditLog, ChainVerifier, GENESIS, lineHash, sealEntry, serializeBody, verifyAuditDir, withHash } = A;
  const step = short ? 37 : 1;
  const sampleEach = short ? 2 : 8;
  const rewrites = short ? 4 : 60;
  const rows = [];
  const base = mkdtempSync(path.join(os.tmpdir(), 'rotor-prove-audit-'));
  try {
    // --- the log, written by the real writer -----------------------------------------------------------
    const dir = path.join(base, 'audit');
    const tw = performance.now();
    const writer = await AuditLog.open(dir);
    for (let i = 0; i < N; i += 250)
      await writer.append(Array.from({ length: Math.min(250, N - i) }, (_, j) => input(i + j)));
    await writer.close();
    const writeMs = performance.now() - tw;
    const names = readdirSync(dir)
      .filter((n) => n.endsWith('.jsonl'))
      .sort();
    const texts = new Map(names.map((n) => [n, readFileSync(path.join(dir, n), 'utf8')]));
    /** Every line of the log: its file, 1-based line, text, offset in its file, parsed entry. */
    const lines = [];
    for (const name of names) {
      const text = texts.get(name);
      let at = 0;
      let no = 0;
      while (at < text.length) {
        const nl = text.indexOf('\n', at);
        const s = text.slice(at, nl);
        lines.push({ file: name, line: ++no, text: s, offset: at, entry: JSON.parse(s) });
        at = nl + 1;
      }
    }
    const tv = performance.now();
    const intact = await verifyAuditDir(dir);
    const verifyMs = performance.now() - tv;
    const HEAD = { seq: N, hash: lines[N - 1]?.entry.hash };
    const intactOk =
      intact.result.ok && intact.result.entries === N && lines.length === N && intact.result.head.hash === HEAD.hash;
    rows.push({
      check: 'a 10,000-entry log written by AuditLog verifies intact',
      figure: `${int(lines.length)} entries in ${names.length} month files, ${int([...texts.values()].reduce((s, t) => s + Buffer.byteLength(t), 0))} bytes; written in ${ms(writeMs)}, verified from disk in ${ms(verifyMs)}`,
      ok: intactOk,
    });
    if (!intactOk) return { rows };
    log(`log written: ${names.length} files; tampering at every ${step === 1 ? '' : `${step}th `}line`);

    /** The chain state before line k (what the verifier knows after line k-1). */
    const before = (k) =>
      k === 0
        ? GENESIS
        : { seq: lines[k - 1].entry.seq, hash: lines[k - 1].entry.hash, lineHash: lineHash(lines[k - 1].text) };
    const fileEnd = new Map();
    lines.forEach((l, i) => {
      fileEnd.set(l.file, i + 1);
    });
    /** Where line k is (k = N: where a line after the last would be). */
    const pos = (k) =>
      k < N ? { file: lines[k].file, line: lines[k].line } : { file: lines[N - 1].file, line: lines[N - 1].line + 1 };

    /**
     * Verifies the log with lines [k, k + skip) replaced by `added` (texts); `cut`: nothing after
     * `added` (the last of which has no newline when `partial`). Returns the verifier's result.
     */
    const verifyMutation = ({ k, skip = 0, added = [], cut = false, partial = false }) => {
      const { file, line: firstLine } = pos(k);
      let v = new ChainVerifier({ from: before(k), anchor: HEAD });
      let text = added.map((s, i) => (partial && i === added.length - 1 ? s : `${s}\n`)).join('');
      if (cut) {
        v.addFile(file, text, firstLine);
        return v.finish();
      }
      const after = k + skip;
      const end = fileEnd.get(file);
      const window = Math.min(end, after + 2);
      for (let i = after; i < window; i++) text += `${lines[i].text}\n`;
      if (v.addFile(file, text, firstLine)) return v.finish();
      if (window < end) {
        // The change passed: check the rest of this file from the state reached, then the later files.
        v = new ChainVerifier({ from: v.head, anchor: HEAD });
        if (v.addFile(file, texts.get(file).slice(lines[window].offset), firstLine + added.length + (window - after)))
          return v.finish();
      }
      for (const name of names) if (name > file && v.addFile(name, texts.get(name))) break;
      return v.finish();
    };

    /** The mutated log as files (for the check from scratch on disk). */
    const materialize = ({ k, skip = 0, added = [], cut = false, partial = false }) => {
      const { file } = pos(k);
      const out = new Map(names.filter((n) => n < file || !cut || n === file).map((n) => [n, []]));
      for (let i = 0; i < k; i++) out.get(lines[i].file).push(`${lines[i].text}\n`);
      added.forEach((s, i) => {
        out.get(file).push(partial && i === added.length - 1 ? s : `${s}\n`);
      });
      if (!cut) for (let i = k + skip; i < N; i++) out.get(lines[i].file).push(`${lines[i].text}\n`);
      return new Map([...out].map(([n, parts]) => [n, parts.join('')]));
    };

    // --- the kinds of tampering, with where each must be caught ------------------------------------------
    const at = (k, codes, note) => ({ ...pos(k), codes, note });
    const fieldsOf = (k) => Object.keys(lines[k].entry);
    const KINDS = [
      {
        name: 'edit',
        check: 'one field of a line edited, hash left: caught at that line',
        positions: (k) => k < N,
        make: (k) => {
          const e = lines[k].entry;
          const fields = fieldsOf(k);
          const f = fields[Math.floor(k / step) % fields.length];
          const x = { ...e, [f]: edited(e, f) };
          return {
            m: { k, skip: 1, added: [withHash(serializeBody(x), x.hash)] },
            expect: at(k, ['AUDIT_HASH_MISMATCH']),
            tag: f,
          };
        },
      },
      {
        name: 're-hashed',
        check:
          'one field edited and the hash recomputed: caught at the next line (its prev no longer matches); a seq or prev edit at the line; the last line by the anchor',
        positions: (k) => k < N,
        make: (k) => {
          const e = lines[k].entry;
          const fields = fieldsOf(k).filter((f) => f !== 'hash');
          const f = fields[Math.floor(k / step) % fields.length];
          const { hash: _, ...rest } = e;
          const { line } = sealEntry({ ...rest, [f]: edited(e, f) });
          const expect =
            f === 'seq'
              ? at(k, ['AUDIT_SEQ_GAP'])
              : f === 'prev' || k === N - 1
                ? at(k, ['AUDIT_CHAIN_BROKEN'])
                : at(k + 1, ['AUDIT_CHAIN_BROKEN'], 'next line');
          return { m: { k, skip: 1, added: [line] }, expect, tag: f };
        },
      },
      {
        name: 'character',
        check: 'one character of a line replaced: caught at that line',
        positions: (k) => k < N,
        make: (k) => {
          const s = lines[k].text;
          const i = (k * 7919) % s.length;
          const c = s.charCodeAt(i);
          const r = c >= 0x21 && c <= 0x7d ? String.fromCharCode(c + 1) : '!';
          return {
            m: { k, skip: 1, added: [s.slice(0, i) + r + s.slice(i + 1)] },
            expect: at(k, ['AUDIT_MALFORMED', 'AUDIT_HASH_MISMATCH']),
          };
        },
      },
      {
        name: 'deletion',
        check:
          'a line deleted: caught at the line that takes its place (AUDIT_SEQ_GAP); the last line by the anchor (AUDIT_TRUNCATED)',
        positions: (k) => k < N,
        make: (k) => {
          let expect;
          if (k === N - 1) expect = at(k, ['AUDIT_TRUNCATED']);
          else if (lines[k + 1].file === lines[k].file) expect = at(k, ['AUDIT_SEQ_GAP']);
          else expect = { file: lines[k + 1].file, line: 1, codes: ['AUDIT_SEQ_GAP'] };
          return { m: { k, skip: 1 }, expect };
        },
      },
      {
        name: 'swap',
        check: 'two adjacent lines exchanged: caught at the first of them',
        positions: (k) => k < N - 1,
        make: (k) => ({
          m: { k, skip: 2, added: [lines[k + 1].text, lines[k].text] },
          expect: at(k, ['AUDIT_SEQ_GAP']),
        }),
      },
      {
        name: 'duplicate',
        check: 'a copy of another line inserted (before each line, and after the last): caught where it stands',
        positions: (k) => k <= N,
        make: (k) => ({ m: { k, added: [lines[(k + N / 2) % N].text] }, expect: at(k, ['AUDIT_SEQ_GAP']) }),
      },
      {
        name: 'forged',
        check:
          "a new entry, correctly chained and hashed, inserted before a line: caught at the next line (the displaced original's seq repeats); before the last line by the anchor",
        positions: (k) => k < N,
        make: (k) => {
          const { line } = sealEntry({
            seq: k + 1,
            time: lines[k].entry.time,
            event: 'rotated',
            secret: 'forged/secret',
            from: 1,
            to: 2,
            trigger: 'cli',
            prev: before(k).lineHash,
          });
          // Before the last line, the forged entry takes the anchored seq: the anchor catches it where it stands.
          const expect =
            k === N - 1
              ? at(k, ['AUDIT_CHAIN_BROKEN'])
              : { file: lines[k].file, line: lines[k].line + 1, codes: ['AUDIT_SEQ_GAP'], note: 'next line' };
          return { m: { k, added: [line] }, expect };
        },
      },
      {
        name: 'cut',
        check: 'the log cut before a line: caught at that line with the anchor (AUDIT_TRUNCATED)',
        positions: (k) => k < N,
        make: (k) => ({ m: { k, cut: true }, expect: at(k, ['AUDIT_TRUNCATED']) }),
      },
      {
        name: 'cut inside',
        check:
          'the log cut inside a line (its middle, and just before its newline): caught at that line (AUDIT_MALFORMED)',
        positions: (k) => k < N,
        variants: 2,
        make: (k, variant) => {
          const s = lines[k].text;
          return {
            m: { k, cut: true, partial: true, added: [variant === 0 ? s.slice(0, s.length >> 1) : s] },
            expect: at(k, ['AUDIT_MALFORMED']),
          };
        },
      },
    ];

    const t0 = performance.now();
    let total = 0;
    let caught = 0;
    const failures = [];
    const samples = [];
    for (const kind of KINDS) {
      let n = 0;
      let ok = 0;
      let later = 0;
      const codes = {};
      const tags = new Set();
      const candidates = [];
      for (let k = 0; k <= N; k += step) if (kind.positions(k)) candidates.push(k);
      if (!candidates.includes(N - 1) && kind.positions(N - 1)) candidates.push(N - 1); // the last line, always
      if (kind.positions(N) && !candidates.includes(N)) candidates.push(N);
      const every = Math.max(1, Math.floor(candidates.length / sampleEach));
      candidates.forEach((k, ci) => {
        for (let variant = 0; variant < (kind.variants ?? 1); variant++) {
          const { m, expect, tag } = kind.make(k, variant);
          if (tag) tags.add(tag);
          const r = verifyMutation(m);
          n++;
          const good = !r.ok && r.file === expect.file && r.line === expect.line && expect.codes.includes(r.code);
          if (good) {
            ok++;
            count(codes, r.code);
            if (expect.note === 'next line') later++;
          } else if (failures.length < 5) {
            failures.push(
              `${kind.name} at line ${k + 1}${tag ? ` (${tag})` : ''}: expected ${expect.file}:${expect.line} ${expect.codes.join('|')}, got ${r.ok ? 'ok' : `${r.file}:${r.line} ${r.code}`}`,
            );
          }
          if (ci % every === 0 && variant === 0) samples.push({ kind: kind.name, k, m, r });
        }
      });
      total += n;
      caught += ok;
      // A kind without a case proves nothing: it fails.
      const figure =
        n === 0
          ? '0 cases: no position of the log could be tampered with this way'
          : `${int(ok)}/${int(n)} at the expected line (${((100 * ok) / n).toFixed(n === ok ? 0 : 2)}%)${later ? `, ${int(later)} of them at the next line` : ''}; ${tally(codes)}${tags.size ? `; fields: ${[...tags].join(', ')}` : ''}`;
      rows.push({ check: kind.check, figure, ok: n > 0 && ok === n });
      log(`${kind.name}: ${ok}/${n}`);
    }

    // A forger who rewrites the rest of the chain after a change: only the anchor can show it.
    let rn = 0;
    let rok = 0;
    for (let j = 0; j < rewrites; j++) {
      const k = Math.floor(((j + 0.5) * (N - 1)) / rewrites);
      const added = [];
      let prev = before(k).lineHash;
      for (let i = k; i < N; i++) {
        const { hash: _, ...rest } = lines[i].entry;
        const { line } = sealEntry({ ...rest, ...(i === k ? { secret: 'rewritten/secret' } : {}), prev });
        added.push(line);
        prev = lineHash(line);
      }
      // The rewritten lines go back into their own files.
      const v = new ChainVerifier({ from: before(k), anchor: HEAD });
      for (const name of names.filter((n) => n >= lines[k].file)) {
        const idx = [];
        for (let i = Math.max(k, 0); i < N; i++) if (lines[i].file === name) idx.push(i);
        const text = idx.map((i) => `${added[i - k]}\n`).join('');
        if (v.addFile(name, text, name === lines[k].file ? lines[k].line : 1)) break;
      }
      const r = v.finish();
      rn++;
      const expect = pos(N - 1);
      if (!r.ok && r.code === 'AUDIT_CHAIN_BROKEN' && r.file === expect.file && r.line === expect.line) rok++;
      else if (failures.length < 5)
        failures.push(
          `rewritten from line ${k + 1}: expected ${expect.file}:${expect.line} AUDIT_CHAIN_BROKEN, got ${r.ok ? 'ok' : `${r.file}:${r.line} ${r.code}`}`,
        );
    }
    total += rn;
    caught += rok;
    rows.push({
      check:
        'a field edited and every later line re-chained (the hashes are unkeyed): caught at the anchored entry, which no longer matches',
      figure: `${int(rok)}/${int(rn)} at the anchored last line (AUDIT_CHAIN_BROKEN); without an anchor such a rewrite verifies, which is why the daemon keeps the head in its store`,
      ok: rn > 0 && rok === rn,
    });
    const elapsed = performance.now() - t0;
    rows.push({
      check: 'every tampering caught at the expected line',
      figure: `${int(caught)}/${int(total)}${total ? ` (${((100 * caught) / total).toFixed(caught === total ? 0 : 3)}%)` : ''} in ${ms(elapsed)}${failures.length ? `; first misses: ${failures.join(' / ')}` : ''}`,
      ok: total > 0 && caught === total,
    });

    // --- the same cases from scratch, from disk, through verifyAuditDir ----------------------------------
    const scratch = path.join(base, 'case');
    let same = 0;
    const diffs = [];
    for (const s of samples) {
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch);
      for (const [name, text] of materialize(s.m)) writeFileSync(path.join(scratch, name), text);
      const d = (await verifyAuditDir(scratch, { anchor: HEAD })).result;
      const brief = (r) => (r.ok ? 'ok' : `${path.basename(r.file)}:${r.line} ${r.code} seq ${r.seq}`);
      if (brief(d) === brief(s.r)) same++;
      else if (diffs.length < 3)
        diffs.push(`${s.kind} at line ${s.k + 1}: from scratch ${brief(d)}, resumed ${brief(s.r)}`);
    }
    const unsampled = KINDS.map((k) => k.name).filter((k) => !samples.some((x) => x.kind === k));
    rows.push({
      check:
        'a sample of every kind, written to disk and verified from the start by verifyAuditDir, gives the same file, line, code and seq',
      figure: `${int(same)}/${int(samples.length)} identical${diffs.length ? `; ${diffs.join(' / ')}` : ''}${unsampled.length ? `; kinds without a sample: ${unsampled.join(', ')}` : ''}`,
      ok: samples.length > 0 && unsampled.length === 0 && same === samples.length,
    });
    return { rows };
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}
