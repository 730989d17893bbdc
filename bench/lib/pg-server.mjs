// A throwaway PostgreSQL for the benchmarks of the state store on PostgreSQL (bench/store.mjs,
// bench/rotate.mjs): started like the tests' (test/services/postgres.ts, scram-sha-256) but durable
// (fsync and synchronous commits on, as a server's defaults) and without the statement log; a login
// role owning a database `rotor`, its password given as PGPASSWORD. Needs npm run build.
import { randomBytes } from 'node:crypto';

const { startPostgres } = await import(new URL('../../dist/test/services/postgres.js', import.meta.url).href);

/**
 * Starts the server; returns { url(schema), env, version, host, port, password, stop(), restart() }
 * (restart: a fast shutdown and a start on the same port and data directory, for the failover proof;
 * query: SQL as the superuser, for a proof's own roles).
 */
export async function benchPostgres() {
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
  const server = await startPostgres(fakeT, { durable: true, quiet: true });
  const password = `bench-${randomBytes(12).toString('hex')}`;
  await server.query(`CREATE ROLE rotor_state LOGIN PASSWORD '${password}'`);
  await server.query('CREATE DATABASE rotor OWNER rotor_state');
  return {
    version: server.version,
    host: server.host,
    port: server.port,
    password,
    env: { PGPASSWORD: password },
    url: (schema) => `postgres://rotor_state@${server.host}:${server.port}/rotor?schema=${schema}`,
    restart: (o) => server.restart(o),
    query: (sql) => server.query(sql),
    stop: async () => {
      for (const f of cleanups) await f();
    },
  };
}
