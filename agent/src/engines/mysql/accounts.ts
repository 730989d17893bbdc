/**
 * What the two dialects share: a user's account rows, how an account is named in a statement, and the
 * engine's operations a dialect runs its statements through.
 */
import { format } from 'mysql2/promise';
import type { Credential } from '../types.js';
import type { Flavour } from './connect.js';

/** One authentication rule of a MariaDB account (`IDENTIFIED VIA plugin USING auth`). */
export interface AuthRule {
  readonly plugin: string;
  readonly auth: string;
}

export interface AccountRow {
  readonly host: string;
  readonly locked: boolean;
  /** MariaDB only: the rules in order, from mysql.global_priv. */
  readonly rules: readonly AuthRule[];
}

/** `'user'@'host'`: account names are string literals, escaped by the driver (not identifiers). */
export const account = (user: string, host: string): string => format('?@?', [user, host]);
export const literal = (value: string): string => format('?', [value]);

/** The engine's operations, on its admin session, that a dialect's statements go through. */
export interface AccountOps {
  /** The flavour the engine was made for (in messages). */
  readonly engine: Flavour;
  /** Every `'user'@'host'` row of `username`; DB_USER_MISSING if there is none. */
  accountRows(username: string): Promise<AccountRow[]>;
  /** Runs an account statement, mapping a failure to a DbError. */
  alter(sql: string, username: string): Promise<void>;
  /** Runs `build(false)` (hashes); if MariaDB insists on validating plaintext, `build(true)`. */
  alterPreferringHashes(build: (plaintext: boolean) => string, username: string): Promise<void>;
  /** Whether `c` logs in on a fresh connection. */
  test(c: Credential): Promise<boolean>;
}
