/**
 * The state store as the rest of rotor opens and uses it: the StateStore contract (types.ts) and the
 * backends that implement it. Code outside src/state imports this module or types.ts, never a backend's
 * internals (file names, formats, the file-system layer), except tests and tools of that backend.
 *
 * Backends:
 * - file (fileStoreBackend): one directory; store.ts with its formats (codec.ts) and file-system layer
 *   (fs.ts, the seam for fault injection).
 * - PostgreSQL (postgresStoreBackend): four tables in a schema, the same formats (postgres.ts, with
 *   pg-connect.ts, pg-schema.ts, pg-read.ts and pg-store.ts); the pg driver is loaded only when it opens.
 * Reading without opening (rotor state export: nothing written, no lock, no migration): readFileStore
 * (read-only.ts) and readPostgresStore (pg-read-only.ts), both to a StoreReading.
 * A new backend is a factory returning a StoreBackend. It meets the guarantees listed in
 * types.ts, using what every backend shares: prepareBatch and deepFreeze (values.ts) to check and copy
 * batches, checkAnchor (anchor.ts) to refuse a rolled-back or foreign store, StateError for its failures;
 * and it passes test/lib/store-contract.ts.
 */

export { checkAnchor } from './anchor.js';
export { parseStateUrl } from './pg-connect.js';
export { readPostgresStore } from './pg-read-only.js';
export type { PostgresStoreConfig } from './postgres.js';
export { postgresStoreBackend } from './postgres.js';
export type { StoreReading } from './read-only.js';
export { identitiesDecrypter, readFileStore } from './read-only.js';
export type { FileStoreConfig, StoreFile, StoreFs } from './store.js';
export { fileStoreBackend } from './store.js';
export type { Json, Op, StateErrorCode, StateStore, StoreAnchor, StoreBackend, StoreOpenOptions } from './types.js';
export { StateError } from './types.js';
