/**
 * The tables of the PostgreSQL state store (postgres.ts) and their migration. The backend makes and
 * migrates its own tables, in one transaction under a transaction-level advisory lock (two daemons
 * starting at once on an empty database: one makes the tables, the other waits and then sees them).
 *
 * Version 1, in the store's schema (default rotor):
 *   schema_version  one row: the version of these tables (a newer one is refused: STATE_SCHEMA)
 *   store           one row: the store's id (as the audit log records it; checked against the
 *                   encrypted header and snapshot, which carry it too)
 *   segments        one row in normal operation: id (random), base_seq, header (an age file to every
 *                   recipient: rotor-log/1 with the segment's random record key and chain head at
 *                   base_seq), snapshot (an age file: rotor-state/1, every entry at base_seq)
 *   records         one row per batch after base_seq: seq (primary key), segment, frame (nonce |
 *                   ChaCha20-Poly1305(segment key, {seq, prev, ops}) | tag)
 * Only the store id, the seqs, the segment ids and ciphertext are in clear: no value and no key name.
 * The ciphertext columns are STORAGE EXTERNAL: random bytes do not compress, so PostgreSQL need not try.
 */
import type { PoolClient } from 'pg';
import { StateError } from './types.js';

export const SCHEMA_VERSION = 1;
/** The first key of the migration's advisory lock: "roto". The second is hashtext(schema). */
const LOCK_CLASS = 0x726f746f;

/** A schema name is a checked lower-case identifier (pg-connect.ts); quoted all the same. */
export function qualified(schema: string): {
  schema: string;
  version: string;
  store: string;
  segments: string;
  records: string;
} {
  const s = `"${schema.replace(/"/g, '""')}"`;
  return {
    schema: s,
    version: `${s}.schema_version`,
    store: `${s}.store`,
    segments: `${s}.segments`,
    records: `${s}.records`,
  };
}

function ddl(schema: string): string[] {
  const t = qualified(schema);
  return [
    `CREATE SCHEMA IF NOT EXISTS ${t.schema}`,
    `CREATE TABLE ${t.version} (
       one boolean PRIMARY KEY DEFAULT true CHECK (one),
       version integer NOT NULL)`,
    `CREATE TABLE ${t.store} (
       one boolean PRIMARY KEY DEFAULT true CHECK (one),
       store_id uuid NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now())`,
    `CREATE TABLE ${t.segments} (
       id uuid PRIMARY KEY,
       base_seq bigint NOT NULL CHECK (base_seq >= 0),
       header bytea NOT NULL,
       snapshot bytea NOT NULL,
       created_at timestamptz NOT NULL DEFAULT now())`,
    `CREATE TABLE ${t.records} (
       seq bigint PRIMARY KEY CHECK (seq > 0),
       segment uuid NOT NULL REFERENCES ${t.segments} (id),
       frame bytea NOT NULL)`,
    `ALTER TABLE ${t.segments} ALTER COLUMN header SET STORAGE EXTERNAL, ALTER COLUMN snapshot SET STORAGE EXTERNAL`,
    `ALTER TABLE ${t.records} ALTER COLUMN frame SET STORAGE EXTERNAL`,
    `INSERT INTO ${t.version} (version) VALUES (${SCHEMA_VERSION})`,
  ];
}

/**
 * Inside the caller's transaction (READ COMMITTED): takes the advisory lock, then makes the tables when
 * there are none, or checks their version. Reads the catalog rather than trying CREATE SCHEMA IF NOT
 * EXISTS, so that after the first start the user needs no CREATE privilege.
 */
export async function migrate(client: PoolClient, schema: string, place: string): Promise<void> {
  await client.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCK_CLASS, schema]);
  const t = qualified(schema);
  const { rows } = await client.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'schema_version'`,
    [schema],
  );
  if (rows[0]?.n === '0') {
    // CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema exists: a schema
    // made beforehand (CREATE SCHEMA rotor AUTHORIZATION the_user) needs only its own CREATE.
    const ns = await client.query('SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1', [schema]);
    for (const statement of ddl(schema).slice(ns.rows.length > 0 ? 1 : 0)) await client.query(statement);
    return;
  }
  const v = await client.query<{ version: number }>(`SELECT version FROM ${t.version} LIMIT 2`);
  const version = v.rows.length === 1 ? v.rows[0]!.version : undefined;
  if (version === SCHEMA_VERSION) return;
  if (typeof version === 'number' && version > SCHEMA_VERSION)
    throw new StateError(
      'STATE_SCHEMA',
      `the state store tables in ${place} are version ${version}, made by a newer rotor than this one (which knows version ${SCHEMA_VERSION}): run the newer rotor`,
    );
  throw new StateError(
    'STATE_SCHEMA',
    `the state store tables in ${place} have no valid version row (schema_version): they were not made by rotor, or were changed by hand`,
  );
}
