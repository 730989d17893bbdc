/**
 * Reading the PostgreSQL store without opening it (`rotor state export`): one connection, one REPEATABLE
 * READ READ ONLY transaction (the session's default is read-only too), so the segment and its records
 * are one consistent view even while a daemon writes and compacts. Nothing is written and nothing is
 * migrated: the tables' version is read, and one this rotor does not know is refused (STATE_SCHEMA).
 * The rows are checked as the backend's own open checks them (pg-read.ts), with the same codes. SELECT
 * on the schema's four store tables (and USAGE on the schema) is all the user needs.
 */
import type { Decrypter } from 'age-encryption';
import type { Client } from 'pg';
import { parseStateUrl, passwordSource, toStateError } from './pg-connect.js';
import { readRecordPage, readSegment, readStoreId } from './pg-read.js';
import { qualified, SCHEMA_VERSION } from './pg-schema.js';
import type { PostgresStoreConfig } from './postgres.js';
import type { StoreReading } from './read-only.js';
import { StateError } from './types.js';

/** Versions of the tables whose store part (schema_version, store, segments, records) this rotor reads. */
const READABLE_VERSIONS: readonly number[] = [1, SCHEMA_VERSION];

type ReadConfig = Pick<
  PostgresStoreConfig,
  'url' | 'schema' | 'passwordFile' | 'env' | 'connectTimeoutMs' | 'statementTimeoutMs'
>;

/**
 * Reads the store in the URL's schema, or undefined when the schema holds none (no rotor tables, or
 * tables without a store yet). Refuses as the backend's open does (STATE_KEY, STATE_CORRUPT,
 * STATE_CHAIN_BROKEN, STATE_AUTH, STATE_PERMISSION, STATE_IO), and tables of an unknown version
 * (STATE_SCHEMA).
 */
export async function readPostgresStore(config: ReadConfig, dec: Decrypter): Promise<StoreReading | undefined> {
  const url = parseStateUrl(config.url, config.schema);
  const pg = (await import('pg')).default;
  const client: Client = new pg.Client({
    ...url.client,
    password: passwordSource(url.client, config.passwordFile, config.env ?? process.env),
    application_name: 'rotor-state-export',
    options: '-c default_transaction_read_only=on',
    connectionTimeoutMillis: config.connectTimeoutMs ?? 10_000,
    statement_timeout: config.statementTimeoutMs ?? 60_000,
  });
  client.on('error', () => undefined); // a dropped connection fails the query in progress
  const t = qualified(url.schema);
  try {
    await client.connect();
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const version = await tablesVersion(client, url.schema, url.place);
    if (version === undefined) return undefined;
    const storeId = await readStoreId(client, t, url.place);
    if (storeId === undefined) return undefined;
    const seg = await readSegment(client, t, dec, storeId, url.place);
    const segment = { id: seg.id, key: seg.header.key };
    const entries = seg.snapshot.entries;
    let seq = seg.base;
    let head = seg.header.chainHead;
    for (;;) {
      const page = await readRecordPage(client, t, segment, seq, head, url.place);
      if (page.length === 0) break;
      for (const rec of page) {
        for (const op of rec.ops) {
          if (op.op === 'put') entries.set(op.key, op.value);
          else entries.delete(op.key);
        }
        seq = rec.seq;
        head = rec.hash;
      }
    }
    return { place: url.place, storeId, seq, snapshotSeq: seg.base, entries };
  } catch (e) {
    throw toStateError(e, 'reading the state store', url.place, url.client.user);
  } finally {
    // Ending the session ends its read-only transaction: nothing to commit.
    await client.end().catch(() => undefined);
  }
}

/** The version of the store's tables, or undefined when the schema has none. Never changes anything. */
async function tablesVersion(client: Client, schema: string, place: string): Promise<number | undefined> {
  const { rows } = await client.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = 'schema_version'`,
    [schema],
  );
  if (rows[0]?.n === '0') return undefined;
  const v = await client.query<{ version: number }>(`SELECT version FROM ${qualified(schema).version} LIMIT 2`);
  const version = v.rows.length === 1 ? v.rows[0]!.version : undefined;
  if (typeof version === 'number' && READABLE_VERSIONS.includes(version)) return version;
  if (typeof version === 'number' && version > SCHEMA_VERSION)
    throw new StateError(
      'STATE_SCHEMA',
      `the state store tables in ${place} are version ${version}, made by a newer rotor than this one (which reads versions ${READABLE_VERSIONS.join(' and ')}): export with that rotor`,
    );
  throw new StateError(
    'STATE_SCHEMA',
    `the state store tables in ${place} have no version this rotor knows (schema_version holds ${v.rows.length === 1 ? `version ${String(version)}` : `${v.rows.length} rows`}): they were not made by rotor, or were changed by hand`,
  );
}
