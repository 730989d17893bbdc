/**
 * The agent (agent/src/agent.ts) and its CLI (agent/src/main.ts) against a stand-in for the daemon: a
 * real node:http server here that checks every request of the agent with verifyRequest, signs its
 * answers with signResponse and a daemon key, and serves jobs sealed with sealForAgent to the agent's
 * recipient. The database steps run against a throwaway PostgreSQL (test/services/postgres.ts) that
 * enforces passwords; the scheduling and reporting rules also run against an in-memory engine whose
 * steps the test holds and releases.
 *
 * No timing: every wait is for an event (a result at the stand-in, a step on `rotor-agent:step`, a
 * backoff handed to the injected sleep, a process exit).
 */
import { spawn } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { existsSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import pg from 'pg';
import type { Test } from 'tap';
import t from 'tap';
import type { AgentOptions, AgentStepMessage } from '../agent/src/agent.js';
import { Agent, AgentError, agentStepChannel } from '../agent/src/agent.js';
import type { AgentConfig } from '../agent/src/config.js';
import { loadAgentConfig } from '../agent/src/config.js';
import { scramSha256Verifier } from '../agent/src/engines/postgres.js';
import type { Credential, DbEngine, RetireJob, SetJob, SetOutcome } from '../agent/src/engines/types.js';
import { DbError } from '../agent/src/engines/types.js';
import type { Keys } from '../src/keys.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import type {
  EngineName,
  Job,
  Result,
  RetirePayload,
  SetPayload,
  Strategy,
  VerifyPayload,
} from '../src/protocol/jobs.js';
import { AGENT_JOBS_PATH, AGENT_RESULTS_PATH, MAX_RESULT_MESSAGE, MAX_RESULTS_BODY } from '../src/protocol/jobs.js';
import { sealForAgent } from '../src/protocol/seal.js';
import { AGENT_AUTH_STATUS, NonceCache, signResponse, verifyRequest, verifyResponse } from '../src/protocol/sign.js';
import { ROOT, tempDir } from './helpers.js';
import { freePort } from './services/common.js';
import type { PgServer } from './services/postgres.js';
import { startPostgres } from './services/postgres.js';

const { escapeIdentifier: ident, escapeLiteral: lit } = pg;
const BIN = path.join(ROOT, 'agent', 'dist', 'main.js');
const AGENT_NAME = 'db-host-1';
const TARGET = 'payments-pg';

// -------------------------------------------------------------------------------------------------
// Values, logs and steps, collected across the whole file.

/** Every value handed to the agent (and its random core): none may appear in a log. */
const secrets = new Set<string>();
function value(tag: string): string {
  const core = randomBytes(12).toString('hex');
  secrets.add(core);
  const v = `${tag}-${core}`;
  secrets.add(v);
  return v;
}

/** Every log line of every agent in this file, and the stderr of every agent process. */
const logText: string[] = [];
const log = jsonLogger((line) => void logText.push(line), Date.now, 'debug');
const logged = (code: string) => logText.filter((l) => (JSON.parse(l) as { code?: string }).code === code).length;

const steps: AgentStepMessage[] = [];
const events = new EventEmitter();
agentStepChannel.subscribe((m) => {
  steps.push(m as AgentStepMessage);
  events.emit('step', m);
});
const stepsOf = (job: string) => steps.filter((s) => s.job === job).map((s) => s.step);

/** Resolves with the first non-undefined `pick()`, checked now and after every `event` of `emitter`. */
function until<T>(emitter: EventEmitter, event: string, pick: () => T | undefined): Promise<T> {
  const now = pick();
  if (now !== undefined) return Promise.resolve(now);
  return new Promise((resolve) => {
    const check = () => {
      const v = pick();
      if (v === undefined) return;
      emitter.off(event, check);
      resolve(v);
    };
    emitter.on(event, check);
  });
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

// -------------------------------------------------------------------------------------------------
// Keys, configuration, jobs.

const base = tempDir(t, 'rotor-agent-');
await generateKeys(path.join(base, 'agent-keys'));
await generateKeys(path.join(base, 'daemon-keys'));
await generateKeys(path.join(base, 'other-keys'));
const agentKeys: Keys = await loadKeys(path.join(base, 'agent-keys'));
const daemonKeys: Keys = await loadKeys(path.join(base, 'daemon-keys'));
const otherKeys: Keys = await loadKeys(path.join(base, 'other-keys'));

let configSeq = 0;
function writeConfig(daemonPort: number, pgPort: number): string {
  const file = path.join(base, `agent-${++configSeq}.yaml`);
  writeFileSync(
    file,
    [
      `daemon: http://127.0.0.1:${daemonPort}`,
      `name: ${AGENT_NAME}`,
      `keyDir: ${path.join(base, 'agent-keys')}`,
      `daemonSigningKey: "${daemonKeys.signingKey}"`,
      'targets:',
      `  ${TARGET}:`,
      `    url: postgres://rotor_admin@127.0.0.1:${pgPort}/postgres`,
      '    password: { env: PG_ADMIN_PASSWORD }',
      '    timeout: 5s',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  return file;
}

let jobSeq = 0;
async function makeJob(
  kind: 'set' | 'retire' | 'verify',
  secret: string,
  payload: SetPayload | RetirePayload | VerifyPayload | Record<string, unknown>,
  opts: { strategy?: Strategy; target?: string; engine?: EngineName; recipient?: string } = {},
): Promise<Job> {
  return {
    id: `job-${++jobSeq}`,
    kind,
    secret,
    version: jobSeq,
    target: opts.target ?? TARGET,
    engine: opts.engine ?? 'postgres',
    strategy: opts.strategy ?? 'alternate',
    sealed: await sealForAgent(opts.recipient ?? agentKeys.recipient, payload),
  };
}

// -------------------------------------------------------------------------------------------------
// The daemon stand-in.

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

class StandIn extends EventEmitter {
  queue: Job[] = [];
  readonly results: Result[] = [];
  /** The size of each results request's body, in bytes. */
  readonly resultBodies: number[] = [];
  /** Codes of agent requests that failed verifyRequest (none expected). */
  readonly refused: string[] = [];
  /** Every genuine answer to a poll, with the nonce of the request it answered. */
  readonly answers: { nonce: string; answer: Answer; jobs: string[] }[] = [];
  /** Results requests to drop (the connection is destroyed without an answer). */
  dropResults = 0;
  droppedResults = 0;
  polls = 0;
  /** Rewrites an answer before it is sent. */
  tamper: ((a: Answer, requestNonce: string) => Answer) | undefined;
  readonly #server = http.createServer(
    (req, res) => void this.#handle(req, res).catch((e: unknown) => this.emit('failure', e)),
  );
  readonly #nonces = new NonceCache();
  readonly #agentKey: KeyObject = createPublicKey(agentKeys.signing);
  readonly #wake = new Set<() => void>();
  port = 0;

  async listen(port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (this.#server.address() as { port: number }).port;
    return this.port;
  }

  async close(): Promise<void> {
    for (const w of this.#wake) w();
    this.#server.closeAllConnections();
    if (this.#server.listening) await new Promise((r) => this.#server.close(r));
  }

  enqueue(...jobs: Job[]): void {
    this.queue.push(...jobs);
    for (const w of this.#wake) w();
  }

  /** The first result for `id` received after the first `after` results. */
  result(id: string, after = 0): Promise<Result> {
    return until(this, 'result', () => this.results.slice(after).find((r) => r.id === id));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    const verdict = verifyRequest({
      headers: req.headers,
      method: req.method ?? '',
      path: req.url ?? '',
      body,
      now: Date.now(),
      keyOf: (name) => (name === AGENT_NAME ? this.#agentKey : undefined),
      nonces: this.#nonces,
    });
    if (!verdict.ok) {
      this.refused.push(verdict.code);
      res.writeHead(AGENT_AUTH_STATUS[verdict.code]).end();
      return;
    }
    const input = JSON.parse(body.toString('utf8')) as { wait?: number; results?: Result[] };
    if (req.url === AGENT_JOBS_PATH) {
      this.polls++;
      if (this.queue.length === 0 && (input.wait ?? 0) > 0) {
        await new Promise<void>((resolve) => {
          const done = () => {
            this.#wake.delete(done);
            clearTimeout(timer);
            resolve();
          };
          const timer = setTimeout(done, (input.wait ?? 0) * 1000);
          this.#wake.add(done);
          res.once('close', done);
          this.emit('held');
        });
        if (res.destroyed || !this.#server.listening) {
          this.emit('abandoned');
          return;
        }
      }
      const jobs = this.queue.splice(0);
      this.#send(
        res,
        200,
        { jobs },
        verdict.nonce,
        jobs.map((j) => j.id),
      );
      return;
    }
    if (req.url === AGENT_RESULTS_PATH) {
      if (this.dropResults > 0) {
        this.dropResults--;
        this.droppedResults++;
        req.socket.destroy();
        this.emit('dropped');
        return;
      }
      const results = input.results ?? [];
      this.resultBodies.push(body.length);
      for (const r of results) {
        this.results.push(r);
        this.emit('result', r);
      }
      this.#send(res, 200, { accepted: results.length }, verdict.nonce);
      return;
    }
    this.#send(res, 404, { error: { code: 'NOT_FOUND', message: 'no such route' } }, verdict.nonce);
  }

  #send(res: http.ServerResponse, status: number, data: unknown, nonce: string, jobs?: string[]): void {
    const body = JSON.stringify(data);
    const genuine: Answer = {
      status,
      headers: { ...signResponse({ status, requestNonce: nonce, body, privateKey: daemonKeys.signing }) },
      body,
    };
    if (jobs) this.answers.push({ nonce, answer: genuine, jobs });
    const a = this.tamper ? this.tamper(genuine, nonce) : genuine;
    res.writeHead(a.status, {
      ...a.headers,
      'content-type': 'application/json',
      'content-length': String(Buffer.byteLength(a.body)),
    });
    res.end(a.body);
  }
}

async function startStandIn(tt: Test, port = 0): Promise<StandIn> {
  const s = new StandIn();
  await s.listen(port);
  tt.teardown(() => s.close());
  return s;
}

/** Options every in-process agent gets: the shared log; backoff delays recorded and skipped. */
function agentOptions(extra: AgentOptions = {}): AgentOptions {
  return { log, sleep: async () => {}, ...extra };
}

// -------------------------------------------------------------------------------------------------
// An engine whose steps the test holds and releases.

class HeldEngine implements DbEngine {
  readonly engine = 'postgres' as const;
  readonly started: string[] = [];
  readonly events = new EventEmitter();
  closed = 0;
  readonly #gates = new Map<string, ReturnType<typeof deferred>>();

  hold(...users: string[]): void {
    for (const u of users) this.#gates.set(u, deferred());
  }
  release(user: string): void {
    this.#gates.get(user)?.resolve();
  }
  whenStarted(user: string): Promise<true> {
    return until(this.events, 'set', () => (this.started.includes(user) ? true : undefined));
  }
  async set(job: SetJob): Promise<SetOutcome> {
    this.started.push(job.username);
    this.events.emit('set');
    await this.#gates.get(job.username)?.promise;
    return 'applied';
  }
  async test(_c: Credential): Promise<boolean> {
    return true;
  }
  async retire(_job: RetireJob): Promise<void> {}
  async close(): Promise<void> {
    this.closed++;
  }
}

// -------------------------------------------------------------------------------------------------
// Without a database.

async function fakeConfig(daemonPort: number): Promise<AgentConfig> {
  return loadAgentConfig(writeConfig(daemonPort, 1), { env: { PG_ADMIN_PASSWORD: value('unused-admin') } });
}

t.test('scheduling: secrets run concurrently up to the bound, the jobs of one secret in order', async (tt) => {
  const standIn = await startStandIn(tt);
  const engine = new HeldEngine();
  const agent = new Agent(
    await fakeConfig(standIn.port),
    agentOptions({ concurrency: 2, engines: { postgres: () => engine } }),
  );
  tt.teardown(() => agent.stop());
  const set = (secret: string, user: string) =>
    makeJob('set', secret, { pending: { username: user, password: value('p') } }, { strategy: 'single' });
  const jobs = [await set('app/a', 'a1'), await set('app/a', 'a2'), await set('app/b', 'b1'), await set('app/c', 'c1')];
  engine.hold('a1', 'a2', 'b1', 'c1');
  standIn.enqueue(...jobs);
  const cycle = agent.runOnce();

  await Promise.all([engine.whenStarted('a1'), engine.whenStarted('b1')]);
  tt.same(
    engine.started.slice().sort(),
    ['a1', 'b1'],
    'the first job of app/a and of app/b run at once; the bound (2) holds c1 back',
  );
  engine.release('b1');
  await engine.whenStarted('c1');
  tt.same(engine.started.slice(2), ['c1'], 'b1 done: c1 takes its place');
  tt.notOk(engine.started.includes('a2'), 'a2 waits for a1 (same secret), even with a free slot');
  engine.release('a1');
  await engine.whenStarted('a2');
  engine.release('c1');
  engine.release('a2');
  const summary = await cycle;
  tt.equal(summary.received, 4, 'four jobs in the answer');
  tt.same(summary.results.map((r) => r.id).sort(), jobs.map((j) => j.id).sort(), 'every job has a result');
  tt.same(
    summary.results.slice(0, 2).map((r) => r.id),
    [jobs[2]!.id, jobs[0]!.id],
    'b1 finished first, then a1',
  );
  tt.ok(
    summary.results.every((r) => r.outcome === 'done' && r.detail === 'applied'),
    'all done',
  );
  tt.equal(summary.unreported, 0, 'all reported');
  tt.same(standIn.results.map((r) => r.id).sort(), jobs.map((j) => j.id).sort(), 'the stand-in has the four results');
  for (const j of jobs)
    tt.same(
      stepsOf(j.id),
      ['received', 'set', 'tested', 'reported'],
      `${j.id}: received, set, tested, reported on rotor-agent:step`,
    );
  tt.same(standIn.refused, [], 'every request of the agent verified at the stand-in');
});

t.test('a result is kept until the daemon accepts it, and the job is not run again meanwhile', async (tt) => {
  const standIn = await startStandIn(tt);
  const engine = new HeldEngine();
  const sleeps: number[] = [];
  const agent = new Agent(
    await fakeConfig(standIn.port),
    agentOptions({ wait: 5, engines: { postgres: () => engine }, sleep: async (ms) => void sleeps.push(ms) }),
  );
  standIn.dropResults = 2;
  const job = await makeJob(
    'set',
    'app/report',
    { pending: { username: 'r1', password: value('p') } },
    { strategy: 'single' },
  );
  // Delivered twice (as after a lease ran out) while the result is still unreported: run once.
  standIn.enqueue(job);
  agent.start();
  await until(standIn, 'dropped', () => (standIn.droppedResults === 1 ? true : undefined));
  standIn.enqueue(job);
  const result = await standIn.result(job.id);
  await agent.stop();
  tt.equal(standIn.droppedResults, 2, 'the first two reports were cut off');
  tt.same(result, { id: job.id, outcome: 'done', detail: 'applied' }, 'the third got through, with the result');
  tt.ok(sleeps.length >= 2, 'the agent backed off between the attempts');
  tt.ok(
    sleeps.every((ms) => ms > 0 && ms <= 30_000),
    'backoff delays are positive and capped at 30 s',
  );
  tt.same(engine.started, ['r1'], 'the job ran once');
  tt.same(
    stepsOf(job.id),
    ['received', 'set', 'tested', 'reported'],
    'and was reported once, after the daemon accepted it',
  );
  tt.same(standIn.refused, [], 'every request verified');
});

t.test("results go in requests within the daemon's body limit, long messages shortened", async (tt) => {
  const standIn = await startStandIn(tt);
  // A driver's message of 5,000 control characters: JSON writes each as 6 bytes.
  const failing: DbEngine = {
    engine: 'postgres',
    set: async () => {
      throw new DbError('DB_ERROR', '\u0001'.repeat(5000));
    },
    test: async () => true,
    retire: async () => {},
    close: async () => {},
  };
  const agent = new Agent(
    await fakeConfig(standIn.port),
    agentOptions({ concurrency: 8, engines: { postgres: () => failing } }),
  );
  tt.teardown(() => agent.stop());
  const jobs = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      makeJob('set', `app/long-${i}`, { pending: { username: `u${i}`, password: value('p') } }, { strategy: 'single' }),
    ),
  );
  standIn.enqueue(...jobs);
  const summary = await agent.runOnce();
  tt.equal(summary.unreported, 0, 'every result reported');
  tt.equal(standIn.results.length, 100);
  tt.ok(
    standIn.results.every((r) => r.code === 'DB_ERROR' && r.message!.length <= MAX_RESULT_MESSAGE),
    `messages shortened to ${MAX_RESULT_MESSAGE} characters`,
  );
  tt.ok(standIn.resultBodies.length >= 3, `split over ${standIn.resultBodies.length} requests`);
  tt.ok(
    standIn.resultBodies.every((n) => n <= MAX_RESULTS_BODY),
    `each within ${MAX_RESULTS_BODY} bytes (${standIn.resultBodies.join(', ')})`,
  );
});

t.test('backoff: jittered, doubling, capped at 30 s', async (tt) => {
  // The stand-in is down for good: each failed poll hands a delay to the sleep; stop after 12 of them.
  const port = await freePort();
  const sleeps: number[] = [];
  const enough = deferred();
  // Each sleep returns at once, except from the 12th on: those last until the agent stops.
  const agent = new Agent(
    await fakeConfig(port),
    agentOptions({
      random: () => 0.999,
      sleep: (ms, signal) => {
        sleeps.push(ms);
        if (sleeps.length === 12) enough.resolve();
        if (sleeps.length < 12 || signal.aborted) return Promise.resolve();
        return new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
      },
    }),
  );
  agent.start();
  await enough.promise;
  await agent.stop();
  tt.ok(sleeps[0]! >= 250 && sleeps[0]! <= 500, `the first delay is about 500 ms (${sleeps[0]})`);
  for (let i = 1; i < 6; i++) tt.ok(sleeps[i]! > sleeps[i - 1]!, `delay ${i + 1} grows (${sleeps[i]})`);
  tt.ok(
    sleeps.every((ms) => ms <= 30_000),
    'never over 30 s',
  );
  tt.ok(sleeps[11]! > 29_000, `the delay reaches the cap (${sleeps[11]})`);
  tt.equal(sleeps[11], sleeps[10], 'and stops growing there');
  tt.ok(logged('AGENT_DAEMON_UNREACHABLE') >= 12, 'each failure is logged as AGENT_DAEMON_UNREACHABLE');
});

t.test('stop: running jobs finish and are reported, queued ones are left to the daemon, engines closed', async (tt) => {
  const standIn = await startStandIn(tt);
  const engine = new HeldEngine();
  const agent = new Agent(
    await fakeConfig(standIn.port),
    agentOptions({ wait: 5, concurrency: 1, engines: { postgres: () => engine } }),
  );
  const running = await makeJob(
    'set',
    'app/stop1',
    { pending: { username: 's1', password: value('p') } },
    { strategy: 'single' },
  );
  const queued = await makeJob(
    'set',
    'app/stop2',
    { pending: { username: 's2', password: value('p') } },
    { strategy: 'single' },
  );
  engine.hold('s1');
  standIn.enqueue(running, queued);
  agent.start();
  await engine.whenStarted('s1');
  const stopped = agent.stop();
  engine.release('s1');
  await stopped;
  tt.same(
    standIn.results,
    [{ id: running.id, outcome: 'done', detail: 'applied' }],
    'the running job finished and was reported before stop returned',
  );
  tt.same(stepsOf(running.id), ['received', 'set', 'tested', 'reported'], 'its step boundaries');
  tt.same(
    stepsOf(queued.id),
    ['received'],
    'the queued job never started (the daemon delivers it again after its lease)',
  );
  tt.same(engine.started, ['s1'], 'only s1 reached the engine');
  tt.equal(engine.closed, 1, 'the engine was closed');
});

t.test('stop is bounded: a job that never ends does not hold it forever', async (tt) => {
  const standIn = await startStandIn(tt);
  const engine = new HeldEngine();
  const agent = new Agent(
    await fakeConfig(standIn.port),
    agentOptions({ wait: 5, engines: { postgres: () => engine } }),
  );
  const stuck = await makeJob(
    'set',
    'app/stuck',
    { pending: { username: 'stuck', password: value('p') } },
    { strategy: 'single' },
  );
  engine.hold('stuck');
  standIn.enqueue(stuck);
  agent.start();
  await engine.whenStarted('stuck');
  const timeouts = logged('AGENT_STOP_TIMEOUT');
  await agent.stop({ graceMs: 20 });
  tt.equal(logged('AGENT_STOP_TIMEOUT'), timeouts + 1, 'stop returned after the grace period, and said why');
  tt.equal(engine.closed, 1, 'the engine was closed anyway');
  engine.release('stuck');
});

t.test('answers the agent refuses: too large, not 200, not from the daemon', async (tt) => {
  const standIn = await startStandIn(tt);
  const agent = new Agent(await fakeConfig(standIn.port), agentOptions({ maxAnswerBytes: 4096 }));
  tt.teardown(() => agent.stop());
  const job = await makeJob(
    'set',
    'app/refused',
    { pending: { username: 'x', password: value('p') } },
    { strategy: 'single' },
  );
  const fail = (p: Promise<unknown>) =>
    p.then(
      () => undefined,
      (e: unknown) => e as AgentError,
    );

  const sign = (status: number, body: string, nonce: string) => ({
    status,
    body,
    headers: { ...signResponse({ status, requestNonce: nonce, body, privateKey: daemonKeys.signing }) },
  });
  standIn.tamper = (_a, nonce) => sign(200, JSON.stringify({ jobs: [], pad: 'x'.repeat(8192) }), nonce);
  tt.equal(
    (await fail(agent.runOnce()))?.code,
    'AGENT_ANSWER_TOO_LARGE',
    'over maxAnswerBytes: AGENT_ANSWER_TOO_LARGE, even when signed',
  );
  standIn.tamper = (_a, nonce) =>
    sign(503, JSON.stringify({ error: { code: 'DAEMON_BUSY', message: 'later' } }), nonce);
  const refused = await fail(agent.runOnce());
  tt.match(
    refused,
    { code: 'AGENT_DAEMON_REFUSED', status: 503, daemonCode: 'DAEMON_BUSY' },
    "a signed error answer: AGENT_DAEMON_REFUSED with the daemon's code",
  );
  standIn.tamper = (a) => ({ ...a, headers: {} });
  tt.equal(
    (await fail(agent.runOnce()))?.code,
    'AGENT_DAEMON_UNVERIFIED',
    'an unsigned answer: AGENT_DAEMON_UNVERIFIED',
  );
  standIn.tamper = (a) => ({ ...a, body: JSON.stringify({ jobs: [job] }) });
  tt.equal(
    (await fail(agent.runOnce()))?.code,
    'AGENT_DAEMON_UNVERIFIED',
    'a signed answer whose body was swapped (a job slipped in): AGENT_DAEMON_UNVERIFIED',
  );
  standIn.tamper = undefined;
  tt.same(stepsOf(job.id), [], 'the slipped-in job was not received');
  tt.same((await agent.runOnce()).received, 0, 'a genuine answer is taken again');
});

// -------------------------------------------------------------------------------------------------
// The CLI without a database.

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function runCli(
  args: string[],
  env: NodeJS.ProcessEnv,
  onStart?: (child: ReturnType<typeof spawn>) => void,
): Promise<Run> {
  return new Promise((resolve, reject) => {
    // env -u NODE_OPTIONS: tap's loaders in NODE_OPTIONS would be inherited by the child.
    const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, BIN, ...args], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => void (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => void (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      logText.push(...stderr.split('\n').filter((l) => l.startsWith('{')));
      resolve({ code, signal, stdout, stderr });
    });
    onStart?.(child);
  });
}

t.test('rotor-agent: help, usage and configuration errors', async (tt) => {
  tt.ok(existsSync(BIN), `${path.relative(ROOT, BIN)} is built (npx tsc -p tsconfig.json)`);
  const help = await runCli(['--help'], {});
  tt.equal(help.code, 0, '--help exits 0');
  tt.match(help.stdout, /--config FILE/, 'it shows the usage');
  tt.match(help.stdout, /daemonSigningKey/, 'and the configuration format');
  tt.match(help.stdout, /README/, 'and points to the README');

  const none = await runCli([], {});
  tt.equal(none.code, 2, 'no --config: exit 2');
  tt.match(none.stderr, /--config FILE \(or ROTOR_AGENT_CONFIG\) is required/, 'and says what is missing');
  const unknown = await runCli(['--config', 'x.yaml', '--frobnicate'], {});
  tt.equal(unknown.code, 2, 'an unknown option: exit 2');

  // ROTOR_AGENT_CONFIG names the file; its admin password variable is not set.
  const file = writeConfig(1, 1);
  const invalid = await runCli([], { ROTOR_AGENT_CONFIG: file });
  tt.equal(invalid.code, 1, 'an invalid configuration: exit 1');
  tt.match(
    invalid.stderr,
    new RegExp(`${path.basename(file)}:\\d+:\\d+: error: .*PG_ADMIN_PASSWORD.*\\[AGENT_CONFIG_ENV_UNSET\\]`),
    'with each problem at its line and column',
  );
});

// -------------------------------------------------------------------------------------------------
// With PostgreSQL.

const srv = await startPostgres(t);
if (srv) await withPostgres(srv);

t.test('no value in any log', async (tt) => {
  tt.ok(logText.length > 20, `${logText.length} log lines collected (agents in this process and the CLI processes)`);
  for (const line of logText) JSON.parse(line);
  const leaked = [...secrets].filter((s) => logText.some((l) => l.includes(s)));
  tt.same(leaked, [], `none of the ${secrets.size} values (or their random cores) appears in a log line`);
  tt.notOk(
    logText.some((l) => l.includes('AGE ENCRYPTED') || l.includes('AGE-SECRET-KEY')),
    'no sealed text or identity either',
  );
  tt.notOk(
    logText.some((l) => /"password"\s*:/.test(l)),
    'no password field',
  );
});

async function withPostgres(srv: PgServer): Promise<void> {
  const adminPassword = value('admin');
  const env = { PG_ADMIN_PASSWORD: adminPassword };
  const setPassword = (role: string, password: string) =>
    srv.query(`ALTER ROLE ${ident(role)} PASSWORD ${lit(scramSha256Verifier(password))}`);
  await srv.query(`
    CREATE ROLE rotor_admin LOGIN CREATEROLE;
    CREATE ROLE app_owner NOLOGIN;
    CREATE ROLE app_blue LOGIN IN ROLE app_owner;
    CREATE ROLE app_green LOGIN IN ROLE app_owner;
    CREATE ROLE app_single LOGIN IN ROLE app_owner;
    CREATE ROLE app_nologin NOLOGIN IN ROLE app_owner;
  `);
  if (srv.version >= 16)
    await srv.query('GRANT app_blue, app_green, app_single, app_nologin TO rotor_admin WITH ADMIN OPTION');
  await setPassword('rotor_admin', adminPassword);
  const blue0: Credential = { username: 'app_blue', password: value('blue0') };
  await setPassword('app_blue', blue0.password);

  /** A plain pg client's login: 'ok' or the SQLSTATE of the refusal. */
  const login = async (c: Credential): Promise<string> => {
    const client = new pg.Client({
      host: srv.host,
      port: srv.port,
      database: 'postgres',
      user: c.username,
      password: c.password,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      await client.query('SELECT 1');
      return 'ok';
    } catch (e) {
      return (e as { code?: string }).code ?? 'error';
    } finally {
      await client.end().catch(() => {});
    }
  };
  const roles = () =>
    srv.query(
      `SELECT rolname, rolpassword, rolvaliduntil::text AS v, rolcanlogin FROM pg_authid WHERE rolname LIKE 'app\\_%' ORDER BY 1`,
    );

  const standIn = await startStandIn(t);
  const config = await loadAgentConfig(writeConfig(standIn.port, srv.port), { env });
  const agent = new Agent(config, agentOptions());
  t.teardown(() => agent.stop());

  const green1: Credential = { username: 'app_green', password: value('green1') };
  const setGreen = await makeJob('set', 'payments/db', { pending: green1, current: blue0 });

  t.test('set (alternate): done/applied, and the new value logs in', async (tt) => {
    standIn.enqueue(setGreen);
    const summary = await agent.runOnce();
    tt.same(summary.results, [{ id: setGreen.id, outcome: 'done', detail: 'applied' }], 'the result');
    tt.same(standIn.results.at(-1), summary.results[0], 'reported to the daemon');
    tt.equal(await login(green1), 'ok', 'app_green logs in with the new value (plain pg client)');
    tt.equal(await login(blue0), 'ok', 'app_blue (current) still logs in');
    tt.same(stepsOf(setGreen.id), ['received', 'set', 'tested', 'reported'], 'the step boundaries');
  });

  t.test('the same job again (a redelivery): done/already-applied, nothing changed', async (tt) => {
    const before = await roles();
    standIn.enqueue(setGreen);
    const summary = await agent.runOnce();
    tt.same(summary.results, [{ id: setGreen.id, outcome: 'done', detail: 'already-applied' }], 'the result');
    tt.same(await roles(), before, 'the roles are as they were (same verifier, same expiry)');
    const sessions = await srv.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'rotor_admin'`,
    );
    tt.same(sessions, [{ n: 1 }], 'one admin session across the cycles: the engine of the target is kept');
  });

  t.test('retire (alternate): done, the retired credential no longer logs in', async (tt) => {
    const job = await makeJob('retire', 'payments/db', { retired: blue0, current: green1 });
    standIn.enqueue(job);
    const summary = await agent.runOnce();
    tt.same(summary.results, [{ id: job.id, outcome: 'done', detail: 'retired' }], 'the result');
    tt.equal(await login(blue0), '28P01', 'app_blue with the retired value is refused');
    tt.equal(await login(green1), 'ok', 'app_green (current) still logs in');
    tt.same(stepsOf(job.id), ['received', 'retired', 'reported'], 'the step boundaries');
  });

  t.test(
    'verify: a login per credential (ok, refused), nothing changed; a bad payload: AGENT_JOB_INVALID',
    async (tt) => {
      const before = await roles();
      const job = await makeJob('verify', 'payments/db', { current: green1, previous: blue0 });
      const alone = await makeJob('verify', 'payments/db', { current: green1 });
      const missing = await makeJob('verify', 'payments/db', { previous: green1 });
      const badPrevious = await makeJob('verify', 'payments/db', {
        current: green1,
        previous: { username: 'app_blue' },
      });
      const huge = await makeJob('verify', 'payments/db', {
        current: { username: 'app_green', password: 'x'.repeat(5000) },
      });
      const longName = await makeJob('verify', 'payments/db', {
        current: { username: 'u'.repeat(300), password: green1.password },
      });
      standIn.enqueue(job, alone, missing, badPrevious, huge, longName);
      const summary = await agent.runOnce();
      const byId = new Map(summary.results.map((r) => [r.id, r]));
      tt.same(
        byId.get(job.id),
        {
          id: job.id,
          outcome: 'done',
          detail: 'verified',
          checks: [
            { credential: 'current', outcome: 'ok' },
            { credential: 'previous', outcome: 'refused' },
          ],
        },
        'the current credential logs in, the retired one is refused',
      );
      tt.same(byId.get(alone.id)?.checks, [{ credential: 'current', outcome: 'ok' }], 'no previous: one check');
      for (const bad of [missing, badPrevious, huge, longName])
        tt.match(byId.get(bad.id), { outcome: 'failed', code: 'AGENT_JOB_INVALID' }, `${bad.id}: AGENT_JOB_INVALID`);
      tt.same(await roles(), before, 'no role changed');
      tt.same(stepsOf(job.id), ['received', 'reported'], 'no database step');
    },
  );

  const blue2: Credential = { username: 'app_blue', password: value('blue2') };

  t.test('refusals that change nothing: unknown target, wrong engine, sealed to someone else', async (tt) => {
    const before = await roles();
    const payload = { pending: blue2, current: green1 };
    const unknown = await makeJob('set', 'payments/db', payload, { target: 'orders-pg' });
    const mismatch = await makeJob('set', 'payments/db', payload, { engine: 'mysql' });
    const foreign = await makeJob('set', 'payments/db', payload, { recipient: otherKeys.recipient });
    standIn.enqueue(unknown, mismatch, foreign);
    const summary = await agent.runOnce();
    const byId = new Map(summary.results.map((r) => [r.id, r]));
    tt.match(
      byId.get(unknown.id),
      { outcome: 'failed', code: 'AGENT_TARGET_UNKNOWN', message: /"orders-pg" is not in this agent's configuration/ },
      'a target not in the config: AGENT_TARGET_UNKNOWN',
    );
    tt.match(
      byId.get(mismatch.id),
      { outcome: 'failed', code: 'AGENT_ENGINE_MISMATCH' },
      'a mysql job for a postgres:// target: AGENT_ENGINE_MISMATCH',
    );
    tt.match(
      byId.get(foreign.id),
      { outcome: 'failed', code: 'AGENT_SEAL', message: /SEAL_WRONG_KEY/ },
      'sealed to another recipient: AGENT_SEAL',
    );
    tt.equal(
      standIn.results.filter((r) => [unknown.id, mismatch.id, foreign.id].includes(r.id)).length,
      3,
      'all three reported',
    );
    tt.same(await roles(), before, 'no role changed');
    tt.equal(await login(blue2), '28P01', 'the value in those jobs does not log in');
    for (const j of [unknown, mismatch, foreign])
      tt.same(stepsOf(j.id), ['received', 'reported'], `${j.id}: no database step`);
  });

  t.test('an answer with a bad daemon signature is refused whole', async (tt) => {
    const before = await roles();
    const job = await makeJob('set', 'payments/db', { pending: blue2, current: green1 });
    const impostor = generateKeyPairSync('ed25519').privateKey;
    standIn.tamper = (a, nonce) => ({
      ...a,
      headers: { ...signResponse({ status: a.status, requestNonce: nonce, body: a.body, privateKey: impostor }) },
    });
    const unverified = logged('AGENT_DAEMON_UNVERIFIED');
    standIn.enqueue(job);
    const err = await agent.runOnce().then(
      () => undefined,
      (e: unknown) => e,
    );
    standIn.tamper = undefined;
    tt.ok(err instanceof AgentError, 'runOnce fails');
    tt.equal((err as AgentError).code, 'AGENT_DAEMON_UNVERIFIED', 'with AGENT_DAEMON_UNVERIFIED');
    tt.equal(logged('AGENT_DAEMON_UNVERIFIED'), unverified + 1, 'logged as AGENT_DAEMON_UNVERIFIED');
    tt.same(stepsOf(job.id), [], 'the job in it was not even received');
    tt.notOk(
      standIn.results.some((r) => r.id === job.id),
      'no result for it',
    );
    tt.same(await roles(), before, 'no role changed');
    tt.equal(await login(blue2), '28P01', 'its value does not log in');

    // Control: the very same job, in an answer the daemon really signed, runs.
    standIn.enqueue(job);
    const summary = await agent.runOnce();
    tt.same(
      summary.results,
      [{ id: job.id, outcome: 'done', detail: 'applied' }],
      'control: the same job, genuinely signed, is applied',
    );
    tt.equal(await login(blue2), 'ok', 'control: and its value logs in');
  });

  t.test('a replayed old answer is refused', async (tt) => {
    const recorded = standIn.answers.find((a) => a.jobs.includes(setGreen.id));
    tt.ok(recorded, 'the stand-in recorded the answer that delivered the first set job');
    const old = recorded!.answer;
    tt.same(
      verifyResponse({
        headers: old.headers,
        status: old.status,
        requestNonce: recorded!.nonce,
        body: old.body,
        publicKey: config.daemonSigningKey,
      }),
      { ok: true },
      'control: it verifies for the request it answered',
    );
    const before = await roles();
    const stepsBefore = steps.length;
    const resultsBefore = standIn.results.length;
    standIn.tamper = () => old;
    const err = await agent.runOnce().then(
      () => undefined,
      (e: unknown) => e,
    );
    standIn.tamper = undefined;
    tt.equal(
      (err as AgentError | undefined)?.code,
      'AGENT_DAEMON_UNVERIFIED',
      "refused: it was signed for another request's nonce",
    );
    tt.same(steps.slice(stepsBefore), [], 'no job in it was received');
    tt.equal(standIn.results.length, resultsBefore, 'no result sent');
    tt.same(await roles(), before, 'no role changed');
  });

  t.test('the test gate: the server takes the change, but the new login is refused -> DB_TEST_FAILED', async (tt) => {
    const pending: Credential = { username: 'app_nologin', password: value('nologin') };
    const job = await makeJob('set', 'batch/db', { pending }, { strategy: 'single' });
    standIn.enqueue(job);
    const summary = await agent.runOnce();
    tt.match(
      summary.results,
      [{ id: job.id, outcome: 'failed', code: 'DB_TEST_FAILED', message: /accepted the change, but refuses a login/ }],
      'failed, DB_TEST_FAILED',
    );
    tt.same(stepsOf(job.id), ['received', 'set', 'tested', 'reported'], 'set went through, then the test');
    const [row] = await srv.query<{ p: string | null }>(
      `SELECT rolpassword AS p FROM pg_authid WHERE rolname = 'app_nologin'`,
    );
    tt.match(row?.p, /^SCRAM-SHA-256\$/, 'the password was changed (the server accepted it)');
    tt.equal(await login(pending), '28000', 'but the role cannot log in (NOLOGIN)');
  });

  const single1: Credential = { username: 'app_single', password: value('single1') };

  t.test(
    'the daemon unreachable at first: the agent backs off, then gets the job once the daemon is up',
    async (tt) => {
      const port = await freePort();
      const backingOff = deferred();
      const daemonUp = deferred();
      const sleeps: number[] = [];
      const late = new Agent(
        await loadAgentConfig(writeConfig(port, srv.port), { env }),
        agentOptions({
          wait: 5,
          sleep: async (ms) => {
            sleeps.push(ms);
            backingOff.resolve();
            await daemonUp.promise;
          },
        }),
      );
      tt.teardown(() => late.stop());
      const unreachable = logged('AGENT_DAEMON_UNREACHABLE');
      late.start();
      await backingOff.promise;
      tt.equal(
        logged('AGENT_DAEMON_UNREACHABLE'),
        unreachable + 1,
        'the failed poll is logged as AGENT_DAEMON_UNREACHABLE',
      );

      const lateStandIn = new StandIn();
      await lateStandIn.listen(port);
      tt.teardown(() => lateStandIn.close());
      const job = await makeJob('set', 'cron/db', { pending: single1 }, { strategy: 'single' });
      lateStandIn.enqueue(job);
      daemonUp.resolve();
      const result = await lateStandIn.result(job.id);
      tt.same(result, { id: job.id, outcome: 'done', detail: 'applied' }, 'the job is applied and reported');
      tt.equal(await login(single1), 'ok', 'its value logs in');
      tt.ok(sleeps.length >= 1 && sleeps[0]! > 0, 'it had backed off');
      await late.stop();
      tt.same(lateStandIn.refused, [], 'every request verified');
    },
  );

  t.test('rotor-agent --once as a process', async (tt) => {
    const single2: Credential = { username: 'app_single', password: value('single2') };
    const job = await makeJob('set', 'cron/db', { pending: single2, current: single1 }, { strategy: 'single' });
    const procStandIn = await startStandIn(tt);
    procStandIn.enqueue(job);
    const file = writeConfig(procStandIn.port, srv.port);
    const r = await runCli(['--config', file, '--once'], env);
    tt.equal(r.code, 0, 'exit 0', { stderr: r.stderr });
    tt.same(procStandIn.results, [{ id: job.id, outcome: 'done', detail: 'applied' }], 'the stand-in got the result');
    tt.equal(await login(single2), 'ok', 'the new value logs in');
    tt.equal(await login(single1), '28P01', 'single: the old one no longer does');
    tt.same(procStandIn.refused, [], 'every request of the process verified');
    const lines = r.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    tt.ok(
      lines.some((l) => l.job === job.id && l.step === 'set' && l.target === TARGET && l.secret === 'cron/db'),
      'JSON log lines with job, secret, target and step',
    );

    // Daemon gone: --once exits 3.
    await procStandIn.close();
    const down = await runCli(['--config', file, '--once'], env);
    tt.equal(down.code, 3, 'daemon unreachable: --once exits 3');
    tt.match(down.stderr, /AGENT_DAEMON_UNREACHABLE/, 'and logs why');
  });

  t.test('rotor-agent: SIGTERM during a long poll stops it cleanly (exit 0)', async (tt) => {
    const procStandIn = await startStandIn(tt);
    const file = writeConfig(procStandIn.port, srv.port);
    const held = once(procStandIn, 'held');
    const abandoned = once(procStandIn, 'abandoned');
    let pid = 0;
    const running = runCli(['--config', file], env, (child) => void (pid = child.pid!));
    await Promise.race([held, running]);
    tt.ok(pid > 0, 'the agent is polling');
    process.kill(pid, 'SIGTERM');
    const r = await running;
    tt.equal(r.code, 0, 'exit 0 on SIGTERM', { stderr: r.stderr });
    await abandoned;
    tt.pass('its held long poll was closed');
    tt.match(r.stderr, /"msg":"agent stopped"/, 'it logged its stop');
  });
}
