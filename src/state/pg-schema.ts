/**
 * The tables of the PostgreSQL state store (postgres.ts) and their migration. The backend makes and
 * migrates its own tables, in one transaction under a transaction-level advisory lock (two daemons
 * starting at once on an empty database: one makes the tables, the other waits and then sees them).
 *
 * Version 2, in the store's schema (default rotor):
 *   schema_version  one row: the version of these tables (a newer one is refused: STATE_SCHEMA)
 *   store           one row: the store's id (as the audit log records it; checked against the
 *                   encrypted header and snapshot, which carry it too)
 *   segments        one row in normal operation: id (random), base_seq, header (an age file to every
 *                   recipient: rotor-log/1 with the segment's random record key and chain head at
 *                   base_seq), snapshot (an age file: rotor-state/1, every entry at base_seq)
 *   records         one row per batch after base_seq: seq (primary key), segment, frame (nonce |
 *                   ChaCha20-Poly1305(segment key, {seq, prev, ops}) | tag)
 *   lease           one row: the leadership of several daemons on this store (daemon/leadership.ts):
 *                   term (only grows), holder (a daemon's random id, null when nobody leads), its
 *                   name, the server process of its lease connection (pid and start: a hint that it
 *                   is gone), acquired, renewed and expires, all on the database clock
 *   terms           one row per term ever granted: who held it, when and why (never two holders of a
 *                   term: the primary key; the proof harness checks it)
 *   daemons         one row per daemon process seen: its id, name, agent URL, role and last sighting
 *   audit           the audit log's hash chain (seq, hash, the entry's JSON line): the leader appends
 *                   here, fenced by its term, and commits the lines to Git (audit/pg-log.ts)
 *   receipts        read receipts taken by followers (consumer, secret, version, at), which the
 *                   leader folds into the store
 * Version 1 had the first four; opening it migrates it to 2 (adds the other five tables).
 * Only the store id, the seqs, the segment ids and ciphertext are in clear: no value and no key name.
 * The audit lines, the receipts and the daemons' names are in clear: they hold names, versions and
 * times, as the audit log in Git does, never a value.
 * The ciphertext columns are STORAGE EXTERNAL: random bytes do not compress, so PostgreSQL need not try.
 */
import type { PoolClient } from 'pg';
import { StateError } from './types.js';

export const SCHEMA_VERSION = 2;
/** The first key of the migration's advisory lock: "roto". The second is hashtext(schema). */
const LOCK_CLASS = 0x726f746f;

/** A schema name is a checked lower-case identifier (pg-connect.ts); quoted all the same. */
export function qualified(schema: string): {
  schema: string;
  version: string;
  store: string;
  segments: string;
  records: string;
  lease: string;
  terms: string;
  daemons: string;
  audit: string;
  receipts: string;
} {
  const s = `"${schema.replace(/"/g, '""')}"`;
  return {
    schema: s,
    version: `${s}.schema_version`,
    store: `${s}.store`,
    segments: `${s}.segments`,
    records: `${s}.records`,
    lease: `${s}.lease`,
    terms: `${s}.terms`,
    daemons: `${s}.daemons`,
    audit: `${s}.audit`,
    receipts: `${s}.receipts`,
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
    ...ddl2(schema),
    `INSERT INTO ${t.version} (version) VALUES (${SCHEMA_VERSION})`,
  ];
}

/** The tables version 2 added (run on a new schema, or on one of version 1 to migrate it). */
function ddl2(schema: string): string[] {
  const t = qualified(schema);
  return [
    `CREATE TABLE ${t.lease} (
       one boolean PRIMARY KEY DEFAULT true CHECK (one),
       term bigint NOT NULL CHECK (term >= 0),
       holder text,
       holder_name text,
       holder_pid integer,
       holder_backend_start timestamptz,
       acquired_at timestamptz,
       renewed_at timestamptz,
       expires_at timestamptz)`,
    `INSERT INTO ${t.lease} (term) VALUES (0)`,
    `CREATE TABLE ${t.terms} (
       term bigint PRIMARY KEY CHECK (term > 0),
       holder text NOT NULL,
       holder_name text NOT NULL,
       how text NOT NULL,
       acquired_at timestamptz NOT NULL DEFAULT now())`,
    `CREATE TABLE ${t.daemons} (
       id text PRIMARY KEY,
       name text NOT NULL,
       agent_url text,
       role text NOT NULL,
       term bigint,
       started_at timestamptz NOT NULL DEFAULT now(),
       seen_at timestamptz NOT NULL DEFAULT now())`,
    `CREATE TABLE ${t.audit} (
       seq bigint PRIMARY KEY CHECK (seq > 0),
       hash text NOT NULL CHECK (hash ~ '^[0-9a-f]{64}$'),
       line text NOT NULL,
       term bigint NOT NULL)`,
    `CREATE TABLE ${t.receipts} (
       consumer text NOT NULL,
       secret text NOT NULL,
       version integer NOT NULL CHECK (version > 0),
       at timestamptz NOT NULL,
       PRIMARY KEY (consumer, secret))`,
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
  if (version === 1) {
    for (const statement of ddl2(schema)) await client.query(statement);
    await client.query(`UPDATE ${t.version} SET version = ${SCHEMA_VERSION}`);
    return;
  }
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
