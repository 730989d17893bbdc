/**
 * The MySQL 8 / MariaDB 10.4+ engine: one implementation, two dialects (./mysql-dialect.ts,
 * ./mariadb-dialect.ts) picked from the server's own `SELECT VERSION()` (the factory only says which
 * flavour is expected; the other one is adapted to and logged). This module holds what both share: the
 * admin session, one admin operation at a time, reading a user's account rows, running statements, the
 * crash-recovery check and the order of the steps.
 *
 * Client-side escaping relies on backslash escapes, so a session running NO_BACKSLASH_ESCAPES has that
 * mode removed before any statement carrying a value, and the engine refuses to run if it cannot be
 * removed.
 */
import type { Logger } from 'rotor/internal';
import type { Credential, DbEngine, RetireJob, SetJob, SetOutcome, Strategy } from '../types.js';
import { DbError } from '../types.js';
import type { AccountOps, AccountRow } from './accounts.js';
import { account } from './accounts.js';
import type { ConnectOptions, Connector, Flavour, Row, ServerInfo, SqlConnection } from './connect.js';
import { parseServerVersion } from './connect.js';
import type { DriverError } from './errors.js';
import {
  dbErrorOf,
  driverError,
  isConnectionLost,
  LOGIN_REFUSED,
  PERMISSION,
  StrictPasswordValidation,
  VALUE_REJECTED,
} from './errors.js';
import {
  isNative,
  mariadbAccountRow,
  mariadbAccountRowsSql,
  nativePasswordHash,
  requireMariadb,
  retireMariadbDual,
  setMariadb,
} from './mariadb-dialect.js';
import { mysqlAccountRow, mysqlAccountRowsSql, requireMysql, retireMysqlDual, setMysql } from './mysql-dialect.js';

interface Session {
  readonly conn: SqlConnection;
  readonly server: ServerInfo;
}

const STRATEGIES: readonly Strategy[] = ['dual', 'alternate', 'single'];

export class MysqlFamilyEngine implements DbEngine {
  private session: Promise<Session> | undefined;
  private tail: Promise<unknown> = Promise.resolve();
  private warned = false;
  /** What the dialects' statements run through. */
  private readonly ops: AccountOps;

  constructor(
    readonly engine: Flavour,
    private readonly admin: ConnectOptions,
    private readonly connector: Connector,
    private readonly log: Logger | undefined,
  ) {
    this.ops = {
      engine,
      accountRows: (username) => this.accountRows(username),
      alter: (sql, username) => this.alter(sql, username),
      alterPreferringHashes: (build, username) => this.alterPreferringHashes(build, username),
      test: (c) => this.test(c),
    };
  }

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
    if (s)
      await s
        .then(
          (x) => x.conn.end(),
          () => {},
        )
        .catch(() => {});
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
    if (s)
      s.then(
        (x) => x.conn.end(),
        () => {},
      ).catch(() => {});
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
        this.log?.(
          'warn',
          `the ${this.engine} target is a ${server.flavour} server: using ${server.flavour} statements`,
          {
            engine: this.engine,
            server: server.flavour,
            version: server.version.join('.'),
          },
        );
      }
      const modes = String(info?.sql_mode ?? '')
        .split(',')
        .filter((m) => m !== '');
      if (modes.includes('NO_BACKSLASH_ESCAPES')) {
        // The driver escapes quotes with backslashes; under NO_BACKSLASH_ESCAPES a backslash is a plain
        // character and a value could end a literal. Drop the mode for this session (mode names are
        // [A-Z_] words; anything else is refused rather than put in a statement).
        const kept = modes.filter((m) => m !== 'NO_BACKSLASH_ESCAPES');
        if (!kept.every((m) => /^[A-Z_]+$/.test(m))) throw this.noBackslashEscapes();
        await conn.query(`SET SESSION sql_mode = '${kept.join(',')}'`);
        const [after] = await conn.query('SELECT @@SESSION.sql_mode AS sql_mode');
        if (
          String(after?.sql_mode ?? '')
            .split(',')
            .includes('NO_BACKSLASH_ESCAPES')
        )
          throw this.noBackslashEscapes();
      }
      return { conn, server };
    } catch (e) {
      await conn.end().catch(() => {});
      throw e instanceof DbError ? e : this.error(driverError(e), 'admin', 'reading the server version');
    }
  }

  private noBackslashEscapes(): DbError {
    return new DbError(
      'DB_UNSUPPORTED',
      `${this.engine}: the session runs NO_BACKSLASH_ESCAPES and it could not be turned off; the driver's escaping is unsafe under it, so nothing is sent`,
    );
  }

  private requireStrategy(server: ServerInfo, strategy: Strategy): void {
    if (!STRATEGIES.includes(strategy))
      throw new DbError('DB_UNSUPPORTED', `${this.engine}: unknown strategy ${JSON.stringify(strategy)}`);
    if (server.flavour === 'mariadb') requireMariadb(this.engine, server);
    else requireMysql(this.engine, server, strategy);
  }

  // ---- reading accounts

  /** Every `'user'@'host'` row of `username`; DB_USER_MISSING if there is none. */
  private async accountRows(username: string): Promise<AccountRow[]> {
    const s = await this.sessionInfo();
    const maria = s.server.flavour === 'mariadb';
    const sql = maria ? mariadbAccountRowsSql(username) : mysqlAccountRowsSql(username);
    const raw = await this.run(s, sql, 'reading the account rows');
    const rows: AccountRow[] = [];
    for (const r of raw) {
      const row = maria ? mariadbAccountRow(r, this.engine, username) : mysqlAccountRow(r);
      if (row) rows.push(row);
    }
    if (rows.length === 0)
      throw new DbError(
        'DB_USER_MISSING',
        `${this.engine}: user ${JSON.stringify(username)} has no account on the server; create it (see docs/databases/mysql-mariadb.md) or fix the declaration`,
      );
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
        const codes = await s.conn.query('SHOW WARNINGS').then(
          (rows) => rows.map((r) => Number(r.Code)),
          () => [] as number[],
        );
        errno = codes.find((c) => c !== 1396 && (c === 1290 || VALUE_REJECTED.has(c) || PERMISSION.has(c))) ?? 1396;
      }
      if (errno === 1290 && s.server.flavour === 'mariadb') {
        const [g] = await this.run(
          s,
          'SELECT @@GLOBAL.read_only AS ro, @@GLOBAL.strict_password_validation AS spv',
          'reading read_only',
        );
        const on = (v: unknown): boolean => !['0', 'OFF', ''].includes(String(v ?? '0').toUpperCase());
        if (!on(g?.ro) && on(g?.spv)) throw new StrictPasswordValidation(this.engine);
      }
      if (errno === 1396) {
        await this.accountRows(username); // DB_USER_MISSING if the user went away meanwhile
        throw new DbError(
          'DB_ERROR',
          `${this.engine}: ALTER USER failed for an account of ${JSON.stringify(username)} (1396)`,
          '1396',
        );
      }
      throw this.error({ ...d, errno }, 'admin', 'ALTER USER');
    }
  }

  private error(d: DriverError, ctx: 'admin-login' | 'admin' | 'user', what: string): DbError {
    return dbErrorOf(d, ctx, what, { engine: this.engine, where: this.where, adminUser: this.admin.user });
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

  // ---- set

  private async doSet(job: SetJob): Promise<SetOutcome> {
    if (typeof job.username !== 'string' || job.username === '')
      throw new DbError('DB_ERROR', `${this.engine}: set: no username`);
    if (typeof job.password !== 'string' || job.password === '')
      throw new DbError('DB_VALUE_REJECTED', `${this.engine}: set: the pending value is empty`);
    const current = job.strategy === 'single' ? undefined : job.current;
    if (job.strategy === 'dual' && current && current.username !== job.username) {
      throw new DbError(
        'DB_ERROR',
        `${this.engine}: dual: the current credential belongs to another user than ${JSON.stringify(job.username)}`,
      );
    }
    if (job.strategy === 'alternate' && current && current.username === job.username) {
      throw new DbError(
        'DB_ERROR',
        `${this.engine}: alternate: ${JSON.stringify(job.username)} is the user being served; set must change the inactive one`,
      );
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
          (!maria ||
            (r.rules.some((x) => isNative(x, hp)) && (hc === undefined || r.rules.some((x) => isNative(x, hc))))),
      );
      if (done) return 'already-applied';
    }
    if (maria) await setMariadb(this.ops, job, current, rows);
    else await setMysql(this.ops, job, current, rows, pendingLogsIn && !currentLogsIn);
    return 'applied';
  }

  // ---- retire

  private async doRetire(job: RetireJob): Promise<void> {
    if (job.strategy === 'single') return; // the old value stopped working at set
    const { retired, current } = job;
    if (job.strategy === 'dual') {
      if (retired.username !== current.username)
        throw new DbError(
          'DB_ERROR',
          `${this.engine}: dual: the retired and current credentials belong to different users`,
        );
      if (retired.password === current.password)
        throw new DbError('DB_ERROR', `${this.engine}: dual: the retired value is the current value; nothing retired`);
    }
    if (job.strategy === 'alternate' && retired.username === current.username) {
      throw new DbError(
        'DB_ERROR',
        `${this.engine}: alternate: the retired user ${JSON.stringify(retired.username)} is the current user; not locking it`,
      );
    }
    const { server } = await this.liveSession();
    this.requireStrategy(server, job.strategy);
    // Never take the last working credential away.
    if (!(await this.test(current))) {
      throw new DbError(
        'DB_ERROR',
        `${this.engine}: retire: the current credential of ${JSON.stringify(current.username)} does not log in; the previous one is left in place`,
      );
    }
    if (job.strategy === 'alternate') {
      const rows = await this.accountRows(retired.username);
      const open = rows.filter((r) => !r.locked);
      if (open.length === 0) return;
      await this.alter(
        `ALTER USER ${open.map((r) => account(retired.username, r.host)).join(', ')} ACCOUNT LOCK`,
        retired.username,
      );
      return;
    }
    if (server.flavour === 'mysql') await retireMysqlDual(this.ops, retired);
    else await retireMariadbDual(this.ops, retired, current);
  }
}
