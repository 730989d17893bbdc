/**
 * The state store's contract: a durable, encrypted key-value store of JSON values with atomic batches
 * and a generation counter. Rotation, serving and audit code see only this module (and index.ts, which
 * re-exports it with the backends), so that a backend can be added without touching them. The file
 * backend keeps the store in files (store.ts, codec.ts, fs.ts), the PostgreSQL backend in tables
 * (postgres.ts), with the same formats.
 *
 * What every backend guarantees (test/lib/store-contract.ts checks it against any backend):
 * - Atomic batches. write(ops) applies all of its operations, in order, or none of them; a batch that
 *   is refused or fails leaves the store as it was and takes no generation.
 * - Durability before resolve. write() resolves only once the batch is durable (a crash or power loss
 *   after that cannot lose it); only then do get, entries and seq show it. A rejected write's outcome is
 *   "not applied now": it is not visible, but a crash before the backend has cleaned up may still bring
 *   it back as if it had succeeded, so a caller that retries must expect either.
 * - Group commit order. Batches written while another is in flight may be committed together, but each
 *   is its own generation, in submission order: concurrent writes resolve with consecutive seqs.
 * - seq is monotonic: 0 for a new store, +1 per acknowledged batch, never lower after a reopen.
 * - storeId is stable: made once when the store is created (a random UUID), the same at every open,
 *   different for every store. The audit log records it with seq; they are the store's anchor.
 * - Frozen values. write() takes its own copy of the operations (the caller may change its objects
 *   afterwards); get and entries return deeply frozen values. entries() is in key order (UTF-16 code
 *   unit order, as Array.prototype.sort), optionally limited to a key prefix.
 * - Checked input. Keys and values are checked as values.ts does (prepareBatch): plain JSON, keys of at
 *   most 1,024 bytes. A refused batch rejects with a plain Error whose message names a key at most,
 *   never a value; so does every error and warning of the store.
 * - Errors as StateError codes. Apart from invalid options, refused input and use after close (plain
 *   Errors), opening, writing and compacting fail with a StateError: STATE_IO when the medium fails (a
 *   write may then be retried), the other codes when the store cannot be trusted, cannot be reached as
 *   configured (a database backend's URL, password or grants), or may no longer be written by this
 *   process (STATE_FENCED). close() waits for the writes submitted before it; write and compact reject
 *   afterwards.
 * - Refusing, never resetting. A store older than its anchor (STATE_ROLLBACK, also when the store is
 *   missing entirely), another store than the anchor names (STATE_FOREIGN), records missing, reordered
 *   or from another store (STATE_CHAIN_BROKEN), damaged data (STATE_CORRUPT) or data the identity
 *   cannot decrypt (STATE_KEY) are refused, and the stored state is left exactly as it was: a new store
 *   is created only where nothing is stored and the anchor (if any) names no store (anchor.ts).
 * - Encrypted at rest, to every recipient (the identity's own is one of them, so the identity opens it).
 */

import { BACKOFF, NEVER, RotorError } from '../errors.js';

/** A JSON value as stored. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type Op =
  | { readonly op: 'put'; readonly key: string; readonly value: Json }
  | { readonly op: 'delete'; readonly key: string };

export interface StateStore {
  /** A random id made when the store was created; the audit log records it. */
  readonly storeId: string;
  /** The generation: the number of the last batch written (0 for a new store). */
  readonly seq: number;
  /** The value of a key, or undefined. Values are frozen: copy before changing. */
  get(key: string): Json | undefined;
  /** Every key with its value, in key order. */
  entries(prefix?: string): IterableIterator<[string, Json]>;
  /**
   * Applies the operations as one atomic batch and returns once it is durable (written and fsynced).
   * Batches submitted while another is being written are committed together (group commit), in
   * submission order. Returns the batch's generation.
   */
  write(ops: readonly Op[]): Promise<number>;
  /**
   * Rewrites the stored form without changing the content (the file backend rewrites the snapshot and
   * starts a new log; it also does so automatically as the log grows). A backend without such a step
   * resolves at once.
   */
  compact(): Promise<void>;
  close(): Promise<void>;
}

/** The generation and store id recorded elsewhere (the audit chain), which the store must not be behind. */
export interface StoreAnchor {
  readonly seq: number;
  readonly storeId?: string;
}

/** What opening a store takes, whatever the backend. */
export interface StoreOpenOptions {
  /** The daemon's age X25519 identity (AGE-SECRET-KEY-1...). */
  identity: string;
  /** age1... recipients: the identity's own recipient (required) and any break-glass recipients. */
  recipients: string[];
  /** The generation recorded elsewhere (the audit chain): a store older than it, or another store, is refused. */
  anchor?: StoreAnchor;
  /** Things repaired on the way (a torn final record, an interrupted creation, a failed compaction). Never a value. */
  onWarning?: (message: string) => void;
}

/**
 * Where a store lives: opens the one store kept there (creating it if nothing is stored there yet).
 * Made by a backend's factory from its own configuration (fileStoreBackend, for a directory).
 */
export interface StoreBackend {
  open(options: StoreOpenOptions): Promise<StateStore>;
  /**
   * Several daemons may share the store (PostgreSQL): the audit chain is kept beside it, and a
   * daemon's clone only mirrors it.
   */
  readonly shared?: boolean;
}

/** Why a store refuses to open. Each has a stable code; none is ever resolved by resetting the store. */
export type StateErrorCode =
  | 'STATE_CORRUPT' // a snapshot or a complete log record fails to decrypt or to parse
  | 'STATE_CHAIN_BROKEN' // log records are missing, reordered or from another store
  | 'STATE_ROLLBACK' // the store is older than its anchor (an older valid copy was swapped in)
  | 'STATE_FOREIGN' // the store's id is not the one the anchor names
  | 'STATE_KEY' // the identity cannot decrypt the store
  | 'STATE_IO' // reading or writing failed
  // A write refused because this process may no longer write the store: the fence of a write transaction
  // threw (a deposed leader's late write), or another writer wrote or compacted the store meanwhile (its
  // seq or segment is taken). Never retried as is; the store object writes nothing more.
  | 'STATE_FENCED'
  // Configuring and reaching a database backend (PostgreSQL):
  | 'STATE_URL_PASSWORD' // the store's URL holds a password (give it through PGPASSWORD, PGPASSFILE or a file)
  | 'STATE_URL_INVALID' // the store's URL cannot be used (scheme, user, database, parameters, schema name)
  | 'STATE_PASSWORD_FILE' // a password file cannot be used (missing, unreadable, readable by others, empty)
  | 'STATE_AUTH' // the server refused the login (password, role, pg_hba.conf) or the database does not exist
  | 'STATE_PERMISSION' // the database user lacks a privilege the store needs
  | 'STATE_SCHEMA'; // the store's tables are from a newer rotor, or not as rotor made them

/**
 * STATE_IO means the store cannot be read or written now (a full or read-only disk, an I/O error, a
 * database server that cannot be reached): retried with backoff, and reported as rotor's own storage
 * failing. Every other code needs a person (STATE_FENCED: another daemon writes the store).
 */
export class StateError extends RotorError {
  declare readonly code: StateErrorCode;
  constructor(code: StateErrorCode, message: string, options?: { cause?: unknown }) {
    const io = code === 'STATE_IO';
    const retry = io ? BACKOFF : NEVER;
    super(code, message, { cause: options?.cause, retry, ...(io ? { storage: 'state store' } : {}) });
  }
}
