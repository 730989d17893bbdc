/**
 * One interface for every database engine the agent drives. The agent runs the database steps of a
 * rotation (set, test, retire; see docs/databases/README.md) through it; the engine owns the exact statements.
 *
 * Rules every engine keeps:
 * - `set` never changes the credential being served as current; on any failure the current value still
 *   logs in. It is idempotent: it first tries a login with the pending value and does nothing when that
 *   works (the crash-recovery rule), except what is needed to make that login lasting (un-expiring).
 * - `test` opens a fresh connection (never a pooled one) and runs a trivial query.
 * - Identifiers and literals are quoted with the driver's own escaping, or bound on the server.
 * - No value (pending, current, admin) ever appears in an error message, a log line or a thrown error's
 *   properties: errors carry a stable code and the database's error code only.
 */

import type { EngineName } from 'rotor/internal';
import { BACKOFF, NEVER, RotorError } from 'rotor/internal';

/** The schema's engine names (src/model/engines.ts), as the daemon sends them in a job. */
export type { EngineName };
export type Strategy = 'dual' | 'alternate' | 'single';

/** How the agent reaches one Target as its admin account (from the agent's own config, never the repo). */
export interface TargetConnection {
  /** e.g. postgres://rotor_admin@127.0.0.1:5432/postgres, mysql://..., redis://..., mongodb://..., mssql://... */
  readonly url: string;
  /** The admin password (resolved from the agent config, env or a SOPS file); not in the URL. */
  readonly password?: string;
  /** Milliseconds for connecting and for each statement (default 10,000). */
  readonly timeoutMs?: number;
}

export interface Credential {
  readonly username: string;
  readonly password: string;
}

export interface SetJob {
  readonly strategy: Strategy;
  /** The user whose password changes: for `alternate` the inactive one of the two; otherwise the one user. */
  readonly username: string;
  /** The pending value. */
  readonly password: string;
  /** The credential served as current now (absent for a secret's first version). `dual` keeps it valid as the second password. */
  readonly current?: Credential;
}

export interface RetireJob {
  readonly strategy: Strategy;
  /** The credential that stops working: the previous one. For `alternate` its user is expired/locked; for `dual` its password is dropped from the user. */
  readonly retired: Credential;
  /** The credential that stays current (must keep working). */
  readonly current: Credential;
}

export type SetOutcome = 'applied' | 'already-applied';

export interface DbEngine {
  readonly engine: EngineName;
  /** Step 2, set: makes the pending value log in, per the strategy. */
  set(job: SetJob): Promise<SetOutcome>;
  /** Step 3, test: a fresh connection logs in with `c`. True if it logs in, false if the server refuses the credential; throws DbError on anything else. */
  test(c: Credential): Promise<boolean>;
  /** Step 5, retire: revokes the previous credential where the strategy needs it (single: nothing). Idempotent. */
  retire(job: RetireJob): Promise<void>;
  /** Closes the admin connection(s). */
  close(): Promise<void>;
}

export type DbErrorCode =
  /** The database could not be reached (connection refused, timeout, DNS). Retry with backoff. */
  | 'DB_UNREACHABLE'
  /** The admin credential was refused. */
  | 'DB_ADMIN_AUTH'
  /** The admin account lacks a privilege the statement needs. */
  | 'DB_PERMISSION'
  /** The user to rotate does not exist. */
  | 'DB_USER_MISSING'
  /** The server refused the new value itself (a password policy): generate another one. */
  | 'DB_VALUE_REJECTED'
  /** The strategy cannot run on this server (e.g. dual on MySQL < 8.0.14). */
  | 'DB_UNSUPPORTED'
  /** Anything else the server said. */
  | 'DB_ERROR';

/** DB_UNREACHABLE is retried with backoff; every other code needs a person or a new value. */
export class DbError extends RotorError {
  declare readonly code: DbErrorCode;
  constructor(
    code: DbErrorCode,
    message: string,
    readonly dbCode?: string,
  ) {
    super(code, message, { retry: code === 'DB_UNREACHABLE' ? BACKOFF : NEVER });
  }
}

export type EngineFactory = (target: TargetConnection) => DbEngine;
