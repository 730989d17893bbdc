/**
 * The rotation engine: applies the declared model to the stored state, and executes the actions of the
 * planner (planner.ts, which decides what is due and when, from plain data) and records their outcomes.
 * The engine holds the state the planner reads: the failures and their backoff, the steps running, the
 * SOPS values of the applied commit. A rotation walks an explicit list of steps (create -> set, for a
 * database through its agent -> audit -> finish), then the retirement; each step persists its result
 * before the next, and returns done, retry or stalled (steps.ts), which the engine records as a failure.
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
import { fingerprint } from '../audit/fingerprint.js';
import type { Storage } from '../errors.js';
import { codeOf, errnoOf, NEVER, RotorError, retryOf, storageOf } from '../errors.js';
import { parseDuration } from '../model/duration.js';
import type { Desired } from '../model/model.js';
import type { Policy, Secret } from '../model/schema-types.js';
import type { Json, Op, StateStore } from '../state/types.js';
import type { RandomSource, SecretValue } from './generate.js';
import { generate, generateSecretValue } from './generate.js';
import type { Failure, ManualValue, PlanInput, RotationExtra } from './planner.js';
import * as planner from './planner.js';
import type { Pending, SecretRecord, Trigger } from './record.js';
import { create, currentVersion, finish, previousVersion, retire } from './record.js';
import type { Step, StepFailure, StepResult } from './steps.js';
import { DONE, retry, runSteps, stopped } from './steps.js';

export type { ManualValue } from './planner.js';

export const stepChannel = diagnostics_channel.channel('rotor:rotation');

/** What the engine writes to the audit log (the log adds seq, prev and hash). */
export interface AuditEvent {
  time: string;
  event:
    | 'created'
    | 'rotated'
    | 'retired'
    | 'removed'
    | 'purged'
    | 'rotation-failed'
    | 'config-applied'
    | 'config-rejected'
    | 'drift-detected';
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

export type EngineLog = (
  level: 'info' | 'warn' | 'error',
  message: string,
  fields?: Record<string, string | number | boolean | undefined>,
) => void;

/** A database user and password, as the agent applies them. */
export interface DbCredential {
  readonly username: string;
  readonly password: string;
}

/**
 * The database steps of a rotation, run by the target's agent (src/daemon/agents.ts). Each resolves
 * when the agent reports success and rejects with an error carrying a `code` otherwise: a RotorError
 * whose `stopping` is true when the daemon stopped while the step waited (see stopped()).
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
  /** The key of the audited fingerprints (a function: several daemons learn it when one first leads). */
  readonly fingerprintKey: Buffer | (() => Buffer);
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
  readonly previous?: {
    readonly version: number;
    readonly value: SecretValue;
    readonly username?: string;
    readonly validUntil: string;
  };
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
  /** The schedule slot the current version is due by; overdue is measured from it. */
  readonly scheduledAt?: number;
  readonly pending: boolean;
  /** A failing rotation; `retryAt` is absent when only a new commit can mend it (an unreadable SOPS file). */
  readonly failing?: {
    readonly since: number;
    readonly attempts: number;
    readonly error: string;
    readonly retryAt?: number;
  };
  /** The previous version while it is still served (its overlap): it stops being valid at `validUntil`. */
  readonly previous?: { readonly version: number; readonly validUntil: string };
}

const KEY = (name: string) => `secret/${name}`;

/** A storage failure that keeps coming back for a moment (a flaky disk) is logged at most once in this long. */
const STORAGE_LOG_EVERY_MS = 60_000;

/** rotor's own storage: an error says it cannot be written through its `storage` (storageOf). */
export type StorageName = Storage;

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

/** What the steps of one rotation share: the secret, why it rotates, and its record as the last step left it. */
interface Rotation {
  readonly name: string;
  readonly secret: Secret;
  readonly policy: Policy;
  readonly trigger: Trigger;
  readonly extra: RotationExtra;
  record: SecretRecord;
  /** The value rotated in: made by the create step, or left pending by an earlier run. */
  pending: Pending | undefined;
}

export class Engine {
  private desired: Desired | undefined;
  private commit = '';
  /** Per secret, the step holding its lock (one step of a secret at a time); see locked(). */
  private readonly running = new Map<string, Promise<void>>();
  /** Per secret, its rotation, running or waiting for the lock: rotation requests join it. */
  private readonly rotations = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, Failure>();
  /** The secrets whose last failure was the audit log or the state store: due again once it works. */
  private readonly waitingForStorage = new Set<string>();
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
      name,
      version: cur.version,
      value: cur.value,
      ...(cur.username !== undefined ? { username: cur.username } : {}),
      rotatedAt: cur.createdAt,
      ...(prev
        ? {
            previous: {
              version: prev.version,
              value: prev.value,
              ...(prev.username !== undefined ? { username: prev.username } : {}),
              validUntil: prev.validUntil!,
            },
          }
        : {}),
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
    return {
      version,
      value: v.value,
      ...(v.username !== undefined ? { username: v.username } : {}),
      rotatedAt: v.createdAt,
      state,
      ...(v.validUntil ? { validUntil: v.validUntil } : {}),
    };
  }

  /**
   * What the planner decides from: the model, the stored records (all, or only that of `only`), the
   * failures, the steps running, the SOPS values.
   */
  /** The store's records, as the planner reads them (a view: nothing is copied). */
  private readonly records: planner.Records = {
    get: (name) => this.record(name),
    values: () => this.storedRecords(),
  };

  private *storedRecords(): Generator<SecretRecord> {
    for (const [, value] of this.o.store.entries('secret/')) yield value as unknown as SecretRecord;
  }

  private planInput(): PlanInput {
    return {
      desired: this.desired,
      records: this.records,
      failures: this.failures,
      running: this.running,
      manual: this.manual,
      readByAll: this.o.readByAll,
      database: this.o.database !== undefined,
    };
  }

  /**
   * Applies a valid model (from `commit`): new secrets get version 1, removed ones are scheduled for
   * purge. `manual` holds the values of the `sops:` secrets in that commit: a value that differs from
   * the current one becomes the next version (runDue), with the policy's overlap as for any rotation.
   */
  /**
   * Puts a model in force without writing anything (a follower of several daemons: it serves and
   * shows, the leader writes what the commit changes).
   */
  setModel(desired: Desired, commit: string, manual: ReadonlyMap<string, ManualValue> = new Map()): void {
    this.desired = desired;
    this.commit = commit;
    this.manual = manual;
  }

  async apply(desired: Desired, commit: string, manual: ReadonlyMap<string, ManualValue> = new Map()): Promise<void> {
    const before = this.desired;
    this.desired = desired;
    this.commit = commit;
    this.manual = manual;
    const now = this.o.now();
    // SOPS files the daemon cannot open: the secret keeps its current version; audited once per cause.
    for (const name of [...this.manualFailing.keys()])
      if (!desired.secrets.get(name)?.decl.sops || !('error' in (manual.get(name) ?? {})))
        this.manualFailing.delete(name);
    for (const [name, m] of manual) {
      if (!('error' in m) || !desired.secrets.get(name)?.decl.sops) continue;
      if (this.manualFailing.get(name)?.code === m.error.code) continue;
      this.manualFailing.set(name, { since: now, code: m.error.code });
      await this.o.audit.append([
        {
          time: new Date(now).toISOString(),
          event: 'rotation-failed',
          secret: name,
          ...(commit ? { commit } : {}),
          detail: `${m.error.code}: ${m.error.message}; the current version stays`,
          stateSeq: this.o.store.seq,
          storeId: this.o.store.storeId,
        },
      ]);
      this.o.log('error', 'the SOPS value of a secret cannot be used; its current version stays', {
        secret: name,
        code: m.error.code,
        problem: m.error.message,
      });
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
        await this.o.audit.append([
          {
            time: new Date(now).toISOString(),
            event: 'removed',
            secret: r.name,
            trigger: 'removal',
            ...(commit ? { commit } : {}),
            stateSeq: this.o.store.seq,
            storeId: this.o.store.storeId,
          },
        ]);
        await this.o.store.write(
          this.withHead([
            { op: 'put', key, value: { ...r, purgeAfter: new Date(now + overlap).toISOString() } as unknown as Json },
          ]),
        );
        this.o.log('info', 'secret removed from the repository; values kept for the overlap', {
          secret: r.name,
          purgeAfter: new Date(now + overlap).toISOString(),
        });
        return DONE;
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

  /**
   * Forgets the failures and their backoff (a daemon that starts leading several on one store: what
   * failed while it followed, fenced, must not delay the rotations it now runs).
   */
  forgetFailures(): void {
    this.failures.clear();
    this.waitingForStorage.clear();
    this.storage.clear();
  }

  /** The next time work is due (a rotation, a retirement, a purge or a retry), or undefined. */
  nextWakeup(): number | undefined {
    return planner.nextWakeup(this.o.now(), this.planInput());
  }

  /** When a declared secret must rotate next (a time in the past means now). */
  dueAt(name: string): number | undefined {
    return planner.dueAt(name, this.planInput());
  }

  /** When its next rotation is, as shown (never 0 for a rotation under way: the time it fell due). */
  nextRotationAt(name: string): number | undefined {
    return planner.nextRotationAt(this.o.now(), name, this.planInput());
  }

  /** Runs everything due at the current time. Failures are kept per secret and retried with backoff. */
  async runDue(): Promise<void> {
    const { actions } = planner.plan(this.o.now(), this.planInput());
    const work: Promise<void>[] = [];
    for (const a of actions) {
      const p =
        a.kind === 'rotate'
          ? this.rotate(a.secret, a.trigger, a.extra)
          : a.kind === 'retire'
            ? this.retireNow(a.secret)
            : this.purge(KEY(a.secret), a.secret);
      // A database step waits for its agent (up to the job timeout): it runs on its own, and its end
      // (done or failed) re-arms the timers through onChange. The rest is awaited here.
      if (a.kind !== 'purge' && a.detached) void p.catch(() => undefined).finally(() => this.o.onChange?.(a.secret));
      else work.push(p.catch(() => undefined));
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
    if (!s) {
      return Promise.reject(new RotorError('SECRET_UNKNOWN', `secret "${name}" is not declared`, { retry: NEVER }));
    }
    if (!planner.rotatable(s, this.o.database !== undefined)) {
      const why = 'a sops secret is rotated by a person: commit a new value';
      const message = `secret "${name}" is not rotated by rotor (${why})`;
      return Promise.reject(new RotorError('SECRET_NOT_ROTATABLE', message, { retry: NEVER }));
    }
    return this.rotate(name, 'cli', { reason });
  }

  /** Rotates a secret now because a drift check found a served credential refused (drift.ts). */
  rotateOnDrift(name: string, reason: string): Promise<void> {
    return this.rotate(name, 'drift', { reason });
  }

  /** Runs fn holding the secret's lock, unless a rotation of it is pending or running (then undefined). */
  whenIdle<T>(name: string, fn: () => Promise<T>): Promise<T | undefined> {
    const busy = () => this.rotations.has(name) || Boolean(this.record(name)?.pending);
    return busy() ? Promise.resolve(undefined) : this.locked(name, () => (busy() ? Promise.resolve(undefined) : fn()));
  }

  private rotate(name: string, trigger: Trigger, extra: RotationExtra): Promise<void> {
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

  /**
   * The steps of a rotation, in order; each persists its result before the next, and is published on
   * `rotor:rotation` under its name once done. After a crash the rotation starts again from the top,
   * and a step already done has no work left (`when`).
   */
  private readonly rotationSteps: readonly Step<Rotation>[] = [
    // 1. create: store the next value as pending, or reuse the pending one.
    { name: 'created', when: (c) => !c.record.pending, run: (c) => this.createStep(c) },
    // 2-3. set and test (database secrets): the agent applies the pending value and logs in with it on
    // a fresh connection. Nothing is audited or promoted before that succeeded. After a crash past the
    // audit entry, the set was already verified and is not repeated.
    {
      name: 'set',
      when: (c) => Boolean(c.secret.database) && this.o.audited.get(c.name) !== c.pending!.version,
      run: (c) => this.setStep(c),
    },
    // 4. finish: the audit entry first (fails closed), then the new value becomes current.
    { name: 'audited', when: (c) => this.o.audited.get(c.name) !== c.pending!.version, run: (c) => this.auditStep(c) },
    { name: 'finished', run: (c) => this.finishStep(c) },
  ];

  private async runRotation(name: string, trigger: Trigger, extra: RotationExtra): Promise<void> {
    const secret = this.desired!.secrets.get(name)!.decl;
    const policy = this.desired!.policies.get(secret.policy)!.decl;
    const c: Rotation = { name, secret, policy, trigger, extra, record: { name, versions: [] }, pending: undefined };
    let result: StepResult;
    try {
      c.record = this.record(name) ?? c.record;
      c.pending = c.record.pending;
      result = await runSteps(this.rotationSteps, c, (step) => {
        stepChannel.publish({ secret: name, step: step.name, version: c.pending!.version });
        // In the same tick as the last step's event: whoever waits for it sees the outcome recorded.
        if (step.name === 'finished') this.rotated(name, c.pending!);
      });
    } catch (e) {
      result = retry(e);
    }
    if (result.kind !== 'done') {
      this.fail(name, result);
      throw result.error;
    }
  }

  /** A rotation finished: the secret's failures are over, and so are those of the storage. */
  private rotated(name: string, pending: Pending): void {
    this.failures.delete(name);
    this.storageWorks();
    const message = pending.version === 1 ? 'secret created' : 'secret rotated';
    this.o.log('info', message, { secret: name, version: pending.version, trigger: pending.trigger });
    this.o.onChange?.(name);
  }

  private async createStep(c: Rotation): Promise<StepResult> {
    const { name, secret: s } = c;
    let value: SecretValue;
    if (s.sops) {
      const m = this.manual.get(name);
      if (!m || !('value' in m)) {
        // Only a new commit mends it.
        const code = m && 'error' in m ? m.error.code : 'SOPS_VALUE_MISSING';
        const error = new RotorError(code, `the SOPS value of secret "${name}" cannot be used`, { retry: NEVER });
        return { kind: 'stalled', reason: code, error };
      }
      value = m.value;
    } else {
      value = generateSecretValue(s, this.o.random) ?? generate(DB_DEFAULT_GENERATOR, this.o.random);
    }
    const username = nextUsername(s, c.record);
    const extra = { ...c.extra, ...(username !== undefined ? { username } : {}) };
    c.record = create(c.record, value, this.o.now(), c.trigger, extra);
    c.pending = c.record.pending;
    await this.o.store.write([{ op: 'put', key: KEY(name), value: c.record as unknown as Json }]);
    return DONE;
  }

  private async setStep(c: Rotation): Promise<StepResult> {
    const { name, record: r } = c;
    const pending = c.pending!;
    const cur = currentVersion(r);
    try {
      const current = cur ? { username: cur.username!, password: String(cur.value) } : undefined;
      const next = { username: pending.username!, password: String(pending.value) };
      await this.o.database!.set(c.secret, pending.version, next, current);
    } catch (e) {
      // A stop cuts the wait for the agent: not a failure (the step runs again after the restart).
      if (!stopped(e)) await this.databaseFailed(name, r, e);
      return { kind: 'retry', error: e };
    }
    return DONE;
  }

  private async auditStep(c: Rotation): Promise<StepResult> {
    const { name } = c;
    const pending = c.pending!;
    const from = currentVersion(c.record)?.version;
    await this.o.audit.append([
      {
        time: new Date(this.o.now()).toISOString(),
        event: from === undefined ? 'created' : 'rotated',
        secret: name,
        ...(from !== undefined ? { from } : {}),
        to: pending.version,
        trigger: pending.trigger,
        ...(pending.reason !== undefined ? { reason: pending.reason } : {}),
        ...(this.commit ? { commit: this.commit } : {}),
        fingerprint: fingerprint(
          typeof this.o.fingerprintKey === 'function' ? this.o.fingerprintKey() : this.o.fingerprintKey,
          pending.value,
        ),
        stateSeq: this.o.store.seq,
        storeId: this.o.store.storeId,
      },
    ]);
    this.o.audited.set(name, pending.version);
    return DONE;
  }

  private async finishStep(c: Rotation): Promise<StepResult> {
    c.record = finish(c.record, this.o.now(), parseDuration(c.policy.overlap)!, c.policy.retain ?? 3);
    await this.o.store.write(this.withHead([{ op: 'put', key: KEY(c.name), value: c.record as unknown as Json }]));
    return DONE;
  }

  /**
   * A set/test that failed: audited (once per pending value and error code) and, when the database
   * refused the value itself too many times, the value is discarded so that the retry makes a new one.
   */
  private async databaseFailed(name: string, r: SecretRecord, e: unknown): Promise<void> {
    const pending = r.pending!;
    const code = codeOf(e);
    const prev = this.failures.get(name);
    const rejections = (pending.rejections ?? 0) + (code === 'DB_VALUE_REJECTED' ? 1 : 0);
    const discard = rejections >= MAX_VALUE_REJECTIONS;
    if (!prev || prev.error !== code || discard) {
      await this.o.audit.append([
        {
          time: new Date(this.o.now()).toISOString(),
          event: 'rotation-failed',
          secret: name,
          to: pending.version,
          ...(this.commit ? { commit: this.commit } : {}),
          detail: discard
            ? `${code}: the database refused this value ${rejections} times; it is discarded and a new one generated`
            : `${code}: the previous version stays current`,
          stateSeq: this.o.store.seq,
          storeId: this.o.store.storeId,
        },
      ]);
    }
    if (code === 'DB_VALUE_REJECTED') {
      const { pending: _p, ...rest } = r;
      const next: SecretRecord = discard ? rest : { ...r, pending: { ...pending, rejections } };
      await this.o.store.write(this.withHead([{ op: 'put', key: KEY(name), value: next as unknown as Json }]));
    }
  }

  /** Retires the previous version of a secret, if that is (still) due. */
  private async retireNow(name: string): Promise<void> {
    await this.step(name, 'retired', async () => {
      const r = this.record(name);
      const now = this.o.now();
      const due = r && planner.retireAt(now, r, { desired: this.desired, readByAll: this.o.readByAll });
      if (!r || !due || due.at > now) return DONE;
      const prev = r.versions[1]!;
      const s = this.desired?.secrets.get(name)?.decl;
      const cur = currentVersion(r)!;
      // The database's part first (expire the inactive user, drop the old password; the agents know
      // that single has none).
      if (s?.database && this.o.database && prev.username !== undefined) {
        await this.o.database.retire(
          s,
          prev.version,
          { username: prev.username, password: String(prev.value) },
          { username: cur.username!, password: String(cur.value) },
        );
        stepChannel.publish({ secret: name, step: 'retire-applied', version: prev.version });
      }
      const detail = due.early
        ? `every consumer has read version ${currentVersion(r)!.version} (retireAfter: consumers)`
        : undefined;
      await this.o.audit.append([
        {
          time: new Date(this.o.now()).toISOString(),
          event: 'retired',
          secret: name,
          from: prev.version,
          ...(this.commit ? { commit: this.commit } : {}),
          stateSeq: this.o.store.seq,
          storeId: this.o.store.storeId,
          ...(detail ? { detail } : {}),
        },
      ]);
      await this.o.store.write(this.withHead([{ op: 'put', key: KEY(name), value: retire(r) as unknown as Json }]));
      this.o.log('info', 'previous version retired', { secret: name, version: prev.version, early: due.early });
      this.o.onChange?.(name);
      return DONE;
    });
  }

  /** Deletes the values of a secret removed from the repository (stored under `key`). */
  private async purge(key: string, name: string): Promise<void> {
    await this.step(name, 'purged', async () => {
      if (this.o.store.get(key) === undefined) return DONE; // an earlier run purged it
      await this.o.audit.append([
        {
          time: new Date(this.o.now()).toISOString(),
          event: 'purged',
          secret: name,
          trigger: 'removal',
          ...(this.commit ? { commit: this.commit } : {}),
          stateSeq: this.o.store.seq,
          storeId: this.o.store.storeId,
        },
      ]);
      await this.o.store.write(this.withHead([{ op: 'delete', key }]));
      this.o.audited.delete(name);
      this.o.log('info', 'values of a removed secret purged', { secret: name });
      this.o.onChange?.(name);
      return DONE;
    });
  }

  /** Adds the audit log's current head to a store write (after an audit append). */
  private withHead(ops: Op[]): Op[] {
    const { seq, hash } = this.o.audit.head;
    return [...ops, { op: 'put', key: AUDIT_HEAD_KEY, value: { seq, hash } }];
  }

  /**
   * Runs one step (removed, retired, purged) under the secret's lock: once done it is published under
   * `what`; otherwise its failure is recorded for backoff and its error thrown.
   */
  private async step(name: string, what: string, fn: () => Promise<StepResult>): Promise<void> {
    const failed = (result: StepFailure) => {
      this.fail(name, result);
      throw result.error;
    };
    // Recorded in the tick the step ends (no await in between): whoever waits for its effects sees them.
    await this.locked(name, () =>
      fn().then(
        (result) => {
          if (result.kind !== 'done') return failed(result);
          this.failures.delete(name);
          this.storageWorks();
          stepChannel.publish({ secret: name, step: what });
        },
        (e: unknown) => failed(retry(e)),
      ),
    );
  }

  /**
   * Records a step that did not finish: the secret is retried after the failure backoff (or the delay
   * the step asked for), or with every other secret once the audit log or the state store can be
   * written again. A stalled step is recorded and retried the same way (a new commit mends it). Every
   * failure is retried, even one whose error says trying again cannot help (its cause may be mended
   * meanwhile: a commit, an agent declared); an error that says when (retryAfter) is not retried sooner.
   */
  private fail(name: string, result: StepFailure): void {
    const e = result.error;
    if (stopped(e)) return;
    const now = this.o.now();
    const error = codeOf(e);
    const storage = storageOf(e);
    const afterMs = result.kind === 'retry' ? result.afterMs : undefined;
    const r = retryOf(e);
    const f = planner.failed(this.failures.get(name), error, now, {
      ...(storage ? { sharedRetryAt: this.storageFailed(storage, e, now) } : {}),
      ...(afterMs !== undefined ? { afterMs } : {}),
      ...(r.kind === 'after' ? { notBefore: now + r.ms } : {}),
    });
    this.failures.set(name, f);
    if (storage) this.waitingForStorage.add(name);
    else this.waitingForStorage.delete(name);
    stepChannel.publish({ secret: name, step: 'failed', code: error, ...(storage ? { storage } : {}) });
    // A storage failure is logged once for all secrets (storageFailed), not once per secret and retry.
    if (!storage) {
      this.o.log('error', 'rotation step failed; will retry', {
        secret: name,
        code: error,
        attempts: f.attempts,
        retryInMs: f.retryAt - now,
      });
    }
  }

  /**
   * The audit log or the state store could not be written: the failing secrets retry together, with
   * the backoff of planner.STORAGE_BACKOFF (more failures in the same round share its retry time).
   * Logged when it starts and when its cause (code, errno) changes; a cause whose last episode was a
   * blip (over at the first retry: a flaky disk) at most once a minute, with a count. Returns the retry time.
   */
  private storageFailed(what: StorageName, e: unknown, now: number): number {
    const prev = this.storage.get(what);
    if (prev && now < prev.retryAt) return prev.retryAt;
    const code = codeOf(e);
    const errno = errnoOf(e);
    const message = (e as { message?: string }).message ?? code;
    const attempts = (prev?.attempts ?? 0) + 1;
    const retryAt = now + planner.storageBackoff(attempts);
    const changed = !prev || prev.code !== code || prev.errno !== errno;
    let logged = !changed && prev.logged;
    if (!logged) {
      const last = this.storageLogged.get(storageCause(what, code, errno));
      // Not logged: a new blip of a cause that blipped less than a minute ago (logged if it lasts).
      if (!last?.blip || now - last.at >= STORAGE_LOG_EVERY_MS || attempts >= 2) {
        this.o.log(
          'error',
          `the ${what} cannot be written: rotations are paused and retried every few seconds until it can`,
          {
            code,
            errno,
            reason: message,
            retryInMs: retryAt - now,
            ...(last?.again ? { blipsSinceLastLine: last.again } : {}),
          },
        );
        this.storageLogged.set(storageCause(what, code, errno), { at: now, again: 0, blip: false });
        logged = true;
      } else if (changed) {
        last.again++;
      }
    }
    this.storage.set(what, {
      code,
      ...(errno ? { errno } : {}),
      message,
      since: prev?.since ?? now,
      attempts,
      retryAt,
      logged,
    });
    return retryAt;
  }

  /** A step succeeded, so the audit log and the state store can be written: secrets that waited for them are due again now. */
  private storageWorks(): void {
    if (this.storage.size === 0) return;
    const now = this.o.now();
    for (const [what, s] of this.storage) {
      if (s.logged)
        this.o.log('info', `the ${what} can be written again: rotations resume`, {
          code: s.code,
          errno: s.errno,
          downMs: now - s.since,
          attempts: s.attempts,
        });
      const logged = this.storageLogged.get(storageCause(what, s.code, s.errno));
      if (logged) logged.blip = s.attempts <= 1;
    }
    this.storage.clear();
    for (const name of this.waitingForStorage) this.failures.delete(name);
    this.waitingForStorage.clear();
  }

  /** Why the audit log or the state store cannot be written, while that lasts. */
  storageFailure(what: StorageName): StorageFailure | undefined {
    return this.storage.get(what);
  }

  status(): SecretStatus[] {
    const out: SecretStatus[] = [];
    const input = this.planInput();
    const now = this.o.now();
    for (const name of this.desired?.secrets.keys() ?? []) {
      const r = this.record(name);
      const cur = r ? currentVersion(r) : undefined;
      const prev = r ? previousVersion(r, now) : undefined;
      const due = planner.nextRotationAt(now, name, input);
      const scheduled = planner.scheduledAt(name, input);
      const manual = this.manualFailing.get(name);
      const failing =
        this.failures.get(name) ?? (manual ? { since: manual.since, attempts: 1, error: manual.code } : undefined);
      out.push({
        name,
        ...(cur ? { version: cur.version, rotatedAt: cur.createdAt } : {}),
        ...(due !== undefined ? { nextRotationAt: due } : {}),
        ...(scheduled !== undefined ? { scheduledAt: scheduled } : {}),
        pending: Boolean(r?.pending),
        ...(failing ? { failing } : {}),
        ...(prev?.validUntil ? { previous: { version: prev.version, validUntil: prev.validUntil } } : {}),
      });
    }
    return out;
  }
}
