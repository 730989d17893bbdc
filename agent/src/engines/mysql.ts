/**
 * The MySQL 8 / MariaDB 10.4+ engine: one implementation, two dialects picked from the server's own
 * `SELECT VERSION()` (the factory only says which flavour is expected; the other one is adapted to and
 * logged).
 *
 * Statements go through mysql2's `query()` with client-side escaping (never `execute()`: account
 * statements fail as server-side prepared statements, ER_UNSUPPORTED_PS 1295). Client-side escaping
 * relies on backslash escapes, so a session running NO_BACKSLASH_ESCAPES has that mode removed before
 * any statement carrying a value, and the engine refuses to run if it cannot be removed.
 *
 * Every `'user'@'host'` row of a user is changed, in one ALTER USER statement. MySQL 8 applies such a
 * statement atomically; MariaDB does not (a failure on one account leaves the others changed), so on
 * MariaDB the crash-recovery check also reads every row's authentication rules from mysql.global_priv.
 *
 * Statements by strategy (`a`, `b` are the account rows of the user; H(x) = '*'+HEX(SHA1(SHA1(x))),
 * computed here so that MariaDB never receives a plaintext value unless it demands one):
 *
 *   MySQL 8.0.14+                                      MariaDB 10.4+
 *   dual set     a IDENTIFIED BY P RETAIN CURRENT      a IDENTIFIED VIA mysql_native_password USING H(P)
 *                PASSWORD, b ...                         OR mysql_native_password USING H(C), b ...
 *   dual retire  a DISCARD OLD PASSWORD, b ...         each row re-issued without the rule H(retired)
 *   alternate    a IDENTIFIED BY P, b ... ACCOUNT      a IDENTIFIED VIA mysql_native_password USING H(P),
 *     set        UNLOCK                                  b ... ACCOUNT UNLOCK
 *   alternate    a, b ACCOUNT LOCK                     a, b ACCOUNT LOCK
 *     retire
 *   single set   a IDENTIFIED BY P, b ...              a IDENTIFIED VIA mysql_native_password USING H(P), b ...
 *
 * MariaDB with strict_password_validation and a password validation plugin refuses hashes (1290); only
 * then the same statements are sent with `USING PASSWORD(<plaintext>)` so that the plugin can check them.
 *
 * No value ever leaves this module in an error: mysql2's errors carry the full statement (`err.sql`) and
 * MariaDB's syntax errors quote it, so errors are rebuilt from the error number alone and the driver's
 * error is not kept as `cause`.
 */
import { createHash } from 'node:crypto';
import { createConnection, format } from 'mysql2/promise';
import type { Logger } from '../../../src/log.js';
import { DbError } from './types.js';
import type { Credential, DbEngine, EngineFactory, RetireJob, SetJob, SetOutcome, Strategy, TargetConnection } from './types.js';

export type Flavour = 'mysql' | 'mariadb';

/** Where and as whom one connection logs in. */
export interface ConnectOptions {
  readonly host?: string;
  readonly port?: number;
  readonly socketPath?: string;
  readonly user: string;
  readonly password: string;
  readonly database?: string;
  /** TLS with the certificate verified against the system's CAs. */
  readonly ssl?: boolean;
  /** For connecting and for each statement. */
  readonly timeoutMs: number;
}

export type Row = Readonly<Record<string, unknown>>;

/** What the engine needs of a connection: mysql2 in production, a recording stand-in in unit tests. */
export interface SqlConnection {
  /** Runs one statement, already formatted with the driver's client-side escaping. */
  query(sql: string): Promise<Row[]>;
  end(): Promise<void>;
}

export type Connector = (options: ConnectOptions) => Promise<SqlConnection>;

export interface MysqlEngineOptions {
  /** Opens connections (default: mysql2, one fresh unpooled connection each time). */
  readonly connect?: Connector;
  /** Receives a warning when the server is the other flavour than expected. */
  readonly log?: Logger;
}

/** mysql2, unpooled, one statement per query, no multi-statements. */
export const mysql2Connector: Connector = async (o) => {
  const conn = await createConnection({
    host: o.host,
    port: o.port,
    socketPath: o.socketPath,
    user: o.user,
    password: o.password,
    database: o.database,
    ssl: o.ssl ? {} : undefined,
    connectTimeout: o.timeoutMs,
    charset: 'utf8mb4_general_ci',
    multipleStatements: false,
    supportBigNumbers: true,
    bigNumberStrings: true,
  });
  // A connection that dies while idle emits 'error'; without a listener that would crash the agent. The
  // next statement on it fails with PROTOCOL_CONNECTION_LOST, which reopens the session.
  conn.on('error', () => {});
  return {
    async query(sql) {
      const [rows] = await conn.query({ sql, timeout: o.timeoutMs });
      return Array.isArray(rows) ? (rows as Row[]) : [];
    },
    async end() {
      try {
        await conn.end();
      } catch {
        conn.destroy();
      }
    },
  };
};

export interface ServerInfo {
  readonly flavour: Flavour;
  readonly version: readonly [number, number, number];
}

/** Reads `SELECT VERSION()`: "10.11.19-MariaDB-0+deb12u1-log", "8.0.36", "5.5.5-10.6.5-MariaDB". */
export function parseServerVersion(raw: string): ServerInfo {
  const s = raw.replace(/^5\.5\.5-/, '');
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(s);
  const version: [number, number, number] = m ? [Number(m[1]), Number(m[2]), Number(m[3])] : [0, 0, 0];
  return { flavour: /mariadb/i.test(s) ? 'mariadb' : 'mysql', version };
}

function atLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < min.length; i++) {
    const a = v[i] ?? 0;
    const b = min[i] ?? 0;
    if (a !== b) return a > b;
  }
  return true;
}

/** mysql_native_password's stored form of `password`: '*' + HEX(SHA1(SHA1(password))), as PASSWORD() gives. */
export function nativePasswordHash(password: string): string {
  const sha1 = (b: Buffer): Buffer => createHash('sha1').update(b).digest();
  return '*' + sha1(sha1(Buffer.from(password, 'utf8'))).toString('hex').toUpperCase();
}

const NATIVE = 'mysql_native_password';

/** One authentication rule of a MariaDB account (`IDENTIFIED VIA plugin USING auth`). */
interface AuthRule {
  readonly plugin: string;
  readonly auth: string;
}

/** What a rule is re-issued as: a stored rule, or (strict password validation only) a plaintext value. */
type RuleSpec = AuthRule | { readonly plaintext: string };

interface AccountRow {
  readonly host: string;
  readonly locked: boolean;
  /** MariaDB only: the rules in order, from mysql.global_priv. */
  readonly rules: readonly AuthRule[];
}

const isNative = (r: AuthRule, hash: string): boolean => r.plugin === NATIVE && r.auth.toUpperCase() === hash;

/** mysql.global_priv.Priv: the first rule is kept at the top level; `auth_or` lists all, `{}` standing for it. */
function parsePriv(value: unknown): { rules: AuthRule[]; locked: boolean; isRole: boolean } {
  // mysql2 hands MariaDB's JSON-checked LONGTEXT over already parsed; a stand-in may give text or bytes.
  const parsed: unknown = typeof value === 'string' || Buffer.isBuffer(value) ? JSON.parse(value.toString()) : value;
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
  const p = parsed as Record<string, unknown>;
  const rule = (o: Record<string, unknown>): AuthRule => ({
    plugin: typeof o.plugin === 'string' && o.plugin !== '' ? o.plugin : NATIVE,
    auth: typeof o.authentication_string === 'string' ? o.authentication_string : '',
  });
  const top = rule(p);
  const rules = Array.isArray(p.auth_or)
    ? (p.auth_or as unknown[]).map((o) => {
        const obj = (o ?? {}) as Record<string, unknown>;
        return Object.keys(obj).length === 0 ? top : rule(obj);
      })
    : [top];
  return { rules, locked: p.account_locked === true, isRole: p.is_role === true };
}

/** `'user'@'host'`: account names are string literals, escaped by the driver (not identifiers). */
const account = (user: string, host: string): string => format('?@?', [user, host]);
const literal = (value: string): string => format('?', [value]);

function pluginName(name: string): string {
  if (!/^[A-Za-z0-9_]+$/.test(name)) throw new DbError('DB_UNSUPPORTED', 'mariadb: an account has an authentication plugin with an unexpected name; not re-issuing its rules');
  return name;
}

function identifiedVia(rules: readonly RuleSpec[]): string {
  const one = (r: RuleSpec): string =>
    'plaintext' in r ? `${NATIVE} USING PASSWORD(${literal(r.plaintext)})` : `${pluginName(r.plugin)} USING ${literal(r.auth)}`;
  return `IDENTIFIED VIA ${rules.map(one).join(' OR ')}`;
}

// ---------------------------------------------------------------------------------------------------
// Errors

interface DriverError {
  errno?: number;
  code?: string;
  fatal?: boolean;
}

/** Server error numbers a login uses to refuse the credential itself (test() answers false). */
const LOGIN_REFUSED = new Set([
  1045, // ER_ACCESS_DENIED_ERROR
  1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
  3118, // ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
  4151, // ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
  1862, // ER_MUST_CHANGE_PASSWORD_LOGIN (expired)
  1820, // ER_MUST_CHANGE_PASSWORD (expired, sandbox mode)
]);
const PERMISSION = new Set([
  1044, // ER_DBACCESS_DENIED_ERROR
  1142, // ER_TABLEACCESS_DENIED_ERROR
  1143, // ER_COLUMNACCESS_DENIED_ERROR
  1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
  1132, // ER_PASSWORD_NOT_ALLOWED
]);
const VALUE_REJECTED = new Set([
  1819, // ER_NOT_VALID_PASSWORD (validate_password, simple_password_check, cracklib, password_reuse_check)
  3638, // ER_CREDENTIALS_CONTRADICT_TO_HISTORY (MySQL password history)
]);
const UNREACHABLE_ERRNO = new Set([
  1040, // ER_CON_COUNT_ERROR (too many connections)
  1053, // ER_SERVER_SHUTDOWN
  1077, // ER_NORMAL_SHUTDOWN
  1152, // ER_ABORTING_CONNECTION
  1158, 1159, 1160, 1161, // network read/write errors
  2002, 2003, 2006, 2013, // client-side: can't connect, server gone, lost connection
]);
const UNREACHABLE_CODE = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND',
  'EAI_AGAIN', 'EPIPE', 'ENOENT', 'EACCES', 'PROTOCOL_CONNECTION_LOST', 'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_SERVER_SHUTDOWN',
]);

function driverError(e: unknown): DriverError {
  if (e === null || typeof e !== 'object') return {};
  const o = e as Record<string, unknown>;
  return {
    errno: typeof o.errno === 'number' && o.errno > 0 ? o.errno : undefined,
    code: typeof o.code === 'string' ? o.code : undefined,
    fatal: o.fatal === true,
  };
}

const dbCodeOf = (d: DriverError): string => (d.errno !== undefined ? String(d.errno) : (d.code ?? 'unknown'));

function isUnreachable(d: DriverError): boolean {
  if (d.errno !== undefined) return UNREACHABLE_ERRNO.has(d.errno);
  // A fatal error without a server error number is the connection itself failing (mysql2's "Can't add
  // new command when connection is in closed state" has no code).
  return (d.code !== undefined && UNREACHABLE_CODE.has(d.code)) || d.fatal === true;
}

/** Connection-level failures: the session is dropped and reopened by the next call. */
function isConnectionLost(d: DriverError): boolean {
  return d.fatal === true || isUnreachable(d);
}

/** Thrown on MariaDB when strict_password_validation refuses a hash; set/retire retry with PASSWORD(). */
class StrictPasswordValidation extends DbError {
  constructor(engine: string) {
    super(
      'DB_UNSUPPORTED',
      `${engine}: the server runs strict_password_validation with a password validation plugin, which refuses password hashes; the statement cannot be re-issued without the plaintext of every password it keeps`,
      '1290',
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// The engine

interface Session {
  readonly conn: SqlConnection;
  readonly server: ServerInfo;
}

const STRATEGIES: readonly Strategy[] = ['dual', 'alternate', 'single'];

class MysqlFamilyEngine implements DbEngine {
  private session: Promise<Session> | undefined;
  private tail: Promise<unknown> = Promise.resolve();
  private warned = false;

  constructor(
    readonly engine: Flavour,
    private readonly admin: ConnectOptions,
    private readonly connector: Connector,
    private readonly log: Logger | undefined,
  ) {}

  /** Where a server lives, for messages (never a credential). */
  private get where(): string {
    return this.admin.socketPath ?? `${this.admin.host ?? 'localhost'}:${this.admin.port ?? 3306}`;
  }

  set(job: SetJob): Promise<SetOutcome> {
    return this.serial(() => this.doSet(job));
  }

  retire(job: RetireJob): Promise<void> {
    return this.serial(() => this.doRetire(job));
  }

  async test(c: Credential): Promise<boolean> {
    const { database: _db, ...where } = this.admin;
    let conn: SqlConnection;
    try {
      conn = await this.connector({ ...where, user: c.username, password: c.password });
    } catch (e) {
      const d = driverError(e);
      if (d.errno !== undefined && LOGIN_REFUSED.has(d.errno)) return false;
      throw this.error(d, 'user', `logging in as ${JSON.stringify(c.username)}`);
    }
    try {
      await conn.query('SELECT 1');
      return true;
    } catch (e) {
      const d = driverError(e);
      if (d.errno !== undefined && LOGIN_REFUSED.has(d.errno)) return false;
      throw this.error(d, 'user', `SELECT 1 as ${JSON.stringify(c.username)}`);
    } finally {
      await conn.end().catch(() => {});
    }
  }

  async close(): Promise<void> {
    await this.tail.catch(() => {});
    const s = this.session;
    this.session = undefined;
    if (s) await s.then((x) => x.conn.end(), () => {}).catch(() => {});
  }

  /** One admin operation at a time: a statement and its SHOW WARNINGS must share the session. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => {});
    return run;
  }

  // ---- session

  /**
   * The admin session, checked with SELECT 1 when it was opened by an earlier call: a session the server
   * closed meanwhile (wait_timeout, a restart) is replaced instead of failing the operation.
   */
  private async liveSession(): Promise<Session> {
    const reused = this.session !== undefined;
    const s = await this.sessionInfo();
    if (!reused) return s;
    try {
      await s.conn.query('SELECT 1');
      return s;
    } catch {
      this.dropSession();
      return this.sessionInfo();
    }
  }

  private sessionInfo(): Promise<Session> {
    if (!this.session) {
      const opening = this.openSession();
      this.session = opening;
      opening.catch(() => {
        if (this.session === opening) this.session = undefined;
      });
    }
    return this.session;
  }

  private dropSession(): void {
    const s = this.session;
    this.session = undefined;
    if (s) s.then((x) => x.conn.end(), () => {}).catch(() => {});
  }

  private async openSession(): Promise<Session> {
    let conn: SqlConnection;
    try {
      conn = await this.connector(this.admin);
    } catch (e) {
      throw this.error(driverError(e), 'admin-login', 'connecting as the admin account');
    }
    try {
      const [info] = await conn.query('SELECT VERSION() AS version, @@SESSION.sql_mode AS sql_mode');
      const server = parseServerVersion(String(info?.version ?? ''));
      if (server.flavour !== this.engine && !this.warned) {
        this.warned = true;
        this.log?.('warn', `the ${this.engine} target is a ${server.flavour} server: using ${server.flavour} statements`, {
          engine: this.engine,
          server: server.flavour,
          version: server.version.join('.'),
        });
      }
      const modes = String(info?.sql_mode ?? '').split(',').filter((m) => m !== '');
      if (modes.includes('NO_BACKSLASH_ESCAPES')) {
        // The driver escapes quotes with backslashes; under NO_BACKSLASH_ESCAPES a backslash is a plain
        // character and a value could end a literal. Drop the mode for this session (mode names are
        // [A-Z_] words; anything else is refused rather than put in a statement).
        const kept = modes.filter((m) => m !== 'NO_BACKSLASH_ESCAPES');
        if (!kept.every((m) => /^[A-Z_]+$/.test(m))) throw this.noBackslashEscapes();
        await conn.query(`SET SESSION sql_mode = '${kept.join(',')}'`);
        const [after] = await conn.query('SELECT @@SESSION.sql_mode AS sql_mode');
        if (String(after?.sql_mode ?? '').split(',').includes('NO_BACKSLASH_ESCAPES')) throw this.noBackslashEscapes();
      }
      return { conn, server };
    } catch (e) {
      await conn.end().catch(() => {});
      throw e instanceof DbError ? e : this.error(driverError(e), 'admin', 'reading the server version');
    }
  }

  private noBackslashEscapes(): DbError {
    return new DbError('DB_UNSUPPORTED', `${this.engine}: the session runs NO_BACKSLASH_ESCAPES and it could not be turned off; the driver's escaping is unsafe under it, so nothing is sent`);
  }

  private requireStrategy(server: ServerInfo, strategy: Strategy): void {
    const v = server.version.join('.');
    if (!STRATEGIES.includes(strategy)) throw new DbError('DB_UNSUPPORTED', `${this.engine}: unknown strategy ${JSON.stringify(strategy)}`);
    if (server.flavour === 'mariadb') {
      if (!atLeast(server.version, [10, 4, 2])) throw new DbError('DB_UNSUPPORTED', `${this.engine}: MariaDB ${v} is too old: the engine needs 10.4.2 or later (mysql.global_priv, several passwords per account, ACCOUNT LOCK)`);
      return;
    }
    if (!atLeast(server.version, [5, 7, 6])) throw new DbError('DB_UNSUPPORTED', `${this.engine}: MySQL ${v} is too old: the engine needs 5.7.6 or later (8.0.14 for dual)`);
    if (strategy === 'dual' && !atLeast(server.version, [8, 0, 14])) {
      throw new DbError('DB_UNSUPPORTED', `${this.engine}: dual needs MySQL 8.0.14 or later (RETAIN CURRENT PASSWORD); this server is ${v}: use alternate`);
    }
  }

  // ---- reading accounts

  /** Every `'user'@'host'` row of `username`; DB_USER_MISSING if there is none. */
  private async accountRows(username: string): Promise<AccountRow[]> {
    const s = await this.sessionInfo();
    const maria = s.server.flavour === 'mariadb';
    const sql = maria
      ? format('SELECT Host AS host, Priv AS priv FROM mysql.global_priv WHERE User = ? ORDER BY Host', [username])
      : format('SELECT Host AS host, account_locked AS locked FROM mysql.user WHERE User = ? ORDER BY Host', [username]);
    const raw = await this.run(s, sql, 'reading the account rows');
    const rows: AccountRow[] = [];
    for (const r of raw) {
      const host = String(r.host);
      if (!maria) {
        rows.push({ host, locked: String(r.locked) === 'Y', rules: [] });
        continue;
      }
      let priv: ReturnType<typeof parsePriv>;
      try {
        priv = parsePriv(r.priv);
      } catch {
        throw new DbError('DB_ERROR', `${this.engine}: mysql.global_priv holds unreadable JSON for a row of ${JSON.stringify(username)}`);
      }
      if (!priv.isRole) rows.push({ host, locked: priv.locked, rules: priv.rules });
    }
    if (rows.length === 0) throw new DbError('DB_USER_MISSING', `${this.engine}: user ${JSON.stringify(username)} has no account on the server; create it (see the README) or fix the declaration`);
    return rows;
  }

  // ---- running statements

  /** Runs a statement on the admin session; maps a failure to a DbError (never the driver's error). */
  private async run(s: Session, sql: string, what: string): Promise<Row[]> {
    try {
      return await s.conn.query(sql);
    } catch (e) {
      const d = driverError(e);
      if (isConnectionLost(d)) this.dropSession();
      throw this.error(d, 'admin', what);
    }
  }

  /** Runs an account statement; on MariaDB, reads SHOW WARNINGS to find why an ALTER USER failed (1396). */
  private async alter(sql: string, username: string): Promise<void> {
    const s = await this.sessionInfo();
    try {
      await s.conn.query(sql);
      return;
    } catch (e) {
      const d = driverError(e);
      if (isConnectionLost(d)) {
        this.dropSession();
        throw this.error(d, 'admin', 'ALTER USER');
      }
      let errno = d.errno;
      if (errno === 1396 && s.server.flavour === 'mariadb') {
        // MariaDB reports any per-account failure as ER_CANNOT_USER; the cause is in the warnings.
        const codes = await s.conn.query('SHOW WARNINGS').then((rows) => rows.map((r) => Number(r.Code)), () => [] as number[]);
        errno = codes.find((c) => c !== 1396 && (c === 1290 || VALUE_REJECTED.has(c) || PERMISSION.has(c))) ?? 1396;
      }
      if (errno === 1290 && s.server.flavour === 'mariadb') {
        const [g] = await this.run(s, 'SELECT @@GLOBAL.read_only AS ro, @@GLOBAL.strict_password_validation AS spv', 'reading read_only');
        const on = (v: unknown): boolean => !['0', 'OFF', ''].includes(String(v ?? '0').toUpperCase());
        if (!on(g?.ro) && on(g?.spv)) throw new StrictPasswordValidation(this.engine);
      }
      if (errno === 1396) {
        await this.accountRows(username); // DB_USER_MISSING if the user went away meanwhile
        throw new DbError('DB_ERROR', `${this.engine}: ALTER USER failed for an account of ${JSON.stringify(username)} (1396)`, '1396');
      }
      throw this.error({ ...d, errno }, 'admin', 'ALTER USER');
    }
  }

  /** Runs `build(false)` (hashes); if MariaDB insists on validating plaintext, `build(true)`. */
  private async alterPreferringHashes(build: (plaintext: boolean) => string, username: string): Promise<void> {
    try {
      await this.alter(build(false), username);
    } catch (e) {
      if (!(e instanceof StrictPasswordValidation)) throw e;
      await this.alter(build(true), username);
    }
  }

  private error(d: DriverError, ctx: 'admin-login' | 'admin' | 'user', what: string): DbError {
    const dbCode = dbCodeOf(d);
    const tag = `${this.engine}: ${what}`;
    if (isUnreachable(d)) return new DbError('DB_UNREACHABLE', `${tag}: the server at ${this.where} could not be reached (${dbCode}); retry later`, dbCode);
    const errno = d.errno;
    if (errno !== undefined) {
      if (ctx === 'admin-login' && (LOGIN_REFUSED.has(errno) || errno === 3955)) {
        return new DbError('DB_ADMIN_AUTH', `${tag}: the server refused the admin account ${JSON.stringify(this.admin.user)} (${dbCode}); check the admin password in the agent's configuration`, dbCode);
      }
      if (ctx === 'admin' && (errno === 1820 || errno === 1862)) {
        return new DbError('DB_ADMIN_AUTH', `${tag}: the admin account's own password has expired (${dbCode})`, dbCode);
      }
      if (PERMISSION.has(errno)) {
        return new DbError('DB_PERMISSION', `${tag}: the admin account lacks a privilege (${dbCode}); it needs CREATE USER on *.* and SELECT on mysql.global_priv (MariaDB) or mysql.user (MySQL); see the README`, dbCode);
      }
      if (errno === 1290) return new DbError('DB_PERMISSION', `${tag}: a server option prevents the statement (${dbCode}); a read_only server needs READ_ONLY ADMIN (MariaDB) / a writable primary`, dbCode);
      if (VALUE_REJECTED.has(errno)) return new DbError('DB_VALUE_REJECTED', `${tag}: the server's password policy refused the new value (${dbCode}); generate another one`, dbCode);
    }
    return new DbError('DB_ERROR', `${tag}: the server answered with an error (${d.code ?? 'unknown'}${errno !== undefined ? ` ${errno}` : ''})`, dbCode);
  }

  // ---- set

  private async doSet(job: SetJob): Promise<SetOutcome> {
    if (typeof job.username !== 'string' || job.username === '') throw new DbError('DB_ERROR', `${this.engine}: set: no username`);
    if (typeof job.password !== 'string' || job.password === '') throw new DbError('DB_VALUE_REJECTED', `${this.engine}: set: the pending value is empty`);
    const current = job.strategy === 'single' ? undefined : job.current;
    if (job.strategy === 'dual' && current && current.username !== job.username) {
      throw new DbError('DB_ERROR', `${this.engine}: dual: the current credential belongs to another user than ${JSON.stringify(job.username)}`);
    }
    if (job.strategy === 'alternate' && current && current.username === job.username) {
      throw new DbError('DB_ERROR', `${this.engine}: alternate: ${JSON.stringify(job.username)} is the user being served; set must change the inactive one`);
    }
    const { server } = await this.liveSession();
    this.requireStrategy(server, job.strategy);
    const maria = server.flavour === 'mariadb';

    // The crash-recovery rule: a login with the pending value first (and, for dual, with the current).
    const pendingLogsIn = await this.test({ username: job.username, password: job.password });
    const dualCurrent = job.strategy === 'dual' ? current : undefined;
    const currentLogsIn = pendingLogsIn && dualCurrent ? await this.test(dualCurrent) : true;
    const rows = await this.accountRows(job.username);
    if (pendingLogsIn && currentLogsIn) {
      // One login only reaches the row the agent's address matches; the other rows are read (MariaDB may
      // have stopped half-way through a multi-account ALTER USER; MySQL applies it atomically).
      const hp = nativePasswordHash(job.password);
      const hc = dualCurrent ? nativePasswordHash(dualCurrent.password) : undefined;
      const done = rows.every(
        (r) =>
          !(job.strategy === 'alternate' && r.locked) &&
          (!maria || (r.rules.some((x) => isNative(x, hp)) && (hc === undefined || r.rules.some((x) => isNative(x, hc))))),
      );
      if (done) return 'already-applied';
    }
    if (maria) await this.setMariadb(job, current, rows);
    else await this.setMysql(job, current, rows, pendingLogsIn && !currentLogsIn);
    return 'applied';
  }

  private async setMysql(job: SetJob, current: Credential | undefined, rows: readonly AccountRow[], restoreCurrent: boolean): Promise<void> {
    const accounts = rows.map((r) => account(job.username, r.host));
    const identified = (value: string, suffix = ''): string => accounts.map((a) => `${a} IDENTIFIED BY ${literal(value)}${suffix}`).join(', ');
    if (job.strategy === 'dual' && current) {
      if (restoreCurrent) {
        // The pending value already logs in but the current does not: RETAIN would keep the pending
        // value twice. Drop the secondary, put the current back as the primary, then retain it. A crash
        // after any of the three statements leaves a state the next set recognises and repairs: the
        // secondary is dropped first so that the pending value never survives as the secondary alone.
        await this.alter(`ALTER USER ${accounts.map((a) => `${a} DISCARD OLD PASSWORD`).join(', ')}`, job.username);
        await this.alter(`ALTER USER ${identified(current.password)}`, job.username);
      }
      await this.alter(`ALTER USER ${identified(job.password, ' RETAIN CURRENT PASSWORD')}`, job.username);
      return;
    }
    await this.alter(`ALTER USER ${identified(job.password)}${job.strategy === 'alternate' ? ' ACCOUNT UNLOCK' : ''}`, job.username);
  }

  private async setMariadb(job: SetJob, current: Credential | undefined, rows: readonly AccountRow[]): Promise<void> {
    const hp = nativePasswordHash(job.password);
    const keepCurrent = job.strategy === 'dual' && current !== undefined && current.password !== job.password ? current : undefined;
    const hc = keepCurrent ? nativePasswordHash(keepCurrent.password) : undefined;
    const build = (plaintext: boolean): string => {
      const specs = rows.map((r) => {
        const rules: RuleSpec[] = [plaintext ? { plaintext: job.password } : { plugin: NATIVE, auth: hp }];
        if (keepCurrent && hc) {
          // The current value's rule as the server stores it (the unsalted hash is the same string the
          // agent computes; computed if this row does not have it yet).
          rules.push(plaintext ? { plaintext: keepCurrent.password } : (r.rules.find((x) => isNative(x, hc)) ?? { plugin: NATIVE, auth: hc }));
        }
        return `${account(job.username, r.host)} ${identifiedVia(rules)}`;
      });
      return `ALTER USER ${specs.join(', ')}${job.strategy === 'alternate' ? ' ACCOUNT UNLOCK' : ''}`;
    };
    await this.alterPreferringHashes(build, job.username);
  }

  // ---- retire

  private async doRetire(job: RetireJob): Promise<void> {
    if (job.strategy === 'single') return; // the old value stopped working at set
    const { retired, current } = job;
    if (job.strategy === 'dual') {
      if (retired.username !== current.username) throw new DbError('DB_ERROR', `${this.engine}: dual: the retired and current credentials belong to different users`);
      if (retired.password === current.password) throw new DbError('DB_ERROR', `${this.engine}: dual: the retired value is the current value; nothing retired`);
    }
    if (job.strategy === 'alternate' && retired.username === current.username) {
      throw new DbError('DB_ERROR', `${this.engine}: alternate: the retired user ${JSON.stringify(retired.username)} is the current user; not locking it`);
    }
    const { server } = await this.liveSession();
    this.requireStrategy(server, job.strategy);
    // Never take the last working credential away.
    if (!(await this.test(current))) {
      throw new DbError('DB_ERROR', `${this.engine}: retire: the current credential of ${JSON.stringify(current.username)} does not log in; the previous one is left in place`);
    }
    if (job.strategy === 'alternate') {
      const rows = await this.accountRows(retired.username);
      const open = rows.filter((r) => !r.locked);
      if (open.length === 0) return;
      await this.alter(`ALTER USER ${open.map((r) => account(retired.username, r.host)).join(', ')} ACCOUNT LOCK`, retired.username);
      return;
    }
    if (server.flavour === 'mysql') {
      // DISCARD drops whatever the secondary is. If the retired value no longer logs in, it is gone
      // already, and the secondary may be the current value (a later set ran RETAIN): leave it.
      if (!(await this.test(retired))) return;
      const rows = await this.accountRows(retired.username);
      await this.alter(`ALTER USER ${rows.map((r) => `${account(retired.username, r.host)} DISCARD OLD PASSWORD`).join(', ')}`, retired.username);
      return;
    }
    await this.retireMariadbDual(retired, current);
  }

  /** Removes the rule of the retired value from every row that has it; every other rule stays as stored. */
  private async retireMariadbDual(retired: Credential, current: Credential): Promise<void> {
    const rows = await this.accountRows(retired.username);
    const hr = nativePasswordHash(retired.password);
    const hc = nativePasswordHash(current.password);
    const changes = rows
      .map((r) => ({ host: r.host, keep: r.rules.filter((x) => !isNative(x, hr)), before: r.rules.length }))
      .filter((c) => c.keep.length !== c.before);
    if (changes.length === 0) return;
    for (const c of changes) {
      if (c.keep.length === 0) {
        throw new DbError('DB_ERROR', `${this.engine}: retire: the retired value is the only password of ${account(retired.username, c.host)}; left in place`);
      }
    }
    const build = (plaintext: boolean): string => {
      const specs = changes.map((c) => {
        const rules: RuleSpec[] = c.keep.map((x) => {
          if (!plaintext) return x;
          if (isNative(x, hc)) return { plaintext: current.password };
          throw new StrictPasswordValidation(this.engine);
        });
        return `${account(retired.username, c.host)} ${identifiedVia(rules)}`;
      });
      return `ALTER USER ${specs.join(', ')}`;
    };
    await this.alterPreferringHashes(build, retired.username);
  }
}

// ---------------------------------------------------------------------------------------------------
// Factories

/** mysql://admin@host:port/[database][?socket=/path/to/sock][&ssl=true]; the password comes from the target. */
export function connectOptions(target: TargetConnection): ConnectOptions {
  let u: URL;
  try {
    u = new URL(target.url);
  } catch {
    throw new DbError('DB_ERROR', 'mysql: the target url is not a valid URL');
  }
  if (u.protocol !== 'mysql:' && u.protocol !== 'mariadb:') throw new DbError('DB_ERROR', `mysql: the target url must start with mysql:// or mariadb://, not ${u.protocol}//`);
  const user = decodeURIComponent(u.username);
  if (user === '') throw new DbError('DB_ERROR', 'mysql: the target url names no admin user (mysql://rotor_admin@host:3306/)');
  const socketPath = u.searchParams.get('socket') ?? undefined;
  const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || undefined;
  const ssl = ['1', 'true', 'required'].includes((u.searchParams.get('ssl') ?? '').toLowerCase());
  return {
    ...(socketPath ? { socketPath } : { host: u.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1', port: u.port ? Number(u.port) : 3306 }),
    user,
    password: target.password ?? decodeURIComponent(u.password),
    ...(database ? { database } : {}),
    ...(ssl ? { ssl } : {}),
    timeoutMs: target.timeoutMs ?? 10_000,
  };
}

/** The engine with its collaborators passed in (tests pass a recording connector). */
export function createMysqlFamilyEngine(target: TargetConnection, expected: Flavour, options: MysqlEngineOptions = {}): DbEngine {
  return new MysqlFamilyEngine(expected, connectOptions(target), options.connect ?? mysql2Connector, options.log);
}

export const mysqlEngine: EngineFactory = (target) => createMysqlFamilyEngine(target, 'mysql');
export const mariadbEngine: EngineFactory = (target) => createMysqlFamilyEngine(target, 'mariadb');
