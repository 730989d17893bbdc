/**
 * Audit log entries: the type, the canonical one-line serialization, the hashes that chain them, and
 * the field rules shared by the writer (which refuses a bad entry) and the verifier (which reports one).
 *
 * A line is the JSON object of an entry with its fields in the fixed order of FIELDS, absent optional
 * fields omitted, nothing else:
 *
 *   {"seq":7,"time":"2026-11-26T02:00:00.000Z","event":"rotated","secret":"a/b",...,"prev":"<64 hex>","hash":"<64 hex>"}
 *
 * `prev` is the SHA-256 of the previous line's bytes (without its newline; 64 zeros for seq 1) and
 * `hash` the SHA-256 of this line's canonical serialization without `hash` (everything up to and
 * including `prev`, closed with `}`). So `hash` detects an edit of its own line, and `prev` detects an
 * edit of the line before that also recomputed `hash`, a removed, inserted or moved line.
 *
 * The audit never holds a secret value: at most its keyed fingerprint (see fingerprint.ts).
 */
import crypto from 'node:crypto';
import { BACKOFF, NEVER, RotorError } from '../errors.js';

/** Why something was done. */
/** `commit`: a person committed a new value of a `sops:` secret. `drift`: a check found the served credential refused (drift.ts). */
export type AuditTrigger = 'schedule' | 'request' | 'cli' | 'new' | 'removal' | 'config' | 'commit' | 'drift';
export const TRIGGERS: readonly AuditTrigger[] = [
  'schedule',
  'request',
  'cli',
  'new',
  'removal',
  'config',
  'commit',
  'drift',
];

/** The events rotor writes today; `event` is any short lowercase word so that new ones need no migration. */
export const KNOWN_EVENTS = [
  'created',
  'rotated',
  'retired',
  'purged',
  'removed',
  'rotation-failed',
  'config-applied',
  'config-rejected',
  'access-denied',
  'drift-detected',
] as const;
export type KnownAuditEvent = (typeof KNOWN_EVENTS)[number];

export interface AuditEntry {
  /** 1, 2, 3... across all the files of the log. */
  readonly seq: number;
  /** ISO 8601 UTC with milliseconds, as Date.prototype.toISOString writes it. */
  readonly time: string;
  readonly event: KnownAuditEvent | (string & {});
  readonly secret?: string;
  /** Version numbers. */
  readonly from?: number;
  readonly to?: number;
  readonly trigger?: AuditTrigger;
  /** From a person (a rotate request, the CLI): bounded to MAX_TEXT characters by the writer. */
  readonly reason?: string;
  /** The config commit the daemon had applied. */
  readonly commit?: string;
  /** `hmac-sha256:` + 22 base64url characters (see fingerprint.ts). */
  readonly fingerprint?: string;
  /** The state store's generation and id at the time: anchors the encrypted store against rollback. */
  readonly stateSeq?: number;
  readonly storeId?: string;
  /** A count, for config-rejected. */
  readonly problems?: number;
  /** A short free text, bounded to MAX_TEXT characters by the writer. */
  readonly detail?: string;
  /** Hex SHA-256 of the previous line (64 zeros for the first entry). */
  readonly prev: string;
  /** Hex SHA-256 of this entry's canonical serialization without `hash`. */
  readonly hash: string;
}

/** What a caller appends: the log assigns seq, prev and hash. */
export type AuditInput = Omit<AuditEntry, 'seq' | 'prev' | 'hash'>;

/** The serialization order of the fields. */
export const FIELDS = [
  'seq',
  'time',
  'event',
  'secret',
  'from',
  'to',
  'trigger',
  'reason',
  'commit',
  'fingerprint',
  'stateSeq',
  'storeId',
  'problems',
  'detail',
  'prev',
  'hash',
] as const;
const FIELD_SET: ReadonlySet<string> = new Set(FIELDS);
const INPUT_FIELDS: ReadonlySet<string> = new Set(FIELDS.filter((f) => f !== 'seq' && f !== 'prev' && f !== 'hash'));

/** The longest `reason` or `detail` (UTF-16 code units); the writer cuts longer ones. */
export const MAX_TEXT = 500;
/** The longest line (bytes, without the newline) the verifier reads. */
export const MAX_LINE_BYTES = 64 * 1024;
/** `prev` of the first entry, and the head of an empty log. */
export const ZERO_HASH = '0'.repeat(64);

export type AuditErrorCode =
  | 'AUDIT_MALFORMED' // a line that is not a canonical entry (or is cut off, or too long, or in the wrong file)
  | 'AUDIT_HASH_MISMATCH' // a line's hash does not match its content: the line was edited
  | 'AUDIT_CHAIN_BROKEN' // a line's prev does not match the line before, or an anchor does not match
  | 'AUDIT_SEQ_GAP' // seq is not the one expected: a line deleted, inserted or moved, or a file missing
  | 'AUDIT_TRUNCATED' // the log ends before the anchor's seq
  | 'AUDIT_EMPTY' // rotor audit verify found no log at all: nothing to vouch for
  | 'AUDIT_INVALID_ENTRY' // the writer was given an entry it refuses (a programming error)
  | 'AUDIT_WRITE_FAILED' // an append could not be made durable; nothing of it remains
  | 'AUDIT_UNUSABLE' // an earlier failure left the files in an unknown state: reopen the log
  | 'AUDIT_FENCED' // the audit table in the database refused the append: this daemon no longer leads (its fence threw), or another writer appended; never retried (open the log again as the new leader)
  | 'AUDIT_IO'; // reading the log failed

/**
 * AUDIT_WRITE_FAILED means the audit log cannot be written now (a full or read-only disk, an I/O
 * error): retried with backoff, and reported as rotor's own storage failing. AUDIT_IO (a read failed)
 * is retried with backoff too. Every other code needs a person: a damaged or edited log, an entry the
 * writer refuses, a log left unusable until it is reopened.
 */
export class AuditError extends RotorError {
  declare readonly code: AuditErrorCode;
  constructor(
    code: AuditErrorCode,
    message: string,
    readonly at?: { readonly file: string; readonly line: number; readonly seq?: number },
    options?: { cause?: unknown },
  ) {
    const write = code === 'AUDIT_WRITE_FAILED';
    super(code, message, {
      cause: options?.cause,
      retry: write || code === 'AUDIT_IO' ? BACKOFF : NEVER,
      ...(write ? { storage: 'audit log' } : {}),
    });
  }
}

// Characters JSON.stringify leaves as they are but that some tools take for line breaks (U+0085,
// U+2028, U+2029) or that change how a line displays in a review (DEL, C1 controls, bidi controls, BOM).
// eslint-disable-next-line no-control-regex
const EXTRA_ESCAPES = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/g;

const NEEDS_EXTRA = /[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/;
/** Printable ASCII without `"` and `\\`: what JSON writes as it is (the common case, checked first). */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/** A JSON string literal that is always one line of printable text. */
export function jsonString(s: string): string {
  if (PLAIN.test(s)) return `"${s}"`;
  const json = JSON.stringify(s);
  return NEEDS_EXTRA.test(json)
    ? json.replace(EXTRA_ESCAPES, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    : json;
}

// crypto.hash (Node 20.12+) is a one-shot digest, about twice as fast as createHash for short lines.
const oneShot = (crypto as { hash?: (algorithm: string, data: string, encoding: 'hex') => string }).hash;
function sha256(text: string): string {
  return oneShot ? oneShot('sha256', text, 'hex') : crypto.createHash('sha256').update(text, 'utf8').digest('hex');
}

/** The SHA-256 of a line (without its newline): the next entry's `prev`. */
export function lineHash(line: string): string {
  return sha256(line);
}

/** The canonical serialization of an entry's fields up to and including `prev` (what `hash` covers). */
export function serializeBody(e: Omit<AuditEntry, 'hash'>): string {
  // Field by field in the order of FIELDS (written out: several times faster than a loop over keys).
  let out = `{"seq":${v(e.seq)},"time":${v(e.time)},"event":${v(e.event)}`;
  if (e.secret !== undefined) out += `,"secret":${v(e.secret)}`;
  if (e.from !== undefined) out += `,"from":${v(e.from)}`;
  if (e.to !== undefined) out += `,"to":${v(e.to)}`;
  if (e.trigger !== undefined) out += `,"trigger":${v(e.trigger)}`;
  if (e.reason !== undefined) out += `,"reason":${v(e.reason)}`;
  if (e.commit !== undefined) out += `,"commit":${v(e.commit)}`;
  if (e.fingerprint !== undefined) out += `,"fingerprint":${v(e.fingerprint)}`;
  if (e.stateSeq !== undefined) out += `,"stateSeq":${v(e.stateSeq)}`;
  if (e.storeId !== undefined) out += `,"storeId":${v(e.storeId)}`;
  if (e.problems !== undefined) out += `,"problems":${v(e.problems)}`;
  if (e.detail !== undefined) out += `,"detail":${v(e.detail)}`;
  return `${out},"prev":${v(e.prev)}}`;
}

function v(x: unknown): string {
  return typeof x === 'string' ? jsonString(x) : String(x);
}

/** The canonical line of an entry, with the `hash` it carries (which this does not check). */
export function serializeEntry(e: AuditEntry): string {
  return withHash(serializeBody(e), e.hash);
}

/** A line from its body (serializeBody) and hash. */
export function withHash(body: string, hash: string): string {
  return `${body.slice(0, -1)},"hash":"${hash}"}`;
}

/** The SHA-256 (hex) of a text's UTF-8 bytes. */
export { sha256 };

/** Computes `hash` for an entry whose other fields are set; returns the entry and its line. */
export function sealEntry(e: Omit<AuditEntry, 'hash'>): { entry: AuditEntry; line: string } {
  const body = serializeBody(e);
  const hash = sha256(body);
  return { entry: { ...e, hash }, line: withHash(body, hash) };
}

/** The hash an entry should carry, from the canonical body of its fields. */
export function entryHash(e: Omit<AuditEntry, 'hash'>): string {
  return sha256(serializeBody(e));
}

const ISO_MS = /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3}Z$/;
const EVENT = /^[a-z][a-z0-9-]{0,63}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const COMMIT = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;
const FINGERPRINT = /^hmac-sha256:[A-Za-z0-9_-]{22}$/;
/** Secret names are at most 253 characters (schemas/common.schema.json). */
const MAX_SECRET = 253;
const MAX_STORE_ID = 128;

function isCount(v: unknown, min: number): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= min;
}

const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** `YYYY-MM-DDTHH:mm:ss.sssZ` naming a real day (what toISOString writes for years 0000-9999). */
function isIsoTime(v: unknown): v is string {
  if (typeof v !== 'string' || !ISO_MS.test(v)) return false;
  const year = Number(v.slice(0, 4));
  const month = Number(v.slice(5, 7));
  const day = Number(v.slice(8, 10));
  const leap = month === 2 && year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  return day <= DAYS[month - 1]! + (leap ? 1 : 0);
}

/**
 * Why an entry (parsed from a line, or given to the writer) breaks the field rules, or undefined.
 * `chained`: whether seq, prev and hash are part of it (a line) or must be absent (an input).
 */
export function entryProblem(e: Record<string, unknown>, chained: boolean): string | undefined {
  const allowed = chained ? FIELD_SET : INPUT_FIELDS;
  for (const k in e) {
    if (!allowed.has(k)) return `unknown field ${jsonString(k.length > 40 ? `${k.slice(0, 40)}...` : k)}`;
  }
  if (chained) {
    if (!isCount(e.seq, 1)) return 'seq must be a positive integer';
    if (!isHex64(e.prev)) return 'prev must be 64 lowercase hex digits';
    if (!isHex64(e.hash)) return 'hash must be 64 lowercase hex digits';
  }
  if (!isIsoTime(e.time)) return 'time must be an ISO 8601 UTC time with milliseconds (2026-11-26T02:00:00.000Z)';
  if (typeof e.event !== 'string' || !EVENT.test(e.event))
    return 'event must be a lowercase word of letters, digits and "-" (at most 64)';
  if (e.secret !== undefined && (typeof e.secret !== 'string' || e.secret.length === 0 || e.secret.length > MAX_SECRET))
    return `secret must be a name of 1 to ${MAX_SECRET} characters`;
  if (e.from !== undefined && !isCount(e.from, 0)) return 'from must be a non-negative integer';
  if (e.to !== undefined && !isCount(e.to, 0)) return 'to must be a non-negative integer';
  if (e.trigger !== undefined && !TRIGGER_SET.has(e.trigger as string))
    return `trigger must be one of ${TRIGGERS.join(', ')}`;
  if (e.reason !== undefined && !isText(e.reason)) return `reason must be a string of at most ${MAX_TEXT} characters`;
  if (e.commit !== undefined && (typeof e.commit !== 'string' || !COMMIT.test(e.commit)))
    return 'commit must be a full git commit id (40 or 64 lowercase hex digits)';
  if (e.fingerprint !== undefined && (typeof e.fingerprint !== 'string' || !FINGERPRINT.test(e.fingerprint)))
    return 'fingerprint must be "hmac-sha256:" and 22 base64url characters';
  if (e.stateSeq !== undefined && !isCount(e.stateSeq, 0)) return 'stateSeq must be a non-negative integer';
  if (
    e.storeId !== undefined &&
    (typeof e.storeId !== 'string' || e.storeId.length === 0 || e.storeId.length > MAX_STORE_ID)
  )
    return `storeId must be a string of 1 to ${MAX_STORE_ID} characters`;
  if (e.problems !== undefined && !isCount(e.problems, 0)) return 'problems must be a non-negative integer';
  if (e.detail !== undefined && !isText(e.detail)) return `detail must be a string of at most ${MAX_TEXT} characters`;
  return undefined;
}

const TRIGGER_SET: ReadonlySet<string> = new Set(TRIGGERS);

function isText(v: unknown): boolean {
  return typeof v === 'string' && v.length <= MAX_TEXT;
}

function isHex64(v: unknown): boolean {
  return typeof v === 'string' && v.length === 64 && HEX64.test(v);
}

/** Cuts a person's text to MAX_TEXT code units, never inside a surrogate pair, marking the cut with "...". */
export function boundText(s: string): string {
  if (s.length <= MAX_TEXT) return s;
  let end = MAX_TEXT - 3;
  const c = s.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--; // do not keep half of a surrogate pair
  return `${s.slice(0, end)}...`;
}

/**
 * The writer's check of an input: bounds reason and detail, drops undefined fields, and throws
 * AUDIT_INVALID_ENTRY for anything else that is wrong (a bug in the caller, never silently fixed).
 */
export function normalizeInput(input: AuditInput): AuditInput {
  if (typeof input !== 'object' || input === null)
    throw new AuditError('AUDIT_INVALID_ENTRY', 'an audit entry must be an object');
  const out: Record<string, unknown> = {};
  for (const f of FIELDS) {
    let v = (input as Record<string, unknown>)[f];
    if (v === undefined) continue;
    if ((f === 'reason' || f === 'detail') && typeof v === 'string') v = boundText(v);
    out[f] = v;
  }
  for (const k of Object.keys(input)) {
    if (!INPUT_FIELDS.has(k) && (input as Record<string, unknown>)[k] !== undefined) {
      throw new AuditError(
        'AUDIT_INVALID_ENTRY',
        `audit entry: unknown field ${jsonString(k.slice(0, 40))}${FIELD_SET.has(k) ? ' (the log assigns it)' : ''}`,
      );
    }
  }
  const why = entryProblem(out, false);
  if (why) throw new AuditError('AUDIT_INVALID_ENTRY', `audit entry: ${why}`);
  return out as unknown as AuditInput;
}

/** The month file an entry time belongs to: `2026-11.jsonl`. */
export function monthFile(time: string): string {
  return `${time.slice(0, 7)}.jsonl`;
}

/** Audit file names: `YYYY-MM.jsonl`. */
export const FILE_NAME = /^\d{4}-(0[1-9]|1[0-2])\.jsonl$/;
