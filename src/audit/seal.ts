/**
 * What the two writers of the audit chain share (the files, log.ts, and the database's table,
 * pg-log.ts): the check of inputs, their sealing as the entries after a chain state, and the check of
 * lines sealed elsewhere as the entries that follow one.
 */
import type { AuditEntry, AuditInput } from './entry.js';
import {
  AuditError,
  MAX_LINE_BYTES,
  normalizeInput,
  sealEntry,
  serializeBody,
  lineHash as sha,
  ZERO_HASH,
} from './entry.js';
import type { ChainState, VerifyFailure } from './verify.js';
import { ChainVerifier } from './verify.js';

/** The bytes a line of this input takes at most (with the longest seq). */
function maxLineBytes(input: AuditInput): number {
  return (
    Buffer.byteLength(serializeBody({ seq: Number.MAX_SAFE_INTEGER, ...input, prev: ZERO_HASH }), 'utf8') +
    ',"hash":""'.length +
    64
  );
}

/**
 * What an append takes (the file log's and the database's, audit/pg-log.ts): each input normalized,
 * and refused (AUDIT_INVALID_ENTRY) when its line could be longer than MAX_LINE_BYTES.
 */
export function checkInputs(entries: readonly AuditInput[]): AuditInput[] {
  const inputs = entries.map(normalizeInput);
  for (const input of inputs) {
    if (maxLineBytes(input) > MAX_LINE_BYTES)
      throw new AuditError('AUDIT_INVALID_ENTRY', `an audit entry would be a line over ${MAX_LINE_BYTES / 1024} KiB`);
  }
  return inputs;
}

/** Checked inputs (checkInputs) sealed as the entries after `from`, in order, each with its line. */
export function sealInputs(
  inputs: readonly AuditInput[],
  from: Pick<ChainState, 'seq' | 'lineHash'>,
): { entry: AuditEntry; line: string }[] {
  const out: { entry: AuditEntry; line: string }[] = [];
  let seq = from.seq;
  let prev = from.lineHash;
  for (const input of inputs) {
    seq++;
    const { entry, line } = sealEntry({ seq, ...input, prev });
    if (Buffer.byteLength(line, 'utf8') > MAX_LINE_BYTES)
      throw new AuditError(
        'AUDIT_INVALID_ENTRY',
        `audit entry ${seq} would be a line over ${MAX_LINE_BYTES / 1024} KiB`,
      );
    out.push({ entry: Object.freeze(entry), line });
    prev = sha(line);
  }
  return out;
}

/**
 * Lines sealed elsewhere (the database's chain) checked as the entries that follow `from`: every rule
 * of the verifier but the month file. Returns the entries, or the verifier's failure.
 */
export function verifyLines(
  lines: readonly string[],
  from: ChainState,
  where: string,
): { ok: true; entries: AuditEntry[] } | VerifyFailure {
  const entries: AuditEntry[] = [];
  const v = new ChainVerifier({ from, onEntry: (e) => entries.push(Object.freeze(e)) });
  for (let i = 0; i < lines.length; i++) {
    const failure = v.addLine(where, i + 1, lines[i]!);
    if (failure) return failure;
  }
  return { ok: true, entries };
}
