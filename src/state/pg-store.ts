/**
 * The store object of the PostgreSQL backend (postgres.ts opens it; the design is described there):
 * the whole state in memory, writes in group-committed transactions, compaction, the fence, and the
 * bookkeeping of writes whose COMMIT outcome is unknown.
 */
import type { Pool, PoolClient } from 'pg';
import type { LogRecord, SnapshotHead } from './codec.js';
import { FRAME_HEADER, MAX_FRAME, recordPlaintext, sealRecord, sha256hex } from './codec.js';
import { connectionFailed, sqlstate } from './pg-connect.js';
import { readRecordPage, readSegmentId } from './pg-read.js';
import type { qualified } from './pg-schema.js';
import type { Json, Op, StateStore } from './types.js';
import { StateError } from './types.js';
import type { Batch } from './values.js';
import { prepareBatch } from './values.js';

/** One INSERT carries at most this much (but always at least one batch). */
const MAX_GROUP_BYTES = 8 * 1024 * 1024;
/** Room in a frame for the record's envelope around the ops JSON. */
const RECORD_OVERHEAD = 256;
const noop = (): void => undefined;

export interface Segment {
  readonly id: string;
  readonly base: number;
  readonly key: Buffer;
}

export interface SealedSegment extends Segment {
  readonly header: Buffer;
  readonly snapshot: Buffer;
}

/** What the store object needs of its surroundings. */
export interface PgContext {
  readonly place: string;
  readonly user: string;
  readonly t: ReturnType<typeof qualified>;
  readonly pool: Pool;
  fence: ((client: PoolClient) => Promise<void>) | undefined;
  readonly compactRecords: number;
  readonly compactBytes: number;
  warn(message: string): void;
  /** Announce each write transaction on the store's channel (several daemons: the followers listen). */
  notify: boolean;
  /** Reads and verifies the whole store again (a follower whose segment was compacted away). */
  reload(): Promise<PgInitial>;
  /** A new segment at `head`, sealed to every recipient (outside any transaction: it is CPU work). */
  seal(head: SnapshotHead, keys: readonly string[], get: (key: string) => Json | undefined): Promise<SealedSegment>;
  error(e: unknown, what: string): StateError;
}

export async function insertSegment(client: PoolClient, ctx: PgContext, seg: SealedSegment): Promise<void> {
  await client.query(`INSERT INTO ${ctx.t.segments} (id, base_seq, header, snapshot) VALUES ($1, $2, $3, $4)`, [
    seg.id,
    seg.base,
    seg.header,
    seg.snapshot,
  ]);
}

/**
 * The records after `after` as the database holds them now, verified against the segment `segment`
 * and the chain from `head` (the chain head at `after`); 'compacted' when the store has another
 * segment, or `after` is before the segment's base (the caller opens the store again). For followers.
 */
export async function readAfter(
  ctx: PgContext,
  segment: Segment,
  after: number,
  head: string,
  max: number,
): Promise<{ compacted: true } | { compacted: false; records: LogRecord[]; head: string }> {
  if (!Number.isSafeInteger(after) || after < 0) throw new Error('readAfter: after is a non-negative integer');
  if (!/^[0-9a-f]{64}$/.test(head)) throw new Error('readAfter: head is the chain head at `after` (64 hex digits)');
  let client: PoolClient;
  try {
    client = await ctx.pool.connect();
  } catch (e) {
    throw ctx.error(e, 'reading the state store');
  }
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const now = await readSegmentId(client, ctx.t, ctx.place);
    let result: Awaited<ReturnType<typeof readAfter>> = { compacted: true };
    if (now.id === segment.id && after >= segment.base) {
      const page = await readRecordPage(client, ctx.t, segment, after, head, ctx.place, max);
      result = {
        compacted: false,
        records: page.map(({ seq, prev, ops }) => ({ seq, prev, ops })),
        head: page.at(-1)?.hash ?? head,
      };
    }
    await client.query('COMMIT');
    client.release();
    return result;
  } catch (e) {
    client.release(true);
    throw ctx.error(e, 'reading the state store');
  }
}

/** Seals one batch's record: the frame body (nonce | ciphertext | tag), without the file framing. */
function sealFrame(key: Buffer, seq: number, prev: string, opsJson: string): { frame: Buffer; hash: string } {
  const plain = recordPlaintext(seq, prev, opsJson);
  return { frame: sealRecord(key, plain).subarray(FRAME_HEADER), hash: sha256hex(plain) };
}

/** Whether a failed COMMIT may have committed all the same (the connection failed, not the statement). */
function outcomeUnknown(e: unknown): boolean {
  return sqlstate(e) === undefined || connectionFailed(e);
}

function describe(e: unknown): string {
  const m = e instanceof StateError ? `${e.message} [${e.code}]` : e instanceof Error ? e.message : 'error';
  return m.length > 300 ? `${m.slice(0, 300)}...` : m;
}

function apply(data: Map<string, Json>, ops: readonly Op[]): boolean {
  let keysChanged = false;
  for (const op of ops) {
    if (op.op === 'put') {
      if (!data.has(op.key)) keysChanged = true;
      data.set(op.key, op.value);
    } else if (data.delete(op.key)) keysChanged = true;
  }
  return keysChanged;
}

interface Pending {
  readonly batch: Batch;
  readonly bytes: number;
  resolve(seq: number): void;
  reject(e: unknown): void;
}

export interface PgInitial {
  storeId: string;
  seq: number;
  head: string;
  data: Map<string, Json>;
  segment: Segment;
  /** The records and frame bytes in the segment. */
  records: number;
  bytes: number;
}

export type ReadAfter = Awaited<ReturnType<typeof readAfter>>;

/** What may be in the database without this object knowing: writes and compactions whose COMMIT failed. */
interface Unknown {
  readonly frames: Map<number, Buffer[]>;
  readonly segments: Map<string, Segment>;
}

export class PgStore implements StateStore {
  readonly storeId: string;
  private seqValue: number;
  private head: string;
  private readonly data: Map<string, Json>;
  private sorted: string[] | undefined;
  private segment: Segment;
  private records: number;
  private bytes: number;
  private unknown: Unknown | undefined;
  /** Set once a write was fenced: every later write and compaction rejects with it. */
  private fenced: StateError | undefined;
  private pending: Pending[] = [];
  private flushScheduled = false;
  private queue: Promise<void> = Promise.resolve();
  private closing: Promise<void> | undefined;

  constructor(
    private readonly ctx: PgContext,
    init: PgInitial,
  ) {
    this.storeId = init.storeId;
    this.seqValue = init.seq;
    this.head = init.head;
    this.data = init.data;
    this.segment = init.segment;
    this.records = init.records;
    this.bytes = init.bytes;
  }

  get seq(): number {
    return this.seqValue;
  }

  /** The pool, tables and fence, for the parts kept beside the store (the lease, the audit chain, LISTEN). */
  get context(): PgContext {
    return this.ctx;
  }

  /**
   * Shares the store with other daemons: every write transaction runs `fence` first (the lease at this
   * daemon's term) and announces itself on the store's channel for the followers.
   */
  share(fence: (client: PoolClient) => Promise<void>): void {
    this.ctx.fence = fence;
    this.ctx.notify = true;
  }

  /**
   * A follower's copy catches up: applies the records written since `seq` (by the leader), or reads the
   * whole store again when it was compacted meanwhile. Resolves with the keys that changed. Runs in turn
   * with this object's own writes, so that it never applies a record twice.
   */
  catchUp(max = 1000): Promise<string[]> {
    if (this.closing) return Promise.reject(new Error('the state store is closed'));
    return this.exclusive(async () => {
      const changed = new Set<string>();
      for (;;) {
        const r = await readAfter(this.ctx, this.segment, this.seqValue, this.head, max);
        if (r.compacted) {
          const init = await this.ctx.reload();
          if (init.storeId !== this.storeId)
            throw new StateError('STATE_FOREIGN', `${this.ctx.place} now holds another store (${init.storeId})`);
          if (init.seq < this.seqValue)
            throw new StateError(
              'STATE_ROLLBACK',
              `${this.ctx.place} is at generation ${init.seq}, behind ${this.seqValue} which this daemon read before`,
            );
          for (const [k, v] of init.data) if (this.data.get(k) !== v) changed.add(k);
          for (const k of this.data.keys()) if (!init.data.has(k)) changed.add(k);
          this.data.clear();
          for (const [k, v] of init.data) this.data.set(k, v);
          this.sorted = undefined;
          this.seqValue = init.seq;
          this.head = init.head;
          this.segment = init.segment;
          this.records = init.records;
          this.bytes = init.bytes;
          continue;
        }
        for (const rec of r.records) {
          for (const op of rec.ops) changed.add(op.key);
          if (apply(this.data, rec.ops)) this.sorted = undefined;
          this.seqValue = rec.seq;
          this.records += 1;
        }
        this.head = r.head;
        if (r.records.length < max) break;
      }
      return [...changed];
    });
  }

  /**
   * Writable again after a fence (a follower that now leads): call once caught up. Writes whose COMMIT
   * outcome was unknown are either in the records read since, or were never committed.
   */
  resume(): Promise<void> {
    return this.exclusive(async () => {
      this.fenced = undefined;
      this.unknown = undefined;
    });
  }

  /** The chain head at `seq` (the SHA-256 of the last record's plaintext): where readAfter(seq) goes on. */
  get chainHead(): string {
    return this.head;
  }

  get(key: string): Json | undefined {
    return this.data.get(key);
  }

  *entries(prefix = ''): IterableIterator<[string, Json]> {
    const keys = (this.sorted ??= [...this.data.keys()].sort());
    let lo = 0;
    let hi = keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (keys[mid]! < prefix) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < keys.length && keys[i]!.startsWith(prefix); i++) {
      const value = this.data.get(keys[i]!);
      if (value !== undefined) yield [keys[i]!, value];
    }
  }

  write(ops: readonly Op[]): Promise<number> {
    if (this.closing) return Promise.reject(new Error('the state store is closed'));
    if (this.fenced) return Promise.reject(this.fenced);
    let batch: Batch;
    let bytes: number;
    try {
      batch = prepareBatch(ops);
      bytes = Buffer.byteLength(batch.json);
      if (bytes + RECORD_OVERHEAD > MAX_FRAME)
        throw new Error(`a batch is at most ${MAX_FRAME - RECORD_OVERHEAD} bytes as JSON (this one has ${bytes})`);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise<number>((resolve, reject) => {
      this.pending.push({ batch, bytes, resolve, reject });
      this.scheduleFlush();
    });
  }

  compact(): Promise<void> {
    if (this.closing) return Promise.reject(new Error('the state store is closed'));
    return this.exclusive(() => this.compactNow());
  }

  /**
   * The records after `after` as the database holds them now (at most `max`), verified (see readAfter in
   * this module); for a follower that keeps its own copy. Does not change this object.
   */
  readAfter(after: number, head: string, max = 1000): Promise<ReadAfter> {
    if (this.closing) return Promise.reject(new Error('the state store is closed'));
    return readAfter(this.ctx, this.segment, after, head, max);
  }

  close(): Promise<void> {
    this.closing ??= this.exclusive(async () => {
      while (this.pending.length > 0) await this.flush();
      try {
        if (this.unknown && !this.fenced) await this.inWriteTx('closing the state store', false, async () => undefined);
      } catch (e) {
        throw new StateError(
          'STATE_IO',
          `closing the state store: a write whose COMMIT failed could not be checked, so it may be in ${this.ctx.place} when the store is opened again (${describe(e)})`,
          { cause: e },
        );
      } finally {
        await this.ctx.pool.end().catch(noop);
      }
    });
    return this.closing;
  }

  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task);
    this.queue = run.then(noop, noop);
    return run;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    void this.exclusive(() => this.flush());
  }

  /** Marks the store fenced (once) and returns the error every later write gets. */
  private fence(message: string): StateError {
    this.fenced ??= new StateError('STATE_FENCED', `${message}; this daemon writes nothing more to ${this.ctx.place}`);
    return this.fenced;
  }

  /** The StateError for a failed write transaction: a taken seq or segment means another writer. */
  private failure(e: unknown, what: string): StateError {
    if (e instanceof StateError) return e;
    const code = sqlstate(e);
    if (code === '23505' || code === '23503')
      return this.fence(
        `${what}: another writer wrote generation ${this.seqValue + 1} or compacted the store (SQLSTATE ${code}): only one daemon may write a store`,
      );
    return this.ctx.error(e, what);
  }

  /**
   * Runs `body` in a write transaction: the fence, then the check of unknown outcomes, then the body,
   * then COMMIT; resolves once committed. Without a fence or unknown outcomes, a body that is one
   * statement (`single`) runs in autocommit. `sent` says what the body may have committed, kept when the
   * outcome of the COMMIT is unknown.
   */
  private async inWriteTx(
    what: string,
    single: boolean,
    body: (client: PoolClient) => Promise<void>,
    sent: () => Partial<Unknown> | undefined = () => undefined,
  ): Promise<void> {
    if (this.fenced) throw this.fenced;
    let client: PoolClient;
    try {
      client = await this.ctx.pool.connect();
    } catch (e) {
      throw this.ctx.error(e, what);
    }
    let committing = false;
    try {
      if (single && !this.ctx.fence && !this.ctx.notify && !this.unknown) {
        committing = true;
        await body(client);
      } else {
        await client.query('BEGIN');
        if (this.ctx.fence) await this.runFence(client, what);
        if (this.unknown) await this.settleUnknown(client, this.unknown);
        await body(client);
        if (this.ctx.notify) {
          const schema = this.ctx.t.schema.slice(1, -1).replace(/""/g, '"');
          await client.query('SELECT pg_notify($1, $2)', ['rotor', `${schema} state ${this.seqValue}`]);
        }
        committing = true;
        await client.query('COMMIT');
      }
      client.release();
    } catch (e) {
      client.release(true); // closed: the server rolls back whatever was not committed
      if (committing && outcomeUnknown(e)) {
        const s = sent();
        this.unknown ??= { frames: new Map(), segments: new Map() };
        for (const [seq, frames] of s?.frames ?? [])
          this.unknown.frames.set(seq, [...(this.unknown.frames.get(seq) ?? []), ...frames]);
        for (const [id, seg] of s?.segments ?? []) this.unknown.segments.set(id, seg);
      }
      throw this.failure(e, what);
    }
    this.unknown = undefined; // settled in this transaction, which committed
  }

  private async runFence(client: PoolClient, what: string): Promise<void> {
    try {
      await this.ctx.fence!(client);
    } catch (e) {
      if (e instanceof StateError && e.code !== 'STATE_FENCED') throw e;
      if (!(e instanceof StateError) && connectionFailed(e)) throw this.ctx.error(e, `${what} (the fence)`);
      throw this.fence(`${what}: the fence refused it (${describe(e)})`);
    }
  }

  /**
   * In a write transaction, before anything else: rows after the acknowledged seq must be exactly frames
   * of writes whose COMMIT failed (they are deleted: those writes were rejected), and a segment other
   * than ours must be an interrupted compaction's (it is adopted). Anything else: another writer.
   */
  private async settleUnknown(client: PoolClient, u: Unknown): Promise<void> {
    const { t, place } = this.ctx;
    const seg = await readSegmentId(client, t, place);
    if (seg.id !== this.segment.id) {
      const mine = u.segments.get(seg.id);
      if (!mine || mine.base !== this.seqValue)
        throw this.fence(`segment ${seg.id} of the store was written by another writer`);
      this.segment = mine; // the compaction did commit: its records are gone with the old segment
      this.records = 0;
      this.bytes = 0;
    }
    const { rows } = await client.query<{ seq: string; frame: Buffer | null }>(
      `SELECT seq::text AS seq, CASE WHEN length(frame) <= $2 THEN frame END AS frame
         FROM ${t.records} r WHERE r.seq > $1 ORDER BY r.seq LIMIT $3`,
      [this.seqValue, MAX_FRAME, u.frames.size + 1],
    );
    for (const row of rows) {
      const frame = row.frame;
      if (!frame || !u.frames.get(Number(row.seq))?.some((f) => f.equals(frame)))
        throw this.fence(`generation ${row.seq} of the store was written by another writer`);
    }
    if (rows.length === 0) return;
    const last = Number(rows.at(-1)!.seq);
    const del = await client.query(`DELETE FROM ${t.records} WHERE seq > $1 AND seq <= $2`, [this.seqValue, last]);
    if (del.rowCount !== rows.length) throw this.fence('the store was changed by another writer');
    this.ctx.warn(
      `${place}: ${rows.length} record(s) of a write whose COMMIT failed had been committed after all; removed them (that write was reported as failed)`,
    );
  }

  /** Writes the waiting batches (up to MAX_GROUP_BYTES) in one INSERT. Never rejects. */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    let n = 0;
    let size = 0;
    while (n < this.pending.length && (n === 0 || size + this.pending[n]!.bytes <= MAX_GROUP_BYTES))
      size += this.pending[n++]!.bytes;
    const group = this.pending.splice(0, n);
    if (this.pending.length > 0) this.scheduleFlush();
    if (group.length === 0) return;
    let seq = this.seqValue;
    let head = this.head;
    const seqs: number[] = [];
    const frames: Buffer[] = [];
    const { t } = this.ctx;
    try {
      await this.inWriteTx(
        'writing the state store',
        true,
        async (client) => {
          // Sealed here, after a settled compaction may have changed the segment and its key.
          for (const p of group) {
            const sealed = sealFrame(this.segment.key, ++seq, head, p.batch.json);
            head = sealed.hash;
            seqs.push(seq);
            frames.push(sealed.frame);
          }
          if (group.length === 1)
            await client.query(`INSERT INTO ${t.records} (seq, segment, frame) VALUES ($1, $2, $3)`, [
              seqs[0],
              this.segment.id,
              frames[0],
            ]);
          else
            await client.query(
              `INSERT INTO ${t.records} (seq, segment, frame)
                 SELECT s, $2::uuid, f FROM unnest($1::bigint[], $3::bytea[]) AS u (s, f)`,
              [seqs, this.segment.id, frames],
            );
        },
        () => ({ frames: new Map(seqs.map((s, i) => [s, [frames[i]!]])) }),
      );
    } catch (e) {
      for (const p of group) p.reject(e);
      return;
    }
    const first = this.seqValue + 1;
    for (const p of group) if (apply(this.data, p.batch.ops)) this.sorted = undefined;
    this.seqValue = seq;
    this.head = head;
    this.records += group.length;
    for (const f of frames) this.bytes += f.length;
    group.forEach((p, i) => {
      p.resolve(first + i);
    });
    if (this.records >= this.ctx.compactRecords || this.bytes >= this.ctx.compactBytes) {
      await this.compactNow().catch((e: unknown) =>
        this.ctx.warn(`compacting the state store failed (retried after the next write): ${describe(e)}`),
      );
    }
  }

  /** A new segment at the current seq, a fresh key; the old segment and its records go. Inside exclusive(). */
  private async compactNow(): Promise<void> {
    if (this.fenced) throw this.fenced;
    const head: SnapshotHead = { storeId: this.storeId, seq: this.seqValue, chainHead: this.head };
    const keys = (this.sorted ??= [...this.data.keys()].sort());
    const next = await this.ctx.seal(head, keys, (k) => this.data.get(k));
    const { t } = this.ctx;
    await this.inWriteTx(
      'compacting the state store',
      false,
      async (client) => {
        const old = this.segment;
        const recs = await client.query(`DELETE FROM ${t.records} WHERE segment = $1`, [old.id]);
        const segs = await client.query(`DELETE FROM ${t.segments} WHERE id = $1`, [old.id]);
        if (recs.rowCount !== this.records || segs.rowCount !== 1)
          throw this.fence('compacting the state store: its rows are not the ones this daemon wrote (another writer)');
        await insertSegment(client, this.ctx, next);
      },
      () => ({ segments: new Map([[next.id, next]]) }),
    );
    this.segment = { id: next.id, base: next.base, key: next.key };
    this.records = 0;
    this.bytes = 0;
  }
}
