/**
 * Reading the PostgreSQL state store (postgres.ts) back: the store row, the segment and the records,
 * each treated as hostile until it is decrypted and verified, and each read bounded (a column longer
 * than its limit is never fetched: the size is checked in SQL first, as codec.ts caps frames). The
 * same checks as the file backend, with the same codes: damage is STATE_CORRUPT, records missing,
 * reordered, replayed or from another segment are STATE_CHAIN_BROKEN, the wrong identity is STATE_KEY.
 */
import type { Decrypter } from 'age-encryption';
import type { ClientBase } from 'pg';
import type { LogHeader, LogRecord, Snapshot } from './codec.js';
import {
  ageDecrypt,
  MAX_FRAME,
  MAX_SNAPSHOT,
  openRecord,
  parseLogHeader,
  parseRecord,
  parseSnapshot,
  sha256hex,
} from './codec.js';
import type { qualified } from './pg-schema.js';
import { StateError } from './types.js';

/** An age header with a few recipients is a few hundred bytes; a megabyte is damage. */
export const MAX_HEADER = 1024 * 1024;
/** Records fetched per query, and the bytes of frames a page starts within (a page is never unbounded). */
const PAGE_ROWS = 1000;
const PAGE_BYTES = 8 * 1024 * 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

type Tables = ReturnType<typeof qualified>;

export function corrupt(message: string): StateError {
  return new StateError('STATE_CORRUPT', message);
}

export function chainBroken(message: string): StateError {
  return new StateError('STATE_CHAIN_BROKEN', message);
}

/** A seq as PostgreSQL sends a bigint (text), checked. */
function seqOf(text: unknown, what: string): number {
  const n = typeof text === 'string' && /^\d{1,16}$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n)) throw corrupt(`${what} is not a valid generation`);
  return n;
}

/** The store's id from its one row, or undefined when there is none. */
export async function readStoreId(client: ClientBase, t: Tables, place: string): Promise<string | undefined> {
  const { rows } = await client.query<{ id: string }>(`SELECT left(store_id::text, 64) AS id FROM ${t.store} LIMIT 2`);
  if (rows.length === 0) return undefined;
  if (rows.length > 1 || !UUID.test(rows[0]!.id)) throw corrupt(`${place}: the store table does not hold one store id`);
  return rows[0]!.id;
}

export interface SegmentRow {
  readonly id: string;
  readonly base: number;
}

/** The id and base seq of the one segment (STATE_CORRUPT when there is not exactly one). */
export async function readSegmentId(client: ClientBase, t: Tables, place: string): Promise<SegmentRow> {
  const { rows } = await client.query<{ id: string; base: string }>(
    `SELECT left(id::text, 64) AS id, base_seq::text AS base FROM ${t.segments} LIMIT 2`,
  );
  if (rows.length !== 1 || !UUID.test(rows[0]!.id))
    throw corrupt(`${place} holds ${rows.length === 0 ? 'no' : 'more than one'} segment: the store is incomplete`);
  return { id: rows[0]!.id, base: seqOf(rows[0]!.base, `the segment's base_seq in ${place}`) };
}

export interface LoadedSegment extends SegmentRow {
  readonly header: LogHeader;
  readonly snapshot: Snapshot;
}

/** Reads, decrypts and checks the segment against the store id. */
export async function readSegment(
  client: ClientBase,
  t: Tables,
  dec: Decrypter,
  storeId: string,
  place: string,
): Promise<LoadedSegment> {
  const seg = await readSegmentId(client, t, place);
  const { rows } = await client.query<{ hlen: number; slen: number; header: Buffer | null; snapshot: Buffer | null }>(
    `SELECT length(header) AS hlen, length(snapshot) AS slen,
            CASE WHEN length(header) <= $2 THEN header END AS header,
            CASE WHEN length(snapshot) <= $3 THEN snapshot END AS snapshot
       FROM ${t.segments} WHERE id = $1`,
    [seg.id, MAX_HEADER, MAX_SNAPSHOT],
  );
  const row = rows[0];
  if (!row) throw corrupt(`${place}: segment ${seg.id} vanished while it was read`);
  const name = `segment ${seg.id} in ${place}`;
  if (!row.header) throw corrupt(`the header of ${name} is ${row.hlen} bytes, more than the ${MAX_HEADER}-byte limit`);
  if (!row.snapshot)
    throw corrupt(`the snapshot of ${name} is ${row.slen} bytes, more than the ${MAX_SNAPSHOT}-byte limit`);
  // The header first: "not to this identity" there is STATE_KEY; the snapshot, an age file to the
  // same recipients, failing after the header opened is damage (or another store's snapshot).
  const header = parseLogHeader(await ageDecrypt(dec, row.header, `the header of ${name}`), `the header of ${name}`);
  const snapshot = parseSnapshot(
    await ageDecrypt(dec, row.snapshot, `the snapshot of ${name}`, 'STATE_CORRUPT'),
    `the snapshot of ${name}`,
  );
  if (header.storeId !== storeId || snapshot.storeId !== storeId)
    throw chainBroken(
      `${name} belongs to store ${header.storeId === storeId ? snapshot.storeId : header.storeId}, not to ${storeId}`,
    );
  if (header.seq !== seg.base || snapshot.seq !== seg.base || header.chainHead !== snapshot.chainHead)
    throw chainBroken(`the header, the snapshot and the base_seq of ${name} do not agree`);
  return { ...seg, header, snapshot };
}

export interface VerifiedRecord extends LogRecord {
  /** The SHA-256 of the plaintext: the chain head after this record. */
  readonly hash: string;
  readonly bytes: number;
}

interface RecordRow {
  seq: string;
  segment: string;
  len: number;
  frame: Buffer | null;
}

/**
 * Reads the records after `after` (at most PAGE_ROWS, and only those that start within PAGE_BYTES of
 * frames), verifies each against the segment and the chain from `head`, and returns them in order.
 * An empty array: no record after `after`.
 */
export async function readRecordPage(
  client: ClientBase,
  t: Tables,
  segment: { id: string; key: Buffer },
  after: number,
  head: string,
  place: string,
  maxRows = PAGE_ROWS,
): Promise<VerifiedRecord[]> {
  const { rows } = await client.query<RecordRow>(
    `SELECT seq::text AS seq, left(segment::text, 64) AS segment, len,
            CASE WHEN len <= $3 THEN frame END AS frame
       FROM (SELECT seq, segment, frame, length(frame) AS len,
                    sum(length(frame)) OVER (ORDER BY seq) AS upto
               FROM ${t.records} WHERE seq > $1 ORDER BY seq LIMIT $2) page
      WHERE upto - len < $4
      ORDER BY page.seq`,
    [after, maxRows, MAX_FRAME, PAGE_BYTES],
  );
  const out: VerifiedRecord[] = [];
  let seq = after;
  let prev = head;
  for (const row of rows) {
    const rowSeq = seqOf(row.seq, `a record's seq in ${place}`);
    const at = `${place}: record ${seq + 1}`;
    if (rowSeq !== seq + 1)
      throw chainBroken(`${at} is missing (the next row is generation ${rowSeq}): records were removed`);
    if (row.segment !== segment.id)
      throw chainBroken(`${at} belongs to segment ${row.segment}, not to the store's segment ${segment.id}`);
    if (!row.frame) throw corrupt(`${at} is ${row.len} bytes, more than the ${MAX_FRAME}-byte limit`);
    const plain = openRecord(segment.key, row.frame);
    if (!plain) throw corrupt(`${at} fails to decrypt: it is damaged, or from another store or segment`);
    const rec = parseRecord(plain);
    if (!rec) throw corrupt(`${at} decrypts but is not a valid record`);
    if (rec.seq !== rowSeq || rec.prev !== prev)
      throw chainBroken(
        `${at} holds generation ${rec.seq}, which does not follow generation ${seq}: records were swapped or replayed`,
      );
    seq = rowSeq;
    prev = sha256hex(plain);
    out.push({ ...rec, hash: prev, bytes: row.frame.length });
  }
  return out;
}
