/**
 * What a PostgreSQL driver error means, for the state store (state/pg-connect.ts) and the audit log in
 * the same database (audit/pg-log.ts): the server's SQLSTATE, and whether the connection or the server
 * failed rather than the statement (a COMMIT in flight then has an unknown outcome).
 */
import type { DatabaseError } from 'pg';

/** The SQLSTATE of a server error, if `e` is one. */
export function sqlstate(e: unknown): string | undefined {
  const code = (e as Partial<DatabaseError> | undefined)?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && 'severity' in (e as object) ? code : undefined;
}

/** Server states that pass (a restart, a failover, a full disk, too many connections, a timeout). */
export function transient(code: string): boolean {
  return /^(08|53|57P|58)/.test(code) || ['40001', '40P01', '25006', '57014', '55P03'].includes(code);
}

const NETWORK = /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EPIPE|ECONNABORTED)$/;

/**
 * Whether `e` says the connection or the server failed, not the statement: a write may then be retried
 * (STATE_IO), and the outcome of a COMMIT in flight is unknown.
 */
export function connectionFailed(e: unknown): boolean {
  const code = sqlstate(e);
  if (code) return transient(code);
  const err = e as { code?: unknown; message?: unknown };
  const message = typeof err?.message === 'string' ? err.message : '';
  return (
    (typeof err?.code === 'string' && NETWORK.test(err.code)) ||
    /Connection terminated|timeout|connection (is )?closed|Client was closed|not queryable/i.test(message)
  );
}
