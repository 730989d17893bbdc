/**
 * MySQL 5.7.6+ statements (8.0.14+ for dual). Every `'user'@'host'` row of a user is changed in one
 * ALTER USER statement, which MySQL applies atomically.
 *
 *   dual set           a IDENTIFIED BY P RETAIN CURRENT PASSWORD, b ...
 *   dual retire        a DISCARD OLD PASSWORD, b ...
 *   alternate set      a IDENTIFIED BY P, b ... ACCOUNT UNLOCK
 *   alternate retire   a, b ACCOUNT LOCK (shared with MariaDB, in the engine)
 *   single set         a IDENTIFIED BY P, b ...
 */
import { format } from 'mysql2/promise';
import type { Credential, SetJob, Strategy } from '../types.js';
import { DbError } from '../types.js';
import type { AccountOps, AccountRow } from './accounts.js';
import { account, literal } from './accounts.js';
import type { Row, ServerInfo } from './connect.js';
import { atLeast } from './connect.js';

/** The account rows of a user, with whether each is locked. */
export function mysqlAccountRowsSql(username: string): string {
  const sql = 'SELECT Host AS host, account_locked AS locked FROM mysql.user WHERE User = ? ORDER BY Host';
  return format(sql, [username]);
}

export function mysqlAccountRow(r: Row): AccountRow {
  return { host: String(r.host), locked: String(r.locked) === 'Y', rules: [] };
}

/** DB_UNSUPPORTED when this server is too old for the engine, or for `strategy`. */
export function requireMysql(engine: string, server: ServerInfo, strategy: Strategy): void {
  const v = server.version.join('.');
  if (!atLeast(server.version, [5, 7, 6])) {
    throw new DbError(
      'DB_UNSUPPORTED',
      `${engine}: MySQL ${v} is too old: the engine needs 5.7.6 or later (8.0.14 for dual)`,
    );
  }
  if (strategy === 'dual' && !atLeast(server.version, [8, 0, 14])) {
    const needs = 'dual needs MySQL 8.0.14 or later (RETAIN CURRENT PASSWORD)';
    throw new DbError('DB_UNSUPPORTED', `${engine}: ${needs}; this server is ${v}: use alternate`);
  }
}

/** Set: every row in one ALTER USER (dual keeps the current value as the secondary password). */
export async function setMysql(
  ops: AccountOps,
  job: SetJob,
  current: Credential | undefined,
  rows: readonly AccountRow[],
  restoreCurrent: boolean,
): Promise<void> {
  const accounts = rows.map((r) => account(job.username, r.host));
  const identified = (value: string, suffix = ''): string =>
    accounts.map((a) => `${a} IDENTIFIED BY ${literal(value)}${suffix}`).join(', ');
  if (job.strategy === 'dual' && current) {
    if (restoreCurrent) {
      // The pending value already logs in but the current does not: RETAIN would keep the pending
      // value twice. Drop the secondary, put the current back as the primary, then retain it. A crash
      // after any of the three statements leaves a state the next set recognises and repairs: the
      // secondary is dropped first so that the pending value never survives as the secondary alone.
      await ops.alter(`ALTER USER ${accounts.map((a) => `${a} DISCARD OLD PASSWORD`).join(', ')}`, job.username);
      await ops.alter(`ALTER USER ${identified(current.password)}`, job.username);
    }
    await ops.alter(`ALTER USER ${identified(job.password, ' RETAIN CURRENT PASSWORD')}`, job.username);
    return;
  }
  await ops.alter(
    `ALTER USER ${identified(job.password)}${job.strategy === 'alternate' ? ' ACCOUNT UNLOCK' : ''}`,
    job.username,
  );
}

/** Dual retire: drops the secondary password of every row, while it is still the retired value. */
export async function retireMysqlDual(ops: AccountOps, retired: Credential): Promise<void> {
  // DISCARD drops whatever the secondary is. If the retired value no longer logs in, it is gone
  // already, and the secondary may be the current value (a later set ran RETAIN): leave it.
  if (!(await ops.test(retired))) return;
  const rows = await ops.accountRows(retired.username);
  await ops.alter(
    `ALTER USER ${rows.map((r) => `${account(retired.username, r.host)} DISCARD OLD PASSWORD`).join(', ')}`,
    retired.username,
  );
}
