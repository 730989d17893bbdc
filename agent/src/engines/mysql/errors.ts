/**
 * The engine's errors. No value ever leaves the engine in an error: mysql2's errors carry the full
 * statement (`err.sql`) and MariaDB's syntax errors quote it, so errors are rebuilt from the error number
 * alone and the driver's error is not kept as `cause`.
 */
import { DbError } from '../types.js';

export interface DriverError {
  errno?: number;
  code?: string;
  fatal?: boolean;
}

/** Server error numbers a login uses to refuse the credential itself (test() answers false). */
export const LOGIN_REFUSED = new Set([
  1045, // ER_ACCESS_DENIED_ERROR
  1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
  3118, // ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
  4151, // ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
  1862, // ER_MUST_CHANGE_PASSWORD_LOGIN (expired)
  1820, // ER_MUST_CHANGE_PASSWORD (expired, sandbox mode)
]);
export const PERMISSION = new Set([
  1044, // ER_DBACCESS_DENIED_ERROR
  1142, // ER_TABLEACCESS_DENIED_ERROR
  1143, // ER_COLUMNACCESS_DENIED_ERROR
  1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
  1132, // ER_PASSWORD_NOT_ALLOWED
]);
export const VALUE_REJECTED = new Set([
  1819, // ER_NOT_VALID_PASSWORD (validate_password, simple_password_check, cracklib, password_reuse_check)
  3638, // ER_CREDENTIALS_CONTRADICT_TO_HISTORY (MySQL password history)
]);
const UNREACHABLE_ERRNO = new Set([
  1040, // ER_CON_COUNT_ERROR (too many connections)
  1053, // ER_SERVER_SHUTDOWN
  1077, // ER_NORMAL_SHUTDOWN
  1152, // ER_ABORTING_CONNECTION
  1158,
  1159,
  1160,
  1161, // network read/write errors
  2002,
  2003,
  2006,
  2013, // client-side: can't connect, server gone, lost connection
]);
const UNREACHABLE_CODE = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'ENOENT',
  'EACCES',
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_SERVER_SHUTDOWN',
]);

export function driverError(e: unknown): DriverError {
  if (e === null || typeof e !== 'object') return {};
  const o = e as Record<string, unknown>;
  return {
    errno: typeof o.errno === 'number' && o.errno > 0 ? o.errno : undefined,
    code: typeof o.code === 'string' ? o.code : undefined,
    fatal: o.fatal === true,
  };
}

export const dbCodeOf = (d: DriverError): string => (d.errno !== undefined ? String(d.errno) : (d.code ?? 'unknown'));

export function isUnreachable(d: DriverError): boolean {
  if (d.errno !== undefined) return UNREACHABLE_ERRNO.has(d.errno);
  // A fatal error without a server error number is the connection itself failing (mysql2's "Can't add
  // new command when connection is in closed state" has no code).
  return (d.code !== undefined && UNREACHABLE_CODE.has(d.code)) || d.fatal === true;
}

/** Connection-level failures: the session is dropped and reopened by the next call. */
export function isConnectionLost(d: DriverError): boolean {
  return d.fatal === true || isUnreachable(d);
}

/** Thrown on MariaDB when strict_password_validation refuses a hash; set/retire retry with PASSWORD(). */
export class StrictPasswordValidation extends DbError {
  constructor(engine: string) {
    super(
      'DB_UNSUPPORTED',
      `${engine}: the server runs strict_password_validation with a password validation plugin, which refuses password hashes; the statement cannot be re-issued without the plaintext of every password it keeps`,
      '1290',
    );
  }
}

/** Who is asking, for messages (never a credential). */
export interface ErrorContext {
  /** The flavour the engine was made for. */
  readonly engine: string;
  /** Where the server lives. */
  readonly where: string;
  /** The admin account's name. */
  readonly adminUser: string;
}

/** The DbError of a driver error; `ctx` says whose login or statement failed, `what` what was being done. */
export function dbErrorOf(
  d: DriverError,
  ctx: 'admin-login' | 'admin' | 'user',
  what: string,
  { engine, where, adminUser }: ErrorContext,
): DbError {
  const dbCode = dbCodeOf(d);
  const tag = `${engine}: ${what}`;
  if (isUnreachable(d))
    return new DbError(
      'DB_UNREACHABLE',
      `${tag}: the server at ${where} could not be reached (${dbCode}); retry later`,
      dbCode,
    );
  const errno = d.errno;
  if (errno !== undefined) {
    if (ctx === 'admin-login' && (LOGIN_REFUSED.has(errno) || errno === 3955)) {
      return new DbError(
        'DB_ADMIN_AUTH',
        `${tag}: the server refused the admin account ${JSON.stringify(adminUser)} (${dbCode}); check the admin password in the agent's configuration`,
        dbCode,
      );
    }
    if (ctx === 'admin' && (errno === 1820 || errno === 1862)) {
      return new DbError('DB_ADMIN_AUTH', `${tag}: the admin account's own password has expired (${dbCode})`, dbCode);
    }
    if (PERMISSION.has(errno)) {
      return new DbError(
        'DB_PERMISSION',
        `${tag}: the admin account lacks a privilege (${dbCode}); it needs CREATE USER on *.* and SELECT on mysql.global_priv (MariaDB) or mysql.user (MySQL); see docs/databases/mysql-mariadb.md`,
        dbCode,
      );
    }
    if (errno === 1290)
      return new DbError(
        'DB_PERMISSION',
        `${tag}: a server option prevents the statement (${dbCode}); a read_only server needs READ_ONLY ADMIN (MariaDB) / a writable primary`,
        dbCode,
      );
    if (VALUE_REJECTED.has(errno))
      return new DbError(
        'DB_VALUE_REJECTED',
        `${tag}: the server's password policy refused the new value (${dbCode}); generate another one`,
        dbCode,
      );
  }
  return new DbError(
    'DB_ERROR',
    `${tag}: the server answered with an error (${d.code ?? 'unknown'}${errno !== undefined ? ` ${errno}` : ''})`,
    dbCode,
  );
}
