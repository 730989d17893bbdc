/** The append-only, hash-chained audit log: entries, verifier, writer, fingerprints. */
export * from './entry.js';
export * from './fingerprint.js';
export * from './log.js';
export * from './verify.js';
