/**
 * The PostgreSQL engine (agent/src/engines/postgres.ts) against a throwaway server that enforces
 * scram-sha-256 (test/services/postgres.ts), never the machine's own server. The engine's admin is a
 * CREATEROLE role, not the superuser.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import pg from 'pg';
import type { Test } from 'tap';
import t from 'tap';
import { postgresEngine, scramSha256Verifier } from '../agent/src/engines/postgres.js';
import type { Credential } from '../agent/src/engines/types.js';
import { DbError } from '../agent/src/engines/types.js';
import { freePort } from './services/common.js';
import type { PgServer } from './services/postgres.js';
import { startPostgres } from './services/postgres.js';

const { escapeIdentifier: ident, escapeLiteral: lit } = pg;

const srv = await startPostgres(t);
if (srv) await suite(srv);

async function suite(srv: PgServer): Promise<void> {
  /**
   * Every plaintext value the tests hand to the engine or set up: none may reach the server's log or an
   * error. Each is also searched by its random core, which survives any quoting (escapeLiteral doubles
   * the quote and the backslash, so the whole value would not be found in a logged literal).
   */
  const secrets = new Set<string>();
  const secret = (v: string, core: string): string => {
    secrets.add(v);
    secrets.add(core);
    return v;
  };
  /** A fresh value; quotes and backslashes on purpose (the engine's statements carry only the verifier). */
  const value = (tag = 'v'): string => {
    const core = randomBytes(12).toString('hex');
    return secret(`${tag}-'q"\\-${core}`, core);
  };
  /** Verifiers the server stored after the engine's sets: each must appear in the log, as sent. */
  const storedVerifiers: string[] = [];
  /** Sets a role's password as the superuser, through a verifier (so the value stays out of the log too). */
  const setPassword = async (role: string, password: string) => {
    await srv.query(`ALTER ROLE ${ident(role)} PASSWORD ${lit(scramSha256Verifier(password))}`);
  };

  const adminPassword = value('admin');
  const target = {
    url: `postgres://rotor_admin@${srv.host}:${srv.port}/postgres`,
    password: adminPassword,
    timeoutMs: 5000,
  };
  const engine = postgresEngine(target);
  t.teardown(() => engine.close());
  const errors: unknown[] = [];
  /** Expects `p` to reject with a DbError of `code`, and keeps the error for the no-value check. */
  const rejectsWith = async (tt: Test, p: Promise<unknown>, code: string, what: string) => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    errors.push(err);
    tt.ok(err instanceof DbError, `${what}: a DbError`);
    tt.equal((err as DbError | undefined)?.code, code, `${what}: ${code}`);
  };

  /** Opens a session as `c` (to check that open sessions survive a retire or a set). */
  const openSession = async (c: Credential): Promise<pg.Client> => {
    const client = new pg.Client({
      host: srv.host,
      port: srv.port,
      database: 'postgres',
      user: c.username,
      password: c.password,
    });
    client.on('error', () => {});
    await client.connect();
    t.teardown(() => client.end().catch(() => {}));
    return client;
  };

  // The app: a NOLOGIN group role owns the data; the two alternating LOGIN roles are its members.
  const initialBlue = value('blue0');
  const initialSingle = value('single0');
  await srv.query(`
    CREATE ROLE rotor_admin LOGIN CREATEROLE;
    CREATE ROLE app_owner NOLOGIN;
    CREATE TABLE app_data (id serial PRIMARY KEY, who text NOT NULL);
    ALTER TABLE app_data OWNER TO app_owner;
    CREATE ROLE app_blue LOGIN IN ROLE app_owner;
    CREATE ROLE app_green LOGIN IN ROLE app_owner;
    CREATE ROLE app_single LOGIN IN ROLE app_owner;
    CREATE ROLE no_login_probe LOGIN;
  `);
  await setPassword('rotor_admin', adminPassword);
  await setPassword('app_blue', initialBlue);
  await setPassword('app_single', initialSingle);
  // PostgreSQL 16+: CREATEROLE alone no longer lets rotor_admin alter roles it did not create.
  const grantAdmin = async (...roles: string[]) => {
    if (srv.version >= 16) await srv.query(`GRANT ${roles.map(ident).join(', ')} TO rotor_admin WITH ADMIN OPTION`);
  };
  await grantAdmin('app_blue', 'app_green', 'app_single', 'no_login_probe');

  t.test('the throwaway server enforces passwords (unlike a trust-auth server)', async (tt) => {
    const login = async (user: string, password: string) => {
      const c = new pg.Client({ host: srv.host, port: srv.port, database: 'postgres', user, password });
      c.on('error', () => {});
      try {
        await c.connect();
        return 'ok';
      } catch (err) {
        return (err as { code?: string }).code ?? 'error';
      } finally {
        await c.end().catch(() => {});
      }
    };
    tt.equal(await login(srv.superuser, srv.superPassword), 'ok', 'the superuser logs in with its password');
    tt.equal(await login(srv.superuser, 'not-the-password'), '28P01', 'a wrong password is refused');
    tt.equal(await login('app_blue', 'not-the-password'), '28P01', 'a wrong password for an app role is refused');
    tt.equal(await login('no_login_probe', 'anything'), '28P01', 'a role without a password cannot log in');
    tt.equal(
      await engine.test({ username: 'app_blue', password: initialBlue }),
      true,
      'engine.test: the right value logs in',
    );
    tt.equal(
      await engine.test({ username: 'app_blue', password: 'wrong' }),
      false,
      'engine.test: a wrong value is false, not an error',
    );
    tt.equal(
      await engine.test({ username: 'no_such_role_at_all', password: 'x' }),
      false,
      'engine.test: an unknown role is false (the server does not tell)',
    );
    const [row] = await srv.query<{ rolsuper: boolean; rolcreaterole: boolean }>(
      `SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = 'rotor_admin'`,
    );
    tt.same(row, { rolsuper: false, rolcreaterole: true }, 'the engine runs as a CREATEROLE admin, not as a superuser');
  });

  t.test('scramSha256Verifier', async (tt) => {
    // Published vectors: supercaracal/scram-sha-256 README, password `mysecret`.
    const vectors: Array<[string, string]> = [
      [
        '1Iuyc2XTVSv/GFgCWSv9Xw==',
        'SCRAM-SHA-256$4096:1Iuyc2XTVSv/GFgCWSv9Xw==$nU96dFyIuV+uWwiOly7HU5yinIJh55GsItyFAYrU2sc=:fEC668A2ufIsGS+9WC8xqD0hHvHQBbLiDxZ8hWlwkCw=',
      ],
      [
        '67e60Pre+3h6dhUm+K2tWA==',
        'SCRAM-SHA-256$4096:67e60Pre+3h6dhUm+K2tWA==$MRZtokLiZoWqNLf05HKH7STvtAtWEOy1CZU+vg9hj/M=:jzbp7PPDFT8aBPuFk91KBO2HswNJrvMMuMkUgR1LClI=',
      ],
    ];
    for (const [salt, expected] of vectors)
      tt.equal(
        scramSha256Verifier('mysecret', Buffer.from(salt, 'base64')),
        expected,
        `published vector, salt ${salt}`,
      );

    const a = scramSha256Verifier('mysecret');
    const b = scramSha256Verifier('mysecret');
    tt.match(
      a,
      /^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/,
      'the stored format, with a 16-byte salt',
    );
    tt.not(a, b, 'a fresh random salt each time');

    // Independent check against the server: it computes the verifier of a plaintext itself; ours, with
    // the salt it chose, must be identical. (This plaintext is sent in clear on purpose: it is the
    // positive control for the log scan below.)
    await srv.query(`CREATE ROLE verifier_probe LOGIN PASSWORD 'control-plaintext-in-clear'`);
    const [row] = await srv.query<{ rolpassword: string }>(
      `SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_probe'`,
    );
    const salt = Buffer.from(row!.rolpassword.split('$')[1]!.split(':')[1]!, 'base64');
    tt.equal(
      scramSha256Verifier('control-plaintext-in-clear', salt),
      row!.rolpassword,
      'equals the verifier the server computed for the same plaintext and salt',
    );

    // And the server stores a client-computed verifier exactly as sent; the plaintext then logs in.
    const plain = value('probe');
    const sent = scramSha256Verifier(plain);
    await grantAdmin('verifier_probe');
    await srv.query(`ALTER ROLE verifier_probe PASSWORD ${lit(sent)}`);
    const [after] = await srv.query<{ rolpassword: string }>(
      `SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_probe'`,
    );
    tt.equal(after!.rolpassword, sent, 'pg_authid.rolpassword is exactly the verifier sent');
    tt.equal(await engine.test({ username: 'verifier_probe', password: plain }), true, 'the plaintext logs in');
  });

  t.test('alternate: several rotations in sequence, as the daemon runs them', async (tt) => {
    let current: Credential = { username: 'app_blue', password: initialBlue };
    const other = (u: string) => (u === 'app_blue' ? 'app_green' : 'app_blue');
    for (let i = 1; i <= 4; i++) {
      const pending: Credential = { username: other(current.username), password: value(`alt${i}`) };
      // An app session opened with the current value before the rotation.
      const session = await openSession(current);

      tt.equal(
        await engine.set({ strategy: 'alternate', username: pending.username, password: pending.password, current }),
        'applied',
        `#${i} set ${pending.username}`,
      );
      const [stored] = await srv.query<{ rolpassword: string; rolvaliduntil: string | null }>(
        `SELECT rolpassword, rolvaliduntil::text FROM pg_authid WHERE rolname = $1`,
        [pending.username],
      );
      tt.match(stored!.rolpassword, /^SCRAM-SHA-256\$4096:/, `#${i} a SCRAM verifier is what the server stores`);
      const salt = Buffer.from(stored!.rolpassword.split('$')[1]!.split(':')[1]!, 'base64');
      tt.equal(
        scramSha256Verifier(pending.password, salt),
        stored!.rolpassword,
        `#${i} ...the verifier of the new value`,
      );
      tt.equal(stored!.rolvaliduntil, 'infinity', `#${i} the new role does not expire`);
      storedVerifiers.push(stored!.rolpassword);

      tt.equal(await engine.test(pending), true, `#${i} test: the new value logs in`);
      tt.equal(await engine.test(current), true, `#${i} overlap: the previous value still logs in`);

      // Both roles act on the same data through the group role.
      const writer = await openSession(pending);
      await writer.query(`INSERT INTO app_data (who) VALUES (session_user)`);
      const { rows } = await session.query<{ n: number }>(`SELECT count(*)::int AS n FROM app_data WHERE who = $1`, [
        pending.username,
      ]);
      tt.ok(rows[0]!.n >= 1, `#${i} the previous role reads what the new role wrote (shared through app_owner)`);
      await writer.end();

      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      tt.equal(await engine.test(current), false, `#${i} after retire the previous value no longer logs in`);
      tt.equal(await engine.test(pending), true, `#${i} after retire the new value still logs in`);
      const survived = await session.query<{ u: string }>(`SELECT session_user AS u, count(*) FROM app_data`);
      tt.equal(survived.rows[0]!.u, current.username, `#${i} the session opened before retire still runs queries`);
      await session.end();

      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      tt.equal(await engine.test(pending), true, `#${i} retire again (replay): no error, the current value unaffected`);
      current = pending;
    }
    // A replayed stale retire (for a value the role no longer has) must not lock out the role's newer value.
    const stale: Credential = { username: current.username, password: value('stale') };
    await engine.retire({
      strategy: 'alternate',
      retired: stale,
      current: { username: other(current.username), password: 'unused' },
    });
    tt.equal(await engine.test(current), true, 'a stale retire leaves the newer value working');
  });

  t.test('single: several rotations; the old value fails at once; retire does nothing', async (tt) => {
    let current: Credential = { username: 'app_single', password: initialSingle };
    for (let i = 1; i <= 3; i++) {
      const session = await openSession(current);
      const pending: Credential = { username: 'app_single', password: value(`single${i}`) };
      tt.equal(
        await engine.set({ strategy: 'single', username: 'app_single', password: pending.password, current }),
        'applied',
        `#${i} set`,
      );
      tt.equal(await engine.test(pending), true, `#${i} the new value logs in`);
      tt.equal(await engine.test(current), false, `#${i} the old value fails at once`);
      await engine.retire({ strategy: 'single', retired: current, current: pending });
      tt.equal(await engine.test(pending), true, `#${i} retire is a no-op: the new value still logs in`);
      const { rows } = await session.query<{ u: string }>('SELECT session_user AS u');
      tt.equal(rows[0]!.u, 'app_single', `#${i} a session opened with the old value survives`);
      await session.end();
      current = pending;
    }
    const [row] = await srv.query<{ v: string | null }>(
      `SELECT rolvaliduntil::text AS v FROM pg_authid WHERE rolname = 'app_single'`,
    );
    tt.equal(row!.v, null, 'single never sets an expiry');
  });

  t.test('crash recovery: set twice with the same pending value', async (tt) => {
    const rolpassword = async (role: string) =>
      (
        await srv.query<{ p: string; v: string | null }>(
          `SELECT rolpassword AS p, rolvaliduntil::text AS v FROM pg_authid WHERE rolname = $1`,
          [role],
        )
      )[0]!;

    await srv.query('CREATE ROLE app_crash_a LOGIN IN ROLE app_owner; CREATE ROLE app_crash_b LOGIN IN ROLE app_owner');
    await grantAdmin('app_crash_a', 'app_crash_b');
    const current: Credential = { username: 'app_crash_a', password: value('crash-current') };
    await setPassword('app_crash_a', current.password);

    const pending = value('crash-pending');
    const job = { strategy: 'alternate' as const, username: 'app_crash_b', password: pending, current };
    tt.equal(await engine.set(job), 'applied', 'alternate: the first set applies');
    const first = await rolpassword('app_crash_b');
    tt.equal(await engine.set(job), 'already-applied', 'alternate: the second set finds the value in place');
    tt.same(await rolpassword('app_crash_b'), first, 'the password was not changed again (same verifier, same salt)');
    tt.equal(await engine.test({ username: 'app_crash_b', password: pending }), true, 'and it logs in');

    // The value is in place but the role carries an expiry that has not come yet (e.g. an operator's
    // VALID UNTIL): a login works now, but the value is about to be served, so set must un-expire it.
    await srv.query(`ALTER ROLE app_crash_b VALID UNTIL '2999-01-01'`);
    tt.equal(await engine.set(job), 'already-applied', 'a pending expiry: still already-applied');
    const after = await rolpassword('app_crash_b');
    tt.equal(after.v, 'infinity', 'the expiry is lifted');
    tt.equal(after.p, first.p, 'without touching the password');

    const single = { strategy: 'single' as const, username: 'app_crash_a', password: value('crash-single'), current };
    tt.equal(await engine.set(single), 'applied', 'single: the first set applies');
    const singleFirst = await rolpassword('app_crash_a');
    tt.equal(await engine.set(single), 'already-applied', 'single: the second set finds the value in place');
    tt.same(await rolpassword('app_crash_a'), singleFirst, 'single: the password was not changed again');
    tt.equal(await engine.test({ username: 'app_crash_a', password: single.password }), true, 'single: it logs in');
  });

  t.test('odd role names rotate correctly and inject nothing', async (tt) => {
    const odd = [
      `o'brien"; DROP ROLE rotor_admin; --`,
      'app.user-1$',
      'jörg smith',
      `back\\slash' OR '1'='1`,
      `x"); DROP TABLE app_data; --`,
    ];
    for (const name of odd) await srv.query(`CREATE ROLE ${ident(name)} LOGIN IN ROLE app_owner`);
    await grantAdmin(...odd);
    const snapshot = () =>
      srv.query(`
      SELECT 'role' AS kind, rolname || ':' || concat_ws(',', rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, rolconnlimit) AS item FROM pg_roles
      UNION ALL SELECT 'member', roleid::regrole::text || '>' || member::regrole::text || ':' || admin_option FROM pg_auth_members
      UNION ALL SELECT 'table', relname || ':' || relowner::regrole::text FROM pg_class WHERE relnamespace = 'public'::regnamespace
      UNION ALL SELECT 'database', datname FROM pg_database
      ORDER BY 1, 2`);
    const before = await snapshot();
    const partner: Credential = { username: 'app_green', password: 'unused' };

    for (const name of odd) {
      const v1 = value('odd1');
      tt.equal(
        await engine.set({ strategy: 'single', username: name, password: v1 }),
        'applied',
        `${name}: single set`,
      );
      tt.equal(await engine.test({ username: name, password: v1 }), true, `${name}: logs in`);
      const v2 = value('odd2');
      tt.equal(
        await engine.set({
          strategy: 'single',
          username: name,
          password: v2,
          current: { username: name, password: v1 },
        }),
        'applied',
        `${name}: single set again`,
      );
      tt.equal(await engine.test({ username: name, password: v1 }), false, `${name}: the old value fails`);
      await engine.retire({ strategy: 'alternate', retired: { username: name, password: v2 }, current: partner });
      tt.equal(await engine.test({ username: name, password: v2 }), false, `${name}: expired by an alternate retire`);
      const v3 = value('odd3');
      tt.equal(
        await engine.set({ strategy: 'alternate', username: name, password: v3, current: partner }),
        'applied',
        `${name}: alternate set`,
      );
      tt.equal(await engine.test({ username: name, password: v3 }), true, `${name}: logs in again`);
    }
    tt.same(
      await srv.query(`SELECT 1 FROM pg_roles WHERE rolname = 'rotor_admin'`),
      [{ '?column?': 1 }],
      'rotor_admin still exists',
    );
    tt.same(await snapshot(), before, 'roles, attributes, memberships, tables and databases are unchanged');
  });

  t.test('refusals: dual, wrong target role, values the server would SASLprep', async (tt) => {
    const current: Credential = { username: 'app_blue', password: 'unused' };
    await rejectsWith(
      tt,
      engine.set({ strategy: 'dual', username: 'app_single', password: value(), current }),
      'DB_UNSUPPORTED',
      'set dual',
    );
    await rejectsWith(
      tt,
      engine.retire({ strategy: 'dual', retired: current, current }),
      'DB_UNSUPPORTED',
      'retire dual',
    );
    await rejectsWith(
      tt,
      engine.set({ strategy: 'alternate', username: 'app_blue', password: value(), current }),
      'DB_ERROR',
      'alternate set on the current role',
    );
    await rejectsWith(
      tt,
      engine.retire({ strategy: 'alternate', retired: current, current }),
      'DB_ERROR',
      'alternate retire of the current role',
    );
    const core = randomBytes(12).toString('hex');
    const nonAscii = secret(`pässwörd-ü-${core}`, core);
    await rejectsWith(
      tt,
      engine.set({ strategy: 'single', username: 'app_single', password: nonAscii }),
      'DB_VALUE_REJECTED',
      'a non-ASCII value',
    );
  });

  t.test('errors map to stable codes', async (tt) => {
    await rejectsWith(
      tt,
      engine.set({ strategy: 'single', username: 'no_such_role', password: value() }),
      'DB_USER_MISSING',
      'set on a missing role (single)',
    );
    await rejectsWith(
      tt,
      engine.set({ strategy: 'alternate', username: 'no_such_role', password: value() }),
      'DB_USER_MISSING',
      'set on a missing role (alternate)',
    );
    await rejectsWith(
      tt,
      engine.set({ strategy: 'single', username: 'r'.repeat(64), password: value() }),
      'DB_USER_MISSING',
      'a name the server would truncate',
    );
    await rejectsWith(
      tt,
      engine.test({ username: '', password: value() }),
      'DB_USER_MISSING',
      'an empty role name (pg would fall back to PGUSER)',
    );

    const wrongAdmin = value('wrong-admin');
    const badAdmin = postgresEngine({ ...target, password: wrongAdmin });
    await rejectsWith(
      tt,
      badAdmin.set({ strategy: 'single', username: 'app_single', password: value() }),
      'DB_ADMIN_AUTH',
      'a wrong admin password',
    );
    await badAdmin.close();

    await srv.query('CREATE ROLE rotor_weak LOGIN');
    const weakPassword = value('weak');
    await setPassword('rotor_weak', weakPassword);
    const weak = postgresEngine({
      ...target,
      url: `postgres://rotor_weak@${srv.host}:${srv.port}/postgres`,
      password: weakPassword,
    });
    await rejectsWith(
      tt,
      weak.set({ strategy: 'single', username: 'app_single', password: value() }),
      'DB_PERMISSION',
      'an admin without CREATEROLE',
    );
    await weak.close();

    const closedPort = await freePort();
    const nowhere = postgresEngine({ ...target, url: `postgres://rotor_admin@127.0.0.1:${closedPort}/postgres` });
    await rejectsWith(
      tt,
      nowhere.test({ username: 'app_single', password: value() }),
      'DB_UNREACHABLE',
      'test: connection refused',
    );
    await rejectsWith(
      tt,
      nowhere.set({ strategy: 'single', username: 'app_single', password: value() }),
      'DB_UNREACHABLE',
      'set: connection refused',
    );
    await nowhere.close();

    // A server that accepts TCP and never answers: the connect timeout.
    const sockets = new Set<net.Socket>();
    const blackHole = net.createServer((s) => void sockets.add(s));
    await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', r));
    const holePort = (blackHole.address() as net.AddressInfo).port;
    const silent = postgresEngine({
      ...target,
      url: `postgres://rotor_admin@127.0.0.1:${holePort}/postgres`,
      timeoutMs: 200,
    });
    await rejectsWith(
      tt,
      silent.test({ username: 'app_single', password: value() }),
      'DB_UNREACHABLE',
      'a server that never answers',
    );
    await silent.close();
    for (const s of sockets) s.destroy();
    await new Promise((r) => blackHole.close(r));
  });

  t.test('the admin connection: one, reconnected when the server drops it', async (tt) => {
    const c1: Credential = { username: 'app_single', password: value('re1') };
    await engine.set({ strategy: 'single', username: c1.username, password: c1.password });
    const count = async () =>
      (
        await srv.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE usename = 'rotor_admin'`)
      )[0]!.n;
    tt.equal(await count(), 1, 'one admin session');
    const killed = await srv.query<{ k: boolean }>(
      `SELECT pg_terminate_backend(pid, 10000) AS k FROM pg_stat_activity WHERE usename = 'rotor_admin'`,
    );
    tt.same(killed, [{ k: true }], 'the server terminates the admin session (and waits until it is gone)');
    const c2: Credential = { username: 'app_single', password: value('re2') };
    tt.equal(
      await engine.set({ strategy: 'single', username: c2.username, password: c2.password, current: c1 }),
      'applied',
      'the next set reconnects',
    );
    tt.equal(await engine.test(c2), true, 'and the value logs in');
    tt.equal(await count(), 1, 'still one admin session');
  });

  t.test('no plaintext value reaches the server log', async (tt) => {
    const log = readFileSync(srv.logFile, 'utf8');
    tt.match(
      log,
      /statement: ALTER ROLE "app_green" PASSWORD 'SCRAM-SHA-256\$4096:[^']+' VALID UNTIL 'infinity'/,
      "the engine's statements are logged (log_statement=all), with a verifier",
    );
    const notSent = storedVerifiers.filter((v) => !log.includes(`PASSWORD '${v}'`));
    tt.same(
      notSent,
      [],
      `each of the ${storedVerifiers.length} stored verifiers is the very string the engine sent (the server did not compute it)`,
    );
    tt.ok(log.includes('control-plaintext-in-clear'), 'control: a plaintext sent in clear does show up in this log');
    const leaked = [...secrets].filter((s) => log.includes(s));
    tt.same(leaked, [], `none of the ${secrets.size} values (whole, or their random cores) appears in the log`);
  });

  t.test('server stopped: DB_UNREACHABLE, and no error carries a value', async (tt) => {
    const c: Credential = { username: 'app_single', password: value('down') };
    await srv.stop();
    await rejectsWith(tt, engine.test(c), 'DB_UNREACHABLE', 'test');
    await rejectsWith(
      tt,
      engine.set({ strategy: 'single', username: c.username, password: c.password }),
      'DB_UNREACHABLE',
      'set',
    );
    await rejectsWith(
      tt,
      engine.retire({ strategy: 'alternate', retired: c, current: { username: 'app_blue', password: value() } }),
      'DB_UNREACHABLE',
      'retire',
    );
    await engine.close();

    tt.ok(errors.length >= 15, `${errors.length} errors collected across the tests`);
    for (const err of errors) {
      const e = err as Error;
      const text = [e.message, e.stack, JSON.stringify(e), ...Object.values(e).map(String)].join('\n');
      const leaked = [...secrets].filter((s) => text.includes(s));
      tt.same(leaked, [], `${(e as DbError).code}: "${e.message}" carries no value`);
    }
  });
}
