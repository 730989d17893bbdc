/**
 * The agent: long-polls the daemon for jobs (src/protocol/jobs.ts), applies them to the databases of its
 * own configuration through the engines, and reports the results.
 *
 * Trust: every request is signed with the agent's Ed25519 key; every answer must verify against
 * daemonSigningKey over this request's nonce (so an old answer cannot be replayed), or it is refused
 * whole (AGENT_DAEMON_UNVERIFIED) and nothing in it runs. Jobs carry their credentials sealed to the
 * agent's age recipient, opened only after the answer verified.
 *
 * Per job: the target must be in this agent's configuration (AGENT_TARGET_UNKNOWN), its URL scheme must
 * fit the job's engine (AGENT_ENGINE_MISMATCH), the payload must open (AGENT_SEAL) and have the right
 * shape (AGENT_JOB_INVALID); then `set` + `test` on a fresh connection (DB_TEST_FAILED when the server
 * took the change but refuses the new login), or `retire`. A DbError becomes a failed result with its code.
 *
 * Scheduling: jobs of different secrets run concurrently (at most `concurrency`), jobs of one secret in
 * the order they arrived. The agent polls only while it has room for more work, so delivered jobs do not
 * sit in a queue while their lease runs out.
 *
 * Results stay in memory until the daemon accepted them, and are retried with backoff. When the agent
 * dies before that, the daemon delivers the job again after its lease, and the steps are idempotent.
 *
 * Step boundaries are published on the diagnostics channel `rotor-agent:step` ({ job, secret, step }),
 * right after each step completes: how the crash tests stop the process at each boundary.
 *
 * Logs: identifiers, steps and codes only; never a value, a sealed text, or a driver's message.
 */
import { randomInt } from 'node:crypto';
import diagnostics_channel from 'node:diagnostics_channel';
import http from 'node:http';
import type { IncomingHttpHeaders } from 'node:http';
import https from 'node:https';
import { setTimeout as sleepFor } from 'node:timers/promises';
import type { Logger } from '../../src/log.js';
import { ENGINE_NAMES } from '../../src/model/engines.js';
import { AGENT_JOBS_PATH, AGENT_RESULTS_PATH, MAX_AGENT_WAIT, MAX_RESULT_MESSAGE, MAX_RESULTS_BODY } from '../../src/protocol/jobs.js';
import type { Credential, EngineName, Job, Result, RetirePayload, SetPayload, Strategy } from '../../src/protocol/jobs.js';
import { H_NONCE, signRequest, verifyResponse } from '../../src/protocol/sign.js';
import { openSealed, SealError } from '../../src/protocol/seal.js';
import type { AgentConfig } from './config.js';
import { schemeFitsEngine } from './config.js';
import { DbError } from './engines/types.js';
import type { DbEngine, EngineFactory, TargetConnection } from './engines/types.js';

export const agentStepChannel = diagnostics_channel.channel('rotor-agent:step');

export type AgentStep = 'received' | 'set' | 'tested' | 'retired' | 'reported';

export interface AgentStepMessage {
  readonly job: string;
  readonly secret: string;
  readonly step: AgentStep;
}

/** Errors of the agent's own exchanges with the daemon (a job's failure is a Result, not an error). */
export type AgentErrorCode =
  /** The daemon could not be reached, or the connection broke or timed out. */
  | 'AGENT_DAEMON_UNREACHABLE'
  /** An answer that does not verify with daemonSigningKey for this request: refused whole. */
  | 'AGENT_DAEMON_UNVERIFIED'
  /** A verified answer with an error status (the daemon's code is in daemonCode). */
  | 'AGENT_DAEMON_REFUSED'
  /** A verified answer that is not what the protocol says (not JSON, no jobs list). */
  | 'AGENT_ANSWER_INVALID'
  /** An answer over maxAnswerBytes. */
  | 'AGENT_ANSWER_TOO_LARGE'
  /** The agent is stopping. */
  | 'AGENT_STOPPED';

export class AgentError extends Error {
  constructor(
    readonly code: AgentErrorCode,
    message: string,
    /** The HTTP status of a verified refusal. */
    readonly status?: number,
    /** The daemon's error code of a verified refusal. */
    readonly daemonCode?: string,
  ) {
    super(message);
    this.name = 'AgentError';
  }
}

export interface HttpExchange {
  readonly url: URL;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** For the whole exchange. */
  readonly timeoutMs: number;
  /** The largest answer body taken. */
  readonly maxBytes: number;
  readonly signal: AbortSignal;
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** Sends one POST and returns the answer as received (the agent verifies it); rejects on transport errors. */
export type Transport = (x: HttpExchange) => Promise<HttpAnswer>;

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
  /** The HTTP seam (default: node:http / node:https with a keep-alive agent). */
  readonly transport?: Transport;
  /** How many report attempts runOnce makes before it gives up on results (default 5). */
  readonly onceReportAttempts?: number;
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
/** A results request carries at most this many results, and at most MAX_RESULTS_BODY bytes (the daemon's limit). */
const REPORT_BATCH = 100;
/** Timeout of a results request, and the margin of a poll beyond its `wait`. */
const EXCHANGE_MS = 30_000;
const POLL_MARGIN_MS = 15_000;
const MAX_ID = 256;

const STRATEGIES: readonly Strategy[] = ['dual', 'alternate', 'single'];

/** The engine factories, imported on first use so that the agent loads only the drivers it needs. */
async function loadFactory(engine: EngineName): Promise<EngineFactory> {
  switch (engine) {
    case 'postgres':
      return (await import('./engines/postgres.js')).postgresEngine;
    case 'mysql':
      return (await import('./engines/mysql.js')).mysqlEngine;
    case 'mariadb':
      return (await import('./engines/mysql.js')).mariadbEngine;
    case 'redis':
      return (await import('./engines/redis.js')).redisEngine;
    case 'mongodb':
      return (await import('./engines/mongodb.js')).mongodbEngine;
    case 'mssql':
      return (await import('./engines/mssql.js')).mssqlEngine;
  }
}

const silent: Logger = () => {};
/** A signal that never aborts. */
const NEVER = new AbortController().signal;

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return sleepFor(ms, undefined, { signal }).catch(() => {});
}

/** node:http / node:https, one keep-alive agent each, bounded answers. */
export function nodeTransport(): Transport & { close(): void } {
  const agents = { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };
  const transport = (x: HttpExchange): Promise<HttpAnswer> =>
    new Promise((resolve, reject) => {
      const secure = x.url.protocol === 'https:';
      let settled = false;
      let res: http.IncomingMessage | undefined;
      const settle = (err: unknown, answer?: HttpAnswer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        x.signal.removeEventListener('abort', onAbort);
        if (answer) {
          resolve(answer);
        } else {
          res?.destroy();
          req.destroy();
          reject(err);
        }
      };
      const onAbort = () => settle(new AgentError('AGENT_STOPPED', 'the agent is stopping'));
      const req = (secure ? https : http).request(x.url, {
        method: 'POST',
        headers: { ...x.headers, 'content-type': 'application/json', 'content-length': String(x.body.length) },
        agent: secure ? agents.https : agents.http,
      });
      const timer = setTimeout(() => settle(new AgentError('AGENT_DAEMON_UNREACHABLE', `the daemon did not answer within ${Math.round(x.timeoutMs / 1000)} s`)), x.timeoutMs);
      x.signal.addEventListener('abort', onAbort, { once: true });
      req.on('response', (r: http.IncomingMessage) => {
        res = r;
        const declared = Number(r.headers['content-length']);
        if (Number.isFinite(declared) && declared > x.maxBytes) {
          settle(new AgentError('AGENT_ANSWER_TOO_LARGE', `the daemon's answer is ${declared} bytes, over the ${x.maxBytes}-byte limit`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        r.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > x.maxBytes) settle(new AgentError('AGENT_ANSWER_TOO_LARGE', `the daemon's answer is over the ${x.maxBytes}-byte limit`));
          else chunks.push(chunk);
        });
        r.on('end', () => settle(undefined, { status: r.statusCode ?? 0, headers: r.headers, body: Buffer.concat(chunks) }));
        r.on('error', (e) => settle(e));
        r.on('close', () => settle(new AgentError('AGENT_DAEMON_UNREACHABLE', 'the daemon closed the connection mid-answer')));
      });
      req.on('error', (e) => settle(e));
      req.on('close', () => {
        if (!res) settle(new AgentError('AGENT_DAEMON_UNREACHABLE', 'the connection closed without an answer'));
      });
      if (x.signal.aborted) onAbort();
      else req.end(x.body);
    });
  return Object.assign(transport, {
    close() {
      agents.http.destroy();
      agents.https.destroy();
    },
  });
}

/** A short, value-free description of a transport error. */
function transportProblem(e: unknown): { code: AgentErrorCode; cause?: string; message: string } {
  if (e instanceof AgentError) return { code: e.code, message: e.message };
  const err = e as { code?: unknown; name?: unknown };
  const cause = typeof err?.code === 'string' ? err.code : typeof err?.name === 'string' ? err.name : undefined;
  return { code: 'AGENT_DAEMON_UNREACHABLE', message: `the daemon cannot be reached${cause ? ` (${cause})` : ''}`, ...(cause ? { cause } : {}) };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isName(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_ID;
}

function credentialOf(v: unknown): Credential | undefined {
  if (!isRecord(v) || typeof v.username !== 'string' || typeof v.password !== 'string') return undefined;
  return { username: v.username, password: v.password };
}

/** A job as the protocol defines it, or why not (the problem names fields, never values). */
function jobOf(v: unknown): Job | string {
  if (!isRecord(v)) return 'a job is not an object';
  const { id, kind, secret, version, target, engine, strategy, sealed } = v;
  if (!isName(id)) return 'a job has no id';
  if (kind !== 'set' && kind !== 'retire') return 'kind is neither set nor retire';
  if (!isName(secret)) return 'secret is missing';
  if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 0) return 'version is not a whole number';
  if (!isName(target)) return 'target is missing';
  if (typeof engine !== 'string' || !ENGINE_NAMES.includes(engine as EngineName)) return 'engine is not one the agent drives';
  if (typeof strategy !== 'string' || !STRATEGIES.includes(strategy as Strategy)) return 'strategy is not dual, alternate or single';
  if (typeof sealed !== 'string') return 'sealed is not a string';
  return { id, kind, secret, version, target, engine: engine as EngineName, strategy: strategy as Strategy, sealed };
}

interface Pending {
  readonly job: Job;
  readonly result: Result;
}

export class Agent {
  readonly #config: AgentConfig;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #wait: number;
  readonly #limit: number;
  readonly #baseMs: number;
  readonly #capMs: number;
  readonly #sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  readonly #random: () => number;
  readonly #maxAnswer: number;
  readonly #factories: Partial<Record<EngineName, EngineFactory>>;
  readonly #transport: Transport;
  readonly #ownTransport: (Transport & { close(): void }) | undefined;
  readonly #onceReportAttempts: number;

  /** Jobs waiting, per secret, in arrival order. */
  readonly #queues = new Map<string, Job[]>();
  /** Secrets with a job running. */
  readonly #busy = new Set<string>();
  #active = 0;
  #queued = 0;
  /** Ids of jobs queued, running, or whose result the daemon has not accepted yet: a redelivery of one is skipped. */
  readonly #known = new Set<string>();
  readonly #running = new Set<Promise<void>>();
  /** Results not yet accepted, in completion order. */
  readonly #pending = new Map<string, Pending>();
  readonly #engines = new Map<string, Promise<DbEngine>>();
  #waiters: (() => void)[] = [];
  /** Receives each finished result (runOnce's summary). */
  #onResult: ((r: Result) => void) | undefined;

  #started = false;
  #stopping = false;
  #stopped: Promise<void> | undefined;
  /** Aborted at stop: ends the long poll and the poll loop's delays. */
  readonly #halt = new AbortController();
  /** Aborted when stop's grace runs out: ends the last reports. */
  readonly #deadline = new AbortController();
  #loops: Promise<void>[] = [];

  constructor(config: AgentConfig, options: AgentOptions = {}) {
    this.#config = config;
    this.#log = options.log ?? silent;
    this.#now = options.now ?? Date.now;
    const wait = options.wait ?? DEFAULT_WAIT;
    if (!Number.isInteger(wait) || wait < 0 || wait > MAX_AGENT_WAIT) throw new RangeError(`wait must be a whole number of seconds from 0 to ${MAX_AGENT_WAIT}`);
    this.#wait = wait;
    const limit = options.concurrency ?? DEFAULT_CONCURRENCY;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError('concurrency must be a positive whole number');
    this.#limit = limit;
    this.#baseMs = options.backoff?.baseMs ?? DEFAULT_BASE_MS;
    this.#capMs = options.backoff?.capMs ?? DEFAULT_CAP_MS;
    this.#sleep = options.sleep ?? defaultSleep;
    this.#random = options.random ?? (() => randomInt(1_000_000) / 1_000_000);
    this.#maxAnswer = options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER;
    this.#factories = options.engines ?? {};
    this.#onceReportAttempts = options.onceReportAttempts ?? 5;
    if (options.transport) {
      this.#transport = options.transport;
    } else {
      this.#ownTransport = nodeTransport();
      this.#transport = this.#ownTransport;
    }
  }

  /** Starts polling and reporting in the background; stop() ends it. */
  start(): void {
    if (this.#started || this.#stopping) throw new Error('the agent was already started or stopped');
    this.#started = true;
    this.#log('info', 'agent started', { agent: this.#config.name, daemon: this.#config.daemon.origin, targets: this.#config.targets.size });
    this.#loops = [this.#pollLoop(), this.#reportLoop()];
  }

  /** Starts, and stops when `signal` aborts; resolves once stopped. */
  async run(signal: AbortSignal, stop: StopOptions = {}): Promise<void> {
    this.start();
    if (!signal.aborted) await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
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
    this.#halt.abort();
    const timer = setTimeout(() => this.#deadline.abort(), graceMs);
    timer.unref();
    if (this.#queued > 0) {
      this.#log('info', 'stopping: jobs not started are left for the daemon to deliver again', { jobs: this.#queued });
      for (const q of this.#queues.values()) for (const job of q) this.#known.delete(job.id);
      this.#queues.clear();
      this.#queued = 0;
    }
    this.#notify();
    const all = Promise.all([...this.#loops, ...this.#running]).then(() => {});
    const gaveUp = new Promise<void>((resolve) => {
      if (this.#deadline.signal.aborted) resolve();
      else this.#deadline.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    await Promise.race([all, gaveUp]);
    clearTimeout(timer);
    if (this.#active > 0) this.#log('warn', 'stopping: jobs still running after the grace period; their engines are closed', { code: 'AGENT_STOP_TIMEOUT', jobs: this.#active });
    if (this.#pending.size > 0) {
      this.#log('warn', 'stopping: results not accepted by the daemon; it will deliver those jobs again', { code: 'AGENT_RESULTS_UNREPORTED', results: this.#pending.size });
    }
    this.#deadline.abort();
    await this.#closeEngines();
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
    let jobs: unknown[];
    try {
      jobs = await this.#poll(wait, this.#halt.signal);
    } catch (e) {
      const p = transportProblem(e);
      this.#log('error', p.message, { code: p.code, cause: p.cause, status: (e as AgentError).status, daemonCode: (e as AgentError).daemonCode });
      throw e instanceof AgentError ? e : new AgentError(p.code, p.message);
    }
    const results: Result[] = [];
    this.#onResult = (r) => results.push(r);
    try {
      for (const j of jobs) this.#accept(j);
      // Not the halt signal: a stop() meanwhile lets running jobs finish (and drops the queued ones).
      while (this.#active > 0 || this.#queued > 0) await this.#changed(NEVER);
      for (let attempt = 0; this.#pending.size > 0 && attempt < this.#onceReportAttempts && !this.#halt.signal.aborted; attempt++) {
        const error = await this.#reportBatch(this.#halt.signal);
        if (error === undefined) {
          attempt = -1; // a batch went through: the next one gets its own attempts
          continue;
        }
        if (this.#halt.signal.aborted) break;
        const delayMs = this.#backoffMs(attempt);
        this.#logExchangeFailure('report', error, delayMs);
        if (attempt + 1 < this.#onceReportAttempts) await this.#sleep(delayMs, this.#halt.signal);
      }
    } finally {
      this.#onResult = undefined;
    }
    return { received: jobs.length, results, unreported: this.#pending.size };
  }

  // ---------------------------------------------------------------------------------------------
  // The loops.

  async #pollLoop(): Promise<void> {
    let failures = 0;
    while (!this.#stopping) {
      if (this.#active + this.#queued >= this.#limit) {
        await this.#changed(this.#halt.signal);
        continue;
      }
      let jobs: unknown[];
      try {
        jobs = await this.#poll(this.#wait, this.#halt.signal);
        failures = 0;
      } catch (e) {
        if (this.#stopping) break;
        const delayMs = this.#backoffMs(failures++);
        this.#logExchangeFailure('poll', e, delayMs);
        await this.#sleep(delayMs, this.#halt.signal);
        continue;
      }
      for (const j of jobs) this.#accept(j);
    }
  }

  async #reportLoop(): Promise<void> {
    let failures = 0;
    for (;;) {
      if (this.#deadline.signal.aborted) return;
      if (this.#pending.size === 0) {
        if (this.#stopping && this.#active === 0) return;
        await this.#changed(this.#deadline.signal);
        continue;
      }
      const error = await this.#reportBatch(this.#deadline.signal);
      if (error === undefined) {
        failures = 0;
      } else if (!this.#deadline.signal.aborted) {
        const delayMs = this.#backoffMs(failures++);
        this.#logExchangeFailure('report', error, delayMs);
        await this.#sleep(delayMs, this.#deadline.signal);
      }
    }
  }

  /** Resolves at the next change of the scheduler's state (a job done, a stop), or when `signal` aborts. */
  #changed(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.#waiters.push(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  #notify(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  #backoffMs(attempt: number): number {
    const ceiling = Math.min(this.#capMs, this.#baseMs * 2 ** Math.min(attempt, 30));
    return Math.round(ceiling / 2 + (this.#random() * ceiling) / 2);
  }

  #logExchangeFailure(what: 'poll' | 'report', e: unknown, delayMs: number): void {
    const p = transportProblem(e);
    const level = p.code === 'AGENT_DAEMON_UNREACHABLE' ? 'warn' : 'error';
    this.#log(level, `${what}: ${p.message}; retrying`, {
      code: p.code,
      cause: p.cause,
      status: (e as AgentError).status,
      daemonCode: (e as AgentError).daemonCode,
      delayMs,
    });
  }

  // ---------------------------------------------------------------------------------------------
  // The exchanges.

  /** One signed POST; the answer's JSON when it verified and its status is 200. */
  async #exchange(path: string, payload: unknown, timeoutMs: number, signal: AbortSignal): Promise<unknown> {
    if (signal.aborted) throw new AgentError('AGENT_STOPPED', 'the agent is stopping');
    const body = Buffer.from(JSON.stringify(payload), 'utf8');
    const headers = signRequest({ agent: this.#config.name, method: 'POST', path, body, privateKey: this.#config.keys.signing, now: this.#now() });
    const url = new URL(path, this.#config.daemon);
    const answer = await this.#transport({ url, headers, body, timeoutMs, maxBytes: this.#maxAnswer, signal });
    const verdict = verifyResponse({ headers: answer.headers, status: answer.status, requestNonce: headers[H_NONCE], body: answer.body, publicKey: this.#config.daemonSigningKey });
    if (!verdict.ok) {
      throw new AgentError('AGENT_DAEMON_UNVERIFIED', `the answer to ${path} is refused (${verdict.code}): ${verdict.message}; nothing in it is used`, answer.status);
    }
    let data: unknown;
    try {
      data = JSON.parse(answer.body.toString('utf8'));
    } catch {
      throw new AgentError('AGENT_ANSWER_INVALID', `the daemon's answer to ${path} is not JSON`, answer.status);
    }
    if (answer.status !== 200) {
      const err = isRecord(data) && isRecord(data.error) ? data.error : undefined;
      const daemonCode = typeof err?.code === 'string' && err.code.length <= 64 ? err.code : undefined;
      throw new AgentError('AGENT_DAEMON_REFUSED', `the daemon refused ${path} with status ${answer.status}${daemonCode ? ` (${daemonCode})` : ''}`, answer.status, daemonCode);
    }
    return data;
  }

  async #poll(wait: number, signal: AbortSignal): Promise<unknown[]> {
    const data = await this.#exchange(AGENT_JOBS_PATH, { wait }, wait * 1000 + POLL_MARGIN_MS, signal);
    if (!isRecord(data) || !Array.isArray(data.jobs)) throw new AgentError('AGENT_ANSWER_INVALID', 'the daemon\'s answer to a poll has no "jobs" list', 200);
    if (data.jobs.length > 0) this.#log('debug', 'jobs received', { jobs: data.jobs.length });
    return data.jobs;
  }

  /** Sends a batch of pending results: undefined when the daemon took it, else the error. */
  async #reportBatch(signal: AbortSignal): Promise<unknown> {
    const batch = [];
    let bytes = '{"results":[]}'.length;
    for (const p of this.#pending.values()) {
      const size = Buffer.byteLength(JSON.stringify(p.result)) + 1;
      if (batch.length >= REPORT_BATCH || (batch.length > 0 && bytes + size > MAX_RESULTS_BODY)) break;
      batch.push(p);
      bytes += size;
    }
    if (batch.length === 0) return undefined;
    let data: unknown;
    try {
      data = await this.#exchange(AGENT_RESULTS_PATH, { results: batch.map((p) => p.result) }, EXCHANGE_MS, signal);
    } catch (e) {
      const status = (e as AgentError).status;
      if (e instanceof AgentError && e.code === 'AGENT_DAEMON_REFUSED' && (status === 400 || status === 413 || status === 422)) {
        // The same request would be refused again: drop it; the daemon delivers those jobs again after their lease.
        this.#log('error', 'the daemon refused these results for good; it will deliver the jobs again', { code: 'AGENT_RESULTS_REFUSED', status, daemonCode: e.daemonCode, results: batch.length });
        for (const p of batch) this.#forget(p.job.id);
        return undefined;
      }
      return e ?? new Error('report failed');
    }
    const accepted = isRecord(data) && typeof data.accepted === 'number' ? data.accepted : undefined;
    if (accepted !== batch.length) this.#log('warn', 'the daemon accepted fewer results than sent (jobs no longer leased to this agent)', { sent: batch.length, accepted });
    for (const p of batch) {
      this.#forget(p.job.id);
      this.#log('info', 'result reported', { job: p.job.id, secret: p.job.secret, target: p.job.target, step: 'reported', outcome: p.result.outcome, code: p.result.code });
      this.#publish(p.job, 'reported');
    }
    return undefined;
  }

  #forget(id: string): void {
    this.#pending.delete(id);
    this.#known.delete(id);
  }

  // ---------------------------------------------------------------------------------------------
  // Jobs.

  #publish(job: Job, step: AgentStep): void {
    if (agentStepChannel.hasSubscribers) agentStepChannel.publish({ job: job.id, secret: job.secret, step } satisfies AgentStepMessage);
  }

  #accept(raw: unknown): void {
    const job = jobOf(raw);
    if (typeof job === 'string') {
      const id = isRecord(raw) && isName(raw.id) ? raw.id : undefined;
      this.#log('error', `a job from the daemon is malformed: ${job}`, { code: 'AGENT_JOB_INVALID', job: id });
      if (id !== undefined && !this.#known.has(id)) {
        // Answer it, so that the daemon does not deliver it again and again.
        const stub: Job = { id, kind: 'set', secret: isName((raw as Record<string, unknown>).secret) ? String((raw as Record<string, unknown>).secret) : '', version: 0, target: '', engine: 'postgres', strategy: 'single', sealed: '' };
        this.#known.add(id);
        this.#finish(stub, { id, outcome: 'failed', code: 'AGENT_JOB_INVALID', message: `the job is malformed: ${job}` });
      }
      return;
    }
    if (this.#known.has(job.id)) {
      this.#log('debug', 'job already in hand (a redelivery): skipped', { job: job.id, secret: job.secret });
      return;
    }
    if (this.#stopping) {
      this.#log('debug', 'stopping: a job that arrived is left for the daemon to deliver again', { job: job.id, secret: job.secret });
      return;
    }
    this.#known.add(job.id);
    this.#log('info', 'job received', { job: job.id, secret: job.secret, target: job.target, kind: job.kind, engine: job.engine, version: job.version, step: 'received' });
    this.#publish(job, 'received');
    let q = this.#queues.get(job.secret);
    if (!q) this.#queues.set(job.secret, (q = []));
    q.push(job);
    this.#queued++;
    this.#pump();
  }

  /** Starts queued jobs while there is room: the head of each secret's queue whose secret is not busy. */
  #pump(): void {
    if (this.#stopping) return;
    for (const [secret, q] of this.#queues) {
      if (this.#active >= this.#limit) return;
      if (this.#busy.has(secret)) continue;
      const job = q.shift()!;
      if (q.length === 0) this.#queues.delete(secret);
      this.#queued--;
      this.#busy.add(secret);
      this.#active++;
      const running: Promise<void> = this.#execute(job)
        .catch((e: unknown): Result => {
          this.#log('error', 'a job failed in the agent itself', { job: job.id, secret: job.secret, code: 'AGENT_INTERNAL', cause: (e as Error)?.name });
          return { id: job.id, outcome: 'failed', code: 'AGENT_INTERNAL', message: 'the agent failed unexpectedly (see its log)' };
        })
        .then((result) => {
          this.#running.delete(running);
          this.#busy.delete(secret);
          this.#active--;
          this.#finish(job, result);
          this.#pump();
        });
      this.#running.add(running);
    }
  }

  #finish(job: Job, full: Result): void {
    // The daemon takes messages of up to MAX_RESULT_MESSAGE characters (a driver's message may be longer).
    const result = full.message !== undefined && full.message.length > MAX_RESULT_MESSAGE ? { ...full, message: `${full.message.slice(0, MAX_RESULT_MESSAGE - 3)}...` } : full;
    this.#pending.set(job.id, { job, result });
    const fields = { job: job.id, secret: job.secret, target: job.target, kind: job.kind, outcome: result.outcome, detail: result.detail, code: result.code };
    if (result.outcome === 'done') this.#log('info', 'job done', fields);
    else this.#log('warn', `job failed: ${result.message ?? result.code ?? ''}`, fields);
    this.#onResult?.(result);
    this.#notify();
  }

  async #execute(job: Job): Promise<Result> {
    const failed = (code: string, message: string): Result => ({ id: job.id, outcome: 'failed', code, message });
    const conn = this.#config.targets.get(job.target);
    if (!conn) return failed('AGENT_TARGET_UNKNOWN', `target "${job.target}" is not in this agent's configuration`);
    const scheme = this.#config.schemes.get(job.target) ?? '';
    if (!schemeFitsEngine(scheme, job.engine)) {
      return failed('AGENT_ENGINE_MISMATCH', `target "${job.target}" is a ${scheme}:// URL in this agent's configuration, which does not reach a ${job.engine} server`);
    }
    let payload: unknown;
    try {
      payload = await openSealed(this.#config.keys.identity, job.sealed);
    } catch (e) {
      if (e instanceof SealError) return failed('AGENT_SEAL', `the job's credentials cannot be opened with this agent's identity (${e.code})`);
      throw e;
    }
    try {
      if (job.kind === 'set') {
        const p = isRecord(payload) ? payload : {};
        const pending = credentialOf(p.pending);
        const current = p.current === undefined ? undefined : credentialOf(p.current);
        if (!pending || (p.current !== undefined && !current)) return failed('AGENT_JOB_INVALID', 'the sealed payload of a set job needs pending (and optionally current) with username and password');
        const set: SetPayload = { pending, ...(current ? { current } : {}) };
        const engine = await this.#engine(job, conn);
        const outcome = await engine.set({ strategy: job.strategy, username: set.pending.username, password: set.pending.password, ...(set.current ? { current: set.current } : {}) });
        this.#log('info', `set: ${outcome}`, { job: job.id, secret: job.secret, target: job.target, step: 'set', detail: outcome });
        this.#publish(job, 'set');
        const ok = await engine.test(set.pending);
        this.#log('info', `test: ${ok ? 'the new credential logs in' : 'the new credential is refused'}`, { job: job.id, secret: job.secret, target: job.target, step: 'tested', ok });
        this.#publish(job, 'tested');
        if (!ok) return failed('DB_TEST_FAILED', 'the server accepted the change, but refuses a login with the new credential on a fresh connection');
        return { id: job.id, outcome: 'done', detail: outcome };
      }
      const p = isRecord(payload) ? payload : {};
      const retired = credentialOf(p.retired);
      const current = credentialOf(p.current);
      if (!retired || !current) return failed('AGENT_JOB_INVALID', 'the sealed payload of a retire job needs retired and current, each with username and password');
      const rp: RetirePayload = { retired, current };
      const engine = await this.#engine(job, conn);
      await engine.retire({ strategy: job.strategy, retired: rp.retired, current: rp.current });
      this.#log('info', 'retired', { job: job.id, secret: job.secret, target: job.target, step: 'retired' });
      this.#publish(job, 'retired');
      return { id: job.id, outcome: 'done', detail: 'retired' };
    } catch (e) {
      // The engines' messages carry no value (agent/src/engines/types.ts).
      if (e instanceof DbError) return failed(e.code, e.message);
      throw e;
    }
  }

  /** The engine of a target (one per target and engine, kept for later jobs). */
  #engine(job: Job, conn: TargetConnection): Promise<DbEngine> {
    const key = `${job.target}\0${job.engine}`;
    let engine = this.#engines.get(key);
    if (!engine) {
      const given = this.#factories[job.engine];
      engine = (given ? Promise.resolve(given) : loadFactory(job.engine)).then((factory) => factory(conn));
      this.#engines.set(key, engine);
      engine.catch(() => {
        if (this.#engines.get(key) === engine) this.#engines.delete(key);
      });
    }
    return engine;
  }

  async #closeEngines(): Promise<void> {
    const engines = [...this.#engines.values()];
    this.#engines.clear();
    await Promise.all(engines.map((e) => e.then((x) => x.close()).catch(() => {})));
  }
}
