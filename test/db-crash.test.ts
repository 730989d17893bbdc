/**
 * Crash tests of database rotation: the daemon, and separately the agent, killed with SIGKILL
 * at every step boundary of a PostgreSQL rotation, then restarted: the value served as current logs in
 * to the database, every time.
 *
 * Both run as real processes (the CLIs from dist/) against one throwaway PostgreSQL; every secret uses
 * strategy alternate (two LOGIN roles in a group role, rotor_admin with CREATEROLE as the agent's admin)
 * and a policy that never rotates on its own (every: 1d) with a 1 s overlap: rotations are asked for
 * through the admin socket (POST /v1/rotate), one at a time, each waited out (retire included) before
 * the next, so that each kill happens at a known step.
 *
 * - The daemon (test/fixtures/kill-at-step.mjs on `rotor:rotation`): killed after the k-th "created",
 *   "set", "audited", "finished", "retire-applied" and "retired" of its life (k = 1..3), restarted
 *   without the preload while the agent keeps running.
 * - The agent (test/fixtures/kill-agent-at-step.mjs on `rotor-agent:step`): killed after the k-th
 *   "received", "set", "tested", "retired" and "reported" (k = 1..3) while the daemon keeps running,
 *   restarted without the preload. A job that dies with its agent is delivered again only when its
 *   lease (JOB_LEASE_MS, 60 s) runs out, so each (boundary, k) runs in a lane of its own (its own Agent,
 *   Target, roles and secret, one daemon for all), all lanes at once. While an agent is down, the value
 *   the daemon serves as current must log in too (nothing can be retired without the agent).
 *
 * After each restart the test polls (admin GET /v1/status, the audit log, the consumer socket) until the
 * rotation that was cut is finished and its predecessor retired, then checks: the served current value
 * logs in as the served user (a fresh pg.Client); the retired previous value no longer does; the users
 * alternate; versions never go backwards and no two versions share a value. At the end: the audit chain
 * verifies, the audited versions run 1..N with no gap and no duplicate, and no value is in any log.
 */

import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as pause } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import type { Test } from 'tap';
import t from 'tap';
import { verifyAuditDir } from '../src/audit/log.js';
import { callAdmin } from '../src/cli/admin-client.js';
import { getSecret } from '../src/client/index.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { JOB_LEASE_MS } from '../src/protocol/jobs.js';
import { commitAll, gitInit, ROOT, tempDir } from './helpers.js';
import { freePort } from './services/common.js';
import type { PgServer } from './services/postgres.js';
import { startPostgres } from './services/postgres.js';

const BIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const AGENT_BIN = path.join(ROOT, 'agent', 'dist', 'main.js');
const KILL_DAEMON = pathToFileURL(path.join(ROOT, 'test', 'fixtures', 'kill-at-step.mjs')).href;
const KILL_AGENT = pathToFileURL(path.join(ROOT, 'test', 'fixtures', 'kill-agent-at-step.mjs')).href;
const DAEMON_BOUNDARIES = ['created', 'set', 'audited', 'finished', 'retire-applied', 'retired'] as const;
const AGENT_BOUNDARIES = ['received', 'set', 'tested', 'retired', 'reported'] as const;
const DAEMON_KILLS_PER_BOUNDARY = 3;
const AGENT_KILLS_PER_BOUNDARY = 3;
/** How often a status is polled. */
const POLL_MS = 100;
/** How long a rotation (and the retire after it) may take once nothing stands in its way. */
const SETTLE_MS = 60_000;
/** Behind a dead agent a job waits for its lease to run out before it is delivered again. */
const AGENT_SETTLE_MS = JOB_LEASE_MS + SETTLE_MS;
/** How long a process may take to stop on SIGTERM before that counts as a hang. */
const STOP_MS = 30_000;
const UID = process.getuid!();
const ADMIN_PASSWORD = `Admin-${Math.random().toString(36).slice(2)}X9`;
const POLICY = 'kind: Policy\nname: quick\nevery: 1d\noverlap: 1s\n';

type Login = (username: string, password: string) => Promise<boolean>;

interface Ctx {
  readonly server: PgServer;
  readonly url: string;
  readonly login: Login;
  /** Two LOGIN roles (no password yet) in the group role app_owner. */
  roles(users: readonly string[]): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------
// Processes.

interface Proc {
  readonly what: string;
  readonly child: ChildProcess;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly exited: boolean;
  /** What it logs once started (daemon started, agent started). */
  readonly marker: string;
  /** Everything it wrote on stderr (its JSON log lines). */
  log(): string;
}

function spawnNode(
  t: Test,
  what: string,
  script: string,
  args: readonly string[],
  env: Record<string, string>,
  preload?: string,
): Proc {
  const marker = script === AGENT_BIN ? '"msg":"agent started"' : '"msg":"daemon started"';
  // env -u NODE_OPTIONS: tap's loaders in NODE_OPTIONS would be inherited by the child.
  const child = spawn(
    '/usr/bin/env',
    ['-u', 'NODE_OPTIONS', process.execPath, ...(preload ? ['--import', preload] : []), script, ...args],
    {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let log = '';
  let exited = false;
  child.stderr!.on('data', (c: Buffer) => void (log += c.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('error', (e) => {
      log += `spawn failed: ${e.message}\n`;
      exited = true;
      resolve({ code: -1, signal: null });
    });
    child.on('exit', (code, signal) => {
      exited = true;
      resolve({ code, signal });
    });
  });
  t.teardown(() => {
    if (!exited) child.kill('SIGKILL');
  });
  return {
    what,
    child,
    exit,
    marker,
    get exited() {
      return exited;
    },
    log: () => log,
  };
}

/** Polls until `p` logged `marker` (its signal handlers are in place then), or exited. */
async function ready(p: Proc, marker: string): Promise<void> {
  while (!p.exited && !p.log().includes(marker)) await pause(POLL_MS);
}

/**
 * SIGTERM once it is up (`marker` logged), and the exit; a process that does not stop within STOP_MS is
 * a hang: failed, then SIGKILLed.
 */
async function stop(t: Test, p: Proc): Promise<void> {
  await ready(p, p.marker);
  if (p.exited) return;
  p.child.kill('SIGTERM');
  const r = await Promise.race([p.exit, pause(STOP_MS, undefined, { ref: false }).then(() => undefined)]);
  if (r === undefined) {
    t.fail(`${p.what} did not stop within ${STOP_MS / 1000} s of SIGTERM`, { log: p.log().slice(-4000) });
    p.child.kill('SIGKILL');
    await p.exit;
  } else if (r.code !== 0) {
    t.fail(`${p.what} exited with ${r.signal ?? r.code} on SIGTERM`, { log: p.log().slice(-4000) });
  }
}

// ---------------------------------------------------------------------------------------------------
// Declarations, repository, agent configuration.

function makeRemote(root: string, files: Record<string, string>): string {
  const person = path.join(root, 'person');
  mkdirSync(person);
  gitInit(person);
  for (const [f, text] of Object.entries(files)) writeFileSync(path.join(person, f), text);
  commitAll(person, 'declarations');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', person, remote]);
  return remote;
}

/** An Agent, its Target and an alternate Secret on it. */
function declarations(o: {
  agent: string;
  signingKey: string;
  recipient: string;
  target: string;
  secret: string;
  users: readonly string[];
}): string {
  return [
    `kind: Agent\nname: ${o.agent}\nsigningKey: "${o.signingKey}"\nrecipient: ${o.recipient}\n`,
    `kind: Target\nname: ${o.target}\nengine: postgres\nagent: ${o.agent}\n`,
    `kind: Secret\nname: ${o.secret}\npolicy: quick\ngenerate: { length: 32 }\ndatabase: { target: ${o.target}, strategy: alternate, usernames: ${JSON.stringify(o.users)} }\n`,
  ].join('---\n');
}

function agentConfig(
  file: string,
  o: { port: number; agent: string; keyDir: string; daemonSigningKey: string; target: string; url: string },
): string {
  writeFileSync(
    file,
    [
      `daemon: http://127.0.0.1:${o.port}`,
      `name: ${o.agent}`,
      `keyDir: ${o.keyDir}`,
      `daemonSigningKey: "${o.daemonSigningKey}"`,
      'targets:',
      `  ${o.target}:`,
      `    url: ${o.url}`,
      '    password: { env: DB_ADMIN_PASSWORD }',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  return file;
}

// ---------------------------------------------------------------------------------------------------
// Observing a secret.

interface Obs {
  readonly version: number;
  readonly value: string;
  readonly username: string;
}

/** Every value served as current, by version: versions never go backwards, no value is served twice. */
class History {
  last = 0;
  readonly byVersion = new Map<number, string>();
  readonly byValue = new Map<string, number>();

  see(t: Test, obs: Obs, label: string): void {
    t.ok(
      obs.version >= this.last,
      `${label}: the served version does not go backwards (${this.last} -> ${obs.version})`,
    );
    this.last = Math.max(this.last, obs.version);
    const known = this.byVersion.get(obs.version);
    const owner = this.byValue.get(obs.value);
    t.ok(
      (known === undefined || known === obs.value) && (owner === undefined || owner === obs.version),
      `${label}: version ${obs.version} has one value, used by no other version`,
    );
    this.byVersion.set(obs.version, obs.value);
    this.byValue.set(obs.value, obs.version);
  }
}

interface Lane {
  readonly label: string;
  readonly secret: string;
  readonly users: readonly [string, string];
  readonly dataDir: string;
  /** The consumer socket of `app` (this process's uid). */
  readonly socket: string;
  readonly history: History;
}

function auditEntries(dataDir: string): { event: string; secret?: string; from?: number; to?: number }[] {
  const dir = path.join(dataDir, 'repo', 'audit');
  let files: string[];
  try {
    files = readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .sort();
  } catch {
    return [];
  }
  const out: { event: string; secret?: string; from?: number; to?: number }[] = [];
  for (const f of files) {
    for (const line of readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      if (!line) continue;
      try {
        out.push(JSON.parse(line) as { event: string });
      } catch {
        // a line being written while the daemon runs
      }
    }
  }
  return out;
}

interface StatusEntry {
  name: string;
  version?: number;
  pending: boolean;
  failing?: { error: string; attempts: number };
}

/**
 * Polls until `lane.secret` is current at `min` or later with no pending rotation, the retire of its
 * predecessor audited, and the consumer socket serving that version; { dead } as soon as `alive` is false.
 */
async function settled(
  lane: Lane,
  min: number,
  ms: number,
  alive: () => boolean,
): Promise<{ obs?: Obs; dead?: boolean; last: string }> {
  const deadline = Date.now() + ms;
  let last = 'no answer yet';
  for (;;) {
    if (!alive()) return { dead: true, last };
    try {
      const st = (await callAdmin(path.join(lane.dataDir, 'admin.sock'), 'GET', '/v1/status')) as {
        secrets: StatusEntry[];
      };
      const s = st.secrets.find((x) => x.name === lane.secret);
      last = `status ${JSON.stringify(s)}`;
      if (s?.version !== undefined && s.version >= min && !s.pending) {
        const v = s.version;
        const retired =
          v === 1 ||
          auditEntries(lane.dataDir).some((e) => e.event === 'retired' && e.secret === lane.secret && e.from === v - 1);
        last += retired ? '; predecessor retired' : `; no "retired" audit entry for version ${v - 1} yet`;
        if (retired) {
          const cur = await getSecret(lane.secret, { socket: lane.socket, timeoutMs: 5000 });
          last += `; consumer socket serves version ${cur.version}`;
          if (cur.version === v)
            return { obs: { version: v, value: String(cur.value), username: cur.username ?? '' }, last };
        }
      }
    } catch (e) {
      last = `${(e as { code?: string }).code ?? 'ERROR'}: ${(e as Error).message}`;
    }
    if (Date.now() > deadline) return { last };
    await pause(POLL_MS);
  }
}

/** The checks after a rotation settled: current logs in, retired previous does not, users alternate, history. */
async function check(t: Test, ctx: Ctx, lane: Lane, obs: Obs, label: string): Promise<void> {
  const user = lane.users[(obs.version - 1) % 2]!;
  t.equal(obs.username, user, `${label}: version ${obs.version} is for ${user}`);
  t.ok(
    await ctx.login(obs.username, obs.value),
    `${label}: the value served as current (version ${obs.version}, ${obs.username}) logs in`,
  );
  // Every version was observed when it settled (the daemon may be gone by now: a kill right after the retire).
  const prev = lane.history.byVersion.get(obs.version - 1);
  if (obs.version > 1) {
    const prevUser = lane.users[obs.version % 2]!;
    if (prev === undefined) t.fail(`${label}: version ${obs.version - 1} was never seen settled`);
    else
      t.equal(
        await ctx.login(prevUser, prev),
        false,
        `${label}: the retired version ${obs.version - 1} (${prevUser}) no longer logs in`,
      );
  }
  lane.history.see(t, obs, label);
}

function rotate(lane: Lane, reason: string): Promise<unknown> {
  return callAdmin(path.join(lane.dataDir, 'admin.sock'), 'POST', '/v1/rotate', { name: lane.secret, reason });
}

/** The audit chain verifies; each secret's audited versions run 1..N with no gap and no duplicate. */
async function auditChecks(t: Test, dataDir: string, lanes: readonly Lane[]): Promise<void> {
  const v = await verifyAuditDir(path.join(dataDir, 'repo', 'audit'));
  t.ok(v.result.ok, 'the audit chain verifies', { result: v.result });
  const entries = auditEntries(dataDir);
  for (const lane of lanes) {
    const made = entries
      .filter((e) => e.secret === lane.secret && (e.event === 'created' || e.event === 'rotated'))
      .map((e) => e.to);
    t.same(
      made,
      made.map((_, i) => i + 1),
      `${lane.label}: audited versions run 1..${made.length}, no gap, no duplicate`,
    );
    t.equal(made.length, lane.history.last, `${lane.label}: the last audited version is the last one served`);
  }
}

function noValueInLogs(t: Test, procs: readonly Proc[], lanes: readonly Lane[]): void {
  const logs = procs.map((p) => p.log()).join('');
  const values = lanes.flatMap((l) => [...l.history.byValue.keys()]);
  t.notOk(
    values.some((v) => logs.includes(v)),
    `no value in the logs of the daemons and agents (${values.length} values, ${logs.length} bytes of logs)`,
  );
}

const ordinal = (k: number) => `${k}${k === 1 ? 'st' : k === 2 ? 'nd' : k === 3 ? 'rd' : 'th'}`;

// ---------------------------------------------------------------------------------------------------
// The daemon killed at each of its step boundaries; the agent keeps running.

async function daemonKills(t: Test, ctx: Ctx): Promise<void> {
  const started = Date.now();
  const root = tempDir(t, 'rotor-dbcrash-daemon-');
  const users = ['dc_blue', 'dc_green'] as const;
  await ctx.roles(users);
  const keyDir = path.join(root, 'agent-keys');
  const agentKeys = await generateKeys(keyDir);
  const secret = 'db/daemon-crash';
  const remote = makeRemote(root, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': POLICY,
    'db.yaml': declarations({
      agent: 'dc-agent',
      signingKey: agentKeys.signingKey,
      recipient: agentKeys.recipient,
      target: 'pg',
      secret,
      users,
    }),
    'consumer.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["db/**"]\n`,
  });
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  const port = await freePort();
  const socketDir = path.join(root, 'sockets');
  const config = agentConfig(path.join(root, 'agent.yaml'), {
    port,
    agent: 'dc-agent',
    keyDir,
    daemonSigningKey: (await loadKeys(dataDir)).signingKey,
    target: 'pg',
    url: ctx.url,
  });
  const lane: Lane = {
    label: 'daemon crashes',
    secret,
    users,
    dataDir,
    socket: path.join(socketDir, 'app.sock'),
    history: new History(),
  };
  const procs: Proc[] = [];
  const daemon = (env: Record<string, string> = {}, preload?: string) => {
    const p = spawnNode(
      t,
      'the daemon',
      BIN,
      [
        'daemon',
        '--repo',
        remote,
        '--data-dir',
        dataDir,
        '--socket-dir',
        socketDir,
        '--agent-listen',
        `127.0.0.1:${port}`,
        '--metrics-listen',
        'off',
      ],
      env,
      preload,
    );
    procs.push(p);
    return p;
  };
  let d = daemon();
  const agent = spawnNode(t, 'the agent', AGENT_BIN, ['--config', config], { DB_ADMIN_PASSWORD: ADMIN_PASSWORD });
  procs.push(agent);
  const diag = (p: Proc, last: string) => ({ last, daemon: p.log().slice(-3000), agent: agent.log().slice(-3000) });

  const first = await settled(lane, 1, SETTLE_MS, () => !d.exited && !agent.exited);
  if (!first.obs) {
    t.fail('version 1 did not become current', diag(d, first.last));
    return;
  }
  await check(t, ctx, lane, first.obs, 'start');
  let cur = first.obs;

  let kills = 0;
  for (const boundary of DAEMON_BOUNDARIES) {
    for (let k = 1; k <= DAEMON_KILLS_PER_BOUNDARY; k++) {
      const label = `daemon killed at its ${ordinal(k)} "${boundary}"`;
      await stop(t, d);
      const doomed = daemon({ KILL_STEP: boundary, KILL_COUNT: String(k) }, KILL_DAEMON);
      d = doomed;
      // Rotations one at a time, each waited out (retire included), until the preload kills the daemon.
      let target = cur.version;
      for (let n = 1; ; n++) {
        // Up (its admin socket answers) and settled: then the next rotation.
        const up = await settled(lane, cur.version, SETTLE_MS, () => !doomed.exited && !agent.exited);
        if (up.dead) break;
        if (!up.obs) {
          t.fail(`${label}: the daemon did not come up`, diag(doomed, up.last));
          return;
        }
        if (n > k + 1) {
          t.fail(`${label}: still alive after ${n - 1} rotations`, diag(doomed, ''));
          return;
        }
        target = cur.version + 1;
        let refused = '';
        await Promise.race([rotate(lane, label).catch((e: Error) => void (refused = e.message)), doomed.exit]);
        const r = await settled(lane, target, SETTLE_MS, () => !doomed.exited && !agent.exited);
        if (r.dead) break;
        if (!r.obs) {
          t.fail(`${label}: rotation ${n} before the kill did not settle`, {
            ...diag(doomed, r.last),
            rotate: refused,
          });
          return;
        }
        await check(t, ctx, lane, r.obs, `${label}, before the kill`);
        cur = r.obs;
      }
      const e = await doomed.exit;
      if (e.signal !== 'SIGKILL') {
        t.fail(`${label}: the daemon should have been killed, but exited with ${e.code}`, diag(doomed, ''));
        return;
      }
      if (agent.exited) {
        t.fail('the agent died', diag(doomed, ''));
        return;
      }
      kills++;
      const restarted = daemon();
      d = restarted;
      const after = await settled(lane, target, SETTLE_MS, () => !restarted.exited && !agent.exited);
      if (!after.obs) {
        t.fail(
          `${label}: after the restart, version ${target} did not become current with its predecessor retired within ${SETTLE_MS / 1000} s`,
          { ...diag(restarted, after.last), killed: doomed.log().slice(-3000) },
        );
        return;
      }
      await check(t, ctx, lane, after.obs, `${label}, restarted`);
      cur = after.obs;
    }
  }
  t.equal(kills, DAEMON_BOUNDARIES.length * DAEMON_KILLS_PER_BOUNDARY, `the daemon was killed ${kills} times`);
  await stop(t, d);
  await stop(t, agent);
  await auditChecks(t, dataDir, [lane]);
  noValueInLogs(t, procs, [lane]);
  t.comment(`daemon kills: ${kills}, ${cur.version} versions, ${Math.round((Date.now() - started) / 1000)} s`);
}

// ---------------------------------------------------------------------------------------------------
// The agent killed at each of its step boundaries; the daemon keeps running. One lane per kill.

async function agentKills(t: Test, ctx: Ctx): Promise<void> {
  const started = Date.now();
  const root = tempDir(t, 'rotor-dbcrash-agent-');
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  const daemonSigningKey = (await loadKeys(dataDir)).signingKey;
  const port = await freePort();
  const socketDir = path.join(root, 'sockets');
  const socket = path.join(socketDir, 'app.sock');

  interface AgentLane extends Lane {
    readonly boundary: (typeof AGENT_BOUNDARIES)[number];
    readonly k: number;
    readonly config: string;
  }
  const lanes: AgentLane[] = [];
  const decls: string[] = [];
  for (const boundary of AGENT_BOUNDARIES) {
    for (let k = 1; k <= AGENT_KILLS_PER_BOUNDARY; k++) {
      const i = lanes.length;
      const users = [`ac${i}_blue`, `ac${i}_green`] as const;
      await ctx.roles(users);
      const keyDir = path.join(root, `agent-${i}-keys`);
      const keys = await generateKeys(keyDir);
      const agent = `agent-${i}`;
      const target = `pg-${i}`;
      const secret = `db/agent-crash-${i}`;
      decls.push(
        declarations({ agent, signingKey: keys.signingKey, recipient: keys.recipient, target, secret, users }),
      );
      const config = agentConfig(path.join(root, `agent-${i}.yaml`), {
        port,
        agent,
        keyDir,
        daemonSigningKey,
        target,
        url: ctx.url,
      });
      lanes.push({
        label: `agent killed at its ${ordinal(k)} "${boundary}"`,
        boundary,
        k,
        secret,
        users,
        dataDir,
        socket,
        history: new History(),
        config,
      });
    }
  }
  const remote = makeRemote(root, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': POLICY,
    'db.yaml': decls.join('---\n'),
    'consumer.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["db/**"]\n`,
  });
  const procs: Proc[] = [];
  const d = spawnNode(
    t,
    'the daemon',
    BIN,
    [
      'daemon',
      '--repo',
      remote,
      '--data-dir',
      dataDir,
      '--socket-dir',
      socketDir,
      '--agent-listen',
      `127.0.0.1:${port}`,
      '--metrics-listen',
      'off',
    ],
    {},
  );
  procs.push(d);
  const agent = (lane: AgentLane, env: Record<string, string> = {}, preload?: string) => {
    const p = spawnNode(
      t,
      `the agent of "${lane.label}"`,
      AGENT_BIN,
      ['--config', lane.config],
      { DB_ADMIN_PASSWORD: ADMIN_PASSWORD, ...env },
      preload,
    );
    procs.push(p);
    return p;
  };

  // Version 1 of every lane's secret, made through agents that are not killed.
  const firsts = new Map<AgentLane, Obs>();
  await Promise.all(
    lanes.map(async (lane) => {
      const a = agent(lane);
      const r = await settled(lane, 1, SETTLE_MS, () => !d.exited && !a.exited);
      if (!r.obs)
        t.fail(`${lane.label}: version 1 did not become current`, {
          last: r.last,
          daemon: d.log().slice(-3000),
          agent: a.log().slice(-3000),
        });
      else {
        await check(t, ctx, lane, r.obs, `${lane.label}: start`);
        firsts.set(lane, r.obs);
      }
      await stop(t, a);
    }),
  );
  if (firsts.size !== lanes.length) return;

  let kills = 0;
  await Promise.all(
    lanes.map(async (lane) => {
      const { label, boundary, k } = lane;
      let cur = firsts.get(lane)!;
      const doomed = agent(lane, { KILL_STEP: boundary, KILL_COUNT: String(k) }, KILL_AGENT);
      const diag = (a: Proc, last: string) => ({ last, daemon: d.log().slice(-3000), agent: a.log().slice(-3000) });
      let target = cur.version;
      for (let n = 1; !doomed.exited; n++) {
        if (n > k + 1) {
          t.fail(`${label}: still alive after ${n - 1} rotations`, diag(doomed, ''));
          return;
        }
        target = cur.version + 1;
        // Not awaited: behind a killed agent it returns only after the job's lease ran out.
        let refused = '';
        void rotate(lane, label).catch((e: Error) => void (refused = e.message));
        const r = await settled(lane, target, AGENT_SETTLE_MS, () => !doomed.exited && !d.exited);
        if (r.dead) break;
        if (!r.obs) {
          t.fail(`${label}: rotation ${n} before the kill did not settle`, {
            ...diag(doomed, r.last),
            rotate: refused,
          });
          return;
        }
        await check(t, ctx, lane, r.obs, `${label}, before the kill`);
        cur = r.obs;
      }
      const e = await doomed.exit;
      if (e.signal !== 'SIGKILL') {
        t.fail(`${label}: the agent should have been killed, but exited with ${e.code}`, diag(doomed, ''));
        return;
      }
      kills++;
      // While the agent is down nothing can be retired: whatever the daemon serves as current logs in.
      const down = await getSecret(lane.secret, { socket, timeoutMs: 5000 });
      t.ok(
        await ctx.login(down.username!, String(down.value)),
        `${label}: while the agent is down, the served version ${down.version} (${down.username}) logs in`,
      );
      const restarted = agent(lane);
      const after = await settled(lane, target, AGENT_SETTLE_MS, () => !restarted.exited && !d.exited);
      if (!after.obs) {
        t.fail(
          `${label}: after the restart, version ${target} did not become current with its predecessor retired within ${AGENT_SETTLE_MS / 1000} s`,
          { ...diag(restarted, after.last), killed: doomed.log().slice(-3000) },
        );
        return;
      }
      await check(t, ctx, lane, after.obs, `${label}, restarted`);
      await stop(t, restarted);
    }),
  );
  t.equal(kills, AGENT_BOUNDARIES.length * AGENT_KILLS_PER_BOUNDARY, `the agents were killed ${kills} times`);
  await stop(t, d);
  await auditChecks(t, dataDir, lanes);
  noValueInLogs(t, procs, lanes);
  t.comment(`agent kills: ${kills}, ${Math.round((Date.now() - started) / 1000)} s`);
}

t.test(
  'PostgreSQL rotation: the daemon, and separately the agent, killed at every step boundary',
  { jobs: 2 },
  async (t) => {
    const server = await startPostgres(t);
    if (!server) return;
    await server.query(`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${ADMIN_PASSWORD}'`);
    await server.query('CREATE ROLE app_owner NOLOGIN');
    const login: Login = async (user, password) => {
      const c = new pg.Client({
        host: '127.0.0.1',
        port: server.port,
        user,
        password,
        database: 'postgres',
        connectionTimeoutMillis: 10_000,
      });
      c.on('error', () => {});
      try {
        await c.connect();
        await c.query('SELECT 1');
        return true;
      } catch (e) {
        if (['28P01', '28000'].includes((e as { code?: string }).code ?? '')) return false;
        throw e;
      } finally {
        await c.end().catch(() => undefined);
      }
    };
    const ctx: Ctx = {
      server,
      url: `postgres://rotor_admin@127.0.0.1:${server.port}/postgres`,
      login,
      roles: async (users) => {
        for (const u of users) {
          await server.query(`CREATE ROLE ${u} LOGIN IN ROLE app_owner`);
          // PostgreSQL 16+: a CREATEROLE admin alters only roles it has ADMIN OPTION on.
          if (server.version >= 16) await server.query(`GRANT ${u} TO rotor_admin WITH ADMIN OPTION`);
        }
      },
    };
    t.test(
      `the daemon killed ${DAEMON_KILLS_PER_BOUNDARY} times at each of ${DAEMON_BOUNDARIES.join(', ')}; restarted`,
      (t) => daemonKills(t, ctx),
    );
    t.test(
      `the agent killed ${AGENT_KILLS_PER_BOUNDARY} times at each of ${AGENT_BOUNDARIES.join(', ')}; restarted`,
      (t) => agentKills(t, ctx),
    );
  },
);
