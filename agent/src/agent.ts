/**
 * The agent: long-polls the daemon for jobs (src/protocol/jobs.ts), applies them to the databases of its
 * own configuration through the engines, and reports the results. This module wires the parts:
 *
 * - ./transport.ts: HTTP to the daemon. Every request is signed with the agent's Ed25519 key; over
 *   https:// the daemon's certificate is checked first (./tls.ts: tls.ca, tls.pin or the system's CAs).
 * - ./daemons.ts: with several daemons (`daemon:` a list), jobs and results go to the one believed to
 *   lead (a follower's NOT_LEADER names it), values and receipts to the one that answers.
 * - ./wire.ts: every answer must verify against daemonSigningKey over this request's nonce (so an old
 *   answer cannot be replayed), or it is refused whole (AGENT_DAEMON_UNVERIFIED) and nothing in it runs;
 *   then each job's shape. Jobs carry their credentials sealed to the agent's age recipient, opened only
 *   after the answer verified.
 * - ./execute.ts: one job's steps (set + test, or retire) through the engine of its target.
 * - ./registry.ts: engine name -> driver, loaded on first use; one engine per target.
 * - ./pump.ts: jobs of different secrets run concurrently (at most `concurrency`), jobs of one secret in
 *   the order they arrived.
 * - ./loops.ts: the poll loop (only while there is room for more work, so that delivered jobs do not sit
 *   in a queue while their lease runs out) and the report loop (results kept until the daemon accepted
 *   them, retried with backoff; when the agent dies before that, the daemon delivers the job again after
 *   its lease, and the steps are idempotent).
 * - ./steps.ts: step boundaries on the diagnostics channel `rotor-agent:step`.
 * - ./host.ts: the consumers declared on this agent (hostConsumers): their sockets, the values the
 *   daemon pushes for them, read receipts back, the sealed cache.
 *
 * Logs: identifiers, steps and codes only; never a value, a sealed text, or a driver's message.
 */
import { randomInt } from 'node:crypto';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { EngineName, Job, Logger, Result } from 'rotor/internal';
import { MAX_AGENT_WAIT } from 'rotor/internal';
import type { AgentConfig } from './config.js';
import type { EngineFactory } from './engines/types.js';
import { AgentError, transportProblem } from './errors.js';
import { executeJob } from './execute.js';
import { ConsumerHost } from './host.js';
import type { Retry } from './loops.js';
import { logMove, pollLoop, ResultStore, reportAll, reportLoop } from './loops.js';
import { Changes, Pump } from './pump.js';
import { EngineRegistry } from './registry.js';
import { publishStep } from './steps.js';
import type { Transport } from './transport.js';
import { DaemonClient, nodeTransport } from './transport.js';
import { jobOf, malformedJobStub } from './wire.js';

export type { AgentErrorCode } from './errors.js';
export { AgentError } from './errors.js';
export type { AgentValuesMessage } from './host.js';
export { agentValuesChannel, CACHE_FILE, ConsumerHost } from './host.js';
export type { AgentStep, AgentStepMessage } from './steps.js';
export { agentStepChannel } from './steps.js';
export type { HttpAnswer, HttpExchange, Transport } from './transport.js';
export { nodeTransport } from './transport.js';

export interface AgentOptions {
  readonly log?: Logger;
  /** ms since the epoch, for request timestamps (default Date.now). */
  readonly now?: () => number;
  /** The long-poll's `wait` in seconds (default 25, at most MAX_AGENT_WAIT). */
  readonly wait?: number;
  /** How many jobs run at once, across secrets (default 8). */
  readonly concurrency?: number;
  /** The first retry delay (default 500 ms) and the cap (default 30 s); each delay is jittered. */
  readonly backoff?: { readonly baseMs?: number; readonly capMs?: number };
  /** How a backoff delay is waited out; resolves early when `signal` aborts. Default: a timer. */
  readonly sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** [0, 1) for the jitter (default: node:crypto). */
  readonly random?: () => number;
  /** The largest answer accepted (default 1 MiB). */
  readonly maxAnswerBytes?: number;
  /** Engine factories by engine name (default: the engines in ./engines, loaded on first use). */
  readonly engines?: Partial<Record<EngineName, EngineFactory>>;
  /** The HTTP seam (default: node:http / node:https with keep-alive agents; https:// checked per `tls`). */
  readonly transport?: Transport;
  /** How many report attempts runOnce makes before it gives up on results (default 5). */
  readonly onceReportAttempts?: number;
  /**
   * Serve the consumers declared on this agent (./host.ts) beside the jobs (default false; the
   * rotor-agent command turns it on). `{ sockets: false, cache: false }` runs the values loop alone.
   */
  readonly hostConsumers?: boolean | { readonly sockets?: boolean; readonly cache?: boolean; readonly wait?: number };
}

export interface StopOptions {
  /** How long running jobs and the last report may take before the engines are closed anyway (default 30 s). */
  readonly graceMs?: number;
}

export interface OnceSummary {
  /** Jobs in the daemon's answer. */
  readonly received: number;
  /** The results of this cycle, in completion order. */
  readonly results: readonly Result[];
  /** Results the daemon did not accept in the attempts allowed (the daemon will deliver those jobs again). */
  readonly unreported: number;
}

const DEFAULT_WAIT = 25;
const DEFAULT_CONCURRENCY = 8;
const DEFAULT_BASE_MS = 500;
const DEFAULT_CAP_MS = 30_000;
const DEFAULT_MAX_ANSWER = 1024 * 1024;
const DEFAULT_GRACE_MS = 30_000;

const silent: Logger = () => {};
/** A signal that never aborts. */
const NEVER = new AbortController().signal;

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return sleepFor(ms, undefined, { signal }).catch(() => {});
}

export class Agent {
  readonly #config: AgentConfig;
  readonly #log: Logger;
  readonly #wait: number;
  readonly #retry: Retry;
  readonly #ownTransport: (Transport & { close(): void }) | undefined;
  readonly #client: DaemonClient;
  readonly #onceReportAttempts: number;
  readonly #engines: EngineRegistry;
  readonly #pump: Pump;
  readonly #store = new ResultStore();
  readonly #changes = new Changes();
  /** The consumers this agent hosts, when it hosts them. */
  readonly host: ConsumerHost | undefined;
  /** Receives each finished result (runOnce's summary). */
  #onResult: ((r: Result) => void) | undefined;

  #started = false;
  /** Resolves once the consumer host read its cache and started (undefined without one). */
  hosting: Promise<void> | undefined;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  /** Aborted at stop: ends the long poll and the poll loop's delays. */
  readonly #halt = new AbortController();
  /** Aborted when stop's grace runs out: ends the last reports. */
  readonly #deadline = new AbortController();
  #loops: Promise<void>[] = [];

  constructor(config: AgentConfig, options: AgentOptions = {}) {
    this.#config = config;
    const log = (this.#log = options.log ?? silent);
    const wait = options.wait ?? DEFAULT_WAIT;
    if (!Number.isInteger(wait) || wait < 0 || wait > MAX_AGENT_WAIT) {
      throw new RangeError(`wait must be a whole number of seconds from 0 to ${MAX_AGENT_WAIT}`);
    }
    this.#wait = wait;
    const limit = options.concurrency ?? DEFAULT_CONCURRENCY;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError('concurrency must be a positive whole number');
    this.#retry = {
      backoff: {
        baseMs: options.backoff?.baseMs ?? DEFAULT_BASE_MS,
        capMs: options.backoff?.capMs ?? DEFAULT_CAP_MS,
        random: options.random ?? (() => randomInt(1_000_000) / 1_000_000),
      },
      sleep: options.sleep ?? defaultSleep,
    };
    this.#onceReportAttempts = options.onceReportAttempts ?? 5;
    let transport = options.transport;
    if (!transport) transport = this.#ownTransport = nodeTransport(config.tls ? { tls: config.tls } : {});
    this.#client = new DaemonClient({
      config,
      transport,
      log,
      now: options.now ?? Date.now,
      maxAnswerBytes: options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER,
    });
    const hosting = options.hostConsumers;
    this.host = hosting
      ? new ConsumerHost({
          config,
          client: this.#client,
          log,
          retry: this.#retry,
          ...(options.now ? { now: options.now } : {}),
          ...(typeof hosting === 'object' ? hosting : {}),
        })
      : undefined;
    const engines = (this.#engines = new EngineRegistry(options.engines ?? {}));
    this.#pump = new Pump({
      limit,
      run: (job) =>
        executeJob(job, { config, engines, log }).catch((e: unknown): Result => {
          const cause = (e as Error)?.name;
          log('error', 'a job failed in the agent itself', {
            job: job.id,
            secret: job.secret,
            code: 'AGENT_INTERNAL',
            cause,
          });
          const message = 'the agent failed unexpectedly (see its log)';
          return { id: job.id, outcome: 'failed', code: 'AGENT_INTERNAL', message };
        }),
      done: (job, result) => this.#finish(job, result),
    });
  }

  /**
   * Starts polling and reporting in the background; stop() ends it. The consumers' values loop starts
   * too (after the sealed cache is read: `hosting` resolves then).
   */
  start(): void {
    if (this.#started || this.#stopping) throw new Error('the agent was already started or stopped');
    this.#started = true;
    const { name, daemons, targets, tls } = this.#config;
    // How the daemon's certificate is checked, when there is one: tls.ca, tls.pin, both, or the system's CAs.
    const checked = tls ? [tls.caFile !== undefined && 'ca', tls.pins && 'pin'].filter(Boolean).join('+') : 'system';
    const daemon = daemons.map((d) => d.origin).join(' ');
    const fields = { agent: name, daemon, ...(daemons[0]!.protocol === 'https:' ? { tls: checked } : {}) };
    this.#log('info', 'agent started', { ...fields, targets: targets.size });
    const changed = (signal: AbortSignal) => this.#changes.wait(signal);
    const stopping = () => this.#stopping;
    this.hosting = this.host?.start();
    this.#loops = [
      pollLoop({
        log: this.#log,
        retry: this.#retry,
        daemons: this.#client.jobDaemons,
        signal: this.#halt.signal,
        stopping,
        hasRoom: () => this.#pump.hasRoom,
        changed,
        poll: (signal) => this.#client.poll(this.#wait, signal),
        accept: (raw) => this.#accept(raw),
      }),
      reportLoop({
        client: this.#client,
        store: this.#store,
        log: this.#log,
        retry: this.#retry,
        daemons: this.#client.jobDaemons,
        signal: this.#deadline.signal,
        stopping,
        active: () => this.#pump.active,
        changed,
      }),
    ];
  }

  /** Starts, and stops when `signal` aborts; resolves once stopped. */
  async run(signal: AbortSignal, stop: StopOptions = {}): Promise<void> {
    this.start();
    if (!signal.aborted) {
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    }
    await this.stop(stop);
  }

  /**
   * Stops: no new poll, no new job; running jobs finish and their results are reported, within
   * graceMs; then the engines and connections are closed. Jobs that had not started are left to the
   * daemon, which delivers them again after their lease. Safe to call more than once, and without start().
   */
  stop(options: StopOptions = {}): Promise<void> {
    this.#stopped ??= this.#shutdown(options.graceMs ?? DEFAULT_GRACE_MS);
    return this.#stopped;
  }

  async #shutdown(graceMs: number): Promise<void> {
    this.#stopping = true;
    this.#pump.halt();
    this.#halt.abort();
    const timer = setTimeout(() => this.#deadline.abort(), graceMs);
    timer.unref();
    if (this.#pump.queued > 0) {
      const jobs = this.#pump.queued;
      this.#log('info', 'stopping: jobs not started are left for the daemon to deliver again', { jobs });
      for (const job of this.#pump.dropQueued()) this.#store.release(job.id);
    }
    this.#changes.notify();
    const hostStopped = this.hosting?.catch(() => undefined).then(() => this.host?.stop());
    const all = Promise.all([...this.#loops, ...this.#pump.running(), hostStopped]).then(() => {});
    const gaveUp = new Promise<void>((resolve) => {
      if (this.#deadline.signal.aborted) resolve();
      else this.#deadline.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await Promise.race([all, gaveUp]);
    clearTimeout(timer);
    if (this.#pump.active > 0) {
      this.#log('warn', 'stopping: jobs still running after the grace period; their engines are closed', {
        code: 'AGENT_STOP_TIMEOUT',
        jobs: this.#pump.active,
      });
    }
    if (this.#store.size > 0) {
      this.#log('warn', 'stopping: results not accepted by the daemon; it will deliver those jobs again', {
        code: 'AGENT_RESULTS_UNREPORTED',
        results: this.#store.size,
      });
    }
    this.#deadline.abort();
    await this.#engines.closeAll();
    this.#ownTransport?.close();
    this.#log('info', 'agent stopped', { agent: this.#config.name });
  }

  /**
   * One cycle, for tests and cron: one poll (with `wait` seconds of long-poll, default 0), every job in
   * the answer applied, the results reported (up to onceReportAttempts tries). Throws AgentError when
   * the poll fails or its answer is refused. Call stop() afterwards to close the connections.
   */
  async runOnce(options: { wait?: number } = {}): Promise<OnceSummary> {
    if (this.#started || this.#stopping) throw new Error('runOnce is for an agent that is neither started nor stopped');
    const wait = options.wait ?? 0;
    let jobs: unknown[] = [];
    try {
      // One round: a follower's NOT_LEADER or a daemon down moves the poll to the next daemon of the list.
      for (let tried = 1; ; tried++) {
        try {
          jobs = await this.#client.poll(wait, this.#halt.signal);
          break;
        } catch (e) {
          if (tried >= this.#client.jobDaemons.size || this.#halt.signal.aborted) throw e;
          logMove(this.#log, 'poll', e, this.#client.jobDaemons.current);
        }
      }
    } catch (e) {
      const p = transportProblem(e);
      const { status, daemonCode } = e as AgentError;
      this.#log('error', p.message, { code: p.code, cause: p.cause, status, daemonCode });
      throw e instanceof AgentError ? e : new AgentError(p.code, p.message);
    }
    const results: Result[] = [];
    this.#onResult = (r) => results.push(r);
    try {
      for (const j of jobs) this.#accept(j);
      // Not the halt signal: a stop() meanwhile lets running jobs finish (and drops the queued ones).
      while (this.#pump.active > 0 || this.#pump.queued > 0) await this.#changes.wait(NEVER);
      const ctx = { client: this.#client, store: this.#store, log: this.#log, retry: this.#retry };
      await reportAll(ctx, this.#onceReportAttempts, this.#halt.signal);
    } finally {
      this.#onResult = undefined;
    }
    return { received: jobs.length, results, unreported: this.#store.size };
  }

  /** Takes a job from the daemon's answer: checked, deduplicated, queued. */
  #accept(raw: unknown): void {
    const job = jobOf(raw);
    if (typeof job === 'string') {
      const stub = malformedJobStub(raw);
      this.#log('error', `a job from the daemon is malformed: ${job}`, { code: 'AGENT_JOB_INVALID', job: stub?.id });
      if (stub !== undefined && !this.#store.has(stub.id)) {
        // Answer it, so that the daemon does not deliver it again and again.
        this.#store.claim(stub.id);
        const message = `the job is malformed: ${job}`;
        this.#finish(stub, { id: stub.id, outcome: 'failed', code: 'AGENT_JOB_INVALID', message });
      }
      return;
    }
    if (this.#store.has(job.id)) {
      this.#log('debug', 'job already in hand (a redelivery): skipped', { job: job.id, secret: job.secret });
      return;
    }
    if (this.#stopping) {
      const ids = { job: job.id, secret: job.secret };
      this.#log('debug', 'stopping: a job that arrived is left for the daemon to deliver again', ids);
      return;
    }
    this.#store.claim(job.id);
    const { id, secret, target, kind, engine, version } = job;
    this.#log('info', 'job received', { job: id, secret, target, kind, engine, version, step: 'received' });
    publishStep(job, 'received');
    this.#pump.push(job);
  }

  /** Keeps a job's result for the report loop, and wakes whoever waits for a change. */
  #finish(job: Job, full: Result): void {
    const result = this.#store.keep(job, full);
    const { outcome, detail, code } = result;
    const fields = { job: job.id, secret: job.secret, target: job.target, kind: job.kind, outcome, detail, code };
    if (result.outcome === 'done') this.#log('info', 'job done', fields);
    else this.#log('warn', `job failed: ${result.message ?? result.code ?? ''}`, fields);
    this.#onResult?.(result);
    this.#changes.notify();
  }
}
