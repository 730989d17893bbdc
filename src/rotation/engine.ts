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
import { generateSecretValue } from './generate.js';
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
  readonly failing?: { readonly since: number; readonly attempts: number; readonly error: string; readonly retryAt: number };
}

const KEY = (name: string) => `secret/${name}`;
const MAX_BACKOFF_MS = 5 * 60_000;

/** Whether rotor generates this secret's values itself (database and sops secrets need more parts). */
function generated(s: Secret): boolean {
  return !s.database && !s.sops && (s.generate !== undefined || s.fields !== undefined);
}

export class Engine {
  private desired: Desired | undefined;
  private commit = '';
  private readonly running = new Map<string, Promise<void>>();
  private readonly failures = new Map<string, { since: number; attempts: number; error: string; retryAt: number }>();
  private readonly removedOverlap = new Map<string, number>();

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

  /** Applies a valid model (from `commit`): new secrets get version 1, removed ones are scheduled for purge. */
  async apply(desired: Desired, commit: string): Promise<void> {
    const before = this.desired;
    this.desired = desired;
    this.commit = commit;
    const now = this.o.now();
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
    for (const name of this.desired?.secrets.keys() ?? []) at(this.dueAt(name));
    for (const [, value] of this.o.store.entries('secret/')) {
      const r = value as unknown as SecretRecord;
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
    if (!s || !policy || !generated(s)) return undefined;
    const r = this.record(name);
    let due: number;
    if (!r || r.pending || !currentVersion(r)) due = 0; // new, or a rotation to finish
    else if (s.rotate && s.rotate.request !== r.lastRequest) due = 0;
    else due = this.slot(name, policy, r).at;
    // A failing secret waits for its backoff.
    return Math.max(due, this.failures.get(name)?.retryAt ?? 0);
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
      if (due !== undefined && due <= now) work.push(this.rotateDue(name).catch(() => undefined));
    }
    for (const [key, value] of [...this.o.store.entries('secret/')]) {
      const r = value as unknown as SecretRecord;
      if (this.backingOff(r.name, now)) continue;
      const retireAt = this.retireAt(r)?.at;
      if (retireAt !== undefined && retireAt <= now) work.push(this.retireNow(r.name).catch(() => undefined));
      if (r.purgeAfter && Date.parse(r.purgeAfter) <= now) work.push(this.purge(key, r).catch(() => undefined));
    }
    await Promise.all(work);
  }

  /** Rotates a secret now (rotor rotate); joins a rotation of that secret already running. */
  rotateNow(name: string, reason: string): Promise<void> {
    const s = this.desired?.secrets.get(name)?.decl;
    if (!s) return Promise.reject(Object.assign(new Error(`secret "${name}" is not declared`), { code: 'SECRET_UNKNOWN' }));
    if (!generated(s)) return Promise.reject(Object.assign(new Error(`secret "${name}" is not generated by rotor (database and sops secrets are not rotated by this version)`), { code: 'SECRET_NOT_ROTATABLE' }));
    return this.rotate(name, 'cli', { reason });
  }

  private rotateDue(name: string): Promise<void> {
    const s = this.desired!.secrets.get(name)!.decl;
    const r = this.record(name);
    if (r?.pending) return this.rotate(name, r.pending.trigger, {});
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
    const running = this.running.get(name);
    if (running) return running;
    const p = this.runRotation(name, trigger, extra).finally(() => this.running.delete(name));
    this.running.set(name, p);
    return p;
  }

  private async runRotation(name: string, trigger: Trigger, extra: { reason?: string; request?: string; scheduledBase?: number }): Promise<void> {
    const s = this.desired!.secrets.get(name)!.decl;
    const policy = this.desired!.policies.get(s.policy)!.decl;
    try {
      // 1. create: store the next value as pending, or reuse the pending one.
      let r = this.record(name) ?? { name, versions: [] };
      if (!r.pending) {
        const value = generateSecretValue(s, this.o.random)!;
        r = create(r, value, this.o.now(), trigger, extra);
        await this.o.store.write([{ op: 'put', key: KEY(name), value: r as unknown as Json }]);
        stepChannel.publish({ secret: name, step: 'created', version: r.pending!.version });
      }
      const pending = r.pending!;
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
      this.o.log('info', pending.version === 1 ? 'secret created' : 'secret rotated', { secret: name, version: pending.version, trigger: pending.trigger });
      this.o.onChange?.(name);
    } catch (e) {
      this.fail(name, e);
      throw e;
    }
  }

  private async retireNow(name: string): Promise<void> {
    await this.step(name, 'retired', async () => {
      const r = this.record(name);
      const due = r && this.retireAt(r);
      if (!r || !due || due.at > this.o.now()) return;
      const prev = r.versions[1]!;
      const detail = due.early ? `every consumer has read version ${currentVersion(r)!.version} (retireAfter: consumers)` : undefined;
      await this.o.audit.append([{ time: new Date(this.o.now()).toISOString(), event: 'retired', secret: name, from: prev.version, ...(this.commit ? { commit: this.commit } : {}), stateSeq: this.o.store.seq, storeId: this.o.store.storeId, ...(detail ? { detail } : {}) }]);
      await this.o.store.write(this.withHead([{ op: 'put', key: KEY(name), value: retire(r) as unknown as Json }]));
      this.o.log('info', 'previous version retired', { secret: name, version: prev.version, early: due.early });
      this.o.onChange?.(name);
    });
  }

  private async purge(key: string, r: SecretRecord): Promise<void> {
    await this.step(r.name, 'purged', async () => {
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
    const running = this.running.get(name);
    if (running) await running.catch(() => undefined);
    const p = fn().then(
      () => {
        this.failures.delete(name);
        stepChannel.publish({ secret: name, step: what });
      },
      (e: unknown) => {
        this.fail(name, e);
        throw e;
      },
    );
    this.running.set(name, p.catch(() => undefined));
    try {
      await p;
    } finally {
      this.running.delete(name);
    }
  }

  private fail(name: string, e: unknown): void {
    const now = this.o.now();
    const prev = this.failures.get(name);
    const attempts = (prev?.attempts ?? 0) + 1;
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (attempts - 1));
    const err = e as { code?: string; message?: string };
    const error = err.code ?? 'ERROR';
    this.failures.set(name, { since: prev?.since ?? now, attempts, error, retryAt: now + delay });
    this.o.log('error', 'rotation step failed; will retry', { secret: name, code: error, attempts, retryInMs: delay });
  }

  status(): SecretStatus[] {
    const out: SecretStatus[] = [];
    for (const name of this.desired?.secrets.keys() ?? []) {
      const r = this.record(name);
      const cur = r ? currentVersion(r) : undefined;
      const due = this.dueAt(name);
      const failing = this.failures.get(name);
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
