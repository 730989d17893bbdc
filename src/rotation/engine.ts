/**
 * The rotation engine: applies the declared model to the stored state and runs each secret's rotation
 * through its steps, persisting every step before the next (create -> audit -> finish -> retire).
 *
 * Crash safety: a pending value is stored before anything else happens and is reused after a restart
 * (never a second value); the audit entry of a finish is durable before the new value becomes current
 * (the audit fails closed); a finish whose audit entry was written before a crash is not audited twice.
 * At most one rotation per secret runs at a time, and requests that arrive meanwhile join it.
 *
 * Step boundaries are published on the diagnostics channel `rotor:rotation` ({ secret, step, version }),
 * which is how the crash tests stop the process at each boundary without a test branch here.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import type { Desired } from '../model/model.js';
import type { Policy, Secret } from '../model/schema-types.js';
import { parseDuration } from '../model/duration.js';
import { compileSchedule, intervalOf, intoWindow, nextBase, withJitter } from '../schedule/schedule.js';
import type { Json, Op, StateStore } from '../state/types.js';
import { fingerprint } from '../audit/fingerprint.js';
import type { RandomSource, SecretValue } from './generate.js';
import { generate, generateSecretValue } from './generate.js';
import type { SecretRecord, Trigger } from './record.js';
import { create, currentVersion, finish, previousVersion, retire, retireDue } from './record.js';

export const stepChannel = diagnostics_channel.channel('rotor:rotation');

/** What the engine writes to the audit log (the log adds seq, prev and hash). */
export interface AuditEvent {
  time: string;
  event: 'created' | 'rotated' | 'retired' | 'removed' | 'purged' | 'rotation-failed' | 'config-applied' | 'config-rejected';
  secret?: string;
  from?: number;
  to?: number;
  trigger?: Trigger | 'removal';
  reason?: string;
  commit?: string;
  fingerprint?: string;
  stateSeq?: number;
  storeId?: string;
  problems?: number;
  detail?: string;
}

export interface AuditSink {
  /** Resolves once the entries are durable; rejects otherwise (and then nothing may be served). */
  append(events: AuditEvent[]): Promise<unknown>;
  /** The last entry: kept in the state store with each step, so that each anchors the other. */
  readonly head: { readonly seq: number; readonly hash: string };
}

/** Where the store keeps the audit log's head as of its last step. */
export const AUDIT_HEAD_KEY = 'meta/audit-head';

export interface EngineLog {
  (level: 'info' | 'warn' | 'error', message: string, fields?: Record<string, string | number | boolean | undefined>): void;
}

/** A database user and password, as the agent applies them. */
export interface DbCredential {
  readonly username: string;
  readonly password: string;
}

/**
 * The database steps of a rotation, run by the target's agent (src/daemon/agents.ts). Each resolves
 * when the agent reports success and rejects with an error carrying a `code` otherwise.
 */
export interface DatabaseSteps {
  /** Step 2 and 3, set and test: the pending credential logs in on a fresh connection; `current` still works. */
  set(secret: Secret, version: number, pending: DbCredential, current: DbCredential | undefined): Promise<unknown>;
  /** Step 5 where the strategy needs it: `retired` stops working, `current` keeps working. */
  retire(secret: Secret, version: number, retired: DbCredential, current: DbCredential): Promise<unknown>;
}

/** A value the database refused this many times (a password policy) is discarded and a new one made. */
export const MAX_VALUE_REJECTIONS = 3;

export interface EngineOptions {
  readonly store: StateStore;
  readonly audit: AuditSink;
  /** Secret -> the last version an audit entry says became current (from the audit log at start). */
  readonly audited: Map<string, number>;
  readonly fingerprintKey: Buffer;
  readonly now: () => number;
  readonly log: EngineLog;
  readonly random?: RandomSource;
  /** Called after a secret's served versions changed. */
  readonly onChange?: (secret: string) => void;
  /**
   * Whether every consumer of the secret has read `version` (read receipts). For a policy with
   * `retireAfter: consumers`, the previous version is retired as soon as this is true. Undefined when
   * the secret has no consumer: the overlap then applies.
   */
  readonly readByAll?: (secret: string, version: number) => boolean | undefined;
  /** The agents, for database secrets; without it database secrets are not rotated. */
  readonly database?: DatabaseSteps;
}

export interface Served {
  readonly name: string;
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  readonly rotatedAt: string;
  readonly previous?: { readonly version: number; readonly value: SecretValue; readonly username?: string; readonly validUntil: string };
}

/** One retained version, for `?version=N`. */
export interface VersionView {
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  readonly rotatedAt: string;
  readonly state: 'current' | 'previous' | 'retired';
  readonly validUntil?: string;
}

export interface SecretStatus {
  readonly name: string;
  readonly version?: number;
  readonly rotatedAt?: string;
  readonly nextRotationAt?: number;
  readonly pending: boolean;
  /** A failing rotation; `retryAt` is absent when only a new commit can mend it (an unreadable SOPS file). */
  readonly failing?: { readonly since: number; readonly attempts: number; readonly error: string; readonly retryAt?: number };
}

/**
 * The value of a `sops:` secret at the applied commit, as the daemon decrypted it from the SOPS file,
 * or why it could not (a stable code and a message without any value).
 */
export type ManualValue = { readonly value: string } | { readonly error: { readonly code: string; readonly message: string } };

const KEY = (name: string) => `secret/${name}`;
const MAX_BACKOFF_MS = 5 * 60_000;

/** Errors that say rotor's own storage cannot be written (a full or read-only disk, an I/O error). */
const STORAGE_ERRORS: Readonly<Record<string, StorageName>> = { AUDIT_WRITE_FAILED: 'audit log', STATE_IO: 'state store' };
/**
 * While the audit log or the state store cannot be written, every secret waits for one shared retry, at
 * most this far apart: a retry costs one (group-committed) write, and rotations resume soon after the disk works.
 */
const STORAGE_MAX_BACKOFF_MS = 10_000;
/** A storage failure that keeps coming back for a moment (a flaky disk) is logged at most once in this long. */
const STORAGE_LOG_EVERY_MS = 60_000;

export type StorageName = 'audit log' | 'state store';

/** Why rotations are paused: the audit log or the state store cannot be written. */
export interface StorageFailure {
  readonly code: string;
  /** The system's error code (EROFS, ENOSPC, EIO...), when there is one. */
  readonly errno?: string;
  readonly message: string;
  readonly since: number;
  /** Rounds of retries that failed. */
  readonly attempts: number;
  readonly retryAt: number;
}

const storageCause = (what: StorageName, code: string, errno: string | undefined) => `${what} ${code} ${errno ?? ''}`;

/** The first system error code (EROFS, ENOSPC, EIO...) in an error's chain of causes. */
function errnoOf(e: unknown): string | undefined {
  let c = (e as { cause?: unknown } | undefined)?.cause;
  for (let i = 0; c !== undefined && c !== null && i < 5; i++, c = (c as { cause?: unknown }).cause) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return code;
  }
  return undefined;
}

/** Whether rotor generates this secret's values itself (sops secrets are rotated by a person). */
function generated(s: Secret): boolean {
  return !s.sops && (s.generate !== undefined || s.fields !== undefined || s.database !== undefined);
}

/** A database secret's password generator when it declares none. */
const DB_DEFAULT_GENERATOR = { length: 32, charset: 'alphanumeric' as const };

/** The database user of the next version: the one user, or for alternate the one not in use now. */
function nextUsername(s: Secret, r: SecretRecord): string | undefined {
  const db = s.database;
  if (!db) return undefined;
  if (db.usernames) {
    const cur = currentVersion(r)?.username;
    return cur === db.usernames[0] ? db.usernames[1] : db.usernames[0];
  }
  return db.username;
}

export class Engine {
  private desired: Desired | undefined;
  private commit = '';
  /** Per secret, the step holding its lock (one step of a secret at a time); see locked(). */
  private readonly running = new Map<string, Promise<void>>();
  /** Per secret, its rotation, running or waiting for the lock: rotation requests join it. */
  private readonly rotations = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, { since: number; attempts: number; error: string; retryAt: number }>();
  /** The audit log or the state store failing: logged once per cause, retried for every secret together. */
  private readonly storage = new Map<StorageName, StorageFailure & { readonly logged: boolean }>();
  /**
   * Per cause ("audit log AUDIT_WRITE_FAILED EROFS"): when it was last logged, how often it came back
   * since, and whether its last episode was a blip (over at the first retry).
   */
  private readonly storageLogged = new Map<string, { at: number; again: number; blip: boolean }>();
  private readonly removedOverlap = new Map<string, number>();
  /** `sops:` secrets: their values at the applied commit, and those whose file could not be read. */
  private manual: ReadonlyMap<string, ManualValue> = new Map();
  private readonly manualFailing = new Map<string, { since: number; code: string }>();

  constructor(private readonly o: EngineOptions) {}

  record(name: string): SecretRecord | undefined {
    return this.o.store.get(KEY(name)) as SecretRecord | undefined;
  }

  /** The versions a consumer may read now: current, and previous while its overlap lasts. */
  served(name: string): Served | undefined {
    const r = this.record(name);
    const cur = r && !r.purgeAfter ? currentVersion(r) : undefined;
    if (!r || !cur) return undefined;
    const prev = previousVersion(r, this.o.now());
    return {
      name, version: cur.version, value: cur.value, ...(cur.username !== undefined ? { username: cur.username } : {}), rotatedAt: cur.createdAt,
      ...(prev ? { previous: { version: prev.version, value: prev.value, ...(prev.username !== undefined ? { username: prev.username } : {}), validUntil: prev.validUntil! } } : {}),
    };
  }

  /** A version the store still retains: current, previous (valid or not) or retired. */
  version(name: string, version: number): VersionView | undefined {
    const r = this.record(name);
    if (!r || r.purgeAfter) return undefined;
    const i = r.versions.findIndex((v) => v.version === version);
    const v = r.versions[i];
    if (!v) return undefined;
    const prev = previousVersion(r, this.o.now());
    const state = i === 0 ? 'current' : prev?.version === version ? 'previous' : 'retired';
    return { version, value: v.value, ...(v.username !== undefined ? { username: v.username } : {}), rotatedAt: v.createdAt, state, ...(v.validUntil ? { validUntil: v.validUntil } : {}) };
  }

  /**
   * When the previous version must be retired: when its overlap ends, or now when the policy says
   * `retireAfter: consumers` and every consumer of the secret has read the current version.
   */
  private retireAt(r: SecretRecord): { at: number; early: boolean } | undefined {
    const at = retireDue(r);
    if (at === undefined) return undefined;
    const policy = this.policyOf(r.name);
    const cur = currentVersion(r);
    if (policy?.retireAfter === 'consumers' && cur && this.o.readByAll?.(r.name, cur.version) === true) {
      const now = this.o.now();
      if (now < at) return { at: now, early: true };
    }
    return { at, early: false };
  }

  private policyOf(name: string): Policy | undefined {
    const s = this.desired?.secrets.get(name)?.decl;
    return s ? this.desired?.policies.get(s.policy)?.decl : undefined;
  }

  /**
   * Applies a valid model (from `commit`): new secrets get version 1, removed ones are scheduled for
   * purge. `manual` holds the values of the `sops:` secrets in that commit: a value that differs from
   * the current one becomes the next version (runDue), with the policy's overlap as for any rotation.
   */
  async apply(desired: Desired, commit: string, manual: ReadonlyMap<string, ManualValue> = new Map()): Promise<void> {
    const before = this.desired;
    this.desired = desired;
    this.commit = commit;
    this.manual = manual;
    const now = this.o.now();
    // SOPS files the daemon cannot open: the secret keeps its current version; audited once per cause.
    for (const name of [...this.manualFailing.keys()]) if (!desired.secrets.get(name)?.decl.sops || !('error' in (manual.get(name) ?? {}))) this.manualFailing.delete(name);
    for (const [name, m] of manual) {
      if (!('error' in m) || !desired.secrets.get(name)?.decl.sops) continue;
      if (this.manualFailing.get(name)?.code === m.error.code) continue;
      this.manualFailing.set(name, { since: now, code: m.error.code });
      await this.o.audit.append([{
        time: new Date(now).toISOString(), event: 'rotation-failed', secret: name, ...(commit ? { commit } : {}),
        detail: `${m.error.code}: ${m.error.message}; the current version stays`, stateSeq: this.o.store.seq, storeId: this.o.store.storeId,
      }]);
      this.o.log('error', 'the SOPS value of a secret cannot be used; its current version stays', { secret: name, code: m.error.code, problem: m.error.message });
    }
    for (const [name, s] of before?.secrets ?? []) {
      const overlap = before?.policies.get(s.decl.policy)?.decl.overlap;
      if (overlap) this.removedOverlap.set(name, parseDuration(overlap)!);
    }
    // Secrets that left the repository: keep their values for the overlap, then purge.
    for (const [key, value] of [...this.o.store.entries('secret/')]) {
      const r = value as unknown as SecretRecord;
      if (desired.secrets.has(r.name) || r.purgeAfter) continue;
      const overlap = this.removedOverlap.get(r.name) ?? 0;
      await this.step(r.name, 'removed', async () => {
        await this.o.audit.append([{ time: new Date(now).toISOString(), event: 'removed', secret: r.name, trigger: 'removal', ...(commit ? { commit } : {}), stateSeq: this.o.store.seq, storeId: this.o.store.storeId }]);
        await this.o.store.write(this.withHead([{ op: 'put', key, value: { ...r, purgeAfter: new Date(now + overlap).toISOString() } as unknown as Json }]));
        this.o.log('info', 'secret removed from the repository; values kept for the overlap', { secret: r.name, purgeAfter: new Date(now + overlap).toISOString() });
      });
    }
    // A secret declared again before its purge is kept.
    for (const name of desired.secrets.keys()) {
      const r = this.record(name);
      if (r?.purgeAfter) {
        const { purgeAfter: _p, ...kept } = r;
        await this.o.store.write([{ op: 'put', key: KEY(name), value: kept as unknown as Json }]);
      }
    }
  }

  /** The next time work is due (a rotation, a retirement, a purge or a retry), or undefined. */
  nextWakeup(): number | undefined {
    let next: number | undefined;
    const at = (t: number | undefined) => {
      if (t !== undefined && (next === undefined || t < next)) next = t;
    };
    // A secret whose step is running (a database step waiting for its agent) wakes no one: its end does.
    for (const name of this.desired?.secrets.keys() ?? []) if (!this.running.has(name)) at(this.dueAt(name));
    for (const [, value] of this.o.store.entries('secret/')) {
      const r = value as unknown as SecretRecord;
      if (this.running.has(r.name)) continue;
      const later = (t: number | undefined) => (t === undefined ? undefined : Math.max(t, this.failures.get(r.name)?.retryAt ?? t));
      at(later(this.retireAt(r)?.at));
      if (r.purgeAfter) at(later(Date.parse(r.purgeAfter)));
    }
    return next;
  }

  /** When a declared secret must rotate next (a time in the past means now). */
  dueAt(name: string): number | undefined {
    const s = this.desired?.secrets.get(name)?.decl;
    const policy = s && this.desired?.policies.get(s.policy)?.decl;
    if (!s || !policy) return undefined;
    if (s.sops) return this.manualDue(name);
    if (!this.rotatable(s)) return undefined;
    const r = this.record(name);
    let due: number;
    if (!r || r.pending || !currentVersion(r)) due = 0; // new, or a rotation to finish
    else if (s.rotate && s.rotate.request !== r.lastRequest) due = 0;
    else due = this.slot(name, policy, r).at;
    // A failing secret waits for its backoff.
    return Math.max(due, this.failures.get(name)?.retryAt ?? 0);
  }

  /** A `sops:` secret is due when its file holds a value other than the current one (or a rotation is unfinished). */
  private manualDue(name: string): number | undefined {
    const m = this.manual.get(name);
    const r = this.record(name);
    const cur = r ? currentVersion(r) : undefined;
    const changed = m !== undefined && 'value' in m && cur?.value !== m.value;
    // Due now (after a failure's backoff) with an unfinished rotation or a new value.
    return r?.pending || changed ? (this.failures.get(name)?.retryAt ?? 0) : undefined;
  }

  private rotatable(s: Secret): boolean {
    return generated(s) && (!s.database || this.o.database !== undefined);
  }

  /** Whether a secret's earlier failure still holds its work back at `now`. */
  private backingOff(name: string, now: number): boolean {
    return (this.failures.get(name)?.retryAt ?? 0) > now;
  }

  /** The schedule slot after the last rotation: its base time and the jittered time it starts. */
  private slot(name: string, policy: Policy, r: SecretRecord): { base: number; at: number } {
    const sched = compileSchedule(policy);
    const base = nextBase(sched, r.scheduledBase ?? Date.parse(r.rotatedAt!));
    return { base, at: withJitter(sched, name, base) };
  }

  /** Runs everything due at the current time. Failures are kept per secret and retried with backoff. */
  async runDue(): Promise<void> {
    const now = this.o.now();
    const work: Promise<void>[] = [];
    for (const name of this.desired?.secrets.keys() ?? []) {
      const due = this.dueAt(name);
      if (due === undefined || due > now) continue;
      // A database rotation waits for its agent (up to the job timeout): it runs on its own, and its
      // end (done or failed) re-arms the timers through onChange. The rest is awaited here.
      if (this.desired!.secrets.get(name)!.decl.database) void this.rotateDue(name).catch(() => undefined).finally(() => this.o.onChange?.(name));
      else work.push(this.rotateDue(name).catch(() => undefined));
    }
    for (const [key, value] of [...this.o.store.entries('secret/')]) {
      const r = value as unknown as SecretRecord;
      if (this.backingOff(r.name, now)) continue;
      const retireAt = this.retireAt(r)?.at;
      if (retireAt !== undefined && retireAt <= now) {
        if (this.desired?.secrets.get(r.name)?.decl.database) void this.retireNow(r.name).catch(() => undefined).finally(() => this.o.onChange?.(r.name));
        else work.push(this.retireNow(r.name).catch(() => undefined));
      }
      if (r.purgeAfter && Date.parse(r.purgeAfter) <= now) work.push(this.purge(key, r).catch(() => undefined));
    }
    await Promise.all(work);
  }

  /** Resolves when no step runs (database steps run on their own after runDue returns). */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running.values()].map((p) => p.catch(() => undefined)));
  }

  /** Rotates a secret now (rotor rotate); joins a rotation of that secret already running. */
  rotateNow(name: string, reason: string): Promise<void> {
    const s = this.desired?.secrets.get(name)?.decl;
    if (!s) return Promise.reject(Object.assign(new Error(`secret "${name}" is not declared`), { code: 'SECRET_UNKNOWN' }));
    if (!this.rotatable(s)) return Promise.reject(Object.assign(new Error(`secret "${name}" is not rotated by rotor (a sops secret is rotated by a person: commit a new value)`), { code: 'SECRET_NOT_ROTATABLE' }));
    return this.rotate(name, 'cli', { reason });
  }

  private rotateDue(name: string): Promise<void> {
    const s = this.desired!.secrets.get(name)!.decl;
    const r = this.record(name);
    if (r?.pending) return this.rotate(name, r.pending.trigger, {});
    if (s.sops) return this.rotate(name, r && currentVersion(r) ? 'commit' : 'new', {});
    if (!r || !currentVersion(r)) return this.rotate(name, 'new', s.rotate ? { request: s.rotate.request } : {});
    if (s.rotate && s.rotate.request !== r.lastRequest) return this.rotate(name, 'request', { reason: s.rotate.reason, request: s.rotate.request });
    const policy = this.desired!.policies.get(s.policy)!.decl;
    const { base } = this.slot(name, policy, r);
    const now = this.o.now();
    // On time: keep the cadence of the slot. Overdue after downtime: rotate once, from now.
    const sched = compileSchedule(policy);
    const scheduledBase = now - base < intervalOf(sched, base) ? base : intoWindow(sched, now);
    return this.rotate(name, 'schedule', { scheduledBase });
  }

  private rotate(name: string, trigger: Trigger, extra: { reason?: string; request?: string; scheduledBase?: number }): Promise<void> {
    const joined = this.rotations.get(name);
    if (joined) return joined;
    const p = this.locked(name, () => this.runRotation(name, trigger, extra));
    this.rotations.set(name, p);
    const done = () => {
      if (this.rotations.get(name) === p) this.rotations.delete(name);
    };
    p.then(done, done);
    return p;
  }

  /**
   * Runs fn holding the secret's lock: its rotation, retirement and purge never overlap, whoever
   * starts them (runs of the due work may overlap; rotation requests come at any time). Each step
   * reads the secret's record once it holds the lock.
   */
  private async locked<T>(name: string, fn: () => Promise<T>): Promise<T> {
    for (let held = this.running.get(name); held; held = this.running.get(name)) await held;
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    this.running.set(name, mine);
    try {
      return await fn();
    } finally {
      if (this.running.get(name) === mine) this.running.delete(name);
      release();
    }
  }

  private async runRotation(name: string, trigger: Trigger, extra: { reason?: string; request?: string; scheduledBase?: number }): Promise<void> {
    const s = this.desired!.secrets.get(name)!.decl;
    const policy = this.desired!.policies.get(s.policy)!.decl;
    try {
      // 1. create: store the next value as pending, or reuse the pending one.
      let r = this.record(name) ?? { name, versions: [] };
      if (!r.pending) {
        const value = s.sops ? this.manualValue(name) : (generateSecretValue(s, this.o.random) ?? generate(DB_DEFAULT_GENERATOR, this.o.random));
        const username = nextUsername(s, r);
        r = create(r, value, this.o.now(), trigger, { ...extra, ...(username !== undefined ? { username } : {}) });
        await this.o.store.write([{ op: 'put', key: KEY(name), value: r as unknown as Json }]);
        stepChannel.publish({ secret: name, step: 'created', version: r.pending!.version });
      }
      const pending = r.pending!;
      // 2-3. set and test (database secrets): the agent applies the pending value and logs in with it on
      // a fresh connection. Nothing is audited or promoted before that succeeded. After a crash past the
      // audit entry, the set was already verified and is not repeated.
      if (s.database && this.o.audited.get(name) !== pending.version) {
        const cur = currentVersion(r);
        try {
          await this.o.database!.set(s, pending.version, { username: pending.username!, password: String(pending.value) }, cur ? { username: cur.username!, password: String(cur.value) } : undefined);
        } catch (e) {
          // A stop cuts the wait for the agent: not a failure (the step runs again after the restart).
          if ((e as { code?: string }).code !== 'DAEMON_STOPPING') await this.databaseFailed(name, r, e);
          throw e;
        }
        stepChannel.publish({ secret: name, step: 'set', version: pending.version });
      }
      // 4. finish: the audit entry first (fails closed), then the new value becomes current.
      if (this.o.audited.get(name) !== pending.version) {
        const from = currentVersion(r)?.version;
        await this.o.audit.append([{
          time: new Date(this.o.now()).toISOString(),
          event: from === undefined ? 'created' : 'rotated',
          secret: name,
          ...(from !== undefined ? { from } : {}),
          to: pending.version,
          trigger: pending.trigger,
          ...(pending.reason !== undefined ? { reason: pending.reason } : {}),
          ...(this.commit ? { commit: this.commit } : {}),
          fingerprint: fingerprint(this.o.fingerprintKey, pending.value),
          stateSeq: this.o.store.seq,
          storeId: this.o.store.storeId,
        }]);
        this.o.audited.set(name, pending.version);
        stepChannel.publish({ secret: name, step: 'audited', version: pending.version });
      }
      r = finish(r, this.o.now(), parseDuration(policy.overlap)!, policy.retain ?? 3);
      await this.o.store.write(this.withHead([{ op: 'put', key: KEY(name), value: r as unknown as Json }]));
      stepChannel.publish({ secret: name, step: 'finished', version: pending.version });
      this.failures.delete(name);
      this.storageWorks();
      this.o.log('info', pending.version === 1 ? 'secret created' : 'secret rotated', { secret: name, version: pending.version, trigger: pending.trigger });
      this.o.onChange?.(name);
    } catch (e) {
      this.fail(name, e);
      throw e;
    }
  }

  /** The value of a `sops:` secret in the applied commit. */
  private manualValue(name: string): string {
    const m = this.manual.get(name);
    if (!m || !('value' in m)) throw Object.assign(new Error(`the SOPS value of secret "${name}" cannot be used`), { code: m && 'error' in m ? m.error.code : 'SOPS_VALUE_MISSING' });
    return m.value;
  }

  /**
   * A set/test that failed: audited (once per pending value and error code) and, when the database
   * refused the value itself too many times, the value is discarded so that the retry makes a new one.
   */
  private async databaseFailed(name: string, r: SecretRecord, e: unknown): Promise<void> {
    const pending = r.pending!;
    const code = (e as { code?: string }).code ?? 'ERROR';
    const prev = this.failures.get(name);
    const rejections = (pending.rejections ?? 0) + (code === 'DB_VALUE_REJECTED' ? 1 : 0);
    const discard = rejections >= MAX_VALUE_REJECTIONS;
    if (!prev || prev.error !== code || discard) {
      await this.o.audit.append([{
        time: new Date(this.o.now()).toISOString(), event: 'rotation-failed', secret: name, to: pending.version,
        ...(this.commit ? { commit: this.commit } : {}),
        detail: discard ? `${code}: the database refused this value ${rejections} times; it is discarded and a new one generated` : `${code}: the previous version stays current`,
        stateSeq: this.o.store.seq, storeId: this.o.store.storeId,
      }]);
    }
    if (code === 'DB_VALUE_REJECTED') {
      const { pending: _p, ...rest } = r;
      const next: SecretRecord = discard ? rest : { ...r, pending: { ...pending, rejections } };
      await this.o.store.write(this.withHead([{ op: 'put', key: KEY(name), value: next as unknown as Json }]));
    }
  }

  private async retireNow(name: string): Promise<void> {
    await this.step(name, 'retired', async () => {
      const r = this.record(name);
      const due = r && this.retireAt(r);
      if (!r || !due || due.at > this.o.now()) return;
      const prev = r.versions[1]!;
      const s = this.desired?.secrets.get(name)?.decl;
      const cur = currentVersion(r)!;
      // The database's part first (expire the inactive user, drop the old password; the agents know
      // that single has none).
      if (s?.database && this.o.database && prev.username !== undefined) {
        await this.o.database.retire(s, prev.version, { username: prev.username, password: String(prev.value) }, { username: cur.username!, password: String(cur.value) });
        stepChannel.publish({ secret: name, step: 'retire-applied', version: prev.version });
      }
      const detail = due.early ? `every consumer has read version ${currentVersion(r)!.version} (retireAfter: consumers)` : undefined;
      await this.o.audit.append([{ time: new Date(this.o.now()).toISOString(), event: 'retired', secret: name, from: prev.version, ...(this.commit ? { commit: this.commit } : {}), stateSeq: this.o.store.seq, storeId: this.o.store.storeId, ...(detail ? { detail } : {}) }]);
      await this.o.store.write(this.withHead([{ op: 'put', key: KEY(name), value: retire(r) as unknown as Json }]));
      this.o.log('info', 'previous version retired', { secret: name, version: prev.version, early: due.early });
      this.o.onChange?.(name);
    });
  }

  private async purge(key: string, r: SecretRecord): Promise<void> {
    await this.step(r.name, 'purged', async () => {
      if (this.o.store.get(key) === undefined) return; // an earlier run purged it
      await this.o.audit.append([{ time: new Date(this.o.now()).toISOString(), event: 'purged', secret: r.name, trigger: 'removal', ...(this.commit ? { commit: this.commit } : {}), stateSeq: this.o.store.seq, storeId: this.o.store.storeId }]);
      await this.o.store.write(this.withHead([{ op: 'delete', key }]));
      this.o.audited.delete(r.name);
      this.o.log('info', 'values of a removed secret purged', { secret: r.name });
      this.o.onChange?.(r.name);
    });
  }

  /** Adds the audit log's current head to a store write (after an audit append). */
  private withHead(ops: Op[]): Op[] {
    const { seq, hash } = this.o.audit.head;
    return [...ops, { op: 'put', key: AUDIT_HEAD_KEY, value: { seq, hash } }];
  }

  /** Runs a step under the secret's lock, recording a failure for backoff. */
  private async step(name: string, what: string, fn: () => Promise<void>): Promise<void> {
    await this.locked(name, () => fn().then(
      () => {
        this.failures.delete(name);
        this.storageWorks();
        stepChannel.publish({ secret: name, step: what });
      },
      (e: unknown) => {
        this.fail(name, e);
        throw e;
      },
    ));
  }

  private fail(name: string, e: unknown): void {
    if ((e as { code?: string }).code === 'DAEMON_STOPPING') return;
    const now = this.o.now();
    const prev = this.failures.get(name);
    const attempts = (prev?.attempts ?? 0) + 1;
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (attempts - 1));
    const err = e as { code?: string; message?: string };
    const error = err.code ?? 'ERROR';
    const storage = STORAGE_ERRORS[error];
    this.failures.set(name, { since: prev?.since ?? now, attempts, error, retryAt: storage ? this.storageFailed(storage, e, now) : now + delay });
    stepChannel.publish({ secret: name, step: 'failed', code: error });
    // A storage failure is logged once for all secrets (storageFailed), not once per secret and retry.
    if (!storage) this.o.log('error', 'rotation step failed; will retry', { secret: name, code: error, attempts, retryInMs: delay });
  }

  /**
   * The audit log or the state store could not be written: the failing secrets retry together, with
   * a backoff of at most STORAGE_MAX_BACKOFF_MS (more failures in the same round share its retry time).
   * Logged when it starts and when its cause (code, errno) changes; a cause whose last episode was a
   * blip (over at the first retry: a flaky disk) at most once a minute, with a count. Returns the retry time.
   */
  private storageFailed(what: StorageName, e: unknown, now: number): number {
    const prev = this.storage.get(what);
    if (prev && now < prev.retryAt) return prev.retryAt;
    const code = (e as { code: string }).code;
    const errno = errnoOf(e);
    const message = (e as { message?: string }).message ?? code;
    const attempts = (prev?.attempts ?? 0) + 1;
    const retryAt = now + Math.min(STORAGE_MAX_BACKOFF_MS, 1000 * 2 ** (attempts - 1));
    const changed = !prev || prev.code !== code || prev.errno !== errno;
    let logged = !changed && prev.logged;
    if (!logged) {
      const last = this.storageLogged.get(storageCause(what, code, errno));
      // Not logged: a new blip of a cause that blipped less than a minute ago (logged if it lasts).
      if (!last || !last.blip || now - last.at >= STORAGE_LOG_EVERY_MS || attempts >= 2) {
        this.o.log('error', `the ${what} cannot be written: rotations are paused and retried every few seconds until it can`, { code, errno, reason: message, retryInMs: retryAt - now, ...(last?.again ? { blipsSinceLastLine: last.again } : {}) });
        this.storageLogged.set(storageCause(what, code, errno), { at: now, again: 0, blip: false });
        logged = true;
      } else if (changed) {
        last.again++;
      }
    }
    this.storage.set(what, { code, ...(errno ? { errno } : {}), message, since: prev?.since ?? now, attempts, retryAt, logged });
    return retryAt;
  }

  /** A step succeeded, so the audit log and the state store can be written: secrets that waited for them are due again now. */
  private storageWorks(): void {
    if (this.storage.size === 0) return;
    const now = this.o.now();
    for (const [what, s] of this.storage) {
      if (s.logged) this.o.log('info', `the ${what} can be written again: rotations resume`, { code: s.code, errno: s.errno, downMs: now - s.since, attempts: s.attempts });
      const logged = this.storageLogged.get(storageCause(what, s.code, s.errno));
      if (logged) logged.blip = s.attempts <= 1;
    }
    this.storage.clear();
    for (const [name, f] of this.failures) if (STORAGE_ERRORS[f.error]) this.failures.delete(name);
  }

  /** Why the audit log or the state store cannot be written, while that lasts. */
  storageFailure(what: StorageName): StorageFailure | undefined {
    return this.storage.get(what);
  }

  status(): SecretStatus[] {
    const out: SecretStatus[] = [];
    for (const name of this.desired?.secrets.keys() ?? []) {
      const r = this.record(name);
      const cur = r ? currentVersion(r) : undefined;
      const due = this.dueAt(name);
      const manual = this.manualFailing.get(name);
      const failing = this.failures.get(name) ?? (manual ? { since: manual.since, attempts: 1, error: manual.code } : undefined);
      out.push({
        name,
        ...(cur ? { version: cur.version, rotatedAt: cur.createdAt } : {}),
        ...(due !== undefined ? { nextRotationAt: due } : {}),
        pending: Boolean(r?.pending),
        ...(failing ? { failing } : {}),
      });
    }
    return out;
  }
}
