/**
 * The rotation planner: decides what the engine must do and when, from plain data. Which secrets are
 * due (new, a changed `rotate.request`, their schedule slot with its jitter, a new SOPS value, an
 * unfinished rotation), with which trigger and schedule slot; when a previous version is retired (its
 * overlap ends, or earlier once every consumer read the current one); when a removed secret is purged;
 * the backoff of failures; and the next time anything is due.
 *
 * Pure: no I/O, no clock (the time is passed in), no state of its own. The engine (engine.ts) keeps the
 * state, builds a PlanInput from it, and executes the actions.
 */
import type { Desired } from '../model/model.js';
import type { Policy, Secret } from '../model/schema-types.js';
import { compileSchedule, intervalOf, intoWindow, nextBase, withJitter } from '../schedule/schedule.js';
import type { BackoffOptions } from '../util/backoff.js';
import { backoffDelay } from '../util/backoff.js';
import type { SecretRecord, Trigger } from './record.js';
import { currentVersion, retireDue } from './record.js';

/**
 * The value of a `sops:` secret at the applied commit, as the daemon decrypted it from the SOPS file,
 * or why it could not (a stable code and a message without any value).
 */
export type ManualValue =
  | { readonly value: string }
  | { readonly error: { readonly code: string; readonly message: string } };

/** A secret whose last step failed: retried at `retryAt`. */
export interface Failure {
  readonly since: number;
  /** Failed attempts in a row. */
  readonly attempts: number;
  /** The error's code. */
  readonly error: string;
  readonly retryAt: number;
}

/**
 * The stored records, looked up by name or walked in the store's order. A Map is one; the engine
 * passes a view of its store, so that planning copies nothing.
 */
export interface Records {
  get(name: string): SecretRecord | undefined;
  values(): Iterable<SecretRecord>;
}

/** What the planner decides from. */
export interface PlanInput {
  /** The applied model (undefined before the first apply). */
  readonly desired: Desired | undefined;
  /** The stored records by secret name, in the store's order (removed secrets included until purged). */
  readonly records: Records;
  readonly failures: ReadonlyMap<string, Failure>;
  /** Secrets with a step running now (a database step waiting for its agent). */
  readonly running: ReadonlySet<string> | ReadonlyMap<string, unknown>;
  /** The values of the `sops:` secrets at the applied commit. */
  readonly manual: ReadonlyMap<string, ManualValue>;
  /** Whether every consumer of the secret has read `version`; undefined when it has no consumer. */
  readonly readByAll?: ((secret: string, version: number) => boolean | undefined) | undefined;
  /** Whether database steps (the agents) are available: without them database secrets are not rotated. */
  readonly database: boolean;
}

/** The extra facts a rotation records with its pending value. */
export interface RotationExtra {
  readonly reason?: string;
  readonly request?: string;
  readonly scheduledBase?: number;
}

export type Action =
  /** Rotate a secret; `detached`: it runs on its own (a database step waits for its agent). */
  | {
      readonly kind: 'rotate';
      readonly secret: string;
      readonly trigger: Trigger;
      readonly extra: RotationExtra;
      readonly detached: boolean;
    }
  /** Retire the previous version; `early`: before its overlap ended, as every consumer read the current one. */
  | { readonly kind: 'retire'; readonly secret: string; readonly early: boolean; readonly detached: boolean }
  /** Delete the values of a secret removed from the repository. */
  | { readonly kind: 'purge'; readonly secret: string };

export interface Plan {
  /** The work due now, in the order to start it: rotations first, then retirements and purges. */
  readonly actions: readonly Action[];
  /** The next time work is due, for the engine's timer (undefined: nothing is). */
  readonly wakeAt?: number;
}

/** A failing secret's retry: 1 s, doubling to 5 minutes. */
export const FAILURE_BACKOFF: BackoffOptions = { baseMs: 1000, maxMs: 5 * 60_000 };
/**
 * While the audit log or the state store cannot be written, every secret waits for one shared retry, at
 * most 10 s apart: a retry costs one (group-committed) write, and rotations resume soon after the disk works.
 */
export const STORAGE_BACKOFF: BackoffOptions = { baseMs: 1000, maxMs: 10_000 };

/** The delay before a failing secret's next attempt, after `attempts` failures in a row. */
export function failureBackoff(attempts: number): number {
  return backoffDelay(attempts, FAILURE_BACKOFF);
}

/** The delay before the shared retry after `attempts` rounds of storage failures. */
export function storageBackoff(attempts: number): number {
  return backoffDelay(attempts, STORAGE_BACKOFF);
}

/**
 * A secret's failure record after one more failure with code `error` at `now`: retried after
 * `afterMs` when given (else the failure backoff), or at `sharedRetryAt` for a storage failure; in
 * every case not before `notBefore` (the time the error itself asked for, retryAfter).
 */
export function failed(
  prev: Failure | undefined,
  error: string,
  now: number,
  o: { afterMs?: number; sharedRetryAt?: number; notBefore?: number } = {},
): Failure {
  const attempts = (prev?.attempts ?? 0) + 1;
  const at = o.sharedRetryAt ?? now + (o.afterMs ?? failureBackoff(attempts));
  const retryAt = o.notBefore !== undefined ? Math.max(at, o.notBefore) : at;
  return { since: prev?.since ?? now, attempts, error, retryAt };
}

/** Whether rotor generates this secret's values itself (sops secrets are rotated by a person). */
export function generated(s: Secret): boolean {
  return !s.sops && (s.generate !== undefined || s.fields !== undefined || s.database !== undefined);
}

/** Whether rotor rotates this secret: a generated one, and for a database one when the agents are there. */
export function rotatable(s: Secret, database: boolean): boolean {
  return generated(s) && (!s.database || database);
}

function policyOf(name: string, desired: Desired | undefined): Policy | undefined {
  const s = desired?.secrets.get(name)?.decl;
  return s ? desired?.policies.get(s.policy)?.decl : undefined;
}

/** The schedule slot after the last rotation: its base time and the jittered time it starts. */
export function slot(name: string, policy: Policy, r: SecretRecord): { base: number; at: number } {
  const sched = compileSchedule(policy);
  const base = nextBase(sched, r.scheduledBase ?? Date.parse(r.rotatedAt!));
  return { base, at: withJitter(sched, name, base) };
}

/** When a declared secret must rotate next (a time in the past means now); undefined: not by rotor. */
export function dueAt(name: string, input: PlanInput): number | undefined {
  const s = input.desired?.secrets.get(name)?.decl;
  const policy = s && input.desired?.policies.get(s.policy)?.decl;
  if (!s || !policy) return undefined;
  if (s.sops) return manualDue(name, input);
  if (!rotatable(s, input.database)) return undefined;
  const r = input.records.get(name);
  let due: number;
  // New, or a rotation to finish: now.
  if (!r || r.pending || !currentVersion(r)) due = 0;
  else if (s.rotate && s.rotate.request !== r.lastRequest) due = 0;
  else due = slot(name, policy, r).at;
  // A failing secret waits for its backoff.
  return Math.max(due, input.failures.get(name)?.retryAt ?? 0);
}

/**
 * The schedule slot the current version is due by: overdue is measured from it, never from a
 * rotation in progress, a retry or a request to rotate now. Undefined for a secret without a version,
 * a `sops:` one, or one rotor does not rotate.
 */
export function scheduledAt(name: string, input: PlanInput): number | undefined {
  const s = input.desired?.secrets.get(name)?.decl;
  const policy = s && input.desired?.policies.get(s.policy)?.decl;
  if (!s || !policy || s.sops || !rotatable(s, input.database)) return undefined;
  const r = input.records.get(name);
  if (!r || !currentVersion(r)) return undefined;
  return slot(name, policy, r).at;
}

/**
 * When the next rotation is, as shown to people and consumers: the due time when it is ahead; when it
 * is due or under way, the time it fell due (its schedule slot, or now for one started at once).
 */
export function nextRotationAt(now: number, name: string, input: PlanInput): number | undefined {
  const due = dueAt(name, input);
  if (due === undefined) return undefined;
  if (due > now) return due;
  return Math.min(scheduledAt(name, input) ?? now, now);
}

/** A `sops:` secret is due when its file holds a value other than the current one (or a rotation is unfinished). */
function manualDue(name: string, input: PlanInput): number | undefined {
  const m = input.manual.get(name);
  const r = input.records.get(name);
  const cur = r ? currentVersion(r) : undefined;
  const changed = m !== undefined && 'value' in m && cur?.value !== m.value;
  // Due now (after a failure's backoff) with an unfinished rotation or a new value.
  return r?.pending || changed ? (input.failures.get(name)?.retryAt ?? 0) : undefined;
}

/**
 * When the previous version must be retired: when its overlap ends, or now when the policy says
 * `retireAfter: consumers` and every consumer of the secret has read the current version.
 */
export function retireAt(
  now: number,
  r: SecretRecord,
  input: Pick<PlanInput, 'desired' | 'readByAll'>,
): { at: number; early: boolean } | undefined {
  const at = retireDue(r);
  if (at === undefined) return undefined;
  const policy = policyOf(r.name, input.desired);
  const cur = currentVersion(r);
  if (policy?.retireAfter === 'consumers' && cur && input.readByAll?.(r.name, cur.version) === true) {
    if (now < at) return { at: now, early: true };
  }
  return { at, early: false };
}

/**
 * Why a due secret rotates, and the schedule slot it fills: an unfinished rotation keeps its trigger;
 * a new secret, a new SOPS value or a changed `rotate.request` rotate at once; a scheduled rotation on
 * time keeps the cadence of its slot, one overdue after downtime rotates once, from now (into the window).
 */
export function rotationOf(now: number, name: string, input: PlanInput): { trigger: Trigger; extra: RotationExtra } {
  const s = input.desired!.secrets.get(name)!.decl;
  const r = input.records.get(name);
  if (r?.pending) return { trigger: r.pending.trigger, extra: {} };
  if (s.sops) return { trigger: r && currentVersion(r) ? 'commit' : 'new', extra: {} };
  if (!r || !currentVersion(r)) return { trigger: 'new', extra: s.rotate ? { request: s.rotate.request } : {} };
  if (s.rotate && s.rotate.request !== r.lastRequest) {
    return { trigger: 'request', extra: { reason: s.rotate.reason, request: s.rotate.request } };
  }
  const policy = input.desired!.policies.get(s.policy)!.decl;
  const { base } = slot(name, policy, r);
  const sched = compileSchedule(policy);
  const scheduledBase = now - base < intervalOf(sched, base) ? base : intoWindow(sched, now);
  return { trigger: 'schedule', extra: { scheduledBase } };
}

/** The next time work is due (a rotation, a retirement, a purge or a retry), or undefined. */
export function nextWakeup(now: number, input: PlanInput): number | undefined {
  let next: number | undefined;
  const at = (t: number | undefined) => {
    if (t !== undefined && (next === undefined || t < next)) next = t;
  };
  // A secret whose step is running (a database step waiting for its agent) wakes no one: its end does.
  for (const name of input.desired?.secrets.keys() ?? []) if (!input.running.has(name)) at(dueAt(name, input));
  for (const r of input.records.values()) {
    if (input.running.has(r.name)) continue;
    const retryAt = input.failures.get(r.name)?.retryAt;
    const later = (t: number | undefined) => (t === undefined ? undefined : Math.max(t, retryAt ?? t));
    at(later(retireAt(now, r, input)?.at));
    if (r.purgeAfter) at(later(Date.parse(r.purgeAfter)));
  }
  return next;
}

/**
 * Everything due at `now`, and the next wake-up. Rotations come first (a step already running for a
 * secret is joined or waited for by the engine, as a request would be); then, for each stored record
 * not backing off from a failure, its retirement and its purge.
 */
export function plan(now: number, input: PlanInput): Plan {
  const actions: Action[] = [];
  for (const name of input.desired?.secrets.keys() ?? []) {
    const due = dueAt(name, input);
    if (due === undefined || due > now) continue;
    const { trigger, extra } = rotationOf(now, name, input);
    const detached = Boolean(input.desired!.secrets.get(name)!.decl.database);
    actions.push({ kind: 'rotate', secret: name, trigger, extra, detached });
  }
  for (const r of input.records.values()) {
    if ((input.failures.get(r.name)?.retryAt ?? 0) > now) continue;
    const retire = retireAt(now, r, input);
    if (retire !== undefined && retire.at <= now) {
      const detached = Boolean(input.desired?.secrets.get(r.name)?.decl.database);
      actions.push({ kind: 'retire', secret: r.name, early: retire.early, detached });
    }
    if (r.purgeAfter && Date.parse(r.purgeAfter) <= now) actions.push({ kind: 'purge', secret: r.name });
  }
  const wakeAt = nextWakeup(now, input);
  return { actions, ...(wakeAt !== undefined ? { wakeAt } : {}) };
}
