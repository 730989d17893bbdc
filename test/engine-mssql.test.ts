/**
 * The SQL Server engine. SQL Server cannot run on this machine, so the engine runs against a recording
 * stand-in plugged into its `connect` seam. The stand-in holds SQL logins (name, password, enabled),
 * checks logins like the server (18456 wrong password, 18470 disabled), accepts only the exact batches
 * written out below, and evaluates them the way the server would: it builds the dynamic statement from
 * the bound parameters with QUOTENAME (NULL over 128 characters) and parses it back with T-SQL's quoting
 * rules, so odd names and passwords must survive the round trip. Every connection and batch is recorded.
 *
 * The live test runs when ROTOR_TEST_MSSQL_URL is set (see the end).
 */
import { randomBytes } from 'node:crypto';
import sql from 'mssql';
import t, { type Test } from 'tap';
import {
  createMssqlEngine,
  MSSQL_BATCHES,
  type MssqlConnect,
  type MssqlParam,
  mssqlConfig,
  mssqlEngine,
  mssqlPoolConnect,
  parseMssqlTarget,
} from '../agent/src/engines/mssql.js';
import type { Credential, DbEngine } from '../agent/src/engines/types.js';
import { rejectsWithNone } from './lib/db-errors.js';
import { freePort } from './services/common.js';

const TARGET_URL = 'mssql://rotor_admin@sql.example:1433/appdb';
const ADMIN_PASSWORD = 'Admin-secret-value-1';

const usedValues: string[] = [ADMIN_PASSWORD];
function value(): string {
  const v = `Aa1 p'"\\ ]] é ${randomBytes(12).toString('base64url')}`;
  usedValues.push(v);
  return v;
}

// The exact batches, written out here so that any change to what the engine sends shows in review.
const GUARD = `SET NOCOUNT ON;
IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = @login AND type = 'S')
  THROW 50001, N'rotor: no such SQL login, or the admin account cannot see it', 1;
DECLARE @qlogin nvarchar(258) = QUOTENAME(@login);
IF @qlogin IS NULL THROW 50002, N'rotor: the login name cannot be quoted (over 128 characters)', 1;
DECLARE @sql nvarchar(max);`;
const PASSWORD = `DECLARE @qpw nvarchar(258) = QUOTENAME(@pw, '''');
IF @qpw IS NULL THROW 50003, N'rotor: the password cannot be quoted (over 128 characters)', 1;
SET @sql = N'ALTER LOGIN ' + @qlogin + N' WITH PASSWORD = N' + @qpw;
EXEC sys.sp_executesql @sql;`;
const EXPECTED = {
  setSingle: `${GUARD}\n${PASSWORD}`,
  setAlternate: `${GUARD}\n${PASSWORD}\nSET @sql = N'ALTER LOGIN ' + @qlogin + N' ENABLE';\nEXEC sys.sp_executesql @sql;`,
  retireAlternate: `${GUARD}\nSET @sql = N'ALTER LOGIN ' + @qlogin + N' DISABLE';\nEXEC sys.sp_executesql @sql;`,
  test: 'SELECT 1 AS ok;',
};

/** QUOTENAME as documented: doubles the closing quote; NULL for input over 128 characters. */
function quotename(s: string, q: '[' | "'" = '['): string | null {
  if (s.length > 128) return null;
  return q === '[' ? `[${s.replaceAll(']', ']]')}]` : `'${s.replaceAll("'", "''")}'`;
}

/** The statements T-SQL's lexer would read back from the dynamic SQL text (only ALTER LOGIN forms). */
function parseAlterLogin(stmt: string): {
  login: string;
  password?: string;
  action: 'password' | 'enable' | 'disable';
} {
  const m = /^ALTER LOGIN \[((?:[^\]]|\]\])*)\](?: WITH PASSWORD = N'((?:[^']|'')*)'| (ENABLE|DISABLE))$/s.exec(stmt);
  if (!m) throw new Error(`the stand-in cannot parse the dynamic statement: ${stmt}`);
  const login = m[1]!.replaceAll(']]', ']');
  if (m[3]) return { login, action: m[3] === 'ENABLE' ? 'enable' : 'disable' };
  return { login, password: m[2]!.replaceAll("''", "'"), action: 'password' };
}

type Entry =
  | { kind: 'connect'; config: sql.config; ok: boolean }
  | { kind: 'query'; as: string; batch: string; params: MssqlParam[]; dynamic: string[] }
  | { kind: 'close'; as: string };

const requestError = (number: number, message: string): Error =>
  Object.assign(new sql.RequestError(message, 'EREQUEST'), { number });

/** A stand-in SQL Server with SQL logins; login names compare case-insensitively (the usual collation). */
class FakeSqlServer {
  readonly logins = new Map<string, { name: string; password: string; enabled: boolean }>();
  readonly log: Entry[] = [];
  adminPassword = ADMIN_PASSWORD;
  adminMayAlterLogins = true;
  /** Password policy: values matching this are refused with 15118 (not complex enough). */
  policyRejects: RegExp | undefined;
  down = false;

  addLogin(name: string, password: string, enabled = true): void {
    this.logins.set(name.toLowerCase(), { name, password, enabled });
  }

  login(name: string): { name: string; password: string; enabled: boolean } | undefined {
    return this.logins.get(name.toLowerCase());
  }

  queries(): Array<Extract<Entry, { kind: 'query' }>> {
    return this.log.filter((e): e is Extract<Entry, { kind: 'query' }> => e.kind === 'query');
  }

  connect: MssqlConnect = async (config) => {
    const entry: Entry = { kind: 'connect', config: structuredClone(config), ok: false };
    this.log.push(entry);
    if (this.down)
      throw new sql.ConnectionError('Failed to connect to sql.example:1433 - connect ECONNREFUSED', 'ESOCKET');
    const isAdmin = config.user === 'rotor_admin' && config.password === this.adminPassword;
    const login = config.user === undefined ? undefined : this.login(config.user);
    if (!isAdmin) {
      if (!login || login.password !== config.password)
        throw Object.assign(new sql.ConnectionError(`Login failed for user '${config.user}'.`, 'ELOGIN'), {
          number: 18456,
        });
      if (!login.enabled)
        throw Object.assign(
          new sql.ConnectionError(`Login failed for user '${config.user}'. Reason: The account is disabled.`, 'ELOGIN'),
          { number: 18470 },
        );
    }
    entry.ok = true;
    const as = config.user!;
    return {
      query: async (batch, params) => {
        const e: Extract<Entry, { kind: 'query' }> = {
          kind: 'query',
          as,
          batch,
          params: params.map((p) => ({ ...p })),
          dynamic: [],
        };
        this.log.push(e);
        if (batch === EXPECTED.test) return [{ ok: 1 }];
        const which = (Object.keys(EXPECTED) as Array<keyof typeof EXPECTED>).find((k) => EXPECTED[k] === batch);
        if (!which) throw requestError(102, 'Incorrect syntax (the stand-in accepts only the expected batches)');
        if (!isAdmin) throw requestError(15247, 'User does not have permission to perform this action.');
        const p = Object.fromEntries(params.map((x) => [x.name, x.value]));
        if (!this.login(p.login!))
          throw requestError(50001, 'rotor: no such SQL login, or the admin account cannot see it');
        const qlogin = quotename(p.login!);
        if (qlogin === null) throw requestError(50002, 'rotor: the login name cannot be quoted');
        if (which !== 'retireAlternate') {
          const qpw = quotename(p.pw!, "'");
          if (qpw === null) throw requestError(50003, 'rotor: the password cannot be quoted');
          e.dynamic.push(`ALTER LOGIN ${qlogin} WITH PASSWORD = N${qpw}`);
        }
        if (which === 'setAlternate') e.dynamic.push(`ALTER LOGIN ${qlogin} ENABLE`);
        if (which === 'retireAlternate') e.dynamic.push(`ALTER LOGIN ${qlogin} DISABLE`);
        for (const stmt of e.dynamic) {
          const s = parseAlterLogin(stmt);
          const target = this.login(s.login);
          if (!target || !this.adminMayAlterLogins)
            throw requestError(
              15151,
              `Cannot alter the login '${s.login}', because it does not exist or you do not have permission.`,
            );
          if (s.action === 'password') {
            if (this.policyRejects?.test(s.password!))
              throw requestError(
                15118,
                'Password validation failed. The password does not meet the operating system policy requirements because it is not complex enough.',
              );
            target.password = s.password!;
          } else target.enabled = s.action === 'enable';
        }
        return [];
      },
      close: async () => void this.log.push({ kind: 'close', as }),
    };
  };
}

function setup(t: Test): { fake: FakeSqlServer; engine: DbEngine } {
  const fake = new FakeSqlServer();
  const engine = createMssqlEngine({ connect: fake.connect })({ url: TARGET_URL, password: ADMIN_PASSWORD });
  t.teardown(() => engine.close());
  return { fake, engine };
}

const param = (name: string, value: string): MssqlParam => ({ name, type: 'NVarChar', length: 128, value });

const rejectsWith = rejectsWithNone(usedValues);

t.test('the batches the engine sends are exactly these', async (t) => {
  t.same(MSSQL_BATCHES, EXPECTED);
  for (const [name, batch] of Object.entries(MSSQL_BATCHES)) {
    t.notMatch(batch, /\$\{|`/, `${name}: no client-side interpolation left in the text`);
  }
});

t.test('the Target URL and the driver config', async (t) => {
  const ep = parseMssqlTarget({
    url: 'mssql://rotor_admin@sql.example:1444/appdb?trustServerCertificate=true',
    password: ADMIN_PASSWORD,
    timeoutMs: 5000,
  });
  t.match(ep, {
    server: 'sql.example',
    port: 1444,
    database: 'appdb',
    adminUser: 'rotor_admin',
    encrypt: true,
    trustServerCertificate: true,
    timeoutMs: 5000,
  });
  t.equal(parseMssqlTarget({ url: 'mssql://h/' }).encrypt, true, 'encrypt is on by default');
  t.equal(parseMssqlTarget({ url: 'mssql://h/?encrypt=false' }).encrypt, false);
  t.throws(() => createMssqlEngine()({ url: 'mysql://x@h/' }), { code: 'DB_ERROR' }, 'not an mssql:// URL');

  const { fake, engine } = setup(t);
  fake.addLogin('app_a', 'A-value');
  t.equal(await engine.test({ username: 'app_a', password: 'A-value' }), true);
  t.same(
    fake.log[0],
    {
      kind: 'connect',
      ok: true,
      config: {
        server: 'sql.example',
        port: 1433,
        database: 'appdb',
        user: 'app_a',
        password: 'A-value',
        connectionTimeout: 10_000,
        requestTimeout: 10_000,
        pool: { max: 1, min: 0 },
        options: { encrypt: true, trustServerCertificate: false, appName: 'rotor-agent' },
      },
    },
    'test: a fresh one-connection pool as the login, to the URL database',
  );
  t.same(
    fake.log.slice(1).map((e) => (e.kind === 'query' ? [e.kind, e.as, e.batch, e.params] : [e.kind])),
    [['query', 'app_a', 'SELECT 1 AS ok;', []], ['close']],
    'SELECT 1, then close',
  );
});

t.test('alternate: rotations as the daemon runs them, with the exact batches and bindings', async (t) => {
  const { fake, engine } = setup(t);
  let current: Credential = { username: 'app_a', password: value() };
  let inactive = 'app_b';
  fake.addLogin('app_a', current.password);
  fake.addLogin('app_b', 'unknown', false);
  for (let i = 1; i <= 3; i++) {
    await t.test(`rotation ${i}: set ${inactive}, test, retire ${current.username}`, async (t) => {
      const pending = { username: inactive, password: value() };
      const before = fake.log.length;
      t.equal(
        await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
        'applied',
      );
      const setLog = fake.log.slice(before);
      t.match(
        setLog[0],
        { kind: 'connect', config: { user: inactive }, ok: false },
        'set first tries to log in with the pending value (refused: disabled or wrong password)',
      );
      const q = setLog.filter((e) => e.kind === 'query');
      t.same(
        q.map((e) => [e.as, e.batch, e.params]),
        [['rotor_admin', EXPECTED.setAlternate, [param('login', inactive), param('pw', pending.password)]]],
        'set: one batch as the admin; login and password bound as nvarchar(128)',
      );
      t.equal(fake.login(current.username)?.password, current.password, 'set leaves the current login alone');
      t.equal(await engine.test(pending), true, 'test: the pending value logs in (the login was enabled)');
      t.equal(await engine.test(current), true, 'overlap: the current login still logs in');
      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      const r = fake.queries().at(-1)!;
      t.same(
        [r.batch, r.params, r.dynamic],
        [EXPECTED.retireAlternate, [param('login', current.username)], [`ALTER LOGIN [${current.username}] DISABLE`]],
        'retire: DISABLE, the login bound',
      );
      t.equal(await engine.test(current), false, 'after retire: the retired login fails (18470, disabled)');
      t.equal(fake.login(current.username)?.password, current.password, 'retire does not change its password');
      t.equal(await engine.test(pending), true, 'after retire: the new one logs in');
      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      t.equal(fake.login(current.username)?.enabled, false, 'retire is idempotent');
      inactive = current.username;
      current = pending;
    });
  }
  t.equal(
    fake.log.filter((e) => e.kind === 'connect' && e.config.user === 'rotor_admin').length,
    1,
    'one admin connection, reused',
  );
  const opened = fake.log.filter((e) => e.kind === 'connect' && e.ok && e.config.user !== 'rotor_admin').length;
  t.equal(
    fake.log.filter((e) => e.kind === 'close' && e.as !== 'rotor_admin').length,
    opened,
    'every test connection was closed',
  );
});

t.test('single: set changes the one login, the old value fails at once, retire sends nothing', async (t) => {
  const { fake, engine } = setup(t);
  const current = { username: 'app', password: value() };
  fake.addLogin('app', current.password);
  const pending = { username: 'app', password: value() };
  t.equal(await engine.set({ strategy: 'single', username: 'app', password: pending.password, current }), 'applied');
  t.same(
    fake.queries().map((e) => [e.batch, e.params]),
    [[EXPECTED.setSingle, [param('login', 'app'), param('pw', pending.password)]]],
    'no ENABLE for single',
  );
  t.equal(await engine.test(pending), true);
  t.equal(await engine.test(current), false, 'the old value fails at once');
  const n = fake.log.length;
  await engine.retire({ strategy: 'single', retired: current, current: pending });
  t.equal(fake.log.length, n, 'retire: nothing sent');
});

t.test('dual is not supported', async (t) => {
  const { fake, engine } = setup(t);
  await rejectsWith(t, engine.set({ strategy: 'dual', username: 'app', password: value() }), 'DB_UNSUPPORTED', 'set');
  await rejectsWith(
    t,
    engine.retire({
      strategy: 'dual',
      retired: { username: 'a', password: value() },
      current: { username: 'b', password: value() },
    }),
    'DB_UNSUPPORTED',
    'retire',
  );
  t.same(fake.log, [], 'nothing sent');
});

t.test('crash recovery: set twice -> already-applied, one batch', async (t) => {
  for (const strategy of ['alternate', 'single'] as const) {
    const { fake, engine } = setup(t);
    fake.addLogin('app_b', 'old', strategy === 'single');
    const pw = value();
    t.equal(await engine.set({ strategy, username: 'app_b', password: pw }), 'applied', `${strategy}: applied`);
    t.equal(
      await engine.set({ strategy, username: 'app_b', password: pw }),
      'already-applied',
      `${strategy}: already-applied`,
    );
    t.equal(fake.queries().filter((q) => q.as === 'rotor_admin').length, 1, `${strategy}: one batch`);
  }
  // A crash between the password and the ENABLE (the login has the new password but is still disabled):
  const { fake, engine } = setup(t);
  const pw = value();
  fake.addLogin('app_b', pw, false);
  t.equal(
    await engine.set({ strategy: 'alternate', username: 'app_b', password: pw }),
    'applied',
    'a disabled login with the pending password is set (and enabled) again',
  );
  t.equal(fake.login('app_b')?.enabled, true);
});

t.test('odd login names and passwords stay parameters and survive the server-side quoting', async (t) => {
  const { fake, engine } = setup(t);
  const names = [`o'brien`, 'x]; DROP LOGIN sa; --', '[bracketed]', 'DOMAIN\\user', 'é☃ 😀', "a'']]b", 'x'.repeat(128)];
  for (const name of names) {
    const pw = `${value()}']; --`;
    usedValues.push(pw);
    fake.addLogin(name, 'old');
    t.equal(await engine.set({ strategy: 'single', username: name, password: pw }), 'applied', JSON.stringify(name));
    const q = fake
      .queries()
      .filter((e) => e.as === 'rotor_admin')
      .at(-1)!;
    t.same(q.params, [param('login', name), param('pw', pw)], `${JSON.stringify(name)}: bound as values`);
    t.notOk(q.batch.includes(name) || q.batch.includes(pw), 'neither is in the batch text');
    t.equal(
      fake.login(name)?.password,
      pw,
      `${JSON.stringify(name)}: the server-side statement read back the exact password, for the exact login`,
    );
    t.equal(await engine.test({ username: name, password: pw }), true, `${JSON.stringify(name)}: logs in`);
  }
  t.equal(
    fake
      .queries()
      .find((q) => q.params[0]?.value === 'x]; DROP LOGIN sa; --')
      ?.dynamic[0]?.startsWith('ALTER LOGIN [x]]; DROP LOGIN sa; --] WITH PASSWORD = N'),
    true,
    'QUOTENAME doubled the ]',
  );
  await rejectsWith(
    t,
    engine.set({ strategy: 'single', username: 'x'.repeat(129), password: value() }),
    'DB_USER_MISSING',
    'a name over 128 characters (refused before sending)',
  );
  await rejectsWith(
    t,
    engine.set({ strategy: 'single', username: '', password: value() }),
    'DB_USER_MISSING',
    'an empty name',
  );
  await rejectsWith(
    t,
    engine.set({ strategy: 'single', username: 'app', password: 'P'.repeat(129) }),
    'DB_VALUE_REJECTED',
    'a password over 128 characters',
  );
});

t.test('errors', async (t) => {
  await t.test('missing login', async (t) => {
    const { engine } = setup(t);
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'ghost', password: value() }),
      'DB_USER_MISSING',
      'set',
    );
    t.equal(err?.dbCode, '50001');
    await rejectsWith(
      t,
      engine.retire({
        strategy: 'alternate',
        retired: { username: 'ghost', password: value() },
        current: { username: 'app_a', password: value() },
      }),
      'DB_USER_MISSING',
      'retire',
    );
  });
  await t.test('wrong admin password, then the right one', async (t) => {
    const { fake, engine } = setup(t);
    fake.addLogin('app_b', 'old');
    fake.adminPassword = 'something else';
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'DB_ADMIN_AUTH',
      'set',
    );
    t.equal(err?.dbCode, '18456');
    fake.adminPassword = ADMIN_PASSWORD;
    t.equal(
      await engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'applied',
      'the failed connection was not kept',
    );
  });
  await t.test('admin without ALTER ANY LOGIN', async (t) => {
    const { fake, engine } = setup(t);
    fake.addLogin('app_b', 'old');
    fake.adminMayAlterLogins = false;
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'DB_PERMISSION',
      'set',
    );
    t.equal(err?.dbCode, '15151');
  });
  await t.test('password policy', async (t) => {
    const { fake, engine } = setup(t);
    fake.addLogin('app_b', 'old');
    fake.policyRejects = /weak/;
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app_b', password: 'weak' }),
      'DB_VALUE_REJECTED',
      'set',
    );
    t.equal(err?.dbCode, '15118');
  });
  await t.test('unreachable', async (t) => {
    const { fake, engine } = setup(t);
    fake.down = true;
    await rejectsWith(t, engine.test({ username: 'app_b', password: value() }), 'DB_UNREACHABLE', 'test');
    await rejectsWith(
      t,
      engine.retire({
        strategy: 'alternate',
        retired: { username: 'app_a', password: value() },
        current: { username: 'app_b', password: value() },
      }),
      'DB_UNREACHABLE',
      'retire',
    );
  });
  await t.test('a login error that is not a refused credential (4060: cannot open the database)', async (t) => {
    const engine = createMssqlEngine({
      connect: async () => {
        throw Object.assign(
          new sql.ConnectionError('Cannot open database "appdb" requested by the login. The login failed.', 'ELOGIN'),
          { number: 4060 },
        );
      },
    })({ url: TARGET_URL, password: ADMIN_PASSWORD });
    t.teardown(() => engine.close());
    const err = await rejectsWith(t, engine.test({ username: 'app_b', password: value() }), 'DB_ERROR', 'test');
    t.equal(err?.dbCode, '4060');
  });
  await t.test('retire refuses to disable the current login', async (t) => {
    const { fake, engine } = setup(t);
    await rejectsWith(
      t,
      engine.retire({
        strategy: 'alternate',
        retired: { username: 'APP_A', password: value() },
        current: { username: 'app_a', password: value() },
      }),
      'DB_ERROR',
      'same login (case-insensitively)',
    );
    t.same(fake.log, [], 'nothing sent');
  });
  await t.test('the real driver against a port nobody listens on', async (t) => {
    const engine = mssqlEngine({
      url: `mssql://rotor_admin@127.0.0.1:${await freePort()}/master?encrypt=false`,
      password: ADMIN_PASSWORD,
      timeoutMs: 2000,
    });
    t.teardown(() => engine.close());
    await rejectsWith(t, engine.test({ username: 'app', password: value() }), 'DB_UNREACHABLE', 'test');
    await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app', password: value() }),
      'DB_UNREACHABLE',
      'set',
    );
  });
});

const LIVE_URL = process.env.ROTOR_TEST_MSSQL_URL;
t.test(
  'live SQL Server (ROTOR_TEST_MSSQL_URL)',
  {
    skip: LIVE_URL
      ? false
      : 'ROTOR_TEST_MSSQL_URL is not set (e.g. mssql://sa@127.0.0.1:1433/master?trustServerCertificate=true, password in ROTOR_TEST_MSSQL_PASSWORD): no live SQL Server test',
  },
  async (t) => {
    // The URL's account (sysadmin, or ALTER ANY LOGIN) creates two logins and drops them afterwards.
    const target = {
      url: LIVE_URL!,
      ...(process.env.ROTOR_TEST_MSSQL_PASSWORD ? { password: process.env.ROTOR_TEST_MSSQL_PASSWORD } : {}),
    };
    const ep = parseMssqlTarget(target);
    const admin = await mssqlPoolConnect(mssqlConfig(ep, ep.adminUser, ep.adminPassword));
    const suffix = randomBytes(4).toString('hex');
    const a = `rotor_it_a_${suffix}`;
    const b = `rotor_it "b' ]${suffix}`;
    const strong = (): string => `Aa1!${randomBytes(16).toString('base64url')}'`;
    const ddl = (verb: 'CREATE' | 'DROP'): string =>
      verb === 'CREATE'
        ? `DECLARE @s nvarchar(max) = N'CREATE LOGIN ' + QUOTENAME(@login) + N' WITH PASSWORD = N' + QUOTENAME(@pw, ''''); EXEC sys.sp_executesql @s;`
        : `DECLARE @s nvarchar(max) = N'DROP LOGIN ' + QUOTENAME(@login); EXEC sys.sp_executesql @s;`;
    t.teardown(async () => {
      for (const login of [a, b])
        await admin
          .query(ddl('DROP'), [{ name: 'login', type: 'NVarChar', length: 128, value: login }])
          .catch(() => {});
      await admin.close();
    });
    let current = { username: a, password: strong() };
    usedValues.push(current.password);
    await admin.query(ddl('CREATE'), [
      { name: 'login', type: 'NVarChar', length: 128, value: a },
      { name: 'pw', type: 'NVarChar', length: 128, value: current.password },
    ]);
    await admin.query(ddl('CREATE'), [
      { name: 'login', type: 'NVarChar', length: 128, value: b },
      { name: 'pw', type: 'NVarChar', length: 128, value: strong() },
    ]);
    await admin.query(
      `DECLARE @s nvarchar(max) = N'ALTER LOGIN ' + QUOTENAME(@login) + N' DISABLE'; EXEC sys.sp_executesql @s;`,
      [{ name: 'login', type: 'NVarChar', length: 128, value: b }],
    );

    const engine = mssqlEngine(target);
    t.teardown(() => engine.close());
    t.equal(await engine.test({ username: a, password: 'wrong' }), false, 'a wrong password is refused (18456)');
    let inactive = b;
    for (let i = 1; i <= 2; i++) {
      const pending = { username: inactive, password: strong() };
      usedValues.push(pending.password);
      t.equal(await engine.test(pending), false, `rotation ${i}: before set the pending value fails`);
      t.equal(
        await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
        'applied',
        `rotation ${i}: set (and enable)`,
      );
      t.equal(
        await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
        'already-applied',
        `rotation ${i}: set again`,
      );
      t.equal(await engine.test(pending), true, `rotation ${i}: the new value logs in`);
      t.equal(await engine.test(current), true, `rotation ${i}: the current one still does`);
      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      t.equal(await engine.test(current), false, `rotation ${i}: after retire (disabled) the old one does not`);
      inactive = current.username;
      current = pending;
    }
    const next = { username: current.username, password: strong() };
    usedValues.push(next.password);
    t.equal(
      await engine.set({ strategy: 'single', username: next.username, password: next.password, current }),
      'applied',
      'single: set',
    );
    t.equal(await engine.test(current), false, 'single: the old value fails at once');
    t.equal(await engine.test(next), true, 'single: the new one logs in');
    await rejectsWith(
      t,
      engine.set({ strategy: 'single', username: `rotor_it_missing_${suffix}`, password: strong() }),
      'DB_USER_MISSING',
      'a missing login',
    );
    const wrong = mssqlEngine({ url: target.url, password: value() });
    t.teardown(() => wrong.close());
    await rejectsWith(
      t,
      wrong.set({ strategy: 'single', username: a, password: strong() }),
      'DB_ADMIN_AUTH',
      'a wrong admin password',
    );
  },
);
