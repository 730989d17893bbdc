/**
 * Database rotation end to end: the daemon (in-process) hands jobs to a real rotor-agent (in-process)
 * that applies them to live PostgreSQL, MariaDB and Redis servers the tests start with password
 * authentication enforced. For every strategy: after each rotation the served credential logs in;
 * during the overlap the previous one too (dual, alternate); after retire it does not. Plus the test
 * gate (a change the database accepts but whose login it refuses is never promoted) and a user name
 * built to inject SQL.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import mysql from 'mysql2/promise';
import pg from 'pg';
import t from 'tap';
import { Agent } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import { getSecret } from '../src/client/index.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { tempDir } from './helpers.js';
import { startMariadb } from './services/mariadb.js';
import { startPostgres } from './services/postgres.js';
import { startRedis } from './services/redis.js';
import { step, world } from './world.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];
type Login = (username: string, password: string) => Promise<boolean>;
const UID = process.getuid!();
const ADMIN_PASSWORD = `Admin-${Math.random().toString(36).slice(2)}X9`;

interface Case {
  engine: 'postgres' | 'mariadb' | 'redis';
  url: string;
  strategy: 'dual' | 'alternate' | 'single';
  users: string[];
  login: Login;
  /** The admin password the agent gets through its environment (default ADMIN_PASSWORD). */
  adminPassword?: string;
}

/** A daemon and an agent around one database secret; runs `rotations` rotations checking every login. */
async function rotateThrough(t: T, c: Case, rotations = 3) {
  const name = `db/${c.engine}-${c.strategy}`;
  const keysRoot = tempDir(t, 'rotor-db-keys-');
  await generateKeys(path.join(keysRoot, 'agent'));
  const agentKeys = await loadKeys(path.join(keysRoot, 'agent'));
  const db = c.users.length === 2 ? `usernames: ${JSON.stringify(c.users)}` : `username: ${JSON.stringify(c.users[0])}`;
  const files = {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nretireAfter: consumers\n',
    'agent.yaml': `kind: Agent\nname: db-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
    'target.yaml': `kind: Target\nname: the-db\nengine: ${c.engine}\nagent: db-host\n`,
    'secret.yaml': `kind: Secret\nname: ${name}\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: the-db, strategy: ${c.strategy}, ${db} }\n`,
    'consumer.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["db/**"]\n`,
  };
  const w = await world(t, files);
  const first = step(name, 'finished', 1);
  const d = await w.start({ socketDir: path.join(w.root, 'sockets'), agentListen: '127.0.0.1:0' });
  t.teardown(() => d.stop());
  const daemonKeys = await loadKeys(w.dataDir);
  const configFile = path.join(keysRoot, 'agent.yaml');
  writeFileSync(
    configFile,
    [
      `daemon: http://${d.agentAddress}`,
      'name: db-host',
      `keyDir: ${path.join(keysRoot, 'agent')}`,
      `daemonSigningKey: "${daemonKeys.signingKey}"`,
      'targets:',
      '  the-db:',
      `    url: ${c.url}`,
      '    password: { env: DB_ADMIN_PASSWORD }',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  let agentLogs = '';
  const agent = new Agent(
    await loadAgentConfig(configFile, { env: { DB_ADMIN_PASSWORD: c.adminPassword ?? ADMIN_PASSWORD } }),
    { log: jsonLogger((l) => void (agentLogs += l)), wait: 5, backoff: { baseMs: 50, capMs: 500 } },
  );
  agent.start();
  t.teardown(() => agent.stop({ graceMs: 5000 }));
  await first;
  const socket = path.join(w.root, 'sockets', 'app.sock');
  const values: string[] = [];
  let cur = d.served(name)!;
  values.push(String(cur.value));
  t.equal(cur.version, 1);
  t.equal(cur.username, c.users[0], 'version 1 is for the first user');
  t.ok(await c.login(cur.username!, String(cur.value)), 'version 1 logs in');
  for (let i = 0; i < rotations; i++) {
    const before = cur;
    await d.rotateNow(name, `test rotation ${i + 1}`);
    cur = d.served(name)!;
    values.push(String(cur.value));
    t.equal(cur.version, before.version + 1);
    t.equal(
      cur.username,
      c.strategy === 'alternate' ? c.users[(i + 1) % 2] : c.users[0],
      `version ${cur.version} is for ${cur.username}`,
    );
    t.ok(await c.login(cur.username!, String(cur.value)), `version ${cur.version}: the served value logs in`);
    t.equal(cur.previous?.version, before.version, 'the previous version is served during the overlap');
    const prevWorks = await c.login(before.username!, String(before.value));
    if (c.strategy === 'single') t.notOk(prevWorks, `single: version ${before.version} fails at once`);
    else t.ok(prevWorks, `${c.strategy}: version ${before.version} still logs in during the overlap`);
    // The consumer reads the new version: with retireAfter: consumers the previous one retires now.
    const retired = step(name, 'retired');
    t.equal((await getSecret(name, { socket })).version, cur.version);
    await retired;
    t.notOk(
      await c.login(before.username!, String(before.value)),
      `after retire, version ${before.version} no longer logs in`,
    );
    t.ok(await c.login(cur.username!, String(cur.value)), `after retire, version ${cur.version} still logs in`);
  }
  const logs = w.logs() + agentLogs;
  t.notOk(
    values.some((v) => logs.includes(v)),
    "no value in the daemon's or the agent's logs",
  );
  return { d, w, name };
}

t.test('PostgreSQL through the agent', async (t) => {
  const server = await startPostgres(t);
  if (!server) return;
  await server.query(`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${ADMIN_PASSWORD}'`);
  await server.query('CREATE ROLE app_owner NOLOGIN');
  for (const r of ['app_blue', 'app_green', 'gate_blue'])
    await server.query(`CREATE ROLE ${r} LOGIN IN ROLE app_owner`);
  await server.query('CREATE ROLE gate_green NOLOGIN IN ROLE app_owner'); // accepts a password, refuses the login
  const odd = `o'brien"; DROP ROLE rotor_admin; --`;
  await server.query(`CREATE ROLE ${pg.escapeIdentifier(odd)} LOGIN`);
  const login: Login = async (user, password) => {
    const c = new pg.Client({ host: '127.0.0.1', port: server.port, user, password, database: 'postgres' });
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
  const url = `postgres://rotor_admin@127.0.0.1:${server.port}/postgres`;
  await t.test('alternate', (t) =>
    rotateThrough(t, { engine: 'postgres', url, strategy: 'alternate', users: ['app_blue', 'app_green'], login }),
  );
  await t.test('single, with a user name built to inject SQL', async (t) => {
    await rotateThrough(t, { engine: 'postgres', url, strategy: 'single', users: [odd], login });
    t.equal(
      (await server.query(`SELECT count(*)::int AS n FROM pg_roles WHERE rolname = 'rotor_admin'`))[0]!.n,
      1,
      'rotor_admin still exists',
    );
  });
  await t.test('the test gate: accepted by the database, refused at login: not promoted', async (t) => {
    const { d, w, name } = await rotateThrough(
      t,
      { engine: 'postgres', url, strategy: 'alternate', users: ['gate_blue', 'gate_green'], login },
      0,
    );
    const before = d.served(name)!;
    await t.rejects(d.rotateNow(name, 'gate'), { code: 'DB_TEST_FAILED' });
    const after = d.served(name)!;
    t.equal(after.version, before.version, 'nothing promoted');
    t.equal(after.value, before.value, 'the previous value is still served');
    t.ok(await login(after.username!, String(after.value)), 'and still logs in');
    await d.stop();
    const dir = path.join(w.dataDir, 'repo', 'audit');
    const audit = readdirSync(dir)
      .map((f) => readFileSync(path.join(dir, f), 'utf8'))
      .join('');
    t.match(
      audit,
      /"event":"rotation-failed","secret":"db\/postgres-alternate","to":2,.*"detail":"DB_TEST_FAILED: the previous version stays current"/,
      'rotation-failed is audited',
    );
  });
});

t.test('MariaDB through the agent', async (t) => {
  const server = await startMariadb(t);
  if (!server) return;
  const root = await server.root();
  t.teardown(() => root.end());
  await root.query(`CREATE USER 'rotor_admin'@'127.0.0.1' IDENTIFIED BY '${ADMIN_PASSWORD}'`);
  await root.query(`GRANT CREATE USER ON *.* TO 'rotor_admin'@'127.0.0.1'`);
  await root.query(`GRANT SELECT ON mysql.global_priv TO 'rotor_admin'@'127.0.0.1'`);
  for (const u of ['m_dual', 'm_blue', 'm_green', 'm_single'])
    await root.query(`CREATE USER '${u}'@'127.0.0.1' IDENTIFIED BY 'Initial-${u}-9'`);
  const login: Login = async (user, password) => {
    try {
      const c = await mysql.createConnection({ host: '127.0.0.1', port: server.port, user, password });
      await c.query('SELECT 1');
      await c.end();
      return true;
    } catch (e) {
      if ([1045, 4151, 3118].includes((e as { errno?: number }).errno ?? 0)) return false;
      throw e;
    }
  };
  const url = `mysql://rotor_admin@127.0.0.1:${server.port}/`;
  await t.test('dual', (t) => rotateThrough(t, { engine: 'mariadb', url, strategy: 'dual', users: ['m_dual'], login }));
  await t.test('alternate', (t) =>
    rotateThrough(t, { engine: 'mariadb', url, strategy: 'alternate', users: ['m_blue', 'm_green'], login }),
  );
  await t.test('single', (t) =>
    rotateThrough(t, { engine: 'mariadb', url, strategy: 'single', users: ['m_single'], login }),
  );
});

t.test('Redis through the agent', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  for (const u of ['r_dual', 'r_single']) await server.createUser(u, `Initial-${u}-9`);
  const login: Login = (user, password) => server.login(user, password);
  const common = { engine: 'redis' as const, url: server.url, login, adminPassword: server.adminPassword };
  await t.test('dual', (t) => rotateThrough(t, { ...common, strategy: 'dual', users: ['r_dual'] }));
  await t.test('single', (t) => rotateThrough(t, { ...common, strategy: 'single', users: ['r_single'] }));
});
