/**
 * PostgreSQL engine (driver: pg). A role has one password, so the zero-downtime strategy is `alternate`:
 * two LOGIN roles in one NOLOGIN group role that owns the objects; the inactive one gets the new value and
 * the previous one is expired with VALID UNTIL. `single` changes one role's password in place. `dual` does
 * not exist in PostgreSQL.
 *
 * The agent sends a SCRAM-SHA-256 verifier it computed itself, never the plaintext: PostgreSQL stores a
 * password string that already has the verifier's form as-is, so the value never reaches the server's
 * statement log or pg_stat_activity.
 *
 * Utility statements (ALTER ROLE) take no bind parameters; identifiers and literals are quoted with pg's
 * escapeIdentifier / escapeLiteral.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import pg from 'pg';
import type {
  Credential,
  DbEngine,
  DbErrorCode,
  EngineFactory,
  RetireJob,
  SetJob,
  SetOutcome,
  TargetConnection,
} from './types.js';
import { DbError } from './types.js';

const { Client, DatabaseError, escapeIdentifier, escapeLiteral } = pg;

const SCRAM_ITERATIONS = 4096;
const DEFAULT_TIMEOUT_MS = 10_000;
/** NAMEDATALEN - 1: the server silently truncates longer names, which could then match another role. */
const MAX_NAME_BYTES = 63;

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (src/common/scram-common.c):
 * `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 fields.
 * The server SASLpreps passwords; for printable ASCII that is the identity, which is why `set` only
 * accepts printable ASCII values.
 */
export function scramSha256Verifier(password: string, salt: Buffer = randomBytes(16)): string {
  const salted = pbkdf2Sync(password, salt, SCRAM_ITERATIONS, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  return `SCRAM-SHA-256$${SCRAM_ITERATIONS}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

type Step = 'admin' | 'set' | 'test' | 'retire';

/** Auth failures of a login: 28P01 invalid_password (also an expired one), 28000 invalid_authorization_specification (NOLOGIN, pg_hba reject). */
const AUTH_FAILED = new Set(['28P01', '28000']);
/** The session is gone: admin_shutdown, crash_shutdown, cannot_connect_now, connection_exception class. */
const CONNECTION_LOST = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006']);
/** Server states worth a retry with backoff, like an unreachable server (plus too_many_connections, query_canceled by statement_timeout). */
const UNAVAILABLE = new Set([...CONNECTION_LOST, '53300', '57014', '08001', '08004']);
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
]);

/**
 * A DbError for a driver error. Only stable codes travel: the SQLSTATE, or Node's error code. The
 * server's or driver's message is dropped, because nothing guarantees it holds no value.
 */
function toDbError(err: unknown, step: Step, role?: string): DbError {
  if (err instanceof DbError) return err;
  const who = role === undefined ? '' : ` for role ${JSON.stringify(role)}`;
  if (err instanceof DatabaseError && err.code) {
    const sqlstate = err.code;
    const at = ` (SQLSTATE ${sqlstate})`;
    const make = (code: DbErrorCode, msg: string) => new DbError(code, msg + at, sqlstate);
    if (step === 'admin' && AUTH_FAILED.has(sqlstate))
      return make(
        'DB_ADMIN_AUTH',
        "PostgreSQL refused the agent's admin credential: check the admin user and password",
      );
    if (sqlstate === '42704') return make('DB_USER_MISSING', `PostgreSQL has no role to rotate${who}`);
    if (sqlstate === '42501' && step === 'test')
      return make(
        'DB_PERMISSION',
        `the role may not connect to the database named in the target URL${who} (CONNECT privilege)`,
      );
    if (sqlstate === '42501')
      return make(
        'DB_PERMISSION',
        `the agent's admin role lacks a privilege${who}: it needs CREATEROLE, and on PostgreSQL 16+ ADMIN OPTION on the role`,
      );
    if (step === 'set' && sqlstate === '22023')
      return make(
        'DB_VALUE_REJECTED',
        `PostgreSQL rejected the new value${who} (a password check): generate another one`,
      );
    if (UNAVAILABLE.has(sqlstate))
      return make(
        'DB_UNREACHABLE',
        'PostgreSQL is unavailable (shutting down, starting, out of connections) or the statement timed out',
      );
    return make('DB_ERROR', `PostgreSQL refused the ${step} step${who}`);
  }
  const e = err as { code?: unknown; message?: unknown };
  const nodeCode = typeof e?.code === 'string' ? e.code : undefined;
  const message = typeof e?.message === 'string' ? e.message : '';
  if ((nodeCode && NETWORK_CODES.has(nodeCode)) || /timeout|Connection terminated/i.test(message)) {
    return new DbError(
      'DB_UNREACHABLE',
      `PostgreSQL could not be reached${nodeCode ? ` (${nodeCode})` : ' (connection closed or timed out)'}`,
    );
  }
  if (step === 'admin' && message.startsWith('SASL:')) {
    return new DbError(
      'DB_ADMIN_AUTH',
      'the admin login failed during SCRAM authentication: check that the agent has the admin password',
    );
  }
  return new DbError(
    'DB_ERROR',
    `the ${step} step failed on the PostgreSQL client side${nodeCode ? ` (${nodeCode})` : ''}${who}`,
  );
}

/** Where to connect, from the admin URL: host, port, database and TLS are shared by the admin and test logins. */
function parseTarget(target: TargetConnection): {
  base: pg.ClientConfig;
  adminUser: string;
  adminPassword: string | undefined;
} {
  let u: URL;
  try {
    u = new URL(target.url);
  } catch {
    throw new DbError('DB_ERROR', 'the PostgreSQL target URL is not a valid URL');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') {
    throw new DbError('DB_ERROR', `a PostgreSQL target URL starts with postgres://, not ${u.protocol}//`);
  }
  const timeout = target.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const sslmode = u.searchParams.get('sslmode') ?? 'disable';
  const ssl: pg.ClientConfig['ssl'] =
    sslmode === 'disable' ? false : sslmode === 'no-verify' ? { rejectUnauthorized: false } : true; // any other mode (require, verify-ca, verify-full): TLS with the certificate verified, stricter than libpq's `require`
  const base: pg.ClientConfig = {
    // ?host=/run/postgresql selects a unix socket directory, as in libpq URLs.
    host: u.searchParams.get('host') ?? (decodeURIComponent(u.hostname.replace(/^\[(.*)\]$/, '$1')) || '127.0.0.1'),
    port: u.port ? Number(u.port) : 5432,
    database: decodeURIComponent(u.pathname.slice(1)) || 'postgres',
    ssl,
    connectionTimeoutMillis: timeout,
    query_timeout: timeout,
    statement_timeout: timeout,
    application_name: 'rotor-agent',
  };
  // An empty user would make pg fall back to PGUSER or the OS user: the agent's config must name it.
  const adminUser = decodeURIComponent(u.username);
  if (adminUser === '')
    throw new DbError(
      'DB_ERROR',
      'the PostgreSQL target URL must name the admin user (postgres://rotor_admin@host/db)',
    );
  const urlPassword = u.password ? decodeURIComponent(u.password) : undefined;
  return { base, adminUser, adminPassword: target.password ?? urlPassword };
}

/** A role name the server would take verbatim: not empty (pg would fall back to PGUSER) and not truncated. */
function checkRoleName(name: string): void {
  if (name === '' || Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES || name.includes('\0')) {
    throw new DbError(
      'DB_USER_MISSING',
      `no PostgreSQL role can have that name (empty, a NUL, or longer than ${MAX_NAME_BYTES} bytes)`,
    );
  }
}

class PostgresEngine implements DbEngine {
  readonly engine = 'postgres' as const;
  private readonly base: pg.ClientConfig;
  private readonly adminUser: string;
  private readonly adminPassword: string | undefined;
  /** The admin connection (connected lazily), dropped when it breaks so that the next use reconnects. */
  private admin: Promise<pg.Client> | undefined;

  constructor(target: TargetConnection) {
    ({ base: this.base, adminUser: this.adminUser, adminPassword: this.adminPassword } = parseTarget(target));
  }

  async set(job: SetJob): Promise<SetOutcome> {
    if (job.strategy === 'dual') throw unsupported();
    checkRoleName(job.username);
    if (job.strategy === 'alternate' && job.current?.username === job.username) {
      throw new DbError('DB_ERROR', 'alternate: set must change the inactive role, not the one served as current');
    }
    // Printable ASCII only: the server SASLpreps other values, so a client-side verifier could differ.
    if (!/^[\x20-\x7e]+$/.test(job.password)) {
      throw new DbError(
        'DB_VALUE_REJECTED',
        'PostgreSQL values must be non-empty printable ASCII: generate another one',
      );
    }
    const role = escapeIdentifier(job.username);
    if ((await this.login({ username: job.username, password: job.password })) === true) {
      // Crash recovery: the value is in place. Under `alternate` the role may still carry an expiry (an
      // earlier retire whose time has not come on the server's clock, or an operator's VALID UNTIL): the
      // value is about to be served as current, so it must not lapse. The password stays untouched.
      if (job.strategy === 'alternate')
        await this.adminQuery(`ALTER ROLE ${role} VALID UNTIL 'infinity'`, 'set', job.username);
      return 'already-applied';
    }
    const verifier = escapeLiteral(scramSha256Verifier(job.password));
    const validity = job.strategy === 'alternate' ? ` VALID UNTIL 'infinity'` : '';
    await this.adminQuery(`ALTER ROLE ${role} PASSWORD ${verifier}${validity}`, 'set', job.username);
    return 'applied';
  }

  async test(c: Credential): Promise<boolean> {
    return (await this.login(c)) === true;
  }

  async retire(job: RetireJob): Promise<void> {
    if (job.strategy === 'dual') throw unsupported();
    if (job.strategy === 'single') return; // the password was replaced in place by set
    checkRoleName(job.retired.username);
    if (job.retired.username === job.current.username) {
      throw new DbError('DB_ERROR', 'alternate: retire would expire the role served as current');
    }
    // Idempotent and safe to replay: when the retired value no longer logs in by password (already
    // expired, or the role has since been given a newer value by a later rotation) there is nothing to
    // retire, and expiring the role would lock out that newer value.
    if ((await this.login(job.retired)) === '28P01') return;
    // 'now' is read by the server, in its own clock: no skew with the agent's.
    await this.adminQuery(
      `ALTER ROLE ${escapeIdentifier(job.retired.username)} VALID UNTIL 'now'`,
      'retire',
      job.retired.username,
    );
  }

  async close(): Promise<void> {
    const admin = this.admin;
    this.admin = undefined;
    if (!admin) return;
    const client = await admin.catch(() => undefined);
    await client?.end().catch(() => {});
  }

  /**
   * One login on a fresh connection (never the admin's): true when `SELECT current_user` runs, else the
   * SQLSTATE of the refused authentication. Anything else throws a DbError.
   */
  private async login(c: Credential): Promise<true | string> {
    checkRoleName(c.username);
    if (c.password === '') return '28P01'; // PostgreSQL never accepts an empty password; pg would use PGPASSWORD
    const client = new Client({ ...this.base, user: c.username, password: c.password });
    client.on('error', () => {}); // a late socket error after end() must not crash the agent
    try {
      await client.connect();
      await client.query('SELECT current_user');
      return true;
    } catch (err) {
      if (err instanceof DatabaseError && err.code && AUTH_FAILED.has(err.code)) return err.code;
      throw toDbError(err, 'test', c.username);
    } finally {
      await client.end().catch(() => {});
    }
  }

  private connectAdmin(): Promise<pg.Client> {
    if (this.admin) return this.admin;
    const client = new Client({ ...this.base, user: this.adminUser, password: this.adminPassword });
    const connecting: Promise<pg.Client> = client.connect().then(
      () => client,
      (err: unknown) => {
        if (this.admin === connecting) this.admin = undefined;
        void client.end().catch(() => {});
        throw toDbError(err, 'admin');
      },
    );
    const drop = () => {
      if (this.admin === connecting) this.admin = undefined;
    };
    client.on('error', drop); // the server closed the session or the network broke: reconnect on next use
    client.on('end', drop);
    this.admin = connecting;
    return connecting;
  }

  /**
   * Runs one statement on the admin connection. A connection that broke while idle is replaced once
   * (every statement here is idempotent); errors of the statement itself are mapped as they are.
   */
  private adminQueue: Promise<unknown> = Promise.resolve();

  /** One statement at a time on the one admin connection (the agent runs jobs of several secrets at once). */
  private adminQuery(sql: string, step: Step, role: string): Promise<void> {
    const run = this.adminQueue.then(() => this.adminQueryNow(sql, step, role));
    this.adminQueue = run.catch(() => undefined);
    return run;
  }

  private async adminQueryNow(sql: string, step: Step, role: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const reused = this.admin !== undefined;
      const connecting = this.connectAdmin();
      const client = await connecting;
      try {
        await client.query(sql);
        return;
      } catch (err) {
        if (err instanceof DatabaseError && !(err.code && CONNECTION_LOST.has(err.code)))
          throw toDbError(err, step, role);
        // The connection is unusable (closed, timed out, server shutting down): drop it.
        if (this.admin === connecting) this.admin = undefined;
        void client.end().catch(() => {});
        if (!reused || attempt > 0) throw toDbError(err, step, role);
      }
    }
  }
}

function unsupported(): DbError {
  return new DbError(
    'DB_UNSUPPORTED',
    'PostgreSQL keeps one password per role: use strategy alternate (two roles) or single',
  );
}

export const postgresEngine: EngineFactory = (target) => new PostgresEngine(target);
