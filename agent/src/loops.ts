/**
 * The poll and report loops, the results kept until the daemon accepted them, and their retry.
 *
 * The agent polls only while it has room for more work, so delivered jobs do not sit in a queue while
 * their lease runs out. Results stay in memory until the daemon accepted them, and are retried with
 * backoff. When the agent dies before that, the daemon delivers the job again after its lease, and the
 * steps are idempotent.
 */

import type { Job, Logger, Result } from 'rotor/internal';
import { backoffDelay, MAX_RESULT_MESSAGE, MAX_RESULTS_BODY } from 'rotor/internal';
import { type DaemonList, Rounds } from './daemons.js';
import { AgentError, isNotLeader, transportProblem } from './errors.js';
import { publishStep } from './steps.js';
import type { DaemonClient } from './transport.js';

/** A results request carries at most this many results, and at most MAX_RESULTS_BODY bytes (the daemon's limit). */
const REPORT_BATCH = 100;

export interface Pending {
  readonly job: Job;
  readonly result: Result;
}

/**
 * The jobs in hand: ids of jobs queued, running, or whose result the daemon has not accepted yet (a
 * redelivery of one is skipped), and the results not yet accepted, in completion order.
 */
export class ResultStore {
  readonly #known = new Set<string>();
  readonly #pending = new Map<string, Pending>();

  /** Results not yet accepted. */
  get size(): number {
    return this.#pending.size;
  }

  /** Whether a job with this id is in hand. */
  has(id: string): boolean {
    return this.#known.has(id);
  }

  /** Takes a job in hand. */
  claim(id: string): void {
    this.#known.add(id);
  }

  /** Lets a job that will not run go (the daemon delivers it again). */
  release(id: string): void {
    this.#known.delete(id);
  }

  /** Keeps a job's result until the daemon accepted it; returns it as it will be sent. */
  keep(job: Job, full: Result): Result {
    // The daemon takes messages of up to MAX_RESULT_MESSAGE characters (a driver's message may be longer).
    const long = full.message !== undefined && full.message.length > MAX_RESULT_MESSAGE;
    const result = long ? { ...full, message: `${full.message!.slice(0, MAX_RESULT_MESSAGE - 3)}...` } : full;
    this.#pending.set(job.id, { job, result });
    return result;
  }

  /** The daemon accepted (or for good refused) a job's result. */
  forget(id: string): void {
    this.#pending.delete(id);
    this.#known.delete(id);
  }

  /** The oldest results, as many as one request takes. */
  nextBatch(): Pending[] {
    const batch = [];
    let bytes = '{"results":[]}'.length;
    for (const p of this.#pending.values()) {
      const size = Buffer.byteLength(JSON.stringify(p.result)) + 1;
      if (batch.length >= REPORT_BATCH || (batch.length > 0 && bytes + size > MAX_RESULTS_BODY)) break;
      batch.push(p);
      bytes += size;
    }
    return batch;
  }
}

export interface BackoffOptions {
  /** The first retry delay. */
  readonly baseMs: number;
  /** The longest delay. */
  readonly capMs: number;
  /** [0, 1), for the jitter. */
  readonly random: () => number;
}

/**
 * The delay before retry number `attempt` (from 0): doubling up to the cap, jittered over its upper
 * half (util/backoff's equal jitter, drawn with `random`).
 */
export function backoffMs(attempt: number, o: BackoffOptions): number {
  const random = (bound: number) => Math.min(Math.floor(o.random() * bound), bound - 1);
  return backoffDelay(attempt + 1, { baseMs: o.baseMs, maxMs: o.capMs, jitter: 'equal', random });
}

/** How a failed exchange is retried. */
export interface Retry {
  readonly backoff: BackoffOptions;
  /** Waits out a delay; resolves early when `signal` aborts. */
  readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
}

export function logExchangeFailure(
  log: Logger,
  what: 'poll' | 'report' | 'values' | 'receipts',
  e: unknown,
  delayMs: number,
): void {
  const p = transportProblem(e);
  const level = p.code === 'AGENT_DAEMON_UNREACHABLE' ? 'warn' : 'error';
  log(level, `${what}: ${p.message}; retrying`, {
    code: p.code,
    cause: p.cause,
    status: (e as AgentError).status,
    daemonCode: (e as AgentError).daemonCode,
    delayMs,
  });
}

/** A failure followed at once by another daemon of the list: NOT_LEADER is routine (debug), the rest a warning. */
export function logMove(log: Logger, what: 'poll' | 'report' | 'values' | 'receipts', e: unknown, next: URL): void {
  const p = transportProblem(e);
  log(isNotLeader(e) ? 'debug' : 'warn', `${what}: ${p.message}; trying the daemon at ${next.origin} now`, {
    code: p.code,
    cause: p.cause,
    daemonCode: (e as AgentError).daemonCode,
    daemon: next.origin,
  });
}

export interface ReportContext {
  readonly client: DaemonClient;
  readonly store: ResultStore;
  readonly log: Logger;
}

/** Sends a batch of pending results: undefined when the daemon took it, else the error. */
export async function reportBatch(ctx: ReportContext, signal: AbortSignal): Promise<unknown> {
  const { client, store, log } = ctx;
  const batch = store.nextBatch();
  if (batch.length === 0) return undefined;
  let accepted: number | undefined;
  try {
    accepted = await client.report(
      batch.map((p) => p.result),
      signal,
    );
  } catch (e) {
    if (e instanceof AgentError && e.retry.kind === 'never') {
      // The same request would be refused again: drop it; the daemon delivers those jobs again after their lease.
      log('error', 'the daemon refused these results for good; it will deliver the jobs again', {
        code: 'AGENT_RESULTS_REFUSED',
        status: e.status,
        daemonCode: e.daemonCode,
        results: batch.length,
      });
      for (const p of batch) store.forget(p.job.id);
      return undefined;
    }
    return e ?? new Error('report failed');
  }
  if (accepted !== batch.length) {
    log('warn', 'the daemon accepted fewer results than sent (jobs no longer leased to this agent)', {
      sent: batch.length,
      accepted,
    });
  }
  for (const p of batch) {
    store.forget(p.job.id);
    const { job, result } = p;
    const { outcome, code } = result;
    const fields = { job: job.id, secret: job.secret, target: job.target, step: 'reported', outcome, code };
    log('info', 'result reported', fields);
    publishStep(job, 'reported');
  }
  return undefined;
}

export interface PollLoopContext {
  readonly log: Logger;
  readonly retry: Retry;
  /** The daemons jobs come from: a failed poll moved it on (./daemons.ts). */
  readonly daemons: DaemonList;
  /** Ends the long poll and the delays. */
  readonly signal: AbortSignal;
  stopping(): boolean;
  /** Whether there is room for more jobs. */
  hasRoom(): boolean;
  /** Resolves at the next change of the scheduler's state, or when `signal` aborts. */
  changed(signal: AbortSignal): Promise<void>;
  /** One long poll: the jobs of the answer. */
  poll(signal: AbortSignal): Promise<unknown[]>;
  /** Takes a job (still unchecked) from the answer. */
  accept(raw: unknown): void;
}

/**
 * Polls while not stopping and there is room for more jobs. A failed poll is retried at once on the
 * daemon the list moved to, with backoff after a full round of failures.
 */
export async function pollLoop(ctx: PollLoopContext): Promise<void> {
  const rounds = new Rounds(ctx.daemons, ctx.retry);
  while (!ctx.stopping()) {
    if (!ctx.hasRoom()) {
      await ctx.changed(ctx.signal);
      continue;
    }
    let jobs: unknown[];
    try {
      jobs = await ctx.poll(ctx.signal);
      rounds.ok();
    } catch (e) {
      if (ctx.stopping()) break;
      const delayMs = rounds.failed(e);
      if (delayMs === undefined) {
        logMove(ctx.log, 'poll', e, ctx.daemons.current);
        continue;
      }
      logExchangeFailure(ctx.log, 'poll', e, delayMs);
      await rounds.sleep(delayMs, ctx.signal);
      continue;
    }
    for (const j of jobs) ctx.accept(j);
  }
}

export interface ReportLoopContext extends ReportContext {
  readonly retry: Retry;
  /** The daemons results go to (the leader's, as for the jobs). */
  readonly daemons: DaemonList;
  /** Ends the reports (stop's grace ran out). */
  readonly signal: AbortSignal;
  stopping(): boolean;
  /** Jobs running. */
  active(): number;
  changed(signal: AbortSignal): Promise<void>;
}

/** Reports results as they come, until stopped with nothing left running or to report, or `signal` aborts. */
export async function reportLoop(ctx: ReportLoopContext): Promise<void> {
  const rounds = new Rounds(ctx.daemons, ctx.retry);
  for (;;) {
    if (ctx.signal.aborted) return;
    if (ctx.store.size === 0) {
      if (ctx.stopping() && ctx.active() === 0) return;
      await ctx.changed(ctx.signal);
      continue;
    }
    const error = await reportBatch(ctx, ctx.signal);
    if (error === undefined) {
      rounds.ok();
    } else if (!ctx.signal.aborted) {
      const delayMs = rounds.failed(error);
      if (delayMs === undefined) {
        logMove(ctx.log, 'report', error, ctx.daemons.current);
        continue;
      }
      logExchangeFailure(ctx.log, 'report', error, delayMs);
      await rounds.sleep(delayMs, ctx.signal);
    }
  }
}

/**
 * Reports every pending result, with up to `attempts` tries per batch (a batch that went through gives
 * the next one its own attempts), until `signal` aborts (runOnce).
 */
export async function reportAll(
  ctx: ReportContext & { readonly retry: Retry },
  attempts: number,
  signal: AbortSignal,
): Promise<void> {
  for (let attempt = 0; ctx.store.size > 0 && attempt < attempts && !signal.aborted; attempt++) {
    const error = await reportBatch(ctx, signal);
    if (error === undefined) {
      attempt = -1; // a batch went through: the next one gets its own attempts
      continue;
    }
    if (signal.aborted) break;
    const delayMs = backoffMs(attempt, ctx.retry.backoff);
    logExchangeFailure(ctx.log, 'report', error, delayMs);
    if (attempt + 1 < attempts) await ctx.retry.sleep(delayMs, signal);
  }
}
