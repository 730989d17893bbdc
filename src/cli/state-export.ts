/**
 * What `rotor state export` prints, from a store read without opening it (src/state/read-only.ts), and
 * what it can check against an audit log. The JSON:
 *
 *   { "format": "rotor-state-export/1", "exportedAt",
 *     "store": { "place", "storeId", "generation", "snapshotGeneration", "recordsAfterSnapshot",
 *                "tornRecordIgnored"? },
 *     "audit"?: { "log", "entries", "head", "storeGeneration" },          (with --audit)
 *     "secrets": { NAME: { "current"?, "previous"?, "pending"?, "purgeAfter"? } } }
 *
 * Each version is { version, value, username?, rotatedAt, validUntil? (previous), audited? }: current
 * and previous as the consumer sockets serve them (previous until it is retired, its validUntil saying
 * how long consumers are given it), and a pending value, made by a rotation not yet finished (a
 * database may already have it: the agent sets it before the rotation finishes). `value` is left out
 * with --no-values. No error of this module holds a value.
 */
import type { AuditEntry } from '../audit/index.js';
import { AuditError, fingerprint, verifyAuditDir, verifyError } from '../audit/index.js';
import { RotorError } from '../errors.js';
import type { Pending, SecretRecord, Version } from '../rotation/record.js';
import type { StoreReading } from '../state/index.js';
import { checkAnchor, StateError } from '../state/index.js';

export const EXPORT_FORMAT = 'rotor-state-export/1';
const SECRET_PREFIX = 'secret/';
const FINGERPRINT_KEY = 'meta/fingerprint-key';

export type ExportErrorCode =
  | 'EXPORT_DIR_MISSING' // --data-dir does not exist, or is not a directory
  | 'EXPORT_NOT_DATA_DIR' // the directory holds no state store (neither DIR/state/ nor snapshot.age and log.bin)
  | 'EXPORT_NO_STORE' // the PostgreSQL schema holds no rotor state store
  | 'EXPORT_IDENTITY' // the identity file is missing, unreadable, too large, or holds no age identity
  | 'EXPORT_SECRET_UNKNOWN' // --secret names a secret that the store does not hold
  | 'EXPORT_AUDIT_MISMATCH'; // with --audit: a value in the store is not the one the audit log recorded

/** Why an export was refused. Every code needs a person; none carries a value. */
export class ExportError extends RotorError {
  declare readonly code: ExportErrorCode;
  constructor(code: ExportErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, { cause: options?.cause });
  }
}

export interface ExportedVersion {
  readonly version: number;
  readonly value?: unknown;
  readonly username?: string;
  readonly rotatedAt: string;
  readonly validUntil?: string;
  /** With --audit: true when the audit log holds this version's entry and the value's fingerprint matches it. */
  readonly audited?: boolean;
}

export interface ExportedSecret {
  readonly current?: ExportedVersion;
  readonly previous?: ExportedVersion;
  readonly pending?: ExportedVersion & { readonly trigger: string };
  readonly purgeAfter?: string;
}

/** What an audit log says about the store and the versions it made current. */
export interface AuditFacts {
  /** The log as named to the user. */
  readonly log: string;
  readonly entries: number;
  readonly head: string;
  /** The highest store generation and the last store id the log records. */
  readonly stateSeq?: number;
  readonly storeId?: string;
  /** secret NUL version -> the fingerprint of the value that version was made with. */
  readonly fingerprints: ReadonlyMap<string, string>;
}

/**
 * Reads and verifies an audit directory (its hash chain, as rotor audit verify does): AUDIT_* codes
 * when it is broken, AUDIT_EMPTY when it holds no entry.
 */
export async function readAuditFacts(dir: string, shown: string, label: (name: string) => string): Promise<AuditFacts> {
  const fingerprints = new Map<string, string>();
  let stateSeq: number | undefined;
  let storeId: string | undefined;
  const v = await verifyAuditDir(dir, {
    label,
    onEntry: (e: AuditEntry) => {
      if ((e.event === 'created' || e.event === 'rotated') && e.secret && e.to !== undefined && e.fingerprint)
        fingerprints.set(`${e.secret}\0${e.to}`, e.fingerprint);
      if (e.stateSeq !== undefined) stateSeq = Math.max(stateSeq ?? 0, e.stateSeq);
      if (e.storeId !== undefined) storeId = e.storeId;
    },
  });
  const r = v.result;
  if (!r.ok) throw verifyError(r);
  if (r.entries === 0)
    throw new AuditError(
      'AUDIT_EMPTY',
      `no audit log in ${shown} (no YYYY-MM.jsonl file): give --audit a checkout of the GitOps repository (with its audit branch fetched if rotor.yaml names one)`,
    );
  return {
    log: shown,
    entries: r.entries,
    head: `${r.head.seq}:${r.head.hash}`,
    ...(stateSeq !== undefined ? { stateSeq } : {}),
    ...(storeId !== undefined ? { storeId } : {}),
    fingerprints,
  };
}

/**
 * The store must be the one the audit log names, at its generation or later (the anchor the daemon
 * checks at start): STATE_FOREIGN or STATE_ROLLBACK otherwise, saying what to do.
 */
export function checkAgainstAudit(reading: StoreReading, facts: AuditFacts): void {
  try {
    checkAnchor(
      reading.place,
      { seq: facts.stateSeq ?? 0, ...(facts.storeId !== undefined ? { storeId: facts.storeId } : {}) },
      reading.storeId,
      reading.seq,
    );
  } catch (e) {
    if (!(e instanceof StateError)) throw e;
    throw new StateError(
      e.code,
      `${e.message}. Its values may be older than the ones the daemon last made: export a newer copy of the store (the daemon's own files or database, a later backup); to export this one anyway, leave out --audit`,
    );
  }
}

export interface ExportOptions {
  /** Only these secrets (EXPORT_SECRET_UNKNOWN for one the store does not hold). */
  readonly names?: readonly string[];
  readonly values: boolean;
  readonly now: number;
  readonly audit?: AuditFacts;
}

/** The JSON document for a store as read. */
export function exportDocument(reading: StoreReading, o: ExportOptions): Record<string, unknown> {
  const records = new Map<string, SecretRecord>();
  for (const [key, value] of reading.entries)
    if (key.startsWith(SECRET_PREFIX) && isRecord(value)) records.set(key.slice(SECRET_PREFIX.length), value);
  const names = o.names ? [...new Set(o.names)] : [...records.keys()].sort();
  const unknown = names.filter((n) => !records.has(n));
  if (unknown.length > 0)
    throw new ExportError(
      'EXPORT_SECRET_UNKNOWN',
      `the store holds no secret ${unknown.map((n) => JSON.stringify(n.slice(0, 200))).join(', ')} (it holds ${records.size} secret${records.size === 1 ? '' : 's'}): check the name, or list them all with --no-values and without --secret`,
    );
  const check = o.audit ? auditCheck(reading, o.audit) : undefined;
  const secrets: Record<string, ExportedSecret> = {};
  for (const name of names) {
    const r = records.get(name)!;
    const view = (v: Version | Pending, extra: { validUntil?: string } = {}): ExportedVersion => {
      const audited = check?.(name, v);
      return {
        version: v.version,
        ...(o.values ? { value: v.value } : {}),
        ...(v.username !== undefined ? { username: v.username } : {}),
        rotatedAt: v.createdAt,
        ...extra,
        ...(audited !== undefined ? { audited } : {}),
      };
    };
    const [cur, prev] = r.versions;
    secrets[name] = {
      ...(cur ? { current: view(cur) } : {}),
      ...(prev && !prev.retired
        ? { previous: view(prev, prev.validUntil ? { validUntil: prev.validUntil } : {}) }
        : {}),
      ...(r.pending ? { pending: { ...view(r.pending), trigger: r.pending.trigger } } : {}),
      ...(r.purgeAfter ? { purgeAfter: r.purgeAfter } : {}),
    };
  }
  return {
    format: EXPORT_FORMAT,
    exportedAt: new Date(o.now).toISOString(),
    store: {
      place: reading.place,
      storeId: reading.storeId,
      generation: reading.seq,
      snapshotGeneration: reading.snapshotSeq,
      recordsAfterSnapshot: reading.seq - reading.snapshotSeq,
      ...(reading.torn ? { tornRecordIgnored: true } : {}),
    },
    ...(o.audit
      ? {
          audit: {
            log: o.audit.log,
            entries: o.audit.entries,
            head: o.audit.head,
            ...(o.audit.stateSeq !== undefined ? { storeGeneration: o.audit.stateSeq } : {}),
          },
        }
      : {}),
    secrets,
  };
}

/**
 * Whether a version's value is the one its audit entry recorded (by the keyed fingerprint, under the
 * store's own fingerprint key): true, false when the log holds no entry for it (one not pushed before
 * the host was lost), EXPORT_AUDIT_MISMATCH when it holds another.
 */
function auditCheck(reading: StoreReading, facts: AuditFacts): (name: string, v: Version | Pending) => boolean {
  const keyText = reading.entries.get(FINGERPRINT_KEY);
  const key = typeof keyText === 'string' ? Buffer.from(keyText, 'base64') : undefined;
  return (name, v) => {
    const recorded = facts.fingerprints.get(`${name}\0${v.version}`);
    if (recorded === undefined) return false;
    if (key === undefined || key.length < 16 || fingerprint(key, v.value) !== recorded)
      throw new ExportError(
        'EXPORT_AUDIT_MISMATCH',
        `${name} version ${v.version} in the store is not the value the audit log ${facts.log} recorded for it: the store may have been replaced by someone who knows its recipient; do not use it without finding out why (to export it anyway, leave out --audit)`,
      );
    return true;
  };
}

function isRecord(value: unknown): value is SecretRecord {
  const r = value as { versions?: unknown } | null;
  return r !== null && typeof r === 'object' && Array.isArray(r.versions);
}
