/**
 * The MySQL 8 / MariaDB engine (agent/src/engines/mysql.ts).
 *
 * - MySQL 8 statements, exactly, through a recording stand-in for the connection (no MySQL 8 here).
 * - MariaDB live, against a throwaway server (test/services/mariadb.ts): every strategy through several
 *   rotations as the daemon runs them (set -> test -> [served] -> retire), on a user with two host rows
 *   reached separately (socket -> 'localhost', TCP -> '127.0.0.1'), odd user names, crash recovery,
 *   which values reach the server's general query log, the admin account's minimum privileges, errors.
 * - MySQL 8 live, only when ROTOR_TEST_MYSQL_URL is set.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Connection } from 'mysql2/promise';
import { createConnection, format } from 'mysql2/promise';
import type { Test } from 'tap';
import t from 'tap';
import type { ConnectOptions, Connector, Row } from '../agent/src/engines/mysql.js';
import {
  createMysqlFamilyEngine,
  mariadbEngine,
  mysqlEngine,
  nativePasswordHash,
  parseServerVersion,
} from '../agent/src/engines/mysql.js';
import type { Credential, DbEngine, DbErrorCode, TargetConnection } from '../agent/src/engines/types.js';
import { DbError } from '../agent/src/engines/types.js';
import { startMariadb } from './services/mariadb.js';

// ---------------------------------------------------------------------------------------------------
// Values and the check that none of them leaks into an error

/** Every value (pending, current, admin password) the tests use; no error may contain one, nor its hash. */
const SECRETS = new Set<string>();

/** A fresh value that also satisfies MariaDB's simple_password_check (upper, lower, digit, special, 8+). */
function secret(): string {
  const s = `Rt-${randomBytes(12).toString('base64url')}9a`;
  SECRETS.add(s);
  return s;
}

function known(s: string): string {
  SECRETS.add(s);
  return s;
}

function noValueIn(t: Test, e: unknown, what: string): void {
  const err = e as Error & Record<string, unknown>;
  const text = [
    String(err.message),
    String(err.stack),
    JSON.stringify(err),
    JSON.stringify(Object.entries(err)),
    String(err.cause ?? ''),
  ].join('\n');
  const leaked = [...SECRETS].filter((s) => text.includes(s) || text.includes(nativePasswordHash(s)));
  t.same(leaked, [], `${what}: no value (nor its hash) in the error's message, stack or properties`);
  t.equal(err.cause, undefined, `${what}: the driver's error is not kept as cause (it carries the statement)`);
}

async function rejectsWith(
  t: Test,
  p: Promise<unknown>,
  code: DbErrorCode,
  what: string,
): Promise<DbError | undefined> {
  try {
    await p;
  } catch (e) {
    t.ok(e instanceof DbError, `${what}: a DbError`);
    t.equal((e as DbError).code, code, `${what}: ${code}`);
    noValueIn(t, e, what);
    return e as DbError;
  }
  t.fail(`${what}: expected ${code}, but it succeeded`);
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// Unit: the statements, through a recording stand-in for the connection

const ADMIN = 'rotor_admin';
const ADMIN_PW = known('Adm1n-Stand-In-Pw');
const STAND_IN_TARGET: TargetConnection = { url: 'mysql://rotor_admin@db.example:3306/', password: ADMIN_PW };

interface StandInOptions {
  /** SELECT VERSION() (default 8.0.36). */
  version?: string;
  sqlMode?: string;
  /** SET SESSION sql_mode has no effect (NO_BACKSLASH_ESCAPES cannot be removed). */
  stickyMode?: boolean;
  /** mysql.user rows by user (MySQL). */
  accounts?: Record<string, Array<{ host: string; locked?: boolean }>>;
  /** mysql.global_priv rows by user (MariaDB). */
  priv?: Record<string, Array<{ host: string; priv: object }>>;
  /** Whether a login works (default: refused with 1045), or the error it fails with. */
  login?: (user: string, password: string) => boolean | Error;
  /** An error for an admin statement, or for the admin login (sql = 'connect'). */
  fail?: (sql: string) => Error | undefined;
}

/** What mysql2 gives: the server's message and, in `sql`, the whole statement with its values. */
function serverError(errno: number, code: string, sql = ''): Error {
  return Object.assign(new Error(`${code}: near '${sql}'`), {
    errno,
    code,
    sqlState: 'HY000',
    sqlMessage: `near '${sql}'`,
    sql,
    fatal: false,
  });
}

function networkError(code: string): Error {
  return Object.assign(new Error(`connect ${code} 10.0.0.1:3306`), {
    errno: -111,
    code,
    syscall: 'connect',
    fatal: true,
  });
}

function standIn(o: StandInOptions = {}) {
  const rec = { sql: [] as string[], logins: [] as string[], connects: [] as ConnectOptions[], ended: 0 };
  let mode = o.sqlMode ?? 'ONLY_FULL_GROUP_BY,STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION';
  const byLiteral = <T>(table: Record<string, T[]> | undefined, lit: string): T[] =>
    Object.entries(table ?? {}).find(([u]) => format('?', [u]) === lit)?.[1] ?? [];
  const connect: Connector = async (c) => {
    rec.connects.push(c);
    if (c.user !== ADMIN) {
      rec.logins.push(`${c.user} ${c.password}`);
      const r = o.login?.(c.user, c.password) ?? false;
      if (r instanceof Error) throw r;
      if (!r) throw serverError(1045, 'ER_ACCESS_DENIED_ERROR');
      return { query: async () => [{ 1: 1 }], end: async () => void rec.ended++ };
    }
    const refused = o.fail?.('connect');
    if (refused) throw refused;
    return {
      async query(sql: string): Promise<Row[]> {
        rec.sql.push(sql);
        const f = o.fail?.(sql);
        if (f) throw f;
        if (sql.startsWith('SELECT VERSION()')) return [{ version: o.version ?? '8.0.36', sql_mode: mode }];
        let m = /^SET SESSION sql_mode = '(.*)'$/.exec(sql);
        if (m) {
          if (!o.stickyMode) mode = m[1]!;
          return [];
        }
        if (sql === 'SELECT @@SESSION.sql_mode AS sql_mode') return [{ sql_mode: mode }];
        m = /FROM mysql\.user WHERE User = (.*) ORDER BY Host$/.exec(sql);
        if (m) return byLiteral(o.accounts, m[1]!).map((a) => ({ host: a.host, locked: a.locked ? 'Y' : 'N' }));
        m = /FROM mysql\.global_priv WHERE User = (.*) ORDER BY Host$/.exec(sql);
        if (m) return byLiteral(o.priv, m[1]!).map((a) => ({ host: a.host, priv: JSON.stringify(a.priv) }));
        return [];
      },
      end: async () => void rec.ended++,
    };
  };
  const warnings: string[] = [];
  const make = (expected: 'mysql' | 'mariadb' = 'mysql'): DbEngine =>
    createMysqlFamilyEngine(STAND_IN_TARGET, expected, {
      connect,
      log: (_level, message) => void warnings.push(message),
    });
  return { rec, connect, make, warnings, alters: () => rec.sql.filter((s) => s.startsWith('ALTER')) };
}

const TWO_ROWS = (user: string, locked = false) => ({
  [user]: [
    { host: '%', locked },
    { host: 'localhost', locked },
  ],
});
const VERSION_SQL = 'SELECT VERSION() AS version, @@SESSION.sql_mode AS sql_mode';
const rowsSql = (lit: string) =>
  `SELECT Host AS host, account_locked AS locked FROM mysql.user WHERE User = ${lit} ORDER BY Host`;

t.test('MySQL 8 statements (recording stand-in for the connection)', async (t) => {
  const P = known('N3w-Pending-1');
  const C = known('Cur-Value-0');
  const cur: Credential = { username: 'app', password: C };

  t.test(
    'dual set: one ALTER USER over every host row, RETAIN CURRENT PASSWORD; the pending value is tried first',
    async (t) => {
      const s = standIn({ accounts: TWO_ROWS('app') });
      t.equal(await s.make().set({ strategy: 'dual', username: 'app', password: P, current: cur }), 'applied');
      t.same(s.rec.sql, [
        VERSION_SQL,
        rowsSql("'app'"),
        "ALTER USER 'app'@'%' IDENTIFIED BY 'N3w-Pending-1' RETAIN CURRENT PASSWORD, 'app'@'localhost' IDENTIFIED BY 'N3w-Pending-1' RETAIN CURRENT PASSWORD",
      ]);
      t.same(s.rec.logins, ['app N3w-Pending-1'], 'a login with the pending value first (refused: not applied yet)');
      const login = s.rec.connects.find((c) => c.user === 'app');
      t.same(
        login,
        { host: 'db.example', port: 3306, user: 'app', password: P, timeoutMs: 10_000 },
        'test(): a fresh connection to the same server, no database',
      );
    },
  );

  t.test('dual set: the pending and the current value log in -> already-applied, no statement', async (t) => {
    const s = standIn({ accounts: TWO_ROWS('app'), login: () => true });
    t.equal(await s.make().set({ strategy: 'dual', username: 'app', password: P, current: cur }), 'already-applied');
    t.same(s.alters(), []);
    t.same(s.rec.logins, ['app N3w-Pending-1', 'app Cur-Value-0']);
    t.equal(s.rec.ended, 2, 'each login connection is ended');
  });

  t.test(
    'dual set: the pending value logs in but the current does not -> secondary dropped, the current put back, then retained',
    async (t) => {
      const s = standIn({ accounts: TWO_ROWS('app'), login: (_u, pw) => pw === P });
      t.equal(await s.make().set({ strategy: 'dual', username: 'app', password: P, current: cur }), 'applied');
      t.same(s.alters(), [
        "ALTER USER 'app'@'%' DISCARD OLD PASSWORD, 'app'@'localhost' DISCARD OLD PASSWORD",
        "ALTER USER 'app'@'%' IDENTIFIED BY 'Cur-Value-0', 'app'@'localhost' IDENTIFIED BY 'Cur-Value-0'",
        "ALTER USER 'app'@'%' IDENTIFIED BY 'N3w-Pending-1' RETAIN CURRENT PASSWORD, 'app'@'localhost' IDENTIFIED BY 'N3w-Pending-1' RETAIN CURRENT PASSWORD",
      ]);
    },
  );

  t.test(
    "dual set of a secret's first version (no current): the value replaces the password, nothing retained",
    async (t) => {
      const s = standIn({ accounts: TWO_ROWS('app') });
      t.equal(await s.make().set({ strategy: 'dual', username: 'app', password: P }), 'applied');
      t.same(s.alters(), [
        "ALTER USER 'app'@'%' IDENTIFIED BY 'N3w-Pending-1', 'app'@'localhost' IDENTIFIED BY 'N3w-Pending-1'",
      ]);
    },
  );

  t.test(
    'dual retire: DISCARD OLD PASSWORD on every row, only while the retired value still logs in and the current does',
    async (t) => {
      const both = standIn({ accounts: TWO_ROWS('app'), login: () => true });
      await both.make().retire({ strategy: 'dual', retired: cur, current: { username: 'app', password: P } });
      t.same(both.alters(), ["ALTER USER 'app'@'%' DISCARD OLD PASSWORD, 'app'@'localhost' DISCARD OLD PASSWORD"]);
      t.same(
        both.rec.logins,
        ['app N3w-Pending-1', 'app Cur-Value-0'],
        'the current value is checked first, then the retired one',
      );

      const gone = standIn({ accounts: TWO_ROWS('app'), login: (_u, pw) => pw === P });
      await gone.make().retire({ strategy: 'dual', retired: cur, current: { username: 'app', password: P } });
      t.same(
        gone.alters(),
        [],
        'the retired value no longer logs in: nothing to discard (the secondary may be a newer value)',
      );

      const broken = standIn({ accounts: TWO_ROWS('app'), login: (_u, pw) => pw === C });
      await rejectsWith(
        t,
        broken.make().retire({ strategy: 'dual', retired: cur, current: { username: 'app', password: P } }),
        'DB_ERROR',
        'the current value does not log in',
      );
      t.same(broken.alters(), [], 'the last working value is not taken away');
    },
  );

  t.test('alternate set: new password on the inactive user and ACCOUNT UNLOCK, in one statement', async (t) => {
    const s = standIn({ accounts: TWO_ROWS('app_green', true) });
    const job = {
      strategy: 'alternate' as const,
      username: 'app_green',
      password: P,
      current: { username: 'app_blue', password: C },
    };
    t.equal(await s.make().set(job), 'applied');
    t.same(s.alters(), [
      "ALTER USER 'app_green'@'%' IDENTIFIED BY 'N3w-Pending-1', 'app_green'@'localhost' IDENTIFIED BY 'N3w-Pending-1' ACCOUNT UNLOCK",
    ]);
    t.same(s.rec.logins, ['app_green N3w-Pending-1'], 'only the pending value is tried (the current is another user)');

    const done = standIn({ accounts: TWO_ROWS('app_green'), login: () => true });
    t.equal(await done.make().set(job), 'already-applied', 'logs in and no row is locked');
    t.same(done.alters(), []);

    const half = standIn({
      accounts: { app_green: [{ host: '%' }, { host: 'localhost', locked: true }] },
      login: () => true,
    });
    t.equal(await half.make().set(job), 'applied', 'logs in, but a row is still locked');
    t.equal(half.alters().length, 1);

    const same = standIn({ accounts: TWO_ROWS('app_blue') });
    await rejectsWith(t, same.make().set({ ...job, username: 'app_blue' }), 'DB_ERROR', 'set on the user being served');
    t.same(same.rec.sql, [], 'refused before connecting');
  });

  t.test('alternate retire: ACCOUNT LOCK on every unlocked row of the retired user', async (t) => {
    const job = {
      strategy: 'alternate' as const,
      retired: { username: 'app_blue', password: C },
      current: { username: 'app_green', password: P },
    };
    const s = standIn({ accounts: TWO_ROWS('app_blue'), login: (u) => u === 'app_green' });
    await s.make().retire(job);
    t.same(s.alters(), ["ALTER USER 'app_blue'@'%', 'app_blue'@'localhost' ACCOUNT LOCK"]);
    const locked = standIn({ accounts: TWO_ROWS('app_blue', true), login: (u) => u === 'app_green' });
    await locked.make().retire(job);
    t.same(locked.alters(), [], 'already locked: nothing to do');
    await rejectsWith(
      t,
      s.make().retire({ ...job, current: { username: 'app_blue', password: P } }),
      'DB_ERROR',
      'retiring the current user',
    );
  });

  t.test('single: IDENTIFIED BY in place on every row; retire does nothing', async (t) => {
    const s = standIn({ accounts: TWO_ROWS('app') });
    const engine = s.make();
    t.equal(await engine.set({ strategy: 'single', username: 'app', password: P, current: cur }), 'applied');
    t.same(s.alters(), [
      "ALTER USER 'app'@'%' IDENTIFIED BY 'N3w-Pending-1', 'app'@'localhost' IDENTIFIED BY 'N3w-Pending-1'",
    ]);
    const before = s.rec.sql.length;
    await engine.retire({ strategy: 'single', retired: cur, current: { username: 'app', password: P } });
    t.equal(s.rec.sql.length, before, 'no statement at retire');
  });

  t.test('user names and values are escaped by the driver; nothing is injected', async (t) => {
    const odd = `o'brien"; DROP USER rotor_admin; --`;
    const names: Record<string, string> = {
      [odd]: `'o\\'brien\\"; DROP USER rotor_admin; --'`,
      'app.user-1$': `'app.user-1$'`,
      'back\\slash': `'back\\\\slash'`,
      jürgen: `'jürgen'`,
    };
    const value = known(`va'l\\ue"`);
    for (const [name, lit] of Object.entries(names)) {
      const s = standIn({ accounts: TWO_ROWS(name) });
      await s
        .make()
        .set({ strategy: 'dual', username: name, password: value, current: { username: name, password: C } });
      t.equal(s.rec.sql[1], rowsSql(lit), `${name}: the rows query`);
      t.same(
        s.alters(),
        [
          `ALTER USER ${lit}@'%' IDENTIFIED BY 'va\\'l\\\\ue\\"' RETAIN CURRENT PASSWORD, ${lit}@'localhost' IDENTIFIED BY 'va\\'l\\\\ue\\"' RETAIN CURRENT PASSWORD`,
        ],
        `${name}: the ALTER USER`,
      );
    }
  });

  t.test(
    'NO_BACKSLASH_ESCAPES is removed from the session before any value is sent, or the engine refuses',
    async (t) => {
      const s = standIn({
        accounts: TWO_ROWS('app'),
        sqlMode: 'STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES,NO_ENGINE_SUBSTITUTION',
      });
      await s.make().set({ strategy: 'single', username: 'app', password: P });
      t.same(s.rec.sql.slice(0, 4), [
        VERSION_SQL,
        "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'",
        'SELECT @@SESSION.sql_mode AS sql_mode',
        rowsSql("'app'"),
      ]);

      const sticky = standIn({ accounts: TWO_ROWS('app'), sqlMode: 'NO_BACKSLASH_ESCAPES', stickyMode: true });
      await rejectsWith(
        t,
        sticky.make().set({ strategy: 'single', username: 'app', password: P }),
        'DB_UNSUPPORTED',
        'the mode stays on',
      );
      t.notOk(
        sticky.rec.sql.some((q) => q.includes('app')),
        'no statement naming the user or carrying a value was sent',
      );
    },
  );

  t.test(
    'versions: dual needs MySQL 8.0.14; alternate runs on 8.0.13; the flavour comes from the server',
    async (t) => {
      const old = standIn({ version: '8.0.13', accounts: TWO_ROWS('app_green') });
      await rejectsWith(
        t,
        old.make().set({
          strategy: 'dual',
          username: 'app_green',
          password: P,
          current: { username: 'app_green', password: C },
        }),
        'DB_UNSUPPORTED',
        'dual on 8.0.13',
      );
      t.same(old.alters(), []);
      t.equal(await old.make().set({ strategy: 'alternate', username: 'app_green', password: P }), 'applied');

      const mismatch = standIn({ accounts: TWO_ROWS('app') });
      const engine = mismatch.make('mariadb');
      t.equal(engine.engine, 'mariadb');
      await engine.set({ strategy: 'dual', username: 'app', password: P, current: cur });
      t.match(
        mismatch.alters()[0],
        /RETAIN CURRENT PASSWORD$/,
        'a mariadb target that is a MySQL server gets MySQL statements',
      );
      t.match(mismatch.warnings, [/the mariadb target is a mysql server/], 'and a warning');

      t.same(parseServerVersion('10.11.19-MariaDB-0+deb12u1-log'), { flavour: 'mariadb', version: [10, 11, 19] });
      t.same(parseServerVersion('5.5.5-10.6.5-MariaDB'), { flavour: 'mariadb', version: [10, 6, 5] });
      t.same(parseServerVersion('8.0.36-28'), { flavour: 'mysql', version: [8, 0, 36] });
      t.equal(mysqlEngine(STAND_IN_TARGET).engine, 'mysql');
      t.equal(mariadbEngine(STAND_IN_TARGET).engine, 'mariadb');
    },
  );

  t.test('errors: stable codes, no value in them (mysql2 errors carry the statement in err.sql)', async (t) => {
    const job = { strategy: 'dual' as const, username: 'app', password: P, current: cur };
    const onAlter = (errno: number, code: string) => (sql: string) =>
      sql.startsWith('ALTER') ? serverError(errno, code, sql) : undefined;
    const cases: Array<[string, StandInOptions, DbErrorCode, string]> = [
      [
        'password policy (1819)',
        { accounts: TWO_ROWS('app'), fail: onAlter(1819, 'ER_NOT_VALID_PASSWORD') },
        'DB_VALUE_REJECTED',
        '1819',
      ],
      [
        'password history (3638)',
        { accounts: TWO_ROWS('app'), fail: onAlter(3638, 'ER_CREDENTIALS_CONTRADICT_TO_HISTORY') },
        'DB_VALUE_REJECTED',
        '3638',
      ],
      [
        'missing privilege (1227)',
        { accounts: TWO_ROWS('app'), fail: onAlter(1227, 'ER_SPECIFIC_ACCESS_DENIED_ERROR') },
        'DB_PERMISSION',
        '1227',
      ],
      [
        'no SELECT on mysql.user (1142)',
        {
          fail: (sql) =>
            sql.includes('mysql.user') ? serverError(1142, 'ER_TABLEACCESS_DENIED_ERROR', sql) : undefined,
        },
        'DB_PERMISSION',
        '1142',
      ],
      [
        'admin refused (1045)',
        { fail: (sql) => (sql === 'connect' ? serverError(1045, 'ER_ACCESS_DENIED_ERROR') : undefined) },
        'DB_ADMIN_AUTH',
        '1045',
      ],
      [
        'admin locked (3118)',
        { fail: (sql) => (sql === 'connect' ? serverError(3118, 'ER_ACCOUNT_HAS_BEEN_LOCKED') : undefined) },
        'DB_ADMIN_AUTH',
        '3118',
      ],
      [
        'connection refused',
        { fail: (sql) => (sql === 'connect' ? networkError('ECONNREFUSED') : undefined) },
        'DB_UNREACHABLE',
        'ECONNREFUSED',
      ],
      [
        'connect timeout',
        { fail: (sql) => (sql === 'connect' ? networkError('ETIMEDOUT') : undefined) },
        'DB_UNREACHABLE',
        'ETIMEDOUT',
      ],
      ['no such user', { accounts: {} }, 'DB_USER_MISSING', ''],
      [
        'ALTER USER failed (1396)',
        { accounts: TWO_ROWS('app'), fail: onAlter(1396, 'ER_CANNOT_USER') },
        'DB_ERROR',
        '1396',
      ],
      [
        'anything else (1064)',
        { accounts: TWO_ROWS('app'), fail: onAlter(1064, 'ER_PARSE_ERROR') },
        'DB_ERROR',
        '1064',
      ],
    ];
    for (const [what, o, code, dbCode] of cases) {
      const e = await rejectsWith(t, standIn(o).make().set(job), code, what);
      if (dbCode) t.equal(e?.dbCode, dbCode, `${what}: dbCode ${dbCode}`);
    }
  });

  t.test('a session lost between operations is replaced; a statement that loses it is DB_UNREACHABLE', async (t) => {
    let lose = false;
    const s = standIn({
      accounts: TWO_ROWS('app'),
      fail: (sql) =>
        lose && (sql === 'SELECT 1' || sql.startsWith('ALTER'))
          ? Object.assign(networkError('PROTOCOL_CONNECTION_LOST'), { errno: undefined })
          : undefined,
    });
    const engine = s.make();
    await engine.set({ strategy: 'single', username: 'app', password: P });
    lose = true;
    await rejectsWith(
      t,
      engine.set({ strategy: 'single', username: 'app', password: known('Another-1') }),
      'DB_UNREACHABLE',
      'connection lost',
    );
    t.equal(
      s.rec.sql.filter((q) => q === VERSION_SQL).length,
      2,
      'the dead session (failed SELECT 1) was replaced by a new one',
    );
  });

  t.test('test(): refused and locked logins are false; anything else throws', async (t) => {
    const e = (errno: number, code: string) => standIn({ login: () => serverError(errno, code) }).make();
    t.equal(await e(1045, 'ER_ACCESS_DENIED_ERROR').test(cur), false);
    t.equal(await e(3118, 'ER_ACCOUNT_HAS_BEEN_LOCKED').test(cur), false);
    t.equal(await e(4151, 'ER_ACCOUNT_HAS_BEEN_LOCKED').test(cur), false);
    t.equal(await e(1862, 'ER_MUST_CHANGE_PASSWORD_LOGIN').test(cur), false);
    await rejectsWith(t, e(1129, 'ER_HOST_IS_BLOCKED').test(cur), 'DB_ERROR', 'host blocked');
    await rejectsWith(
      t,
      standIn({ login: () => networkError('ECONNREFUSED') })
        .make()
        .test(cur),
      'DB_UNREACHABLE',
      'refused connection',
    );
    t.equal(
      await standIn({ login: () => true })
        .make()
        .test(cur),
      true,
    );
  });

  t.test('the target url: socket, database and password handling', async (t) => {
    const s = standIn({ accounts: TWO_ROWS('app') });
    const engine = createMysqlFamilyEngine(
      {
        url: 'mysql://rotor_admin@localhost/admin_db?socket=%2Frun%2Fmysqld%2Fmysqld.sock',
        password: ADMIN_PW,
        timeoutMs: 2_000,
      },
      'mysql',
      { connect: s.connect },
    );
    await engine.set({ strategy: 'single', username: 'app', password: P });
    t.same(s.rec.connects[0], {
      socketPath: '/run/mysqld/mysqld.sock',
      user: 'rotor_admin',
      password: ADMIN_PW,
      database: 'admin_db',
      timeoutMs: 2_000,
    });
    t.same(
      s.rec.connects.find((c) => c.user === 'app'),
      { socketPath: '/run/mysqld/mysqld.sock', user: 'app', password: P, timeoutMs: 2_000 },
      'the login test uses no database',
    );
    t.throws(() => mysqlEngine({ url: 'postgres://x@h/' }), { code: 'DB_ERROR' });
    t.throws(() => mysqlEngine({ url: 'mysql://h:3306/' }), { code: 'DB_ERROR' });
  });

  t.test('MariaDB statements: hashes, never the plaintext; retire drops only the retired rule', async (t) => {
    const hC = nativePasswordHash(C);
    const hP = nativePasswordHash(P);
    const hOld = nativePasswordHash('old');
    const priv = (rules: string[]) => ({
      access: 0,
      plugin: 'mysql_native_password',
      authentication_string: rules[0],
      ...(rules.length > 1
        ? {
            auth_or: [
              {},
              ...rules.slice(1).map((a) => ({ plugin: 'mysql_native_password', authentication_string: a })),
            ],
          }
        : {}),
    });
    const s = standIn({
      version: '10.11.19-MariaDB-log',
      priv: {
        app: [
          { host: '127.0.0.1', priv: priv([hC, hOld]) },
          { host: 'localhost', priv: priv([hC]) },
        ],
      },
    });
    await s.make('mariadb').set({ strategy: 'dual', username: 'app', password: P, current: cur });
    t.same(s.alters(), [
      `ALTER USER 'app'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING '${hP}' OR mysql_native_password USING '${hC}', ` +
        `'app'@'localhost' IDENTIFIED VIA mysql_native_password USING '${hP}' OR mysql_native_password USING '${hC}'`,
    ]);
    t.notOk(
      s.rec.sql.some((q) => q.includes(P) || q.includes(C)),
      'no plaintext in any statement',
    );

    const r = standIn({
      version: '10.11.19-MariaDB-log',
      login: () => true,
      priv: {
        app: [
          { host: '127.0.0.1', priv: priv([hP, hC]) },
          { host: 'localhost', priv: priv([hP]) },
        ],
      },
    });
    await r.make('mariadb').retire({ strategy: 'dual', retired: cur, current: { username: 'app', password: P } });
    t.same(
      r.alters(),
      [`ALTER USER 'app'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING '${hP}'`],
      'only the row that still has the retired rule is re-issued',
    );
  });
});

// ---------------------------------------------------------------------------------------------------
// Live: MariaDB

t.test('MariaDB, live (a throwaway server)', async (t) => {
  const db = await startMariadb(t, { generalLog: true });
  if (!db) return;
  t.comment(`server: ${db.version} on 127.0.0.1:${db.port}`);
  SECRETS.add(db.rootPassword);

  const root = await db.root();
  t.teardown(() => root.destroy());
  const sql = async (q: string, values: Array<string | number> = []): Promise<Row[]> => {
    const [rows] = await root.query(format(q, values));
    return Array.isArray(rows) ? (rows as Row[]) : [];
  };

  /** Logs in over the socket ('localhost' rows) or TCP ('127.0.0.1' rows); CURRENT_USER(), or false if refused. */
  async function login(user: string, password: string, via: 'socket' | 'tcp'): Promise<string | false> {
    let c: Connection;
    try {
      c = await createConnection(
        via === 'socket'
          ? { socketPath: db!.socket, user, password }
          : { host: db!.host, port: db!.port, user, password },
      );
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      if (errno === 1045 || errno === 4151) return false;
      throw e;
    }
    try {
      const [rows] = await c.query('SELECT CURRENT_USER() AS u');
      await c.query('SELECT COUNT(*) AS n FROM rotor_app.t'); // the user's privileges came along
      return String((rows as Row[])[0]?.u);
    } finally {
      await c.end();
    }
  }

  /** Checks a credential on both host rows of its user. */
  async function onBothRows(t: Test, c: Credential, expected: boolean, what: string): Promise<void> {
    for (const [via, host] of [
      ['socket', 'localhost'],
      ['tcp', '127.0.0.1'],
    ] as const) {
      const who = await login(c.username, c.password, via);
      t.equal(
        who,
        expected ? `${c.username}@${host}` : false,
        `${what}: ${expected ? 'logs in' : 'is refused'} on the '${host}' row`,
      );
    }
  }

  async function createUser(
    user: string,
    password: string,
    opts: { role?: string; locked?: boolean } = {},
  ): Promise<void> {
    for (const host of ['localhost', '127.0.0.1']) {
      // Setup sends hashes too, so that the general log check below can look for every value.
      await sql(`CREATE USER ?@? IDENTIFIED BY PASSWORD ?${opts.locked ? ' ACCOUNT LOCK' : ''}`, [
        user,
        host,
        nativePasswordHash(password),
      ]);
      if (opts.role) {
        await sql(`GRANT ${opts.role} TO ?@?`, [user, host]);
        await sql(`SET DEFAULT ROLE ${opts.role} FOR ?@?`, [user, host]);
      } else {
        await sql('GRANT SELECT ON rotor_app.* TO ?@?', [user, host]);
      }
    }
  }

  /** Per host row: how many authentication rules, and whether the account is locked. */
  async function rowState(user: string): Promise<Record<string, { rules: number; locked: boolean }>> {
    const rows = await sql('SELECT Host AS host, Priv AS priv FROM mysql.global_priv WHERE User = ? ORDER BY Host', [
      user,
    ]);
    return Object.fromEntries(
      rows.map((r) => {
        const p = (typeof r.priv === 'string' ? JSON.parse(r.priv) : r.priv) as {
          auth_or?: unknown[];
          account_locked?: boolean;
        };
        return [String(r.host), { rules: p.auth_or?.length ?? 1, locked: p.account_locked === true }];
      }),
    );
  }

  async function accounts(): Promise<string[]> {
    const rows = await sql('SELECT CONCAT(User, 0x40, Host) AS a FROM mysql.global_priv ORDER BY a');
    return rows.map((r) => String(r.a));
  }

  await sql('CREATE DATABASE rotor_app');
  await sql('CREATE TABLE rotor_app.t (x INT)');
  await sql('INSERT INTO rotor_app.t VALUES (1)');

  const adminPassword = secret();
  await sql("CREATE USER 'rotor_admin'@'127.0.0.1' IDENTIFIED BY PASSWORD ?", [nativePasswordHash(adminPassword)]);
  await sql("GRANT CREATE USER ON *.* TO 'rotor_admin'@'127.0.0.1'");
  await sql("GRANT SELECT ON mysql.global_priv TO 'rotor_admin'@'127.0.0.1'");
  const target: TargetConnection = { url: `mysql://rotor_admin@127.0.0.1:${db.port}/`, password: adminPassword };
  const engine = mariadbEngine(target);
  t.teardown(() => engine.close());

  t.test('passwords are enforced: a wrong one is refused, over TCP and the socket', async (t) => {
    t.not(db.port, 3306, "not the machine's own server");
    t.ok(/MariaDB/.test(db.version), db.version);
    const wrong = secret();
    const errnoOf = (p: Promise<Connection>): Promise<unknown> =>
      p.then(
        async (c) => {
          await c.end();
          return 'logged in';
        },
        (e: { errno?: number }) => e.errno,
      );
    t.equal(
      await errnoOf(createConnection({ host: db.host, port: db.port, user: 'root', password: wrong })),
      1045,
      'root, wrong password, TCP: refused',
    );
    t.equal(
      await errnoOf(createConnection({ host: db.host, port: db.port, user: 'root' })),
      1045,
      'root, no password, TCP: refused',
    );
    t.equal(
      await errnoOf(createConnection({ socketPath: db.socket, user: 'root', password: wrong })),
      1045,
      'root, wrong password, socket: refused',
    );
    const ok = await createConnection({ host: db.host, port: db.port, user: 'root', password: db.rootPassword });
    await ok.end();
    t.equal(
      await engine.test({ username: 'rotor_admin', password: wrong }),
      false,
      'the admin with a wrong password: test() is false',
    );
    t.equal(
      await engine.test({ username: 'rotor_admin', password: adminPassword }),
      true,
      'the admin with its password: test() is true',
    );
    t.same(
      await accounts(),
      ['mariadb.sys@localhost', 'root@127.0.0.1', 'root@localhost', 'rotor_admin@127.0.0.1'],
      'no anonymous or password-less root account is left',
    );
  });

  t.test('the admin account needs exactly CREATE USER and SELECT on mysql.global_priv', async (t) => {
    const grants = (await sql("SHOW GRANTS FOR 'rotor_admin'@'127.0.0.1'")).map((r) =>
      String(Object.values(r)[0]).replace(/ IDENTIFIED BY PASSWORD '.*'$/, ''),
    );
    t.same(grants, [
      'GRANT CREATE USER ON *.* TO `rotor_admin`@`127.0.0.1`',
      'GRANT SELECT ON `mysql`.`global_priv` TO `rotor_admin`@`127.0.0.1`',
    ]);
    const probe = { username: 'perm_probe', password: secret() };
    await createUser(probe.username, probe.password);
    for (const [name, grant, dbCode] of [
      ['rotor_nosel', 'GRANT CREATE USER ON *.* TO ?@?', '1142'],
      ['rotor_nocreate', 'GRANT SELECT ON mysql.global_priv TO ?@?', '1227'],
    ] as const) {
      const pw = secret();
      await sql('CREATE USER ?@? IDENTIFIED BY PASSWORD ?', [name, '127.0.0.1', nativePasswordHash(pw)]);
      await sql(grant, [name, '127.0.0.1']);
      const weak = mariadbEngine({ url: `mysql://${name}@127.0.0.1:${db.port}/`, password: pw });
      for (const strategy of ['dual', 'single'] as const) {
        const e = await rejectsWith(
          t,
          weak.set({ strategy, username: probe.username, password: secret(), current: probe }),
          'DB_PERMISSION',
          `${name}: ${strategy} set`,
        );
        t.equal(e?.dbCode, dbCode, `${name}: ${dbCode}`);
      }
      await weak.close();
    }
    await onBothRows(t, probe, true, 'the probe user is unchanged');
  });

  t.test('dual: several rotations as the daemon runs them', async (t) => {
    const user = 'app';
    let current: Credential = { username: user, password: secret() };
    await createUser(user, current.password);
    for (let i = 1; i <= 3; i++) {
      const pending: Credential = { username: user, password: secret() };
      t.equal(
        await engine.set({ strategy: 'dual', username: user, password: pending.password, current }),
        'applied',
        `rotation ${i}: set`,
      );
      t.equal(await engine.test(pending), true, `rotation ${i}: test`);
      // [served] the overlap: both values log in, on every host row
      await onBothRows(t, pending, true, `rotation ${i}, overlap: the new value`);
      await onBothRows(t, current, true, `rotation ${i}, overlap: the previous value`);
      t.same(
        await rowState(user),
        { '127.0.0.1': { rules: 2, locked: false }, localhost: { rules: 2, locked: false } },
        `rotation ${i}: two rules on every row`,
      );
      if (i === 1) {
        t.equal(
          await engine.set({ strategy: 'dual', username: user, password: pending.password, current }),
          'already-applied',
          'crash case: set again with the same pending value',
        );
        await onBothRows(t, pending, true, 'after the repeated set: the new value');
        await onBothRows(t, current, true, 'after the repeated set: the previous value');
      }
      await engine.retire({ strategy: 'dual', retired: current, current: pending });
      await onBothRows(t, pending, true, `rotation ${i}, retired: the new value`);
      await onBothRows(t, current, false, `rotation ${i}, retired: the previous value`);
      t.equal(await engine.test(current), false, `rotation ${i}: test() of the retired value is false`);
      await engine.retire({ strategy: 'dual', retired: current, current: pending });
      t.same(
        await rowState(user),
        { '127.0.0.1': { rules: 1, locked: false }, localhost: { rules: 1, locked: false } },
        `rotation ${i}: retire again changes nothing`,
      );
      current = pending;
    }
  });

  t.test("dual, a secret's first version (no current): the value replaces the operator's password", async (t) => {
    const operator: Credential = { username: 'app_first', password: secret() };
    await createUser(operator.username, operator.password);
    const first: Credential = { username: operator.username, password: secret() };
    t.equal(await engine.set({ strategy: 'dual', username: first.username, password: first.password }), 'applied');
    await onBothRows(t, first, true, 'the first value');
    await onBothRows(t, operator, false, "the operator's password");
    t.equal(
      await engine.set({ strategy: 'dual', username: first.username, password: first.password }),
      'already-applied',
    );
  });

  t.test('dual, crash half-way through the rows (MariaDB applies ALTER USER account by account)', async (t) => {
    const current: Credential = { username: 'app_partial', password: secret() };
    await createUser(current.username, current.password);
    const pending: Credential = { username: current.username, password: secret() };
    // Only the row the agent's own login reaches (TCP, '127.0.0.1') got the change before the "crash".
    await sql('ALTER USER ?@? IDENTIFIED VIA mysql_native_password USING ? OR mysql_native_password USING ?', [
      current.username,
      '127.0.0.1',
      nativePasswordHash(pending.password),
      nativePasswordHash(current.password),
    ]);
    t.equal(
      await login(pending.username, pending.password, 'socket'),
      false,
      "before: the 'localhost' row lacks the pending value",
    );
    t.equal(
      await engine.set({ strategy: 'dual', username: current.username, password: pending.password, current }),
      'applied',
      'the login works, but a row is missing: applied again',
    );
    await onBothRows(t, pending, true, 'the new value');
    await onBothRows(t, current, true, 'the current value');
  });

  t.test(
    'alternate: two users take turns (a role carries their privileges); retire locks the previous user',
    async (t) => {
      await sql('CREATE ROLE app_rw');
      await sql('GRANT SELECT ON rotor_app.* TO app_rw');
      let current: Credential = { username: 'app_blue', password: secret() };
      await createUser('app_blue', current.password, { role: 'app_rw' });
      await createUser('app_green', secret(), { role: 'app_rw', locked: true });
      for (let i = 1; i <= 4; i++) {
        const inactive = current.username === 'app_blue' ? 'app_green' : 'app_blue';
        const pending: Credential = { username: inactive, password: secret() };
        t.equal(
          await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
          'applied',
          `rotation ${i}: set on ${inactive}`,
        );
        t.equal(await engine.test(pending), true, `rotation ${i}: test`);
        await onBothRows(t, pending, true, `rotation ${i}, overlap: the new user`);
        await onBothRows(t, current, true, `rotation ${i}, overlap: the previous user`);
        if (i === 1) {
          t.equal(
            await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
            'already-applied',
            'crash case: set again',
          );
          await onBothRows(t, pending, true, 'after the repeated set: the new user');
          await onBothRows(t, current, true, 'after the repeated set: the previous user');
        }
        const open = await createConnection({
          socketPath: db.socket,
          user: current.username,
          password: current.password,
        });
        await engine.retire({ strategy: 'alternate', retired: current, current: pending });
        await onBothRows(t, current, false, `rotation ${i}, retired: the previous user (locked)`);
        t.equal(await engine.test(current), false, `rotation ${i}: test() of the locked user is false`);
        const [rows] = await open.query('SELECT COUNT(*) AS n FROM rotor_app.t');
        t.equal(Number((rows as Row[])[0]?.n), 1, `rotation ${i}: a session opened before the lock keeps working`);
        await open.end();
        await onBothRows(t, pending, true, `rotation ${i}, retired: the new user`);
        t.same(
          await rowState(current.username),
          { '127.0.0.1': { rules: 1, locked: true }, localhost: { rules: 1, locked: true } },
          `rotation ${i}: every row of the previous user is locked`,
        );
        await engine.retire({ strategy: 'alternate', retired: current, current: pending });
        current = pending;
      }
    },
  );

  t.test('single: the value changes in place; the old one fails at once; retire does nothing', async (t) => {
    let current: Credential = { username: 'app_single', password: secret() };
    await createUser(current.username, current.password);
    for (let i = 1; i <= 3; i++) {
      const pending: Credential = { username: current.username, password: secret() };
      t.equal(
        await engine.set({ strategy: 'single', username: current.username, password: pending.password, current }),
        'applied',
        `rotation ${i}: set`,
      );
      t.equal(await engine.test(pending), true, `rotation ${i}: test`);
      await onBothRows(t, pending, true, `rotation ${i}: the new value`);
      await onBothRows(t, current, false, `rotation ${i}: the old value, at once`);
      if (i === 1)
        t.equal(
          await engine.set({ strategy: 'single', username: current.username, password: pending.password, current }),
          'already-applied',
          'crash case: set again',
        );
      await engine.retire({ strategy: 'single', retired: current, current: pending });
      await onBothRows(t, pending, true, `rotation ${i}: after retire`);
      current = pending;
    }
  });

  let lastPending = '';
  t.test('odd user names rotate correctly and inject nothing', async (t) => {
    const names = [`o'brien"; DROP USER rotor_admin; --`, 'app.user-1$', 'back\\slash', 'jürgen'];
    for (const name of names) {
      let current: Credential = { username: name, password: secret() };
      await createUser(name, current.password);
      const before = await accounts();
      for (const strategy of ['dual', 'single'] as const) {
        const pending: Credential = { username: name, password: secret() };
        t.equal(
          await engine.set({ strategy, username: name, password: pending.password, current }),
          'applied',
          `${name}: ${strategy} set`,
        );
        await onBothRows(t, pending, true, `${name}: ${strategy}: the new value`);
        await onBothRows(t, current, strategy === 'dual', `${name}: ${strategy}: the old value before retire`);
        await engine.retire({ strategy, retired: current, current: pending });
        await onBothRows(t, current, false, `${name}: ${strategy}: the old value after retire`);
        current = pending;
        lastPending = pending.password;
      }
      t.same(await accounts(), before, `${name}: no account added or dropped`);
    }
    t.equal(
      await engine.test({ username: 'rotor_admin', password: adminPassword }),
      true,
      'rotor_admin still exists and logs in',
    );
  });

  t.test('the general query log holds no value: MariaDB receives hashes only', async (t) => {
    const log = readFileSync(db.generalLog!, 'utf8');
    t.match(
      log,
      /ALTER USER 'app'@'127\.0\.0\.1' IDENTIFIED VIA mysql_native_password USING '\*[0-9A-F]{40}' OR mysql_native_password USING '\*[0-9A-F]{40}'/,
      'the dual statements are in the log',
    );
    t.ok(
      log.includes(nativePasswordHash(lastPending)),
      "the last rotation's statement is in the log too (the log is complete when read)",
    );
    const leaked = [...SECRETS].filter((s) => log.includes(s));
    t.same(leaked, [], `none of the ${SECRETS.size} values used so far appears in the log`);
  });

  t.test('mysqlEngine pointed at MariaDB adapts to it and warns', async (t) => {
    const warnings: string[] = [];
    const adapted = createMysqlFamilyEngine(target, 'mysql', {
      log: (level, message) => void warnings.push(`${level}: ${message}`),
    });
    t.teardown(() => adapted.close());
    const current: Credential = { username: 'app_flavour', password: secret() };
    await createUser(current.username, current.password);
    const pending: Credential = { username: current.username, password: secret() };
    t.equal(
      await adapted.set({ strategy: 'dual', username: current.username, password: pending.password, current }),
      'applied',
    );
    await onBothRows(t, pending, true, 'the new value');
    await onBothRows(t, current, true, 'the previous value');
    await adapted.retire({ strategy: 'dual', retired: current, current: pending });
    await onBothRows(t, current, false, 'the previous value after retire');
    t.same(warnings, ['warn: the mysql target is a mariadb server: using mariadb statements']);
  });

  t.test('NO_BACKSLASH_ESCAPES on the server: the engine turns it off for its session', async (t) => {
    const [saved] = await sql('SELECT @@GLOBAL.sql_mode AS m');
    await sql("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')");
    t.teardown(() => sql('SET GLOBAL sql_mode = ?', [String(saved?.m)]));
    const name = "nb\\'x";
    const current: Credential = { username: name, password: secret() };
    await createUser(name, current.password); // root's session started before the change
    const before = await accounts();
    const fresh = mariadbEngine(target);
    t.teardown(() => fresh.close());
    const pending: Credential = { username: name, password: secret() };
    t.equal(await fresh.set({ strategy: 'dual', username: name, password: pending.password, current }), 'applied');
    await fresh.retire({ strategy: 'dual', retired: current, current: pending });
    await onBothRows(t, pending, true, 'the new value');
    await onBothRows(t, current, false, 'the old value');
    t.same(await accounts(), before, 'no account added or dropped');
    t.match(
      readFileSync(db.generalLog!, 'utf8'),
      /SET SESSION sql_mode = '[A-Z_,]*'\n/,
      'the engine turned the mode off in its session',
    );
  });

  t.test('errors', async (t) => {
    await rejectsWith(
      t,
      engine.set({
        strategy: 'dual',
        username: 'nobody_here',
        password: secret(),
        current: { username: 'nobody_here', password: secret() },
      }),
      'DB_USER_MISSING',
      'set for a missing user',
    );
    await rejectsWith(
      t,
      engine.retire({
        strategy: 'alternate',
        retired: { username: 'nobody_here', password: secret() },
        current: { username: 'rotor_admin', password: adminPassword },
      }),
      'DB_USER_MISSING',
      'retire for a missing user',
    );
    t.equal(
      await engine.test({ username: 'nobody_here', password: secret() }),
      false,
      'test() for a missing user is false',
    );
    const wrongAdmin = mariadbEngine({ ...target, password: secret() });
    await rejectsWith(
      t,
      wrongAdmin.set({ strategy: 'single', username: 'app', password: secret() }),
      'DB_ADMIN_AUTH',
      'a wrong admin password',
    );
    await wrongAdmin.close();
  });

  t.test(
    'a password policy (simple_password_check, strict_password_validation): weak values are rejected; hashes are refused, so the plaintext is sent',
    async (t) => {
      const current: Credential = { username: 'app_policy', password: secret() };
      await createUser(current.username, current.password);
      await sql("INSTALL SONAME 'simple_password_check'");
      t.teardown(() => sql("UNINSTALL SONAME 'simple_password_check'"));
      const weak = known('weak');
      const e = await rejectsWith(
        t,
        engine.set({ strategy: 'dual', username: current.username, password: weak, current }),
        'DB_VALUE_REJECTED',
        'a weak value',
      );
      t.equal(e?.dbCode, '1819', 'the cause found in SHOW WARNINGS behind 1396');
      await onBothRows(t, current, true, 'the current value after the refusal');
      const pending: Credential = { username: current.username, password: secret() };
      t.equal(
        await engine.set({ strategy: 'dual', username: current.username, password: pending.password, current }),
        'applied',
      );
      await onBothRows(t, pending, true, 'the new value');
      await onBothRows(t, current, true, 'the previous value');
      await engine.retire({ strategy: 'dual', retired: current, current: pending });
      await onBothRows(t, pending, true, 'the new value after retire');
      await onBothRows(t, current, false, 'the previous value after retire');
      const log = readFileSync(db.generalLog!, 'utf8');
      t.ok(
        log.includes(`PASSWORD('${pending.password}')`),
        'here the server validates values, so they are sent (and logged) in clear: documented in docs/databases/mysql-mariadb.md',
      );
    },
  );

  // Last: the server goes away.
  t.test('a stopped server: DB_UNREACHABLE', async (t) => {
    const user: Credential = { username: 'app_stop', password: secret() };
    await createUser(user.username, user.password);
    const live = mariadbEngine(target);
    const pending = secret();
    t.equal(
      await live.set({ strategy: 'single', username: user.username, password: pending }),
      'applied',
      'the session is open',
    );
    root.destroy();
    await db.stop();
    await rejectsWith(
      t,
      live.set({ strategy: 'single', username: user.username, password: secret() }),
      'DB_UNREACHABLE',
      'set with a session the server closed',
    );
    await rejectsWith(t, live.test({ username: user.username, password: pending }), 'DB_UNREACHABLE', 'test()');
    await rejectsWith(
      t,
      mariadbEngine(target).set({ strategy: 'single', username: user.username, password: secret() }),
      'DB_UNREACHABLE',
      'a new engine',
    );
    await live.close();
  });
});

// ---------------------------------------------------------------------------------------------------
// Live: MySQL 8, only with ROTOR_TEST_MYSQL_URL

const MYSQL_URL = process.env.ROTOR_TEST_MYSQL_URL;

/** The account of ROTOR_TEST_MYSQL_URL: where to connect, as whom. */
function mysqlAccount(u: string) {
  const url = new URL(u);
  return {
    url,
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: Number(url.port || 3306),
    user: decodeURIComponent(url.username),
    password: decodeURIComponent(url.password),
  };
}

/**
 * Why the live MySQL 8 tests cannot run here (a visible skip with that reason), or false when they
 * can. A URL that is set but does not answer fails the file: it is not a reason to skip.
 */
async function mysqlSkip(): Promise<string | false> {
  if (!MYSQL_URL)
    return 'ROTOR_TEST_MYSQL_URL is not set (e.g. mysql://root:PASSWORD@127.0.0.1:3306/, an account that can create users): skipping the live MySQL 8 tests';
  const a = mysqlAccount(MYSQL_URL);
  SECRETS.add(a.password);
  const c = await createConnection({ host: a.host, port: a.port, user: a.user, password: a.password });
  try {
    const [rows] = await c.query('SELECT VERSION() AS v');
    const v = String((rows as Row[])[0]?.v);
    if (parseServerVersion(v).flavour !== 'mysql')
      return `ROTOR_TEST_MYSQL_URL points at ${v}, not MySQL 8: skipping the live MySQL 8 tests (MariaDB is tested live above)`;
    return false;
  } finally {
    await c.end();
  }
}

t.test('MySQL 8, live (ROTOR_TEST_MYSQL_URL)', { skip: await mysqlSkip() }, async (t) => {
  const { url, host, port, user, password } = mysqlAccount(MYSQL_URL!);
  const server = { host, port };
  const root = await createConnection({ ...server, user, password });
  const sql = async (q: string, values: Array<string | number> = []): Promise<Row[]> => {
    const [rows] = await root.query(format(q, values));
    return Array.isArray(rows) ? (rows as Row[]) : [];
  };
  const [v] = await sql('SELECT VERSION() AS v');
  t.comment(`server: ${String(v?.v)}`);

  const tag = randomBytes(3).toString('hex');
  const created: string[] = [];
  const hosts = ['%', 'localhost'];
  t.teardown(async () => {
    for (const u of created) for (const h of hosts) await sql('DROP USER IF EXISTS ?@?', [u, h]).catch(() => {});
    await root.end();
  });
  const createUser = async (user: string, password: string, locked = false): Promise<void> => {
    created.push(user);
    for (const h of hosts)
      await sql(`CREATE USER ?@? IDENTIFIED BY ?${locked ? ' ACCOUNT LOCK' : ''}`, [user, h, password]);
  };
  /** Per row: HEX(authentication_string), whether a secondary password is held, whether locked. */
  const rows = async (user: string) =>
    sql(
      "SELECT Host AS host, HEX(authentication_string) AS auth, JSON_EXTRACT(User_attributes, '$.additional_password') IS NOT NULL AS two, account_locked AS locked FROM mysql.user WHERE User = ? ORDER BY Host",
      [user],
    );

  const admin = `rotor_adm_${tag}`;
  const adminPassword = secret();
  created.push(admin);
  await sql("CREATE USER ?@'%' IDENTIFIED BY ?", [admin, adminPassword]);
  await sql("GRANT CREATE USER ON *.* TO ?@'%'", [admin]);
  await sql("GRANT SELECT ON mysql.user TO ?@'%'", [admin]);
  const engine = mysqlEngine({ url: `mysql://${encodeURIComponent(admin)}@${url.host}/`, password: adminPassword });
  t.teardown(() => engine.close());

  t.test('dual: RETAIN CURRENT PASSWORD / DISCARD OLD PASSWORD on every row', async (t) => {
    const user = `app_${tag}`;
    let current: Credential = { username: user, password: secret() };
    await createUser(user, current.password);
    for (let i = 1; i <= 3; i++) {
      const before = await rows(user);
      const pending: Credential = { username: user, password: secret() };
      t.equal(
        await engine.set({ strategy: 'dual', username: user, password: pending.password, current }),
        'applied',
        `rotation ${i}: set`,
      );
      if (i === 1)
        t.equal(
          await engine.set({ strategy: 'dual', username: user, password: pending.password, current }),
          'already-applied',
          'crash case',
        );
      t.equal(await engine.test(pending), true, `rotation ${i}: the new value`);
      t.equal(await engine.test(current), true, `rotation ${i}: the previous value, during the overlap`);
      const during = await rows(user);
      t.ok(
        during.every((r, k) => r.auth !== before[k]?.auth && Number(r.two) === 1),
        `rotation ${i}: every row has a new primary and a secondary`,
      );
      await engine.retire({ strategy: 'dual', retired: current, current: pending });
      t.equal(await engine.test(current), false, `rotation ${i}: the previous value after retire`);
      t.equal(await engine.test(pending), true, `rotation ${i}: the new value after retire`);
      t.ok(
        (await rows(user)).every((r) => Number(r.two) === 0),
        `rotation ${i}: no row keeps a secondary`,
      );
      current = pending;
    }
  });

  t.test('alternate: unlock + new password, then ACCOUNT LOCK', async (t) => {
    const blue = `blue_${tag}`;
    const green = `green_${tag}`;
    let current: Credential = { username: blue, password: secret() };
    await createUser(blue, current.password);
    await createUser(green, secret(), true);
    for (let i = 1; i <= 3; i++) {
      const pending: Credential = { username: current.username === blue ? green : blue, password: secret() };
      t.equal(
        await engine.set({ strategy: 'alternate', username: pending.username, password: pending.password, current }),
        'applied',
      );
      t.equal(await engine.test(pending), true);
      t.equal(await engine.test(current), true, 'the previous user during the overlap');
      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      t.equal(await engine.test(current), false, 'the previous user is locked');
      t.ok(
        (await rows(current.username)).every((r) => r.locked === 'Y'),
        'on every row',
      );
      current = pending;
    }
  });

  t.test('single, odd names, errors', async (t) => {
    for (const name of [`o'b"; DROP USER x; --${tag}`, `app.user-1$${tag}`, `back\\slash${tag}`, `jürgen${tag}`]) {
      let current: Credential = { username: name, password: secret() };
      await createUser(name, current.password);
      for (const strategy of ['dual', 'single'] as const) {
        const pending: Credential = { username: name, password: secret() };
        t.equal(
          await engine.set({ strategy, username: name, password: pending.password, current }),
          'applied',
          `${name}: ${strategy}`,
        );
        t.equal(await engine.test(current), strategy === 'dual', `${name}: ${strategy}: the old value before retire`);
        await engine.retire({ strategy, retired: current, current: pending });
        t.equal(await engine.test(current), false, `${name}: ${strategy}: the old value after retire`);
        t.equal(await engine.test(pending), true, `${name}: ${strategy}: the new value`);
        current = pending;
      }
    }
    await rejectsWith(
      t,
      engine.set({ strategy: 'single', username: `nobody_${tag}`, password: secret() }),
      'DB_USER_MISSING',
      'missing user',
    );
    await rejectsWith(
      t,
      mysqlEngine({ url: `mysql://${encodeURIComponent(admin)}@${url.host}/`, password: secret() }).set({
        strategy: 'single',
        username: `nobody_${tag}`,
        password: secret(),
      }),
      'DB_ADMIN_AUTH',
      'wrong admin password',
    );
  });
});
