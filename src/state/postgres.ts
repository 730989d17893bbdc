/**
 * The PostgreSQL backend of the state store (the contract it meets is in types.ts): the same formats
 * and encryption as the file backend (codec.ts), kept in four tables (pg-schema.ts) instead of two
 * files, so that the database holds ciphertext only: a dump shows the store id, the generations and
 * random bytes, never a value or a key name (key names live inside the encrypted records and snapshot).
 *
 * Layout. A segment is what the file backend keeps as snapshot.age plus the header of log.bin: an age
 * file of every entry at the segment's base seq, and an age file holding the segment's random 256-bit
 * record key and chain head; records are its log, one row per batch, sealed with ChaCha20-Poly1305
 * under that key (why not age per record: codec.ts). Compaction writes a new segment at the current
 * seq with a fresh key and deletes the old segment and its records, in one transaction: one segment is
 * kept, and PostgreSQL's own backups (pg_dump, base backups) are the copies to go back to.
 *
 * Durability. A write resolves after its COMMIT returned (the session sets synchronous_commit=on,
 * whatever the server's default). Batches submitted while a transaction is in flight wait and then go
 * in one INSERT, each its own row and seq, in order (group commit). Without a fence, a write is one
 * INSERT in autocommit (one round trip). A crash mid-transaction leaves the store as it was.
 *
 * Unknown outcomes. When a COMMIT (or an autocommit INSERT) fails on the connection, the server may have
 * committed it. The write is rejected (STATE_IO, "not applied now", as the contract allows) and its
 * frames are remembered; the next write transaction first looks: rows after the acknowledged seq that
 * are exactly those frames are deleted (the file backend truncates a failed append likewise), and a
 * segment that is the interrupted compaction's is adopted. Anything else there was written by another
 * writer: STATE_FENCED.
 *
 * Fencing. An optional fence(client) runs first in every write transaction (writes, compactions); if it
 * throws, the transaction rolls back and the write rejects with STATE_FENCED. A seq or segment taken by
 * another writer (a second daemon on the same store) fails the INSERT on the primary or foreign key and
 * is STATE_FENCED too. After STATE_FENCED the store object writes nothing more (reads still answer from
 * memory): a deposed writer must open the store again. Several daemons on one store need leader election
 * on top of this; this backend alone keeps them from overwriting each other, no more.
 *
 * Not guarded, as with the file backend: age needs only the recipients (public keys) to encrypt, so
 * whoever may write these tables and knows a recipient could write a whole new store; the anchor (the
 * store id and generation the audit log records) refuses an older or another store, not that.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { PoolClient } from 'pg';
import { checkAnchor, checkAnchorOption } from './anchor.js';
import type { SnapshotHead } from './codec.js';
import { encodeLogHeader, encodeSnapshot, genesisHead, MAX_SNAPSHOT, storeCrypto } from './codec.js';
import { parseStateUrl, passwordSource, toStateError } from './pg-connect.js';
import { chainBroken, readRecordPage, readSegment, readStoreId } from './pg-read.js';
import { migrate, qualified } from './pg-schema.js';
import type { PgContext, PgInitial } from './pg-store.js';
import { insertSegment, PgStore } from './pg-store.js';
import type { StoreBackend, StoreOpenOptions } from './types.js';
import { StateError } from './types.js';

export type { PgStore, ReadAfter } from './pg-store.js';

/** Where and how the PostgreSQL backend keeps a store: what it takes besides the StoreOpenOptions. */
export interface PostgresStoreConfig {
  /** postgres://USER@HOST:PORT/DATABASE[?sslmode=...&host=SOCKETDIR&schema=NAME], without a password. */
  url: string;
  /** The schema of the tables (default: the URL's schema parameter, else rotor). */
  schema?: string;
  /** A file whose first line is the password (--state-password-file); refused if others can read it. */
  passwordFile?: string;
  /** Where PGPASSWORD, PGPASSFILE and HOME are read (default process.env). */
  env?: NodeJS.ProcessEnv;
  /**
   * Runs first in every write transaction, on its connection. Throwing refuses the write: it rolls back
   * and rejects with STATE_FENCED (a StateError it throws is passed on as it is; a lost connection is
   * STATE_IO). For the leader election to come: the lease is checked in the same transaction.
   */
  fence?: (client: PoolClient) => Promise<void>;
  /** Announce every write on the store's channel (several daemons on one store: followers LISTEN). */
  notify?: boolean;
  /** Compact once the segment holds this many records or bytes (defaults: 10,000 records, 64 MiB). */
  compactAfter?: { records?: number; bytes?: number };
  /** Connecting gives up after this long (default 10 s); a statement after statementTimeoutMs (60 s). */
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
  /**
   * The server ends a session that sits idle inside a transaction this long (default 10 s), freeing its
   * locks. A leader cut off from the database in the middle of a write holds the lease row FOR SHARE
   * (the fence) until then, and no other daemon can take the lease before: it must end well within
   * the lease (15 s).
   */
  idleInTransactionTimeoutMs?: number;
}

const DEFAULT_COMPACT_RECORDS = 10_000;
const DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024;
const noop = (): void => undefined;

/** The PostgreSQL backend: the store in `config.url`'s schema, opened (or created) by openPostgresStore. */
export function postgresStoreBackend(config: PostgresStoreConfig): StoreBackend & { readonly place: string } {
  const { place } = parseStateUrl(config.url, config.schema); // a bad URL is refused at once
  return { place, shared: true, open: (options) => openPostgresStore(config, options) };
}

/** Opens the store, or creates one where the schema holds none (and the anchor names none). */
export async function openPostgresStore(config: PostgresStoreConfig, options: StoreOpenOptions): Promise<PgStore> {
  const url = parseStateUrl(config.url, config.schema);
  checkAnchorOption(options.anchor);
  const { enc, dec } = await storeCrypto(options.identity, options.recipients);
  const limit = (v: number | undefined, d: number, what: string): number => {
    if (v === undefined) return d;
    if (!Number.isSafeInteger(v) || v < 1) throw new Error(`${what} is a positive integer`);
    return v;
  };
  const compactRecords = limit(config.compactAfter?.records, DEFAULT_COMPACT_RECORDS, 'compactAfter.records');
  const compactBytes = limit(config.compactAfter?.bytes, DEFAULT_COMPACT_BYTES, 'compactAfter.bytes');
  const statementTimeout = limit(config.statementTimeoutMs, 60_000, 'statementTimeoutMs');
  const pg = (await import('pg')).default; // loaded only by a daemon that uses this backend
  const pool = new pg.Pool({
    ...url.client,
    password: passwordSource(url.client, config.passwordFile, config.env ?? process.env),
    application_name: 'rotor',
    options: '-c synchronous_commit=on',
    connectionTimeoutMillis: limit(config.connectTimeoutMs, 10_000, 'connectTimeoutMs'),
    statement_timeout: statementTimeout,
    idle_in_transaction_session_timeout: limit(config.idleInTransactionTimeoutMs, 10_000, 'idleInTransactionTimeoutMs'),
    keepAlive: true,
    // Writes, the audit chain and reads take turns on a few; several daemons hold two more each, for
    // the lease (its session holds the hint lock) and for LISTEN.
    max: 8,
  });
  // A connection that dies is dropped by the pool (idle) or fails its query (in use); either way the
  // client also emits 'error', which must not become an uncaught exception.
  pool.on('error', noop);
  pool.on('connect', (client) => client.on('error', noop));
  const onWarning = options.onWarning ?? ((m: string) => process.emitWarning(m, 'RotorStateWarning'));
  const ctx: PgContext = {
    place: url.place,
    user: url.client.user,
    t: qualified(url.schema),
    pool,
    fence: config.fence,
    notify: config.notify === true,
    reload: () => readWhole(ctx, dec),
    compactRecords,
    compactBytes,
    warn: (m) => {
      try {
        onWarning(m);
      } catch {
        // a throwing warning handler must not break the store
      }
    },
    async seal(head, keys, get) {
      const key = randomBytes(32);
      const header = Buffer.from(await enc.encrypt(encodeLogHeader({ ...head, key })));
      const snapshot = Buffer.from(await enc.encrypt(encodeSnapshot(head, keys, get)));
      if (snapshot.length > MAX_SNAPSHOT)
        throw new StateError('STATE_IO', `the state has outgrown the ${MAX_SNAPSHOT}-byte snapshot limit`);
      return { id: randomUUID(), base: head.seq, key, header, snapshot };
    },
    error: (e, what) => toStateError(e, what, url.place, url.client.user),
  };
  try {
    const created = await setup(ctx, options.anchor);
    return created ?? (await load(ctx, dec, options.anchor));
  } catch (e) {
    await pool.end().catch(noop);
    throw ctx.error(e, 'opening the state store');
  }
}

async function connect(ctx: PgContext, what: string): Promise<PoolClient> {
  try {
    return await ctx.pool.connect();
  } catch (e) {
    throw ctx.error(e, what);
  }
}

/**
 * The first transaction of an open: makes or checks the tables (under the migration lock), and creates
 * the store when there is none and the anchor names none. Returns the new store, or undefined when one
 * exists. A refusal rolls everything back: nothing is made.
 */
async function setup(ctx: PgContext, anchor: StoreOpenOptions['anchor']): Promise<PgStore | undefined> {
  const client = await connect(ctx, 'opening the state store');
  try {
    await client.query('BEGIN');
    await migrate(client, ctx.t.schema.slice(1, -1), ctx.place);
    if ((await readStoreId(client, ctx.t, ctx.place)) !== undefined) {
      await client.query('COMMIT');
      client.release();
      return undefined;
    }
    const { rows } = await client.query<{ n: number }>(
      `SELECT (SELECT count(*) FROM (SELECT 1 FROM ${ctx.t.segments} LIMIT 1) s)::int +
              (SELECT count(*) FROM (SELECT 1 FROM ${ctx.t.records} LIMIT 1) r)::int AS n`,
    );
    if (rows[0]?.n !== 0)
      throw new StateError(
        'STATE_CORRUPT',
        `${ctx.place} holds segments or records but no store row: the store is incomplete and is not opened (restore it from a backup)`,
      );
    checkAnchor(ctx.place, anchor, undefined, 0);
    const storeId = randomUUID();
    const head: SnapshotHead = { storeId, seq: 0, chainHead: genesisHead(storeId) };
    const seg = await ctx.seal(head, [], () => undefined);
    await client.query(`INSERT INTO ${ctx.t.store} (store_id) VALUES ($1)`, [storeId]);
    await insertSegment(client, ctx, seg);
    await client.query('COMMIT');
    client.release();
    return new PgStore(ctx, {
      storeId,
      seq: 0,
      head: head.chainHead,
      data: new Map(),
      segment: seg,
      records: 0,
      bytes: 0,
    });
  } catch (e) {
    client.release(true); // the connection is closed: the server rolls the transaction back
    throw e;
  }
}

/** Reads and verifies the whole store in one snapshot of the database, then checks the anchor. */
async function load(
  ctx: PgContext,
  dec: Parameters<typeof readSegment>[2],
  anchor: StoreOpenOptions['anchor'],
): Promise<PgStore> {
  const loaded = await readWhole(ctx, dec);
  checkAnchor(ctx.place, anchor, loaded.storeId, loaded.seq);
  return new PgStore(ctx, loaded);
}

/** The whole store, read and verified in one snapshot of the database. */
async function readWhole(ctx: PgContext, dec: Parameters<typeof readSegment>[2]): Promise<PgInitial> {
  const client = await connect(ctx, 'opening the state store');
  let loaded: PgInitial;
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const storeId = await readStoreId(client, ctx.t, ctx.place);
    if (storeId === undefined) throw chainBroken(`${ctx.place}: the store row vanished while the store was opened`);
    const seg = await readSegment(client, ctx.t, dec, storeId, ctx.place);
    const segment = { id: seg.id, base: seg.base, key: seg.header.key };
    const data = seg.snapshot.entries;
    let seq = seg.base;
    let head = seg.header.chainHead;
    let records = 0;
    let bytes = 0;
    for (;;) {
      const page = await readRecordPage(client, ctx.t, segment, seq, head, ctx.place);
      if (page.length === 0) break;
      for (const rec of page) {
        for (const op of rec.ops) {
          if (op.op === 'put') data.set(op.key, op.value);
          else data.delete(op.key);
        }
        seq = rec.seq;
        head = rec.hash;
        records += 1;
        bytes += rec.bytes;
      }
    }
    await client.query('COMMIT');
    loaded = { storeId, seq, head, data, segment, records, bytes };
  } catch (e) {
    client.release(true);
    throw ctx.error(e, 'reading the state store');
  }
  client.release();
  return loaded;
}
