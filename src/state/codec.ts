/**
 * The state store's file formats, free of I/O: the snapshot, the log's header and records, their framing
 * and encryption. store.ts does the reading and writing.
 *
 * snapshot.age  one standard age file (to every recipient) of the JSON
 *               { "format": "rotor-state/1", "storeId", "seq", "chainHead", "entries": { key: value } }
 *               so that `age -d -i IDENTITY snapshot.age` shows it.
 * log.bin       "ROTORLOG", then frames. A frame is an 8-byte header (the body's length as a big-endian
 *               u32, then that u32 with every bit flipped) and the body. The first frame is an age file
 *               (to every recipient) of { "format": "rotor-log/1", "storeId", "seq", "chainHead", "key" }:
 *               the snapshot the log follows, and the log's random 256-bit key. Every other frame is one
 *               batch: nonce (12 bytes) | ChaCha20-Poly1305(key, nonce, { seq, prev, ops }) | tag (16).
 *               `prev` is the SHA-256 (hex) of the previous record's plaintext; the first record's prev is
 *               the header's chainHead. The flipped copy of the length tells a damaged length (corrupt)
 *               from a frame that a crash cut short (torn).
 *
 * Why not one age file per record: age wraps a fresh file key with one X25519 exchange per recipient,
 * and typage's age.encrypt measured 6.3 ms per ~330-byte record with two recipients (decrypt 2.4 ms)
 * on the development machine, against 0.013 ms for ChaCha20-Poly1305 from node:crypto: ten times the
 * 0.5 ms fsync, and 24 s to open a 10,000-record log. So age protects one random key per log file.
 * Why a random nonce rather than one from seq: a failed write's seq is used again by the next write
 * with other content under the same key, and a repeated nonce breaks ChaCha20-Poly1305. Random 96-bit
 * nonces are safe up to 2^32 records per key; a log is compacted after 10,000 by default.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { Decrypter, Encrypter, identityToRecipient } from 'age-encryption';
import type { Json, Op } from './types.js';
import { StateError } from './types.js';
import { checkStoredOps, deepFreeze, MAX_KEY_BYTES } from './values.js';

export const SNAPSHOT_FORMAT = 'rotor-state/1';
export const LOG_FORMAT = 'rotor-log/1';
export const LOG_MAGIC = Buffer.from('ROTORLOG', 'latin1');
export const FRAME_HEADER = 8;
/** A frame longer than this is damage, never a reason to allocate. */
export const MAX_FRAME = 64 * 1024 * 1024;
/** The largest snapshot.age that is read (and written). */
export const MAX_SNAPSHOT = 256 * 1024 * 1024;
const NONCE = 12;
const TAG = 16;
const HEX64 = /^[0-9a-f]{64}$/;

export function sha256hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** The chain head of a new store (seq 0). */
export function genesisHead(storeId: string): string {
  return sha256hex(`${SNAPSHOT_FORMAT} genesis ${storeId}`);
}

export function frame(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(FRAME_HEADER + body.length);
  out.writeUInt32BE(body.length, 0);
  out.writeUInt32BE(~body.length >>> 0, 4);
  out.set(body, FRAME_HEADER);
  return out;
}

/**
 * What the bytes at a frame's start say, given how many bytes remain in the file:
 * a body length, 'torn' (the file ends inside the frame) or 'bad' (the header is damaged).
 */
export function frameLength(header: Uint8Array, remaining: number): number | 'torn' | 'bad' {
  if (remaining < FRAME_HEADER) return 'torn';
  const b = Buffer.from(header.buffer, header.byteOffset, FRAME_HEADER);
  const len = b.readUInt32BE(0);
  if (~len >>> 0 !== b.readUInt32BE(4) || len > MAX_FRAME) return 'bad';
  return len > remaining - FRAME_HEADER ? 'torn' : len;
}

/** The frames of a whole log file, for tools and tests: [start, end) of each, and a torn tail if any. */
export function splitFrames(log: Uint8Array): { frames: [number, number][]; torn?: number } {
  if (log.length < LOG_MAGIC.length || !LOG_MAGIC.equals(log.subarray(0, LOG_MAGIC.length)))
    throw new Error('not a rotor log');
  const frames: [number, number][] = [];
  let pos = LOG_MAGIC.length;
  while (pos < log.length) {
    const len = frameLength(log.subarray(pos, pos + FRAME_HEADER), log.length - pos);
    if (len === 'bad') throw new Error(`damaged frame header at ${pos}`);
    if (len === 'torn') return { frames, torn: pos };
    frames.push([pos, pos + FRAME_HEADER + len]);
    pos += FRAME_HEADER + len;
  }
  return { frames };
}

// --- records ---------------------------------------------------------------------------------------

export function recordPlaintext(seq: number, prev: string, opsJson: string): Buffer {
  return Buffer.from(`{"seq":${seq},"prev":"${prev}","ops":${opsJson}}`, 'utf8');
}

/** A framed, encrypted record. */
export function sealRecord(key: Uint8Array, plaintext: Uint8Array, nonce: Uint8Array = randomBytes(NONCE)): Buffer {
  const cipher = createCipheriv('chacha20-poly1305', key, nonce, { authTagLength: TAG });
  const body = Buffer.concat([nonce, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return frame(body);
}

/** The plaintext of a record's frame body, or undefined if it does not authenticate. */
export function openRecord(key: Uint8Array, body: Uint8Array): Buffer | undefined {
  if (body.length < NONCE + TAG) return undefined;
  const decipher = createDecipheriv('chacha20-poly1305', key, body.subarray(0, NONCE), { authTagLength: TAG });
  decipher.setAuthTag(body.subarray(body.length - TAG));
  try {
    return Buffer.concat([decipher.update(body.subarray(NONCE, body.length - TAG)), decipher.final()]);
  } catch {
    return undefined;
  }
}

export interface LogRecord {
  readonly seq: number;
  readonly prev: string;
  readonly ops: readonly Op[];
}

export function parseRecord(plaintext: Buffer): LogRecord | undefined {
  let r: unknown;
  try {
    r = JSON.parse(plaintext.toString('utf8'));
  } catch {
    return undefined; // the SyntaxError quotes the plaintext: never pass it on
  }
  if (r === null || typeof r !== 'object') return undefined;
  const { seq, prev, ops } = r as { seq?: unknown; prev?: unknown; ops?: unknown };
  if (!Number.isSafeInteger(seq) || (seq as number) < 1 || typeof prev !== 'string' || !HEX64.test(prev))
    return undefined;
  const checked = checkStoredOps(ops);
  return checked && { seq: seq as number, prev, ops: checked };
}

// --- age ---------------------------------------------------------------------------------------------

export function encrypter(recipients: readonly string[]): Encrypter {
  const e = new Encrypter();
  for (const r of recipients) e.addRecipient(r);
  return e;
}

export function decrypter(identity: string): Decrypter {
  const d = new Decrypter();
  d.addIdentity(identity);
  return d;
}

/**
 * The age encrypter and decrypter of a store, after checking the options every backend takes: an age
 * identity, and recipients that include its own (or the store could not be opened again). Plain Errors.
 */
export async function storeCrypto(
  identity: string,
  recipients: readonly string[],
): Promise<{ enc: Encrypter; dec: Decrypter }> {
  let own: string;
  try {
    own = await identityToRecipient(identity);
  } catch {
    throw new Error('the state store identity is not an age identity (AGE-SECRET-KEY-1...)');
  }
  const unique = [...new Set(recipients)];
  if (!unique.includes(own)) {
    throw new Error(
      `the state store recipients must include the identity's own recipient ${own}, or the store could not be opened again`,
    );
  }
  return { enc: encrypter(unique), dec: decrypter(identity) }; // encrypter throws on a malformed recipient
}

/** Decrypts an age file; STATE_KEY when none of its recipients is the identity, else STATE_CORRUPT. */
export async function ageDecrypt(
  d: Decrypter,
  file: Uint8Array,
  what: string,
  keyCode: 'STATE_KEY' | 'STATE_CORRUPT' = 'STATE_KEY',
): Promise<Buffer> {
  try {
    return Buffer.from(await d.decrypt(file));
  } catch (e) {
    // age-encryption 0.3.1's words for "no stanza opens with this identity"; anything else is damage.
    if (e instanceof Error && /no identity matched/.test(e.message)) {
      throw new StateError(
        keyCode,
        `${what} is not encrypted to this identity (wrong identity, or the file was replaced)`,
        { cause: e },
      );
    }
    throw new StateError('STATE_CORRUPT', `${what} fails to decrypt: it is damaged`, { cause: e });
  }
}

// --- snapshot and log header -----------------------------------------------------------------------

export interface SnapshotHead {
  readonly storeId: string;
  readonly seq: number;
  readonly chainHead: string;
}

export interface Snapshot extends SnapshotHead {
  readonly entries: Map<string, Json>;
}

export function encodeSnapshot(
  head: SnapshotHead,
  keys: readonly string[],
  get: (key: string) => Json | undefined,
): string {
  const lines = keys.map((k) => `    ${JSON.stringify(k)}: ${JSON.stringify(get(k))}`);
  const entries = lines.length === 0 ? '{}' : `{\n${lines.join(',\n')}\n  }`;
  return `{\n  "format": "${SNAPSHOT_FORMAT}",\n  "storeId": ${JSON.stringify(head.storeId)},\n  "seq": ${head.seq},\n  "chainHead": "${head.chainHead}",\n  "entries": ${entries}\n}\n`;
}

function parseObject(text: Buffer): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(text.toString('utf8'));
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined; // the SyntaxError quotes the plaintext: never pass it on
  }
}

function checkHead(o: Record<string, unknown>, format: string): SnapshotHead | undefined {
  const { storeId, seq, chainHead } = o;
  if (o.format !== format || typeof storeId !== 'string' || storeId.length === 0 || storeId.length > 200)
    return undefined;
  if (!Number.isSafeInteger(seq) || (seq as number) < 0 || typeof chainHead !== 'string' || !HEX64.test(chainHead))
    return undefined;
  return { storeId, seq: seq as number, chainHead };
}

export function parseSnapshot(plaintext: Buffer, what: string): Snapshot {
  const o = parseObject(plaintext);
  const head = o && checkHead(o, SNAPSHOT_FORMAT);
  const entries = o?.entries;
  if (!head || entries === null || typeof entries !== 'object' || Array.isArray(entries)) {
    throw new StateError('STATE_CORRUPT', `${what} decrypts but is not a ${SNAPSHOT_FORMAT} snapshot`);
  }
  const map = new Map<string, Json>();
  for (const [k, v] of Object.entries(entries as Record<string, Json>)) {
    if (k.length === 0 || Buffer.byteLength(k) > MAX_KEY_BYTES)
      throw new StateError('STATE_CORRUPT', `${what} holds an invalid key`);
    map.set(k, deepFreeze(v));
  }
  return { ...head, entries: map };
}

export interface LogHeader extends SnapshotHead {
  readonly key: Buffer;
}

export function encodeLogHeader(h: LogHeader): string {
  return JSON.stringify({
    format: LOG_FORMAT,
    storeId: h.storeId,
    seq: h.seq,
    chainHead: h.chainHead,
    key: h.key.toString('base64'),
  });
}

export function parseLogHeader(plaintext: Buffer, what = 'the header of log.bin'): LogHeader {
  const o = parseObject(plaintext);
  const head = o && checkHead(o, LOG_FORMAT);
  const key = typeof o?.key === 'string' ? Buffer.from(o.key, 'base64') : undefined;
  if (!head || !key || key.length !== 32)
    throw new StateError('STATE_CORRUPT', `${what} decrypts but is not a ${LOG_FORMAT} header`);
  return { ...head, key };
}
