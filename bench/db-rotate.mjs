#!/usr/bin/env node
// bench/db-rotate: 100 PostgreSQL users rotated through the agent on loopback. A throwaway PostgreSQL
// (scram-sha-256, as the tests start it), the daemon and a rotor-agent in this process, talking over
// the agent API on 127.0.0.1. 100 database secrets (strategy alternate, 200 roles) get version 1, then
// each is rotated once, one after the other, through every step: create, sealed job, long-poll, the
// agent's login with the pending value, ALTER ROLE with a SCRAM verifier, a fresh login with the new
// value, the report, the audit entry and the promotion. Prints the total and p50/p99 per rotation,
// then the same for 100 rotations started at once. Target: p50 under 250 ms.
// Usage: npm run bench:db-rotate
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { benchRemote } from './lib/remote.mjs';

const dist = (p) => new URL(`../dist/${p}`, import.meta.url).href;
const { Daemon } = await import(dist('src/daemon/daemon.js'));
const { generateKeys, loadKeys } = await import(dist('src/keys.js'));
const agentDist = (p) => new URL(`../agent/dist/${p}`, import.meta.url).href;
const { Agent } = await import(agentDist('agent.js'));
const { loadAgentConfig } = await import(agentDist('config.js'));
const { startPostgres } = await import(dist('test/services/postgres.js'));

const N = 100;
const cleanups = [];
const fakeT = {
  teardown: (fn) => cleanups.push(fn),
  fail: (m) => {
    throw new Error(m);
  },
  skip: (m) => {
    throw new Error(m);
  },
};
const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-db-'));
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];

try {
  const server = await startPostgres(fakeT);
  const adminPassword = `bench-${Math.random().toString(36).slice(2)}`;
  const sql = [`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${adminPassword}'`, 'CREATE ROLE app_owner NOLOGIN'];
  for (let i = 0; i < N; i++)
    sql.push(`CREATE ROLE u${i}_a LOGIN IN ROLE app_owner`, `CREATE ROLE u${i}_b LOGIN IN ROLE app_owner`);
  await server.query(sql.join(';'));

  await generateKeys(path.join(root, 'agent-keys'));
  const agentKeys = await loadKeys(path.join(root, 'agent-keys'));
  const remote = benchRemote(root, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1d\n',
    'db.yaml': `kind: Agent\nname: db-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host\n`,
    'secrets.yaml': Array.from(
      { length: N },
      (_, i) =>
        `kind: Secret\nname: app/db-${i}\npolicy: monthly\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [u${i}_a, u${i}_b] }\n`,
    ).join('---\n'),
  });
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  const log = (level, msg, f) => {
    if (process.env.BENCH_DEBUG) console.error(level, msg, JSON.stringify(f));
  };
  const d = new Daemon({
    repo: remote,
    branch: 'main',
    dataDir,
    socketDir: path.join(root, 'sockets'),
    agentListen: '127.0.0.1:0',
    breakGlass: [],
    log,
    commitDelayMs: 200,
  });
  await d.start();
  cleanups.unshift(() => d.stop());
  const configFile = path.join(root, 'agent.yaml');
  writeFileSync(
    configFile,
    [
      `daemon: http://${d.agentAddress}`,
      'name: db-host',
      `keyDir: ${path.join(root, 'agent-keys')}`,
      `daemonSigningKey: "${(await loadKeys(dataDir)).signingKey}"`,
      'targets:',
      '  pg:',
      `    url: postgres://rotor_admin@127.0.0.1:${server.port}/postgres`,
      '    password: { env: PG_ADMIN }',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const agent = new Agent(await loadAgentConfig(configFile, { env: { PG_ADMIN: adminPassword } }), { log });
  agent.start();
  cleanups.unshift(() => agent.stop({ graceMs: 5000 }));

  const t0 = performance.now();
  while (Array.from({ length: N }, (_, i) => d.served(`app/db-${i}`)).some((s) => !s))
    await new Promise((r) => setTimeout(r, 20));
  const firstAll = performance.now() - t0;

  const one = [];
  const s0 = performance.now();
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    await d.rotateNow(`app/db-${i}`, 'bench');
    one.push(performance.now() - t);
  }
  const sequential = performance.now() - s0;

  const together = [];
  const c0 = performance.now();
  await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      const t = performance.now();
      await d.rotateNow(`app/db-${i}`, 'bench');
      together.push(performance.now() - t);
    }),
  );
  const concurrent = performance.now() - c0;

  // Every served value logs in: a spot check of ten.
  const pg = (await import('pg')).default;
  for (let i = 0; i < N; i += 10) {
    const s = d.served(`app/db-${i}`);
    const c = new pg.Client({
      host: '127.0.0.1',
      port: server.port,
      user: s.username,
      password: s.value,
      database: 'postgres',
    });
    await c.connect();
    await c.end();
  }
  console.log(
    `bench/db-rotate: ${N} PostgreSQL secrets (alternate, ${2 * N} roles) through rotor-agent on loopback; PostgreSQL ${server.version ?? ''}, Node ${process.version}, ${os.cpus().length} cores`,
  );
  console.log(`version 1 of all ${N} (started together)      ${firstAll.toFixed(0)} ms`);
  console.log(
    `${N} rotations one after the other            ${sequential.toFixed(0)} ms   p50 ${pct(one, 0.5).toFixed(1)} ms   p99 ${pct(one, 0.99).toFixed(1)} ms   (target p50 < 250 ms)`,
  );
  console.log(
    `${N} rotations started together              ${concurrent.toFixed(0)} ms   p50 ${pct(together, 0.5).toFixed(1)} ms   p99 ${pct(together, 0.99).toFixed(1)} ms (each, waiting included)`,
  );
} finally {
  for (const f of cleanups) await f();
  rmSync(root, { recursive: true, force: true });
}
