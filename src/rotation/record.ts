/**
 * What the store keeps for one secret, and the pure transitions of its rotation (create, finish,
 * retire, remove). No I/O and no clock of their own: the engine persists each result before the next.
 */
import type { SecretValue } from './generate.js';

/** Why a version was made; `commit`: a person committed a new value of a `sops:` secret. */
export type Trigger = 'schedule' | 'request' | 'cli' | 'new' | 'commit' | 'drift';

export interface Version {
  readonly version: number;
  readonly value: SecretValue;
  /** The database user this value belongs to (database secrets). */
  readonly username?: string;
  /** ISO time the version became current. */
  readonly createdAt: string;
  /** ISO time after which a previous version is no longer valid (set when a newer one becomes current). */
  readonly validUntil?: string;
  /** True once the version was retired: kept for `retain`, never served again. */
  readonly retired?: boolean;
}

export interface Pending {
  readonly version: number;
  readonly value: SecretValue;
  /** The database user the value is for (database secrets). */
  readonly username?: string;
  /** How many times the database refused this value (a password policy): discarded after a few. */
  readonly rejections?: number;
  readonly createdAt: string;
  readonly trigger: Trigger;
  readonly reason?: string;
  /** The `rotate.request` this rotation answers, if any. */
  readonly request?: string;
  /** The schedule slot (ms) this rotation fills, so that jitter and downtime do not shift the cadence. */
  readonly scheduledBase?: number;
}

export interface SecretRecord {
  readonly name: string;
  /** Newest first: the current version, then previous ones, at most `retain`. */
  readonly versions: readonly Version[];
  readonly pending?: Pending;
  /** ISO time of the last finished rotation. */
  readonly rotatedAt?: string;
  /** The schedule slot (ms) of the last finished rotation. */
  readonly scheduledBase?: number;
  /** The last `rotate.request` answered (or seen when the secret was declared). */
  readonly lastRequest?: string;
  /** Set when the secret left the repository: its values are purged after this ISO time. */
  readonly purgeAfter?: string;
}

export function currentVersion(r: SecretRecord): Version | undefined {
  return r.versions[0];
}

/** The previous version while it is still valid at `now` (and not retired). */
export function previousVersion(r: SecretRecord, now: number): Version | undefined {
  const p = r.versions[1];
  return p && !p.retired && p.validUntil !== undefined && Date.parse(p.validUntil) > now ? p : undefined;
}

/** Step 1, create: the next value, stored as pending. A pending value is reused, never replaced. */
export function create(
  r: SecretRecord,
  value: SecretValue,
  now: number,
  trigger: Trigger,
  extra: { reason?: string; request?: string; scheduledBase?: number; username?: string } = {},
): SecretRecord {
  if (r.pending) return r;
  const version = (currentVersion(r)?.version ?? 0) + 1;
  return { ...r, pending: { version, value, createdAt: new Date(now).toISOString(), trigger, ...extra } };
}

/**
 * Step 4, finish: pending becomes current; the old current becomes previous, valid for `overlapMs`;
 * versions beyond `retain` are dropped.
 */
export function finish(r: SecretRecord, now: number, overlapMs: number, retain: number): SecretRecord {
  const p = r.pending;
  if (!p) return r;
  const at = new Date(now).toISOString();
  const validUntil = new Date(now + overlapMs).toISOString();
  const older = r.versions.map((v, i) => (i === 0 ? { ...v, validUntil } : v));
  const { pending: _done, ...rest } = r;
  return {
    ...rest,
    versions: [
      {
        version: p.version,
        value: p.value,
        ...(p.username !== undefined ? { username: p.username } : {}),
        createdAt: at,
      },
      ...older,
    ].slice(0, Math.max(2, retain)),
    rotatedAt: at,
    ...(p.scheduledBase !== undefined ? { scheduledBase: p.scheduledBase } : { scheduledBase: now }),
    ...(p.request !== undefined ? { lastRequest: p.request } : {}),
  };
}

/** When the previous version must be retired (its overlap ends), if it is not retired yet. */
export function retireDue(r: SecretRecord): number | undefined {
  const p = r.versions[1];
  return p && !p.retired && p.validUntil !== undefined ? Date.parse(p.validUntil) : undefined;
}

/** Step 5, retire: the previous version is no longer served. */
export function retire(r: SecretRecord): SecretRecord {
  const p = r.versions[1];
  if (!p || p.retired) return r;
  return { ...r, versions: r.versions.map((v, i) => (i === 1 ? { ...v, retired: true } : v)) };
}
