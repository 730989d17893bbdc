/**
 * Reading a file store without opening it (`rotor state export`): snapshot.age and the records of log.bin
 * after it, checked exactly as openStore checks them (store.ts: the same decryption, chain and damage
 * checks, with the same codes), but with nothing written, no lock, no compaction, and a torn last
 * record ignored and left in place. So it may run beside a daemon that writes the store, and on the
 * files of a daemon that was killed.
 *
 * Beside a running daemon. A compaction replaces snapshot.age (rename), then log.bin (rename). log.bin
 * is opened first and read through that descriptor: the snapshot read afterwards is then the one that
 * log follows, or a newer one (the log is then "superseded": its records up to the snapshot's seq are
 * checked and skipped, as openStore does), never an older one. An append in progress is at worst a
 * torn final frame. What can still meet a change (a daemon's creation of the store, a failed write that
 * it truncates) is read again, up to three times, when the files changed meanwhile.
 *
 * What it cannot tell without the audit log: whether this is the newest copy of the store (the anchor,
 * the generation and store id the audit log records, lives in the audit log, not in any key); the
 * caller checks that when it has the log.
 */
import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { Decrypter, identityToRecipient } from 'age-encryption';
import { MAX_SNAPSHOT, parseSnapshot } from './codec.js';
import { nodeFs } from './fs.js';
import type { ReadContext } from './store.js';
import { decryptSnapshot, LOG_FILE, readWhole, SNAPSHOT_FILE, scanLog, TMP } from './store.js';
import type { Json } from './types.js';
import { StateError } from './types.js';

/** A store as read, not opened: its entries at the last complete record. */
export interface StoreReading {
  /** Where it was read: a directory, or postgres://USER@HOST:PORT/DB (schema S). */
  readonly place: string;
  readonly storeId: string;
  /** The generation after every complete record (what the daemon's own open would show). */
  readonly seq: number;
  /** The generation of the snapshot alone (snapshot.age, or the PostgreSQL segment's). */
  readonly snapshotSeq: number;
  /** Every key with its value, frozen. */
  readonly entries: ReadonlyMap<string, Json>;
  /** A final record that a crash (or an append under way) cut short: ignored, the file left as it is. */
  readonly torn?: { readonly offset: number; readonly bytes: number };
}

/** A Decrypter for one or more age X25519 identities (AGE-SECRET-KEY-1...); a plain Error for an invalid one. */
export async function identitiesDecrypter(identities: readonly string[]): Promise<Decrypter> {
  if (identities.length === 0) throw new Error('no age identity (AGE-SECRET-KEY-1...) given');
  const d = new Decrypter();
  for (const [i, identity] of identities.entries()) {
    try {
      await identityToRecipient(identity);
    } catch {
      throw new Error(`identity ${i + 1} is not a valid age X25519 identity (AGE-SECRET-KEY-1...)`);
    }
    d.addIdentity(identity);
  }
  return d;
}

const RETRIES = 3;

/**
 * Reads the file store in `dir` (the directory that holds snapshot.age and log.bin), or undefined when
 * the directory holds no store at all (neither file; also a creation that never finished). Refuses as
 * openStore does (STATE_KEY, STATE_CORRUPT, STATE_CHAIN_BROKEN; STATE_IO when a file cannot be read).
 */
export async function readFileStore(dir: string, dec: Decrypter): Promise<StoreReading | undefined> {
  const abs = path.resolve(dir);
  const ctx: ReadContext = { dir: abs, fs: nodeFs, dec, file: (name) => path.join(abs, name) };
  for (let attempt = 1; ; attempt++) {
    const before = await fileIds(ctx);
    try {
      return await readOnce(ctx);
    } catch (e) {
      // A daemon replaced or truncated a file while it was read: read again from the start.
      const changed = attempt < RETRIES && (await fileIds(ctx).catch(() => '')) !== before;
      if (changed && !(e instanceof StateError && e.code === 'STATE_KEY')) continue;
      if (e instanceof StateError) throw e;
      const errno = (e as NodeJS.ErrnoException).code;
      const hint = errno === 'EACCES' || errno === 'EPERM' ? ": run as the daemon's user (or root)" : '';
      throw new StateError(
        'STATE_IO',
        `reading the state store in ${abs} failed (${errno ?? (e as Error).message})${hint}`,
        { cause: e },
      );
    }
  }
}

/** The inode, size and time of each file of the store, to tell whether a daemon changed them. */
async function fileIds(ctx: ReadContext): Promise<string> {
  const ids = await Promise.all(
    [SNAPSHOT_FILE, LOG_FILE, SNAPSHOT_FILE + TMP].map((n) =>
      lstat(ctx.file(n)).then(
        (s) => `${s.ino}:${s.size}:${s.mtimeMs}`,
        () => '-',
      ),
    ),
  );
  return ids.join(' ');
}

function corrupt(message: string): StateError {
  return new StateError('STATE_CORRUPT', message);
}

async function readOnce(ctx: ReadContext): Promise<StoreReading | undefined> {
  const { fs } = ctx;
  const [snapSize, logSize, snapTmpSize] = await Promise.all(
    [SNAPSHOT_FILE, LOG_FILE, SNAPSHOT_FILE + TMP].map((n) => fs.size(ctx.file(n))),
  );
  // Nothing, or only a snapshot.age.tmp of a creation that never got its log.bin: no store was ever acknowledged.
  if (snapSize === undefined && logSize === undefined) return undefined;
  if (logSize === undefined)
    throw corrupt(
      `${ctx.file(SNAPSHOT_FILE)} exists but ${LOG_FILE} does not: the store is incomplete (restore ${LOG_FILE}, or the whole directory, from a backup)`,
    );
  // As openStore: log.bin without snapshot.age is a creation interrupted between its two renames, whose
  // snapshot.age.tmp is the snapshot (openStore would rename it into place; here it is only read).
  const rollForward = snapSize === undefined;
  if (rollForward && snapTmpSize === undefined)
    throw corrupt(
      `${ctx.file(LOG_FILE)} exists but ${SNAPSHOT_FILE} does not: the store is incomplete (restore ${SNAPSHOT_FILE}, or the whole directory, from a backup)`,
    );
  const log = await fs.open(ctx.file(LOG_FILE), 'read'); // before the snapshot: see the top of this file
  try {
    const snapName = rollForward ? SNAPSHOT_FILE + TMP : SNAPSHOT_FILE;
    const bytes = await readWhole(fs, ctx.file(snapName), MAX_SNAPSHOT, snapName);
    const snap = parseSnapshot(await decryptSnapshot(ctx, bytes, snapName), snapName);
    const snapshotSeq = snap.seq;
    const scan = await scanLog(ctx, log, snap);
    if (rollForward && scan.header.seq !== snap.seq)
      throw corrupt(
        `${SNAPSHOT_FILE} is missing and ${SNAPSHOT_FILE}${TMP} is not the snapshot that ${LOG_FILE} follows (restore ${SNAPSHOT_FILE} from a backup)`,
      );
    return {
      place: ctx.dir,
      storeId: snap.storeId,
      seq: scan.seq,
      snapshotSeq,
      entries: snap.entries,
      ...(scan.torn ? { torn: scan.torn } : {}),
    };
  } finally {
    await log.close().catch(() => undefined);
  }
}
