/**
 * The verifier of the audit chain: pure, and it names the FIRST bad line.
 *
 * Each line is checked in this order, and the first rule it breaks is reported:
 *   1. AUDIT_MALFORMED      over 64 KiB, a carriage return, not JSON, a field that breaks the rules of
 *                           entry.ts, or not the canonical serialization; a last line without its
 *                           newline (a cut-off write, or an edit); a file not named YYYY-MM.jsonl
 *   2. AUDIT_HASH_MISMATCH  `hash` is not the hash of the line's content: this line was edited
 *   3. AUDIT_SEQ_GAP        seq is not the previous one + 1 (1 for the first): a line before it was
 *                           deleted, or this one was inserted or moved, or a whole file is missing
 *   4. AUDIT_CHAIN_BROKEN   `prev` is not the hash of the line before: that line was edited (and its
 *                           `hash` recomputed), or this line was moved; or the anchor's seq is this
 *                           line's and its hash differs: the log was rewritten at or before it
 *   5. AUDIT_MALFORMED      the entry's month is later than its file's month
 * and at the end, with an anchor beyond the last entry, AUDIT_TRUNCATED at the last file's last line + 1.
 *
 * What it cannot detect: without an anchor, TAIL TRUNCATION (whole lines cut from the end of the last
 * file, or whole last files removed) leaves a valid, shorter chain, and so does replacing the tail
 * with a newly computed one: the hashes are unkeyed, so anyone can extend a chain. Only comparing the
 * head with a copy kept elsewhere (an anchor: the state store's, a git remote's, a signed checkpoint)
 * detects that. With an anchor, the log must contain the anchor's entry unchanged.
 *
 * It keeps only the previous line's hash and a few counters: memory does not grow with the log.
 */
import type { AuditEntry, AuditErrorCode } from './entry.js';
import {
  entryProblem,
  FILE_NAME,
  jsonString,
  lineHash,
  MAX_LINE_BYTES,
  serializeBody,
  sha256,
  withHash,
  ZERO_HASH,
} from './entry.js';

export interface Anchor {
  readonly seq: number;
  /** The entry's `hash` field. */
  readonly hash: string;
}

/** Where the chain stands after a line: what the next line is checked against. */
export interface ChainState extends Anchor {
  /** The SHA-256 of that line (the next entry's `prev`). */
  readonly lineHash: string;
}

/** The state before the first line of a log. */
export const GENESIS: ChainState = Object.freeze({ seq: 0, hash: ZERO_HASH, lineHash: ZERO_HASH });

export interface VerifyOptions {
  /** A head recorded elsewhere: the log must contain this entry, unchanged. */
  readonly anchor?: Anchor;
  /**
   * Continue a chain verified up to this state (a ChainVerifier's `head`) instead of starting at
   * GENESIS: the lines given are then those that follow it, e.g. the rest of a file from a line on
   * (see addFile's `firstLine`). Every line is checked exactly as in a verification from the start.
   */
  readonly from?: ChainState;
}

export type VerifyFailure = {
  readonly ok: false;
  readonly file: string;
  /** 1-based line within `file`. */
  readonly line: number;
  /** The seq the bad line carries when it could be read; for AUDIT_TRUNCATED, the first missing seq. */
  readonly seq?: number;
  readonly code: Exclude<
    AuditErrorCode,
    'AUDIT_INVALID_ENTRY' | 'AUDIT_WRITE_FAILED' | 'AUDIT_UNUSABLE' | 'AUDIT_IO' | 'AUDIT_FENCED'
  >;
  readonly message: string;
};

export type VerifyResult =
  | { readonly ok: true; readonly entries: number; readonly files: number; readonly head: Anchor }
  | VerifyFailure;

/** Where an entry was read. */
export interface EntryLocation {
  readonly file: string;
  readonly line: number;
}

const HEX64 = /^[0-9a-f]{64}$/;
/** The basename of a path (either separator). */
function baseName(p: string): string {
  const i = Math.max(p.lastIndexOf('/'), p.lastIndexOf('\\'));
  return i < 0 ? p : p.slice(i + 1);
}

function checkAnchor(anchor: Anchor | undefined): void {
  if (anchor === undefined) return;
  if (
    !Number.isSafeInteger(anchor.seq) ||
    anchor.seq < 1 ||
    typeof anchor.hash !== 'string' ||
    !HEX64.test(anchor.hash)
  ) {
    throw new TypeError('an audit anchor is { seq: a positive integer, hash: 64 lowercase hex digits }');
  }
}

function checkState(s: ChainState): void {
  if (
    !Number.isSafeInteger(s.seq) ||
    s.seq < 0 ||
    typeof s.hash !== 'string' ||
    !HEX64.test(s.hash) ||
    typeof s.lineHash !== 'string' ||
    !HEX64.test(s.lineHash)
  ) {
    throw new TypeError('a chain state is { seq: a non-negative integer, hash and lineHash: 64 lowercase hex digits }');
  }
}

/**
 * The verifier fed one file at a time, in name order (so that a reader holds one file, not the log).
 * After the first failure it ignores what follows and keeps returning that failure.
 */
export class ChainVerifier {
  private seq: number;
  private headHash: string;
  private prevLineHash: string;
  private files = 0;
  private lastFile: { path: string; lines: number } | undefined;
  private lastName: string | undefined;
  private failure: VerifyFailure | undefined;

  constructor(
    private readonly options: VerifyOptions & {
      readonly onEntry?: (entry: AuditEntry, at: EntryLocation) => void;
    } = {},
  ) {
    checkAnchor(options.anchor);
    const from = options.from ?? GENESIS;
    checkState(from);
    this.seq = from.seq;
    this.headHash = from.hash;
    this.prevLineHash = from.lineHash;
  }

  private fail(file: string, line: number, code: VerifyFailure['code'], message: string, seq?: number): VerifyFailure {
    this.failure = { ok: false, file, line, ...(seq !== undefined ? { seq } : {}), code, message };
    return this.failure;
  }

  /**
   * Checks the next file (its path as it should be reported, and its text). `firstLine`: the line of
   * the file that `text` starts with, when it is the rest of a file (with `from`); lines are reported
   * as lines of the file.
   */
  addFile(path: string, text: string, firstLine = 1): VerifyFailure | undefined {
    if (this.failure) return this.failure;
    if (!Number.isSafeInteger(firstLine) || firstLine < 1) throw new TypeError('firstLine is a positive integer');
    const name = baseName(path);
    const before = this.lastName;
    this.lastName = name;
    this.files++;
    this.lastFile = { path, lines: firstLine - 1 };
    if (before !== undefined && !(name > before))
      return this.fail(
        path,
        1,
        'AUDIT_MALFORMED',
        `${jsonString(name)} comes after ${jsonString(before)}: audit files are read in name order, each name once`,
      );
    if (!FILE_NAME.test(name))
      return this.fail(
        path,
        1,
        'AUDIT_MALFORMED',
        `${jsonString(name)} is not an audit file name: the log's files are named YYYY-MM.jsonl`,
      );
    const fileMonth = name.slice(0, 7);
    let start = 0;
    let line = firstLine - 1;
    while (start < text.length) {
      line++;
      this.lastFile.lines = line;
      const nl = text.indexOf('\n', start);
      const end = nl < 0 ? text.length : nl;
      const failure = this.checkLine(path, line, text.slice(start, end), fileMonth, nl < 0);
      if (failure) return failure;
      start = end + 1;
    }
    return undefined;
  }

  /**
   * Checks the next line of a log kept outside month files (the audit table of the PostgreSQL state
   * store, audit/pg-log.ts): every rule but the month of its file. `where` and `line` say where it was
   * read, for the failure (e.g. the table, and the row's position).
   */
  addLine(where: string, line: number, text: string): VerifyFailure | undefined {
    if (this.failure) return this.failure;
    if (!Number.isSafeInteger(line) || line < 1) throw new TypeError('line is a positive integer');
    this.lastFile = { path: where, lines: line };
    return this.checkLine(where, line, text, undefined, false);
  }

  private checkLine(
    file: string,
    line: number,
    s: string,
    fileMonth: string | undefined,
    partial: boolean,
  ): VerifyFailure | undefined {
    // 1. Form.
    if (s.length > MAX_LINE_BYTES / 3 && Buffer.byteLength(s, 'utf8') > MAX_LINE_BYTES) {
      return this.fail(
        file,
        line,
        'AUDIT_MALFORMED',
        `the line is longer than ${MAX_LINE_BYTES / 1024} KiB; rotor never writes such a line`,
      );
    }
    if (s.endsWith('\r')) {
      return this.fail(
        file,
        line,
        'AUDIT_MALFORMED',
        'the line ends with a carriage return: the file was converted to CRLF line endings (mark audit files "-text" in .gitattributes)',
      );
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(s);
    } catch {
      return this.fail(
        file,
        line,
        'AUDIT_MALFORMED',
        partial
          ? 'the last line is incomplete (no newline, not JSON): a write was cut off, or the file was edited'
          : s.length === 0
            ? 'an empty line'
            : 'the line is not valid JSON',
      );
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
      return this.fail(file, line, 'AUDIT_MALFORMED', 'the line is not a JSON object');
    const rec = parsed as Record<string, unknown>;
    const seq = Number.isSafeInteger(rec.seq) ? (rec.seq as number) : undefined;
    const why = entryProblem(rec, true);
    if (why) return this.fail(file, line, 'AUDIT_MALFORMED', why, seq);
    const e = rec as unknown as AuditEntry;
    const body = serializeBody(e);
    if (withHash(body, e.hash) !== s) {
      return this.fail(
        file,
        line,
        'AUDIT_MALFORMED',
        'the line is not in canonical form (field order, spacing, number or string escaping differ from what rotor writes)',
        seq,
      );
    }
    if (partial)
      return this.fail(
        file,
        line,
        'AUDIT_MALFORMED',
        'the last line has no newline: a write was cut off, or the file was edited',
        seq,
      );
    // 2. Its own hash.
    if (sha256(body) !== e.hash)
      return this.fail(
        file,
        line,
        'AUDIT_HASH_MISMATCH',
        `entry ${e.seq} does not match its hash: the line was edited`,
        seq,
      );
    // 3. Its place.
    const expected = this.seq + 1;
    if (e.seq !== expected) {
      const message =
        e.seq > expected
          ? `expected entry ${expected}, found ${e.seq}: ${e.seq - expected === 1 ? 'an entry is' : `${e.seq - expected} entries are`} missing (a deleted line or a missing file), or this line was moved`
          : `expected entry ${expected}, found ${e.seq} again: a line was inserted or moved here`;
      return this.fail(file, line, 'AUDIT_SEQ_GAP', message, seq);
    }
    // 4. The chain.
    if (e.prev !== this.prevLineHash) {
      return this.fail(
        file,
        line,
        'AUDIT_CHAIN_BROKEN',
        expected === 1
          ? 'the first entry must have prev of 64 zeros: the log does not start here'
          : `entry ${e.seq} does not follow the line before it (prev differs): that line was changed, or this one was moved`,
        seq,
      );
    }
    const anchor = this.options.anchor;
    if (anchor && anchor.seq === e.seq && anchor.hash !== e.hash) {
      return this.fail(
        file,
        line,
        'AUDIT_CHAIN_BROKEN',
        `entry ${e.seq} is not the one anchored (hash ${anchor.hash.slice(0, 12)}..., found ${e.hash.slice(0, 12)}...): the log was rewritten at or before this entry`,
        seq,
      );
    }
    // 5. Its file.
    if (fileMonth !== undefined && e.time.slice(0, 7) > fileMonth) {
      return this.fail(
        file,
        line,
        'AUDIT_MALFORMED',
        `entry ${e.seq} is dated ${e.time.slice(0, 7)} but is in the file of ${fileMonth}: entries go to the file of their month or a later one`,
        seq,
      );
    }
    this.seq = e.seq;
    this.headHash = e.hash;
    this.prevLineHash = lineHash(s);
    this.options.onEntry?.(e, { file, line });
    return undefined;
  }

  /** Reports a line that cannot even be read as text (invalid UTF-8), once the lines before it passed. */
  unreadable(path: string, line: number, message: string): VerifyFailure {
    return this.failure ?? this.fail(path, line, 'AUDIT_MALFORMED', message);
  }

  /** The result once every file was added. */
  finish(): VerifyResult {
    if (this.failure) return this.failure;
    const anchor = this.options.anchor;
    if (anchor && anchor.seq > this.seq) {
      const last = this.lastFile;
      const missing = anchor.seq - this.seq;
      return this.fail(
        last?.path ?? '',
        (last?.lines ?? 0) + 1,
        'AUDIT_TRUNCATED',
        `the log ends at entry ${this.seq} but the anchor is entry ${anchor.seq}: ${missing === 1 ? 'the last entry was' : `${missing} entries were`} removed`,
        this.seq + 1,
      );
    }
    return { ok: true, entries: this.seq, files: this.files, head: { seq: this.seq, hash: this.headHash } };
  }

  /** The head so far: the last good entry (seq 0 and 64 zeros before the first). */
  get head(): Anchor & { readonly lineHash: string } {
    return { seq: this.seq, hash: this.headHash, lineHash: this.prevLineHash };
  }
}

/**
 * Verifies a whole log given as its files (any order: the chain runs across them in name order).
 * Tail truncation is undetectable without `options.anchor` (see the top of this file).
 */
export function verifyChain(files: readonly { path: string; text: string }[], options?: VerifyOptions): VerifyResult {
  const v = new ChainVerifier(options);
  const sorted = [...files].sort((a, b) => {
    const x = baseName(a.path);
    const y = baseName(b.path);
    return x < y ? -1 : x > y ? 1 : 0;
  });
  for (const f of sorted) if (v.addFile(f.path, f.text)) break;
  return v.finish();
}
