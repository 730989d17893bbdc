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
 * No value ever leaves the engine in an error (./errors.ts).
 *
 * Modules: ./connect.ts (the connection seam, the target URL, the server version), ./errors.ts, ./engine.ts
 * (the session and the steps both dialects share), ./mysql-dialect.ts, ./mariadb-dialect.ts, ./accounts.ts
 * (what the dialects share).
 */
import type { Logger } from 'rotor/internal';
import type { DbEngine, EngineFactory, TargetConnection } from '../types.js';
import type { Connector, Flavour } from './connect.js';
import { connectOptions, mysql2Connector } from './connect.js';
import { MysqlFamilyEngine } from './engine.js';

export type { ConnectOptions, Connector, Flavour, Row, ServerInfo, SqlConnection } from './connect.js';
export { connectOptions, mysql2Connector, parseServerVersion } from './connect.js';
export { nativePasswordHash } from './mariadb-dialect.js';

export interface MysqlEngineOptions {
  /** Opens connections (default: mysql2, one fresh unpooled connection each time). */
  readonly connect?: Connector;
  /** Receives a warning when the server is the other flavour than expected. */
  readonly log?: Logger;
}

/** The engine with its collaborators passed in (tests pass a recording connector). */
export function createMysqlFamilyEngine(
  target: TargetConnection,
  expected: Flavour,
  options: MysqlEngineOptions = {},
): DbEngine {
  return new MysqlFamilyEngine(expected, connectOptions(target), options.connect ?? mysql2Connector, options.log);
}

export const mysqlEngine: EngineFactory = (target) => createMysqlFamilyEngine(target, 'mysql');
export const mariadbEngine: EngineFactory = (target) => createMysqlFamilyEngine(target, 'mariadb');
