/**
 * SQL Server engine (the `mssql` package over tedious). A login holds one password, so the zero-downtime
 * strategy is `alternate`: two SQL logins (e.g. app_a, app_b) mapped to database users that are members of
 * the same database role; each rotation changes the inactive one.
 *
 * - alternate (default): set = `ALTER LOGIN <inactive> WITH PASSWORD = ...` then `ALTER LOGIN <inactive>
 *   ENABLE`; retire = `ALTER LOGIN <retired> DISABLE` (new logins fail; sessions already open survive
 *   until they disconnect or are KILLed).
 * - single: set = `ALTER LOGIN <login> WITH PASSWORD = ...`; the old value fails at once. retire does nothing.
 * - dual: not supported (one password per login).
 *
 * DDL takes no parameters, so each statement is built on the server: the login name and the password are
 * bound as nvarchar parameters and quoted there with QUOTENAME, then run with sp_executesql. The client
 * never builds SQL from a name or a value.
 */
import sql from 'mssql';
import {
  type Credential,
  type DbEngine,
  DbError,
  type EngineFactory,
  type RetireJob,
  type SetJob,
  type SetOutcome,
  type TargetConnection,
} from './types.js';

/** One bound parameter of a batch (always nvarchar). */
export interface MssqlParam {
  readonly name: string;
  readonly type: 'NVarChar';
  readonly length: number;
  readonly value: string;
}

/** What the engine needs from a connection: run one batch with bound parameters. */
export interface MssqlSession {
  query(batch: string, params: readonly MssqlParam[]): Promise<unknown[]>;
  close(): Promise<void>;
}

/** Opens a connected, logged-in session (the seam a test replaces). */
export type MssqlConnect = (config: sql.config) => Promise<MssqlSession>;

export interface MssqlEngineOptions {
  /** Default: a real `mssql.ConnectionPool` of one connection (`mssqlPoolConnect`). */
  readonly connect?: MssqlConnect;
}

/**
 * The real driver. tedious reports a failed login as `ConnectionError('Login failed ...', 'ELOGIN')` without
 * the server's error number; the number (18456 login failed, 18470 disabled, 4060 cannot open database ...)
 * is read from the connection's `errorMessage` event and added to the thrown error as `number`.
 */
export const mssqlPoolConnect: MssqlConnect = async (config) => {
  let loginErrorNumber: number | undefined;
  const pool = new sql.ConnectionPool({
    ...config,
    beforeConnect: (conn) => {
      conn.on('errorMessage', (token) => void (loginErrorNumber ??= token.number));
    },
  });
  pool.on('error', () => {});
  try {
    await pool.connect();
  } catch (err) {
    await pool.close().catch(() => {});
    if (
      err &&
      typeof err === 'object' &&
      loginErrorNumber !== undefined &&
      (err as { number?: unknown }).number === undefined
    ) {
      (err as { number?: number }).number = loginErrorNumber;
    }
    throw err;
  }
  return {
    query: async (batch, params) => {
      const request = pool.request();
      for (const p of params) request.input(p.name, sql.NVarChar(p.length), p.value);
      const result = await request.query(batch);
      return result.recordset ?? [];
    },
    close: () => pool.close(),
  };
};

const DEFAULT_TIMEOUT_MS = 10_000;
/** sysname, and the longest password SQL Server accepts. */
const MAX_NAME = 128;
const MAX_PASSWORD = 128;

/** The login must exist as a SQL login (type S) that the admin can see; THROW 50001 otherwise. */
const REQUIRE_SQL_LOGIN = `IF NOT EXISTS (SELECT 1 FROM sys.server_principals WHERE name = @login AND type = 'S')
  THROW 50001, N'rotor: no such SQL login, or the admin account cannot see it', 1;
DECLARE @qlogin nvarchar(258) = QUOTENAME(@login);
IF @qlogin IS NULL THROW 50002, N'rotor: the login name cannot be quoted (over 128 characters)', 1;
DECLARE @sql nvarchar(max);`;

/** Sets the password. QUOTENAME(@pw, '''') doubles quotes; N'' keeps non-ASCII characters. */
const SET_PASSWORD = `DECLARE @qpw nvarchar(258) = QUOTENAME(@pw, '''');
IF @qpw IS NULL THROW 50003, N'rotor: the password cannot be quoted (over 128 characters)', 1;
SET @sql = N'ALTER LOGIN ' + @qlogin + N' WITH PASSWORD = N' + @qpw;
EXEC sys.sp_executesql @sql;`;

const ENABLE = `SET @sql = N'ALTER LOGIN ' + @qlogin + N' ENABLE';
EXEC sys.sp_executesql @sql;`;

const DISABLE = `SET @sql = N'ALTER LOGIN ' + @qlogin + N' DISABLE';
EXEC sys.sp_executesql @sql;`;

/** The exact batches the engine sends (exported for the tests and docs/databases/mssql.md). */
export const MSSQL_BATCHES = {
  /** single: set. Parameters @login, @pw. */
  setSingle: ['SET NOCOUNT ON;', REQUIRE_SQL_LOGIN, SET_PASSWORD].join('\n'),
  /** alternate: set (password, then ENABLE). Parameters @login, @pw. */
  setAlternate: ['SET NOCOUNT ON;', REQUIRE_SQL_LOGIN, SET_PASSWORD, ENABLE].join('\n'),
  /** alternate: retire. Parameter @login. */
  retireAlternate: ['SET NOCOUNT ON;', REQUIRE_SQL_LOGIN, DISABLE].join('\n'),
  /** test: the trivial query on a fresh connection as the login. */
  test: 'SELECT 1 AS ok;',
} as const;

interface Endpoint {
  readonly server: string;
  readonly port: number | undefined;
  readonly instanceName: string | undefined;
  readonly database: string | undefined;
  readonly adminUser: string | undefined;
  readonly adminPassword: string | undefined;
  readonly encrypt: boolean;
  readonly trustServerCertificate: boolean;
  readonly timeoutMs: number;
}

/** `mssql://rotor_admin@host[:port][/database][?encrypt=true&trustServerCertificate=false&instanceName=X]` */
export function parseMssqlTarget(target: TargetConnection): Endpoint {
  let u: URL;
  try {
    u = new URL(target.url);
  } catch {
    throw new DbError(
      'DB_ERROR',
      'the SQL Server target URL cannot be parsed (expected mssql://user@host:port/database)',
    );
  }
  if (u.protocol !== 'mssql:' && u.protocol !== 'sqlserver:')
    throw new DbError('DB_ERROR', `a SQL Server target URL starts with mssql://, not ${u.protocol}//`);
  const server = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!server) throw new DbError('DB_ERROR', 'the SQL Server target URL has no host');
  const flag = (name: string, dflt: boolean): boolean => {
    const v = u.searchParams.get(name);
    return v === null ? dflt : /^(1|true|yes)$/i.test(v);
  };
  let database: string | undefined;
  let adminUser: string | undefined;
  let urlPassword: string | undefined;
  try {
    database = u.pathname.replace(/^\//, '') ? decodeURIComponent(u.pathname.replace(/^\//, '')) : undefined;
    adminUser = u.username ? decodeURIComponent(u.username) : undefined;
    urlPassword = u.password ? decodeURIComponent(u.password) : undefined;
  } catch {
    throw new DbError('DB_ERROR', 'the SQL Server target URL has a malformed %-escape');
  }
  return {
    server,
    port: u.port ? Number(u.port) : undefined,
    instanceName: u.searchParams.get('instanceName') ?? undefined,
    database,
    adminUser,
    adminPassword: target.password ?? urlPassword,
    encrypt: flag('encrypt', true),
    trustServerCertificate: flag('trustServerCertificate', false),
    timeoutMs: target.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  };
}

/** The mssql config of a connection as `user` (one connection; the test connection is never reused). */
export function mssqlConfig(ep: Endpoint, user: string | undefined, password: string | undefined): sql.config {
  return {
    server: ep.server,
    ...(ep.port !== undefined ? { port: ep.port } : {}),
    ...(ep.database !== undefined ? { database: ep.database } : {}),
    ...(user !== undefined ? { user } : {}),
    ...(password !== undefined ? { password } : {}),
    connectionTimeout: ep.timeoutMs,
    requestTimeout: ep.timeoutMs,
    pool: { max: 1, min: 0 },
    options: {
      encrypt: ep.encrypt,
      trustServerCertificate: ep.trustServerCertificate,
      appName: 'rotor-agent',
      ...(ep.instanceName !== undefined ? { instanceName: ep.instanceName } : {}),
    },
  };
}

/** Server errors that mean the credential was refused: login failed, disabled, locked out, expired, must change. */
const LOGIN_REFUSED = new Set([18456, 18470, 18486, 18487, 18488]);
/** Password policy (15116 too short, 15118 not complex enough, and their neighbours) or over 128 characters: generate another value. */
const VALUE_REJECTED = new Set([15115, 15116, 15117, 15118, 50003]);
const PERMISSION = new Set([15151, 15247, 229, 230, 297, 300]);
const NETWORK_CODES = new Set([
  'ESOCKET',
  'ETIMEOUT',
  'ECONNCLOSED',
  'ENOTOPEN',
  'EINSTLOOKUP',
  'ENOCONN',
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

function errorNumber(err: unknown): number | undefined {
  const e = err as { number?: unknown; originalError?: { number?: unknown; info?: { number?: unknown } } } | undefined;
  for (const n of [e?.number, e?.originalError?.number, e?.originalError?.info?.number])
    if (typeof n === 'number') return n;
  return undefined;
}

function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; originalError?: { code?: unknown } } | undefined;
  for (const c of [e?.code, e?.originalError?.code]) if (typeof c === 'string') return c;
  return undefined;
}

function isLoginRefused(err: unknown): boolean {
  if (errorCode(err) !== 'ELOGIN' || (err as { isTransient?: unknown })?.isTransient === true) return false;
  const n = errorNumber(err);
  // Without a number (a driver that did not say), ELOGIN is the login refusal itself.
  return n === undefined || LOGIN_REFUSED.has(n);
}

/** A DbError for a driver error; never copies the driver's message (it may quote a statement). */
function mapError(err: unknown, doing: string, asAdmin: boolean): DbError {
  if (err instanceof DbError) return err;
  const n = errorNumber(err);
  const code = errorCode(err);
  const dbCode = n !== undefined ? String(n) : code;
  if (code === 'ELOGIN' && asAdmin && isLoginRefused(err))
    return new DbError('DB_ADMIN_AUTH', 'SQL Server refused the admin login', dbCode);
  if (n === 50001 || n === 50002)
    return new DbError(
      'DB_USER_MISSING',
      `SQL Server has no such SQL login, or the admin account cannot see it, while trying to ${doing}`,
      dbCode,
    );
  if (n !== undefined && VALUE_REJECTED.has(n))
    return new DbError(
      'DB_VALUE_REJECTED',
      `SQL Server refused the new password (password policy ${n}) while trying to ${doing}`,
      dbCode,
    );
  if (n !== undefined && PERMISSION.has(n))
    return new DbError(
      'DB_PERMISSION',
      `the SQL Server admin account lacks a permission needed to ${doing} (it needs ALTER ANY LOGIN)`,
      dbCode,
    );
  if ((code !== undefined && NETWORK_CODES.has(code)) || (err as { isTransient?: unknown })?.isTransient === true) {
    return new DbError('DB_UNREACHABLE', `SQL Server is unreachable while trying to ${doing}`, dbCode);
  }
  return new DbError('DB_ERROR', `SQL Server failed while trying to ${doing}`, dbCode);
}

function checkLogin(login: string): void {
  if (typeof login !== 'string' || login === '')
    throw new DbError('DB_USER_MISSING', 'a SQL Server login name cannot be empty');
  if (login.length > MAX_NAME)
    throw new DbError(
      'DB_USER_MISSING',
      `a SQL Server login name has at most ${MAX_NAME} characters, so no such login can exist`,
    );
}

function checkPassword(password: string): void {
  if (password.length > MAX_PASSWORD)
    throw new DbError(
      'DB_VALUE_REJECTED',
      `SQL Server passwords have at most ${MAX_PASSWORD} characters; generate a shorter one`,
    );
}

const nvarchar = (name: string, value: string, length: number): MssqlParam => ({
  name,
  type: 'NVarChar',
  length,
  value,
});

export function createMssqlEngine(options: MssqlEngineOptions = {}): EngineFactory {
  const connect = options.connect ?? mssqlPoolConnect;
  return (target) => new MssqlEngine(parseMssqlTarget(target), connect);
}

export const mssqlEngine: EngineFactory = createMssqlEngine();

class MssqlEngine implements DbEngine {
  readonly engine = 'mssql' as const;
  #admin: Promise<MssqlSession> | undefined;

  constructor(
    private readonly ep: Endpoint,
    private readonly connect: MssqlConnect,
  ) {}

  async set(job: SetJob): Promise<SetOutcome> {
    checkLogin(job.username);
    checkPassword(job.password);
    if (job.strategy === 'dual') throw unsupportedDual();
    // An alternate login that was retired (disabled) fails this test (18470), so it is set and enabled again.
    if (await this.test({ username: job.username, password: job.password })) return 'already-applied';
    const batch = job.strategy === 'alternate' ? MSSQL_BATCHES.setAlternate : MSSQL_BATCHES.setSingle;
    await this.run(
      batch,
      [nvarchar('login', job.username, MAX_NAME), nvarchar('pw', job.password, MAX_PASSWORD)],
      'set the new password (ALTER LOGIN)',
    );
    return 'applied';
  }

  async test(c: Credential): Promise<boolean> {
    checkLogin(c.username);
    let session: MssqlSession;
    try {
      session = await this.connect(mssqlConfig(this.ep, c.username, c.password));
    } catch (err) {
      if (isLoginRefused(err)) return false;
      throw mapError(err, 'test a login', false);
    }
    try {
      await session.query(MSSQL_BATCHES.test, []);
      return true;
    } catch (err) {
      throw mapError(err, 'test a login', false);
    } finally {
      await session.close().catch(() => {});
    }
  }

  async retire(job: RetireJob): Promise<void> {
    if (job.strategy === 'single') return;
    if (job.strategy === 'dual') throw unsupportedDual();
    checkLogin(job.retired.username);
    // Login names compare case-insensitively under the usual server collations: refuse anything alike.
    if (job.retired.username.toLowerCase() === job.current.username.toLowerCase()) {
      throw new DbError(
        'DB_ERROR',
        `refusing to retire: alternate needs two logins, but the retired and the current login are both ${JSON.stringify(job.current.username)}`,
      );
    }
    await this.run(
      MSSQL_BATCHES.retireAlternate,
      [nvarchar('login', job.retired.username, MAX_NAME)],
      'disable the previous login (ALTER LOGIN ... DISABLE)',
    );
  }

  async close(): Promise<void> {
    const admin = this.#admin;
    this.#admin = undefined;
    const session = await admin?.catch(() => undefined);
    await session?.close().catch(() => {});
  }

  private async run(batch: string, params: readonly MssqlParam[], doing: string): Promise<void> {
    const admin = await this.adminSession();
    try {
      await admin.query(batch, params);
    } catch (err) {
      throw mapError(err, doing, true);
    }
  }

  private adminSession(): Promise<MssqlSession> {
    if (!this.#admin) {
      const opening = this.connect(mssqlConfig(this.ep, this.ep.adminUser, this.ep.adminPassword)).catch(
        (err: unknown) => {
          if (this.#admin === opening) this.#admin = undefined;
          throw mapError(err, 'connect as the admin', true);
        },
      );
      this.#admin = opening;
    }
    return this.#admin;
  }
}

function unsupportedDual(): DbError {
  return new DbError(
    'DB_UNSUPPORTED',
    'the dual strategy is not supported for SQL Server: a login holds one password; use alternate (two logins) or single',
  );
}
