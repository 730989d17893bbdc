/**
 * The state store's contract: a durable, encrypted key-value store of JSON values with atomic batches
 * and a generation counter. The rotation logic sees only this interface, so that a PostgreSQL-backed
 * store for several daemons can be added without touching it.
 */

/** A JSON value as stored. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type Op = { readonly op: 'put'; readonly key: string; readonly value: Json } | { readonly op: 'delete'; readonly key: string };

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
  /** Rewrites the snapshot and starts a new log (also done automatically as the log grows). */
  compact(): Promise<void>;
  close(): Promise<void>;
}

/** Why a store refuses to open. Each has a stable code; none is ever resolved by resetting the store. */
export type StateErrorCode =
  | 'STATE_CORRUPT' // a snapshot or a complete log record fails to decrypt or to parse
  | 'STATE_CHAIN_BROKEN' // log records are missing, reordered or from another store
  | 'STATE_ROLLBACK' // the store is older than its anchor (an older valid copy was swapped in)
  | 'STATE_FOREIGN' // the store's id is not the one the anchor names
  | 'STATE_KEY' // the identity cannot decrypt the store
  | 'STATE_IO'; // reading or writing failed

export class StateError extends Error {
  constructor(readonly code: StateErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StateError';
  }
}
