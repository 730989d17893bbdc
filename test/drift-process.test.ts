/**
 * Drift as an operator meets it: `rotor daemon` and `rotor-agent` run as real processes (the CLIs from
 * dist/) against a throwaway PostgreSQL with password authentication. Two secrets on policies with
 * `verify: 1s`: one `onDrift: rotate`, one `onDrift: alert`. Both passwords are changed by hand
 * (ALTER ROLE ... PASSWORD): the first is repaired by a rotation (its drift entry before the rotation in
 * the audit log) and its served value logs in again; the second is not rotated and `rotor status`
 * (over the admin socket) shows it failing with DRIFT_DETECTED and exits 1. No value in any log.
 */

import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as pause } from 'node:timers/promises';
import pg from 'pg';
import type { Test } from 'tap';
import t from 'tap';
import { callAdmin } from '../src/cli/admin-client.js';
import { getSecret } from '../src/client/index.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { commitAll, gitInit, ROOT, rotor, tempDir } from './helpers.js';
import { freePort } from './services/common.js';
import { startPostgres } from './services/postgres.js';

const BIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const AGENT_BIN = path.join(ROOT, 'agent', 'dist', 'main.js');
const POLL_MS = 100;
/** Generous: a loaded machine; the waits end on the event, not on this. */
const WAIT_MS = 120_000;
const UID = process.getuid!();
const ADMIN_PASSWORD = `Admin-${Math.random().toString(36).slice(2)}X9`;

interface Proc {
  readonly child: ChildProcess;
  readonly exit: Promise<unknown>;
  exited: boolean;
  log(): string;
}

function spawnNode(t: Test, script: string, args: readonly string[], env: Record<string, string>): Proc {
  // env -u NODE_OPTIONS: tap's loaders in NODE_OPTIONS would be inherited by the child.
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, script, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.on('data', (c: Buffer) => void (log += c.toString()));
  const p: Proc = {
    child,
    exited: false,
    exit: new Promise((resolve) => child.on('exit', resolve)),
    log: () => log,
  };
  void p.exit.then(() => (p.exited = true));
  t.teardown(async () => {
    if (p.exited) return;
    child.kill('SIGTERM');
    await Promise.race([p.exit, pause(20_000, undefined, { ref: false })]);
    if (!p.exited) child.kill('SIGKILL');
  });
  return p;
}

/** Polls `probe` until it returns something, or WAIT_MS passed (then undefined). */
async function until<T>(probe: () => Promise<T | undefined> | T | undefined): Promise<T | undefined> {
  const end = Date.now() + WAIT_MS;
  for (;;) {
    const v = await Promise.resolve(probe()).catch(() => undefined);
    if (v !== undefined || Date.now() > end) return v;
    await pause(POLL_MS);
  }
}

t.test('drift repaired by a rotation, and reported (alert) by rotor status, with real processes', async (t) => {
  const server = await startPostgres(t);
  if (!server) return;
  await server.query(`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${ADMIN_PASSWORD}'`);
  await server.query('CREATE ROLE app_owner NOLOGIN');
  for (const r of ['fix_a', 'fix_b', 'watch_a', 'watch_b'])
    await server.query(`CREATE ROLE ${r} LOGIN IN ROLE app_owner`);
  const login = async (user: string, password: string) => {
    const c = new pg.Client({ host: '127.0.0.1', port: server.port, user, password, database: 'postgres' });
    try {
      await c.connect();
      return true;
    } catch (e) {
      if (['28P01', '28000'].includes((e as { code?: string }).code ?? '')) return false;
      throw e;
    } finally {
      await c.end().catch(() => undefined);
    }
  };
  const change = (user: string, password: string) =>
    server.query(`ALTER ROLE ${pg.escapeIdentifier(user)} PASSWORD ${pg.escapeLiteral(password)}`);

  const root = tempDir(t, 'rotor-drift-proc-');
  const keyDir = path.join(root, 'agent-keys');
  await generateKeys(keyDir);
  const agentKeys = await loadKeys(keyDir);
  const person = path.join(root, 'person');
  mkdirSync(person);
  gitInit(person);
  const files: Record<string, string> = {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policies.yaml':
      'kind: Policy\nname: fix\nevery: 30d\noverlap: 1d\nverify: 1s\n---\nkind: Policy\nname: watch\nevery: 30d\noverlap: 1d\nverify: 1s\nonDrift: alert\n',
    'agent.yaml': `kind: Agent\nname: db-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host\n`,
    'secrets.yaml':
      'kind: Secret\nname: db/fix\npolicy: fix\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [fix_a, fix_b] }\n---\nkind: Secret\nname: db/watch\npolicy: watch\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [watch_a, watch_b] }\n',
    'consumer.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["db/**"]\n`,
  };
  for (const [f, text] of Object.entries(files)) writeFileSync(path.join(person, f), text);
  commitAll(person, 'declarations');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', person, remote]);
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  const port = await freePort();
  const socketDir = path.join(root, 'sockets');
  const agentConfig = path.join(root, 'agent-config.yaml');
  writeFileSync(
    agentConfig,
    [
      `daemon: http://127.0.0.1:${port}`,
      'name: db-host',
      `keyDir: ${keyDir}`,
      `daemonSigningKey: "${(await loadKeys(dataDir)).signingKey}"`,
      'targets:',
      '  pg:',
      `    url: postgres://rotor_admin@127.0.0.1:${server.port}/postgres`,
      '    password: { env: DB_ADMIN_PASSWORD }',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const daemon = spawnNode(
    t,
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
  const agent = spawnNode(t, AGENT_BIN, ['--config', agentConfig], { DB_ADMIN_PASSWORD: ADMIN_PASSWORD });
  const socket = path.join(socketDir, 'app.sock');
  const read = (name: string) => getSecret(name, { socket });
  type Status = { secrets: { name: string; version?: number; failing?: { error: string } }[] };
  const status = async () =>
    (await callAdmin(path.join(dataDir, 'admin.sock'), 'GET', '/v1/status')) as unknown as Status;
  const secretOf = async (name: string) => (await status()).secrets.find((s) => s.name === name);
  const diag = () => ({ daemon: daemon.log().slice(-3000), agent: agent.log().slice(-3000) });

  const v1 = await until(async () => {
    const [f, w] = [await read('db/fix'), await read('db/watch')];
    return f.version === 1 && w.version === 1 ? { fix: f, watch: w } : undefined;
  });
  if (!v1) return t.fail('version 1 of both secrets was not served', diag());
  const values = [String(v1.fix.value), String(v1.watch.value)];
  const hands = [
    `ByHand-fix-${Math.random().toString(36).slice(2)}Q7`,
    `ByHand-watch-${Math.random().toString(36).slice(2)}Q7`,
  ];
  await change(v1.fix.username!, hands[0]!);
  await change(v1.watch.username!, hands[1]!);

  const fixed = await until(async () => {
    const s = await read('db/fix');
    return s.version === 2 ? s : undefined;
  });
  if (!fixed) return t.fail('db/fix was not repaired by a rotation', diag());
  values.push(String(fixed.value));
  t.ok(await login(fixed.username!, String(fixed.value)), 'db/fix: the served value logs in again');
  const watching = await until(async () => {
    const s = await secretOf('db/watch');
    return s?.failing?.error === 'DRIFT_DETECTED' ? s : undefined;
  });
  t.ok(watching, 'db/watch: failing with DRIFT_DETECTED', diag());
  t.equal(watching?.version, 1, 'db/watch (onDrift: alert): not rotated');
  const cli = await rotor(['status', '--data-dir', dataDir, '--json']);
  t.equal(cli.code, 1, 'rotor status exits 1: something is failing');
  const fromCli = (JSON.parse(cli.stdout) as Status).secrets.find((s) => s.name === 'db/watch');
  t.equal(fromCli?.failing?.error, 'DRIFT_DETECTED', 'rotor status --json shows DRIFT_DETECTED');
  const text = await rotor(['status', '--data-dir', dataDir]);
  t.match(text.stdout, /db\/watch .*failing: DRIFT_DETECTED/, 'and the table');

  // The audit log: for db/fix, the drift entry before the rotation that repaired it; one for db/watch.
  const dir = path.join(dataDir, 'repo', 'audit');
  const audit = () =>
    readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .sort()
      .flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n'))
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as { seq: number; event: string; secret?: string; trigger?: string; to?: number });
  const entries = audit();
  const fix = entries.filter((e) => e.secret === 'db/fix');
  const driftAt = fix.findIndex((e) => e.event === 'drift-detected');
  const rotatedAt = fix.findIndex((e) => e.event === 'rotated' && e.to === 2);
  t.ok(driftAt >= 0 && rotatedAt > driftAt, 'db/fix: drift-detected, then the rotation');
  t.equal(fix[rotatedAt]?.trigger, 'drift', 'the rotation says why: trigger drift');
  t.equal(fix.filter((e) => e.event === 'drift-detected').length, 1, 'db/fix: one drift entry');
  const watch = entries.filter((e) => e.secret === 'db/watch');
  t.equal(watch.filter((e) => e.event === 'drift-detected').length, 1, 'db/watch: one drift entry');
  t.notOk(
    watch.some((e) => e.event === 'rotated'),
    'db/watch: never rotated',
  );

  const everything =
    daemon.log() +
    agent.log() +
    readdirSync(dir)
      .map((f) => readFileSync(path.join(dir, f), 'utf8'))
      .join('');
  t.notOk(
    [...values, ...hands].some((v) => everything.includes(v)),
    "no value in the daemon's or the agent's logs, nor in the audit log",
  );
});
