/**
 * The file backend of the state store (the contract it meets is in types.ts; fileStoreBackend is how the
 * daemon opens it): an age-encrypted snapshot and an encrypted, hash-chained append log in one
 * directory (formats in codec.ts). The whole state lives in memory; a write appends one frame per batch
 * and fsyncs (O(batch), whatever the store's size); compaction rewrites the snapshot (O(store)).
 *
 * Group commit: batches submitted while a write is in flight wait, then go to disk together in one write
 * and one fsync. Each batch is its own record with its own generation (seq), consecutive, in submission
 * order, so callers see strictly increasing seqs.
 *
 * Crash argument. A write is acknowledged only after its frames are fsynced; it is applied to memory
 * (and visible to get) only then. A crash in the middle of an append leaves, at worst, complete
 * frames of batches that were never acknowledged (they are kept: their writers saw no answer) and one
 * incomplete final frame, which opening truncates with a warning. A failed write or fsync marks the tail
 * dirty: before anything else is written (and at close), the log is truncated back to its last
 * acknowledged byte and fsynced, so a rejected batch does not come back; only a crash before that
 * truncation can bring it back, as if it had succeeded (a rejected write's outcome is "not applied now",
 * and a caller that retries must expect either). Files are replaced only by write tmp, fsync, rename,
 * fsync dir. Compaction replaces snapshot.age first, then log.bin; in between (or if the second step
 * fails) the old log is "superseded": its records up to the snapshot's seq are checked (their chain must
 * end at the snapshot's chainHead) and skipped, later ones applied. Creation renames log.bin into place
 * before snapshot.age; a crash in between leaves snapshot.age.tmp matching log.bin, which opening
 * renames into place. Any other partial directory is refused.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import path from 'node:path';
import type { Decrypter, Encrypter } from 'age-encryption';
import { checkAnchor, checkAnchorOption } from './anchor.js';
import type { LogHeader, Snapshot, SnapshotHead } from './codec.js';
import {
  ageDecrypt,
  encodeLogHeader,
  encodeSnapshot,
  FRAME_HEADER,
  frame,
  frameLength,
  genesisHead,
  LOG_MAGIC,
  MAX_FRAME,
  MAX_SNAPSHOT,
  openRecord,
  parseLogHeader,
  parseRecord,
  parseSnapshot,
  recordPlaintext,
  sealRecord,
  sha256hex,
  storeCrypto,
} from './codec.js';
import type { StoreFile, StoreFs } from './fs.js';
import { nodeFs } from './fs.js';
import type { Json, Op, StateStore, StoreAnchor, StoreBackend, StoreOpenOptions } from './types.js';
import { StateError } from './types.js';
import type { Batch } from './values.js';
import { prepareBatch } from './values.js';

export type { StoreFile, StoreFs } from './fs.js';
export { nodeFs } from './fs.js';

/** Where and how the file backend keeps a store: what it takes besides the StoreOpenOptions. */
export interface FileStoreConfig {
  dir: string;
  /** The file-system layer (default node:fs); tests and fault-injection runs plug in a failing one. */
  fs?: StoreFs;
  /** Compact once the log holds this many records or bytes (defaults: 10,000 records, 64 MiB). */
  compactAfter?: { records?: number; bytes?: number };
}

export interface StoreOptions extends FileStoreConfig, StoreOpenOptions {}

export const SNAPSHOT_FILE = 'snapshot.age';
export const LOG_FILE = 'log.bin';
export const TMP = '.tmp';
const DEFAULT_COMPACT_RECORDS = 10_000;
const DEFAULT_COMPACT_BYTES = 64 * 1024 * 1024;
/** One append carries at most this much (but always at least one batch). */
const MAX_GROUP_BYTES = 8 * 1024 * 1024;
/** Room in a frame for the record's envelope around the ops JSON. */
const RECORD_OVERHEAD = 256;
const READ_WINDOW = 1024 * 1024;

/** What reading a store's files needs (the read-only reader, read-only.ts, has no more than this). */
export interface ReadContext {
  readonly dir: string;
  readonly fs: StoreFs;
  readonly dec: Decrypter;
  file(name: string): string;
}

interface Context extends ReadContext {
  readonly enc: Encrypter;
  readonly warn: (message: string) => void;
  readonly compactRecords: number;
  readonly compactBytes: number;
}

const noop = (): void => undefined;

function corrupt(message: string): StateError {
  return new StateError('STATE_CORRUPT', message);
}

function chainBroken(message: string): StateError {
  return new StateError('STATE_CHAIN_BROKEN', message);
}

async function context(o: StoreOptions): Promise<Context> {
  if (typeof o.dir !== 'string' || o.dir === '') throw new Error('openStore needs a dir');
  const { enc, dec } = await storeCrypto(o.identity, o.recipients);
  const limit = (v: number | undefined, d: number, what: string): number => {
    if (v === undefined) return d;
    if (!Number.isSafeInteger(v) || v < 1) throw new Error(`compactAfter.${what} is a positive integer`);
    return v;
  };
  checkAnchorOption(o.anchor);
  const dir = path.resolve(o.dir);
  const onWarning = o.onWarning ?? ((m: string) => process.emitWarning(m, 'RotorStateWarning'));
  return {
    dir,
    fs: o.fs ?? nodeFs,
    enc,
    dec,
    warn: (m) => {
      try {
        onWarning(m);
      } catch {
        // a throwing warning handler must not break the store
      }
    },
    compactRecords: limit(o.compactAfter?.records, DEFAULT_COMPACT_RECORDS, 'records'),
    compactBytes: limit(o.compactAfter?.bytes, DEFAULT_COMPACT_BYTES, 'bytes'),
    file: (name) => path.join(dir, name),
  };
}

/** The file backend: the store in `config.dir`, opened (or created) by openStore. */
export function fileStoreBackend(config: FileStoreConfig): StoreBackend {
  const { dir, fs, compactAfter } = config;
  return {
    open: (options) => openStore({ ...options, dir, ...(fs && { fs }), ...(compactAfter && { compactAfter }) }),
  };
}

/** Opens the store in `dir`, or creates one if the directory holds no state files at all. */
export async function openStore(options: StoreOptions): Promise<StateStore> {
  const ctx = await context(options);
  try {
    return await open(ctx, options.anchor);
  } catch (e) {
    if (e instanceof StateError) throw e;
    const errno = (e as NodeJS.ErrnoException).code ? `: ${(e as Error).message}` : '';
    throw new StateError('STATE_IO', `opening the state store in ${ctx.dir} failed${errno}`, { cause: e });
  }
}

async function open(ctx: Context, anchor: StoreAnchor | undefined): Promise<StateStore> {
  const { fs } = ctx;
  await fs.mkdir(ctx.dir);
  const [snapSize, logSize, snapTmpSize, logTmpSize] = await Promise.all(
    [SNAPSHOT_FILE, LOG_FILE, SNAPSHOT_FILE + TMP, LOG_FILE + TMP].map((n) => fs.size(ctx.file(n))),
  );
  const cleanTmp = async (snapTmp: boolean): Promise<void> => {
    if (snapTmp && snapTmpSize !== undefined) await fs.unlink(ctx.file(SNAPSHOT_FILE + TMP));
    if (logTmpSize !== undefined) await fs.unlink(ctx.file(LOG_FILE + TMP));
  };
  if (snapSize === undefined && logSize === undefined) {
    checkAnchor(ctx.dir, anchor, undefined, 0);
    await cleanTmp(true); // left by a creation that never finished: nothing was ever acknowledged
    return create(ctx);
  }
  if (logSize === undefined) {
    throw corrupt(
      `${ctx.file(SNAPSHOT_FILE)} exists but ${LOG_FILE} does not: the store is incomplete and is not opened (restore ${LOG_FILE}, or the whole directory, from a backup)`,
    );
  }
  const rollForward = snapSize === undefined;
  if (rollForward && snapTmpSize === undefined) {
    throw corrupt(
      `${ctx.file(LOG_FILE)} exists but ${SNAPSHOT_FILE} does not: the store is incomplete and is not opened (restore ${SNAPSHOT_FILE}, or the whole directory, from a backup)`,
    );
  }
  const snapName = rollForward ? SNAPSHOT_FILE + TMP : SNAPSHOT_FILE;
  const snap = parseSnapshot(
    await decryptSnapshot(ctx, await readWhole(fs, ctx.file(snapName), MAX_SNAPSHOT, snapName), snapName),
    snapName,
  );
  const log = await fs.open(ctx.file(LOG_FILE), 'write');
  try {
    const scan = await scanLog(ctx, log, snap);
    if (rollForward && scan.header.seq !== snap.seq) {
      throw corrupt(
        `${SNAPSHOT_FILE} is missing and ${SNAPSHOT_FILE}${TMP} is not the snapshot that ${LOG_FILE} follows: the store is not opened (restore ${SNAPSHOT_FILE} from a backup)`,
      );
    }
    checkAnchor(ctx.dir, anchor, snap.storeId, scan.seq);
    // Everything is verified; only now do the files change.
    if (scan.torn) {
      await log.truncate(scan.end);
      await log.sync();
      ctx.warn(
        `${ctx.file(LOG_FILE)} ended in an incomplete record (${scan.torn.bytes} bytes at byte ${scan.torn.offset}), a write that a crash interrupted before it was acknowledged: truncated it`,
      );
    }
    if (rollForward) {
      await fs.rename(ctx.file(SNAPSHOT_FILE + TMP), ctx.file(SNAPSHOT_FILE));
      await fs.syncDir(ctx.dir);
      ctx.warn(
        `${ctx.dir}: finished creating the state store (a crash had interrupted it before ${SNAPSHOT_FILE} was in place)`,
      );
    }
    await cleanTmp(!rollForward); // left by an interrupted compaction: never authoritative
    const store = new FileStore(ctx, {
      storeId: snap.storeId,
      seq: scan.seq,
      head: scan.head,
      data: snap.entries,
      log,
      logKey: scan.header.key,
      logEnd: scan.end,
      logRecords: scan.records,
    });
    if (scan.header.seq < snap.seq) {
      // The log belongs to an older snapshot (a compaction was interrupted): finish it. The store is
      // consistent either way (later records chain on in the old log), so a failure is only a warning.
      ctx.warn(
        `${ctx.file(LOG_FILE)} follows an older snapshot (a compaction was interrupted): finishing the compaction`,
      );
      await store
        .compact()
        .catch((e: unknown) => ctx.warn(`finishing an interrupted compaction failed (retried later): ${describe(e)}`));
    }
    return store;
  } catch (e) {
    await log.close().catch(noop);
    throw e;
  }
}

/**
 * Decrypts the snapshot. "Not encrypted to this identity" is what age says both for the wrong identity
 * and for a damaged recipient stanza (one flipped bit in it): when log.bin's header, an age file to the
 * same recipients, opens with the identity, the identity is right and the snapshot is damaged.
 */
export async function decryptSnapshot(ctx: ReadContext, file: Uint8Array, name: string): Promise<Buffer> {
  try {
    return await ageDecrypt(ctx.dec, file, name);
  } catch (e) {
    if (e instanceof StateError && e.code === 'STATE_KEY' && (await logHeaderOpens(ctx))) {
      throw corrupt(
        `${name} does not open with this identity, but ${LOG_FILE} beside it does: ${name} is damaged, or is another store's (restore it from a backup)`,
      );
    }
    throw e;
  }
}

/** Whether log.bin starts with a header frame that the identity decrypts. */
async function logHeaderOpens(ctx: ReadContext): Promise<boolean> {
  try {
    const f = await ctx.fs.open(ctx.file(LOG_FILE), 'read');
    try {
      const size = await f.size();
      const r = new Reader(f, size);
      if (size < LOG_MAGIC.length + FRAME_HEADER || !LOG_MAGIC.equals(await r.bytes(0, LOG_MAGIC.length))) return false;
      const len = frameLength(await r.bytes(LOG_MAGIC.length, FRAME_HEADER), size - LOG_MAGIC.length);
      if (typeof len !== 'number') return false;
      await ctx.dec.decrypt(await r.bytes(LOG_MAGIC.length + FRAME_HEADER, len));
      return true;
    } finally {
      await f.close();
    }
  } catch {
    return false;
  }
}

function describe(e: unknown): string {
  if (e instanceof StateError) return `${e.message} [${e.code}]`;
  return e instanceof Error ? e.message : 'error';
}

export async function readWhole(fs: StoreFs, file: string, max: number, what: string): Promise<Buffer> {
  const f = await fs.open(file, 'read');
  try {
    const size = await f.size();
    if (size > max) throw corrupt(`${what} is ${size} bytes, more than the ${max}-byte limit`);
    const buf = Buffer.alloc(size);
    let got = 0;
    while (got < size) {
      const n = await f.read(buf.subarray(got), got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    await f.close();
  }
}

/** Positional reads through a window, so that scanning many small frames is not a read per frame. */
class Reader {
  private buf = Buffer.alloc(0);
  private start = 0;
  constructor(
    private readonly file: StoreFile,
    readonly size: number,
  ) {}

  async bytes(pos: number, len: number): Promise<Buffer> {
    if (pos < this.start || pos + len > this.start + this.buf.length) {
      const n = Math.min(Math.max(len, READ_WINDOW), this.size - pos);
      const b = Buffer.alloc(n);
      let got = 0;
      while (got < n) {
        const r = await this.file.read(b.subarray(got), pos + got);
        if (r === 0) break;
        got += r;
      }
      if (got < len) throw new StateError('STATE_IO', `${LOG_FILE} became shorter while it was read`);
      this.buf = b.subarray(0, got);
      this.start = pos;
    }
    return this.buf.subarray(pos - this.start, pos - this.start + len);
  }
}

export interface LogScan {
  readonly header: LogHeader;
  readonly seq: number;
  readonly head: string;
  /** The end of the last complete frame. */
  readonly end: number;
  readonly records: number;
  readonly torn?: { offset: number; bytes: number };
}

/**
 * Verifies log.bin against the snapshot and applies its newer records to snap.entries. Reads only: a
 * torn final frame is reported (`torn`), never truncated here.
 */
export async function scanLog(ctx: ReadContext, file: StoreFile, snap: Snapshot): Promise<LogScan> {
  const size = await file.size();
  const r = new Reader(file, size);
  if (size < LOG_MAGIC.length + FRAME_HEADER || !LOG_MAGIC.equals(await r.bytes(0, LOG_MAGIC.length))) {
    throw corrupt(`${ctx.file(LOG_FILE)} is not a rotor state log`);
  }
  let pos = LOG_MAGIC.length;
  // The header frame is written and fsynced before the file gets its name: it is never torn.
  const hlen = frameLength(await r.bytes(pos, FRAME_HEADER), size - pos);
  if (typeof hlen !== 'number') throw corrupt(`the header of ${ctx.file(LOG_FILE)} is damaged`);
  const header = parseLogHeader(
    await ageDecrypt(ctx.dec, await r.bytes(pos + FRAME_HEADER, hlen), `the header of ${LOG_FILE}`, 'STATE_CORRUPT'),
  );
  pos += FRAME_HEADER + hlen;
  if (header.storeId !== snap.storeId)
    throw chainBroken(`${LOG_FILE} belongs to store ${header.storeId}, not to ${snap.storeId} of ${SNAPSHOT_FILE}`);
  if (header.seq > snap.seq)
    throw chainBroken(
      `${LOG_FILE} follows generation ${header.seq}, but ${SNAPSHOT_FILE} is at ${snap.seq}: the records in between are missing`,
    );
  if (header.seq === snap.seq && header.chainHead !== snap.chainHead)
    throw chainBroken(`${LOG_FILE} does not follow this ${SNAPSHOT_FILE}`);

  let seq = header.seq;
  let head = header.chainHead;
  let records = 0;
  let torn: LogScan['torn'];
  while (pos < size) {
    const len = frameLength(await r.bytes(pos, Math.min(FRAME_HEADER, size - pos)), size - pos);
    if (len === 'torn') {
      torn = { offset: pos, bytes: size - pos };
      break;
    }
    if (len === 'bad')
      throw corrupt(`${ctx.file(LOG_FILE)}: the frame of record ${seq + 1} (byte ${pos}) has a damaged length`);
    const plain = openRecord(header.key, await r.bytes(pos + FRAME_HEADER, len));
    if (!plain) throw corrupt(`${ctx.file(LOG_FILE)}: record ${seq + 1} (byte ${pos}) fails to decrypt: it is damaged`);
    const rec = parseRecord(plain);
    if (!rec)
      throw corrupt(`${ctx.file(LOG_FILE)}: record ${seq + 1} (byte ${pos}) decrypts but is not a valid record`);
    if (rec.seq !== seq + 1 || rec.prev !== head) {
      throw chainBroken(
        `${ctx.file(LOG_FILE)}: the record at byte ${pos} is generation ${rec.seq} and does not follow generation ${seq}: records are missing or out of order`,
      );
    }
    seq = rec.seq;
    head = sha256hex(plain);
    if (seq === snap.seq && head !== snap.chainHead)
      throw chainBroken(`${ctx.file(LOG_FILE)}: record ${seq} is not the one ${SNAPSHOT_FILE} ends with`);
    if (seq > snap.seq) apply(snap.entries, rec.ops);
    records += 1;
    pos += FRAME_HEADER + len;
  }
  if (seq < snap.seq)
    throw chainBroken(`${LOG_FILE} ends at generation ${seq}, before generation ${snap.seq} of ${SNAPSHOT_FILE}`);
  return { header, seq, head, end: pos, records, ...(torn && { torn }) };
}

/** Applies operations to a map; returns whether the set of keys changed. */
function apply(data: Map<string, Json>, ops: readonly Op[]): boolean {
  let keysChanged = false;
  for (const op of ops) {
    if (op.op === 'put') {
      if (!data.has(op.key)) keysChanged = true;
      data.set(op.key, op.value);
    } else if (data.delete(op.key)) {
      keysChanged = true;
    }
  }
  return keysChanged;
}

/** Creates, fsyncs and returns (open) a file holding `data`; removes it again if that fails. */
async function writeNewFile(fs: StoreFs, file: string, data: Uint8Array): Promise<StoreFile> {
  const f = await fs.open(file, 'create');
  try {
    await f.write(data, 0);
    await f.sync();
    return f;
  } catch (e) {
    await f.close().catch(noop);
    await fs.unlink(file).catch(noop);
    throw e;
  }
}

interface NewLog {
  readonly file: StoreFile;
  readonly key: Buffer;
  readonly end: number;
}

/** Writes log.bin.tmp: the magic and the header frame for a log following `head`. */
async function newLog(ctx: Context, head: SnapshotHead): Promise<NewLog> {
  const key = randomBytes(32);
  const header = await ctx.enc.encrypt(encodeLogHeader({ ...head, key }));
  const bytes = Buffer.concat([LOG_MAGIC, frame(header)]);
  return { file: await writeNewFile(ctx.fs, ctx.file(LOG_FILE + TMP), bytes), key, end: bytes.length };
}

async function create(ctx: Context): Promise<StateStore> {
  const storeId = randomUUID();
  const head: SnapshotHead = { storeId, seq: 0, chainHead: genesisHead(storeId) };
  const snapshot = await ctx.enc.encrypt(encodeSnapshot(head, [], () => undefined));
  await (await writeNewFile(ctx.fs, ctx.file(SNAPSHOT_FILE + TMP), snapshot)).close();
  const log = await newLog(ctx, head);
  try {
    // log.bin first: a crash before snapshot.age is in place leaves snapshot.age.tmp, which opening finishes.
    await ctx.fs.rename(ctx.file(LOG_FILE + TMP), ctx.file(LOG_FILE));
    await ctx.fs.syncDir(ctx.dir);
    await ctx.fs.rename(ctx.file(SNAPSHOT_FILE + TMP), ctx.file(SNAPSHOT_FILE));
    await ctx.fs.syncDir(ctx.dir);
  } catch (e) {
    await log.file.close().catch(noop);
    throw e;
  }
  return new FileStore(ctx, {
    storeId,
    seq: 0,
    head: head.chainHead,
    data: new Map(),
    log: log.file,
    logKey: log.key,
    logEnd: log.end,
    logRecords: 0,
  });
}

interface Pending {
  readonly batch: Batch;
  readonly bytes: number;
  resolve(seq: number): void;
  reject(e: unknown): void;
}

interface Initial {
  storeId: string;
  seq: number;
  head: string;
  data: Map<string, Json>;
  log: StoreFile;
  logKey: Buffer;
  logEnd: number;
  logRecords: number;
}

class FileStore implements StateStore {
  readonly storeId: string;
  private seqValue: number;
  /** SHA-256 of the last record's plaintext (or the snapshot's chainHead). */
  private head: string;
  private readonly data: Map<string, Json>;
  /** The keys in order; undefined after the set of keys changed (rebuilt by the next entries()). */
  private sorted: string[] | undefined;
  private log: StoreFile;
  private logKey: Buffer;
  /** The end of the last acknowledged frame. */
  private logEnd: number;
  private logRecords: number;
  /** Bytes past logEnd may hold a failed write: truncate before writing again. */
  private dirty = false;
  /** A rename was not followed by a successful directory fsync: do it before relying on the new name. */
  private dirSyncPending = false;
  private pending: Pending[] = [];
  private flushScheduled = false;
  /** Writes, compactions and close run one at a time, in order. */
  private queue: Promise<void> = Promise.resolve();
  private closing: Promise<void> | undefined;

  constructor(
    private readonly ctx: Context,
    init: Initial,
  ) {
    this.storeId = init.storeId;
    this.seqValue = init.seq;
    this.head = init.head;
    this.data = init.data;
    this.log = init.log;
    this.logKey = init.logKey;
    this.logEnd = init.logEnd;
    this.logRecords = init.logRecords;
  }

  get seq(): number {
    return this.seqValue;
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

  close(): Promise<void> {
    this.closing ??= this.exclusive(async () => {
      while (this.pending.length > 0) await this.flush(); // a group split by MAX_GROUP_BYTES queued its rest behind us
      try {
        if (this.dirty) await this.prepareAppend();
      } catch (e) {
        throw new StateError(
          'STATE_IO',
          `closing the state store: the bytes of a failed write could not be removed from ${LOG_FILE}, so that write may reappear when the store is opened again`,
          { cause: e },
        );
      } finally {
        await this.log.close().catch(noop);
      }
      // A rename whose directory fsync failed carries no acknowledged write (appends wait for that
      // fsync), and either name is a consistent store: one more try, then only a warning.
      if (this.dirSyncPending)
        await this.ctx.fs
          .syncDir(this.ctx.dir)
          .catch((e: unknown) => this.ctx.warn(`fsyncing ${this.ctx.dir} failed at close: ${describe(e)}`));
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

  /** Writes the waiting batches (up to MAX_GROUP_BYTES) with one write and one fsync. Never rejects. */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    let n = 0;
    let bytes = 0;
    while (n < this.pending.length && (n === 0 || bytes + this.pending[n]!.bytes <= MAX_GROUP_BYTES))
      bytes += this.pending[n++]!.bytes;
    const group = this.pending.splice(0, n);
    if (this.pending.length > 0) this.scheduleFlush();
    if (group.length === 0) return;
    let seq = this.seqValue;
    let head = this.head;
    try {
      await this.prepareAppend();
      const frames = group.map(({ batch }) => {
        const plain = recordPlaintext(++seq, head, batch.json);
        head = sha256hex(plain);
        return sealRecord(this.logKey, plain);
      });
      const data = frames.length === 1 ? frames[0]! : Buffer.concat(frames);
      this.dirty = true;
      await this.log.write(data, this.logEnd);
      await this.log.sync();
      this.dirty = false;
      this.logEnd += data.length;
      this.logRecords += group.length;
    } catch (e) {
      const err = new StateError(
        'STATE_IO',
        `writing ${this.ctx.file(LOG_FILE)} failed; the batch is not applied (${describe(e)})`,
        { cause: e },
      );
      for (const p of group) p.reject(err);
      return;
    }
    const first = this.seqValue + 1;
    for (const p of group) if (apply(this.data, p.batch.ops)) this.sorted = undefined;
    this.seqValue = seq;
    this.head = head;
    group.forEach((p, i) => {
      p.resolve(first + i);
    });
    if (this.logRecords >= this.ctx.compactRecords || this.logEnd >= this.ctx.compactBytes) {
      await this.compactNow().catch((e: unknown) =>
        this.ctx.warn(`compacting the state store failed (retried after the next write): ${describe(e)}`),
      );
    }
  }

  /** Makes the log safe to append to: removes a failed write's bytes, makes a rename durable. */
  private async prepareAppend(): Promise<void> {
    if (this.dirty) {
      await this.log.truncate(this.logEnd);
      await this.log.sync();
      this.dirty = false;
    }
    if (this.dirSyncPending) {
      await this.ctx.fs.syncDir(this.ctx.dir);
      this.dirSyncPending = false;
    }
  }

  /** Rewrites snapshot.age at the current seq, then starts a fresh log.bin. Runs inside exclusive(). */
  private async compactNow(): Promise<void> {
    const { fs, dir } = this.ctx;
    try {
      await this.prepareAppend();
      const head: SnapshotHead = { storeId: this.storeId, seq: this.seqValue, chainHead: this.head };
      const keys = (this.sorted ??= [...this.data.keys()].sort());
      const snapshot = await this.ctx.enc.encrypt(encodeSnapshot(head, keys, (k) => this.data.get(k)));
      if (snapshot.length > MAX_SNAPSHOT)
        throw new StateError('STATE_IO', `the state has outgrown the ${MAX_SNAPSHOT}-byte snapshot limit`);
      const snapTmp = this.ctx.file(SNAPSHOT_FILE + TMP);
      await (await writeNewFile(fs, snapTmp, snapshot)).close();
      try {
        await fs.rename(snapTmp, this.ctx.file(SNAPSHOT_FILE));
      } catch (e) {
        await fs.unlink(snapTmp).catch(noop);
        throw e;
      }
      this.dirSyncPending = true;
      await this.prepareAppend();
      // From here the current log is superseded but still valid: later records chain on from the
      // snapshot's chainHead, so if starting the new log fails, writing goes on in this one.
      const next = await newLog(this.ctx, head);
      try {
        await fs.rename(this.ctx.file(LOG_FILE + TMP), this.ctx.file(LOG_FILE));
      } catch (e) {
        await next.file.close().catch(noop);
        await fs.unlink(this.ctx.file(LOG_FILE + TMP)).catch(noop);
        throw e;
      }
      const old = this.log;
      this.log = next.file;
      this.logKey = next.key;
      this.logEnd = next.end;
      this.logRecords = 0;
      this.dirSyncPending = true;
      await old.close().catch(noop);
      await fs.syncDir(dir);
      this.dirSyncPending = false;
    } catch (e) {
      if (e instanceof StateError) throw e;
      throw new StateError('STATE_IO', `compacting the state store in ${dir} failed (${describe(e)})`, { cause: e });
    }
  }
}
