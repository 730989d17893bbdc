/**
 * Drift detection and repair end to end: a daemon and a real rotor-agent (both in-process, talking over
 * the agent API) and live PostgreSQL, MariaDB and Redis servers with password authentication enforced.
 * A password changed by hand behind rotor's back is found by the next verify check (policy `verify`),
 * audited once per incident as drift-detected, and repaired by a rotation (trigger drift) after which
 * the served value logs in again; with `onDrift: alert` nothing rotates and the secret shows
 * DRIFT_DETECTED until a check passes again, also across a restart of the daemon (the open incident is
 * kept in the state store, and is still one incident with one entry); an unreachable server is not
 * drift. No value in the
 * daemon's or the agent's logs, nor in the audit log.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import mysql from 'mysql2/promise';
import pg from 'pg';
import t from 'tap';
import { Agent } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { openStore } from '../src/state/store.js';
import type { Json } from '../src/state/types.js';
import { tempDir } from './helpers.js';
import { startMariadb } from './services/mariadb.js';
import { startPostgres } from './services/postgres.js';
import { startRedis } from './services/redis.js';
import { step, world } from './world.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];
type Login = (username: string, password: string) => Promise<boolean>;
/** Sets a user's password by hand, as a person (or a restored backup) would: not through rotor. */
type Change = (username: string, password: string) => Promise<void>;
const ADMIN_PASSWORD = `Admin-${Math.random().toString(36).slice(2)}X9`;
const handValue = (n: number) => `ByHand-${n}-${Math.random().toString(36).slice(2)}Q7`;

interface CheckMessage {
  readonly secret: string;
  readonly ok?: number;
  readonly refused?: number;
  readonly errors?: number;
  readonly failed?: string;
}

/** The next drift check of `secret` that `pred` accepts. */
function check(secret: string, pred: (m: CheckMessage) => boolean): Promise<CheckMessage> {
  const ch = diagnostics_channel.channel('rotor:drift');
  return new Promise((resolve) => {
    const f = (m: unknown) => {
      const e = m as CheckMessage;
      if (e.secret === secret && pred(e)) {
        ch.unsubscribe(f);
        resolve(e);
      }
    };
    ch.subscribe(f);
  });
}
const clean = (m: CheckMessage) => m.refused === 0 && m.errors === 0 && m.failed === undefined;

interface Case {
  engine: 'postgres' | 'mariadb' | 'redis';
  url: string;
  strategy: 'dual' | 'alternate' | 'single';
  users: string[];
  login: Login;
  change: Change;
  adminPassword?: string;
}

/** A daemon (verify: 1s) and an agent around one database secret, version 1 made. */
async function driftWorld(t: T, c: Case, onDrift: 'rotate' | 'alert') {
  const name = `db/${c.engine}-${c.strategy}-${onDrift}`;
  const keysRoot = tempDir(t, 'rotor-drift-keys-');
  await generateKeys(path.join(keysRoot, 'agent'));
  const agentKeys = await loadKeys(path.join(keysRoot, 'agent'));
  const db = c.users.length === 2 ? `usernames: ${JSON.stringify(c.users)}` : `username: ${JSON.stringify(c.users[0])}`;
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': `kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nverify: 1s\nonDrift: ${onDrift}\n`,
    'agent.yaml': `kind: Agent\nname: db-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
    'target.yaml': `kind: Target\nname: the-db\nengine: ${c.engine}\nagent: db-host\n`,
    'secret.yaml': `kind: Secret\nname: ${name}\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: the-db, strategy: ${c.strategy}, ${db} }\n`,
  });
  const first = step(name, 'finished', 1);
  const daemonKeys = await loadKeys(w.dataDir);
  const configFile = path.join(keysRoot, 'agent.yaml');
  let agentLogs = '';
  /** The daemon and its agent (a new agent for each daemon: it listens on another port). */
  const startBoth = async () => {
    const d = await w.start({ agentListen: '127.0.0.1:0', metricsListen: '127.0.0.1:0' });
    t.teardown(() => d.stop());
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
        '    timeout: 3s',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const agent = new Agent(
      await loadAgentConfig(configFile, { env: { DB_ADMIN_PASSWORD: c.adminPassword ?? ADMIN_PASSWORD } }),
      { log: jsonLogger((l) => void (agentLogs += l)), wait: 5, backoff: { baseMs: 50, capMs: 500 } },
    );
    agent.start();
    t.teardown(() => agent.stop({ graceMs: 5000 }));
    return { d, agent };
  };
  let running = await startBoth();
  const d = running.d;
  await first;
  const audit = () => {
    const dir = path.join(w.dataDir, 'repo', 'audit');
    return readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .sort()
      .flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n'))
      .filter((l) => l.trim())
      .map(
        (l) =>
          JSON.parse(l) as {
            seq: number;
            event: string;
            secret?: string;
            trigger?: string;
            to?: number;
            detail?: string;
          },
      )
      .filter((e) => e.secret === name)
      .sort((a, b) => a.seq - b.seq);
  };
  const metric = async () => {
    const text = await (await fetch(`http://${running.d.metricsAddress}/metrics`)).text();
    const m = new RegExp(`^rotor_secret_drift\\{secret="${name}"\\} (\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const secretStatus = () => running.d.status().secrets.find((s) => s.name === name)!;
  /** Stops the agent and the daemon; `between` runs while both are stopped; then both start again on the same data dir. */
  const restart = async (between: () => Promise<void>) => {
    await running.agent.stop({ graceMs: 5000 });
    await running.d.stop();
    await between();
    running = await startBoth();
    return running.d;
  };
  /** The state store's value of a key, read while the daemon is stopped. */
  const stored = async (key: string) => {
    const keys = await loadKeys(w.dataDir);
    const store = await openStore({
      dir: path.join(w.dataDir, 'state'),
      identity: keys.identity,
      recipients: [keys.recipient],
    });
    try {
      return store.get(key);
    } finally {
      await store.close();
    }
  };
  /** Writes a key of the state store while the daemon is stopped (what a crash left, made by hand). */
  const storePut = async (key: string, value: Json) => {
    const keys = await loadKeys(w.dataDir);
    const store = await openStore({
      dir: path.join(w.dataDir, 'state'),
      identity: keys.identity,
      recipients: [keys.recipient],
    });
    try {
      await store.write([{ op: 'put', key, value }]);
    } finally {
      await store.close();
    }
  };
  /** Every value that mattered must be absent from every log and the audit. */
  const noValues = (values: string[]) => {
    const dir = path.join(w.dataDir, 'repo', 'audit');
    const auditText = readdirSync(dir)
      .map((f) => readFileSync(path.join(dir, f), 'utf8'))
      .join('');
    const everything = w.logs() + agentLogs + auditText;
    t.ok(values.length > 0);
    t.notOk(
      values.some((v) => everything.includes(v)),
      "no value (served or set by hand) in the daemon's or the agent's logs, nor in the audit log",
    );
  };
  return { d, name, audit, metric, secretStatus, noValues, restart, stored, storePut, agentLogs: () => agentLogs };
}

/** Two incidents, each repaired by a rotation; exactly one drift-detected entry per incident, before its rotation. */
async function repairTwice(t: T, c: Case) {
  const { d, name, audit, metric, secretStatus, noValues } = await driftWorld(t, c, 'rotate');
  const values: string[] = [];
  await check(name, clean);
  t.equal(await metric(), 0, 'no drift yet: rotor_secret_drift 0');
  for (const incident of [1, 2]) {
    const before = d.served(name)!;
    values.push(String(before.value));
    const repaired = step(name, 'finished', before.version + 1);
    const hand = handValue(incident);
    values.push(hand);
    await c.change(before.username!, hand);
    t.notOk(await c.login(before.username!, String(before.value)), `incident ${incident}: the served value is refused`);
    await repaired;
    const after = d.served(name)!;
    values.push(String(after.value));
    t.equal(after.version, before.version + 1, `incident ${incident}: repaired by a rotation`);
    t.ok(await c.login(after.username!, String(after.value)), `incident ${incident}: the served value logs in again`);
    // Later checks pass: the incident is over, and a version refused in it (now the previous one) is not drift again.
    await check(name, clean);
    await check(name, clean);
    t.notOk(secretStatus().failing, `incident ${incident}: no longer failing`);
    t.notOk(secretStatus().drift, `incident ${incident}: no drift shown`);
  }
  t.equal(await metric(), 0, 'repaired: rotor_secret_drift 0');
  const entries = audit();
  const drift = entries.filter((e) => e.event === 'drift-detected');
  t.equal(drift.length, 2, 'exactly one drift-detected entry per incident');
  const rotations = entries.filter((e) => e.event === 'rotated' && e.trigger === 'drift');
  t.same(
    rotations.map((e) => e.to),
    [2, 3],
    'each incident rotated once, trigger drift',
  );
  t.ok(drift[0]!.seq < rotations[0]!.seq, 'the first drift entry comes before its rotation');
  t.ok(rotations[0]!.seq < drift[1]!.seq, 'the second incident begins after the first repair');
  t.ok(drift[1]!.seq < rotations[1]!.seq, 'the second drift entry comes before its rotation');
  t.match(
    drift[0]!.detail,
    new RegExp(`^DRIFT_DETECTED: the database refuses version 1 \\(current, user ${c.users[0]}\\) since \\d{4}-`),
  );
  t.match(drift[1]!.detail, /version 2 \(current, user /);
  values.push(String(d.served(name)!.value));
  noValues(values);
}

t.test('PostgreSQL', async (t) => {
  const server = await startPostgres(t);
  if (!server) return;
  await server.query(`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${ADMIN_PASSWORD}'`);
  await server.query('CREATE ROLE app_owner NOLOGIN');
  for (const r of ['d_blue', 'd_green', 'a_blue', 'a_green'])
    await server.query(`CREATE ROLE ${r} LOGIN IN ROLE app_owner`);
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
  const change: Change = async (user, password) => {
    await server.query(`ALTER ROLE ${pg.escapeIdentifier(user)} PASSWORD ${pg.escapeLiteral(password)}`);
  };
  const url = `postgres://rotor_admin@127.0.0.1:${server.port}/postgres`;
  await t.test('alternate: two incidents, each repaired by a rotation', (t) =>
    repairTwice(t, { engine: 'postgres', url, strategy: 'alternate', users: ['d_blue', 'd_green'], login, change }),
  );
  await t.test(
    'onDrift: alert: no rotation, DRIFT_DETECTED until a check passes; unreachable is not drift',
    async (t) => {
      const c: Case = { engine: 'postgres', url, strategy: 'alternate', users: ['a_blue', 'a_green'], login, change };
      const { d, name, audit, metric, secretStatus, noValues } = await driftWorld(t, c, 'alert');
      await check(name, clean);
      const served = d.served(name)!;
      const hand = handValue(3);
      await change(served.username!, hand);
      const first = await check(name, (m) => (m.refused ?? 0) > 0);
      t.equal(first.refused, 1, 'the current credential is refused');
      const s = secretStatus();
      t.equal(s.failing?.error, 'DRIFT_DETECTED', 'rotor status: failing with DRIFT_DETECTED');
      t.same(s.drift?.credentials, [{ version: 1, username: 'a_blue', credential: 'current' }]);
      t.equal(s.drift?.onDrift, 'alert');
      t.equal(await metric(), 1, 'rotor_secret_drift 1');
      await check(name, (m) => (m.refused ?? 0) > 0);
      t.equal(d.served(name)!.version, 1, 'alert: not rotated');
      t.equal(secretStatus().failing?.error, 'DRIFT_DETECTED', 'still failing');
      t.equal(
        audit().filter((e) => e.event === 'drift-detected').length,
        1,
        'one entry for the incident, however many checks',
      );
      // Someone puts the served value back: the next check passes and the incident is over.
      await change(served.username!, String(served.value));
      await check(name, clean);
      t.notOk(secretStatus().failing, 'a passing check ends the incident');
      t.equal(await metric(), 0, 'rotor_secret_drift 0');
      // The server goes away: the checks cannot log in, which is not drift.
      await server.stop();
      await check(name, (m) => (m.errors ?? 0) > 0);
      await check(name, (m) => (m.errors ?? 0) > 0);
      t.notOk(secretStatus().failing, 'an unreachable server is not drift');
      t.equal(await metric(), 0);
      const entries = audit();
      t.equal(entries.filter((e) => e.event === 'drift-detected').length, 1, 'no new drift entry');
      t.notOk(
        entries.some((e) => e.event === 'rotated'),
        'nothing rotated',
      );
      noValues([String(served.value), hand]);
    },
  );
});

t.test('MariaDB', async (t) => {
  const server = await startMariadb(t);
  if (!server) return;
  const root = await server.root();
  t.teardown(() => root.end());
  await root.query(`CREATE USER 'rotor_admin'@'127.0.0.1' IDENTIFIED BY '${ADMIN_PASSWORD}'`);
  await root.query(`GRANT CREATE USER ON *.* TO 'rotor_admin'@'127.0.0.1'`);
  await root.query(`GRANT SELECT ON mysql.global_priv TO 'rotor_admin'@'127.0.0.1'`);
  await root.query(`CREATE USER 'm_dual'@'127.0.0.1' IDENTIFIED BY 'Initial-m_dual-9'`);
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
  const change: Change = async (user, password) => {
    await root.query('ALTER USER ?@? IDENTIFIED BY ?', [user, '127.0.0.1', password]);
  };
  const url = `mysql://rotor_admin@127.0.0.1:${server.port}/`;
  await t.test('dual: two incidents, each repaired by a rotation', (t) =>
    repairTwice(t, { engine: 'mariadb', url, strategy: 'dual', users: ['m_dual'], login, change }),
  );
});

t.test('Redis', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  await server.createUser('r_dual', 'Initial-r_dual-9');
  const login: Login = (user, password) => server.login(user, password);
  // Every password of the user replaced by one: what a person resetting it does.
  const change: Change = async (user, password) => {
    await server.root('ACL', 'SETUSER', user, 'resetpass', `>${password}`);
  };
  const common = { engine: 'redis' as const, url: server.url, login, change, adminPassword: server.adminPassword };
  await t.test('dual: two incidents, each repaired by a rotation', (t) =>
    repairTwice(t, { ...common, strategy: 'dual', users: ['r_dual'] }),
  );
  await server.createUser('r_kept', 'Initial-r_kept-9');
  await t.test(
    'onDrift: alert: an incident survives a restart (one entry), and its stored record goes when it ends',
    async (t) => {
      const c: Case = { ...common, strategy: 'dual', users: ['r_kept'] };
      const { d, name, audit, metric, secretStatus, noValues, restart, stored } = await driftWorld(t, c, 'alert');
      await check(name, clean);
      const served = d.served(name)!;
      const hand = handValue(4);
      await change(served.username!, hand);
      await check(name, (m) => (m.refused ?? 0) > 0);
      t.equal(secretStatus().failing?.error, 'DRIFT_DETECTED', 'the incident is open');
      const since = String(secretStatus().drift!.since);
      const driftEntries = () => audit().filter((e) => e.event === 'drift-detected').length;
      t.equal(driftEntries(), 1, 'one drift-detected entry');
      // Stopped and started again on the same data dir: the incident is read back from the state store.
      const refusedAgain = check(name, (m) => (m.refused ?? 0) > 0);
      const d2 = await restart(async () => {
        const kept = (await stored(`drift/${name}`)) as { version: number; since: number; credentials: unknown[] };
        t.match(
          kept,
          {
            version: 1,
            since: Date.parse(since),
            credentials: [{ credential: 'current', version: 1, username: 'r_kept' }],
          },
          'the open incident is kept in the state store under drift/NAME',
        );
      });
      await refusedAgain;
      t.equal(driftEntries(), 1, 'still exactly one drift-detected entry for the incident after the restart');
      t.equal(secretStatus().failing?.error, 'DRIFT_DETECTED', 'still failing with DRIFT_DETECTED');
      t.equal(secretStatus().drift?.since, since, 'the same incident (since the first refused check)');
      t.equal(await metric(), 1, 'rotor_secret_drift 1 after the restart');
      t.equal(d2.served(name)!.version, 1, 'alert: not rotated');
      // Someone puts the served value back: the incident ends, and its stored record is deleted.
      await change(served.username!, String(served.value));
      await check(name, clean);
      t.notOk(secretStatus().failing, 'a passing check ends the incident');
      t.equal(await metric(), 0, 'rotor_secret_drift 0');
      await restart(async () => {
        t.equal(await stored(`drift/${name}`), undefined, 'the ended incident is gone from the state store');
      });
      await check(name, clean);
      t.equal(driftEntries(), 1, 'no new drift entry');
      noValues([String(served.value), hand]);
    },
  );
  await server.createUser('r_crash', 'Initial-r_crash-9');
  await t.test("a crash between an incident's record and its audit entry: exactly one entry either way", async (t) => {
    const c: Case = { ...common, strategy: 'dual', users: ['r_crash'] };
    const { d, name, audit, secretStatus, noValues, restart, stored, storePut } = await driftWorld(t, c, 'alert');
    await check(name, clean);
    const served = d.served(name)!;
    const hand = handValue(5);
    await change(served.username!, hand);
    await check(name, (m) => (m.refused ?? 0) > 0);
    const driftEntries = () => audit().filter((e) => e.event === 'drift-detected').length;
    t.equal(driftEntries(), 1, 'one drift-detected entry');
    const since = Date.parse(String(secretStatus().drift!.since));
    // 1. The crash came after the entry, before the record said so: the record is read back unaudited.
    let refusedAgain = check(name, (m) => (m.refused ?? 0) > 0);
    await restart(async () => {
      const kept = (await stored(`drift/${name}`)) as Record<string, Json>;
      t.equal(kept.audited, true, 'the record says the incident was audited');
      await storePut(`drift/${name}`, { ...kept, audited: false });
    });
    await refusedAgain;
    t.equal(driftEntries(), 1, 'read back unaudited, the audit log has its entry: not written again');
    t.equal(secretStatus().drift?.since, new Date(since).toISOString(), 'the same incident');
    // 2. The crash came before the entry: a record of another incident (another first refused check)
    // that the audit log does not have. Its entry is written at the next check, once.
    refusedAgain = check(name, (m) => (m.refused ?? 0) > 0);
    const earlier = since - 60_000;
    await restart(async () => {
      const kept = (await stored(`drift/${name}`)) as Record<string, Json>;
      await storePut(`drift/${name}`, { ...kept, since: earlier, audited: false });
    });
    await refusedAgain;
    const entries = audit().filter((e) => e.event === 'drift-detected');
    t.equal(entries.length, 2, 'an incident never audited gets its entry after the restart');
    t.match(entries[1]!.detail, new Date(earlier).toISOString(), 'the entry names that incident');
    await check(name, (m) => (m.refused ?? 0) > 0);
    t.equal(driftEntries(), 2, 'and only once');
    noValues([String(served.value), hand]);
  });
});
