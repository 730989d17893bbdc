/**
 * Reaching a MySQL / MariaDB server: the connection seam (mysql2 in production, a recording stand-in in
 * unit tests), the admin connection read from the target URL, and the server's flavour and version.
 *
 * Statements go through mysql2's `query()` with client-side escaping (never `execute()`: account
 * statements fail as server-side prepared statements, ER_UNSUPPORTED_PS 1295).
 */
import { createConnection } from 'mysql2/promise';
import type { TargetConnection } from '../types.js';
import { DbError } from '../types.js';

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

/** Whether version `v` is `min` or later. */
export function atLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < min.length; i++) {
    const a = v[i] ?? 0;
    const b = min[i] ?? 0;
    if (a !== b) return a > b;
  }
  return true;
}

/** mysql://admin@host:port/[database][?socket=/path/to/sock][&ssl=true]; the password comes from the target. */
export function connectOptions(target: TargetConnection): ConnectOptions {
  let u: URL;
  try {
    u = new URL(target.url);
  } catch {
    throw new DbError('DB_ERROR', 'mysql: the target url is not a valid URL');
  }
  if (u.protocol !== 'mysql:' && u.protocol !== 'mariadb:')
    throw new DbError('DB_ERROR', `mysql: the target url must start with mysql:// or mariadb://, not ${u.protocol}//`);
  const user = decodeURIComponent(u.username);
  if (user === '')
    throw new DbError('DB_ERROR', 'mysql: the target url names no admin user (mysql://rotor_admin@host:3306/)');
  const socketPath = u.searchParams.get('socket') ?? undefined;
  const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || undefined;
  const ssl = ['1', 'true', 'required'].includes((u.searchParams.get('ssl') ?? '').toLowerCase());
  return {
    ...(socketPath
      ? { socketPath }
      : { host: u.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1', port: u.port ? Number(u.port) : 3306 }),
    user,
    password: target.password ?? decodeURIComponent(u.password),
    ...(database ? { database } : {}),
    ...(ssl ? { ssl } : {}),
    timeoutMs: target.timeoutMs ?? 10_000,
  };
}
