/**
 * Values the daemon sends to an agent (new credentials for a job) travel sealed: the JSON of the payload,
 * encrypted with age to the agent's recipient (its Agent declaration's `recipient`), in age's ASCII armor
 * so that it fits in a JSON string and an operator can open it with `age -d -i identity.age`.
 *
 * Sealing gives confidentiality only: anyone can encrypt to a public recipient. That the sealed text
 * comes from the daemon is proved by the signature on the answer that carries it (sign.ts); open only
 * what arrived in an answer that verifyResponse accepted.
 *
 * No error carries the plaintext, in its message or its cause: JSON's errors quote their input, so they
 * are never passed on; age's errors are about the ciphertext and are kept as cause.
 */
import { armor, Decrypter, Encrypter } from 'age-encryption';
import { RotorError } from '../errors.js';

/** The largest JSON payload that is sealed, and opened, in bytes. */
export const MAX_SEALED_PAYLOAD = 256 * 1024;
/** The longest sealed text that is opened (the armored age file of a MAX_SEALED_PAYLOAD payload fits). */
export const MAX_SEALED_TEXT = 512 * 1024;
const MAX_KEY_TEXT = 4096;

export type SealErrorCode =
  | 'SEAL_RECIPIENT' // not an age recipient
  | 'SEAL_IDENTITY' // not an age identity
  | 'SEAL_UNSERIALIZABLE' // the payload has no JSON form
  | 'SEAL_TOO_LARGE' // the payload or the sealed text is over its bound
  | 'SEAL_MALFORMED' // the sealed text is not an armored age file
  | 'SEAL_WRONG_KEY' // sealed to someone else (or by someone who thought so)
  | 'SEAL_CORRUPT' // sealed to this identity but damaged or tampered with
  | 'SEAL_NOT_JSON'; // decrypts, but not to UTF-8 JSON

/** Every code needs a person (a key, a sender, a payload): never retried as it is. */
export class SealError extends RotorError {
  declare readonly code: SealErrorCode;
  constructor(code: SealErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, { cause: options?.cause });
  }
}

/**
 * The armored age encryption of JSON.stringify(payload) to `recipient` (age1...); `maxPayload` bounds
 * the JSON (default MAX_SEALED_PAYLOAD; the agent's sealed cache of consumer values allows more).
 */
export async function sealForAgent(
  recipient: string,
  payload: unknown,
  maxPayload = MAX_SEALED_PAYLOAD,
): Promise<string> {
  const enc = new Encrypter();
  try {
    if (typeof recipient !== 'string' || recipient.length > MAX_KEY_TEXT || !recipient.startsWith('age1'))
      throw new Error('not age1...');
    enc.addRecipient(recipient);
  } catch (e) {
    throw new SealError('SEAL_RECIPIENT', "the agent's recipient is not an age recipient (age1...)", { cause: e });
  }
  let json: string | undefined;
  try {
    json = JSON.stringify(payload);
  } catch {
    json = undefined; // a BigInt or a cycle; the error may name the payload's properties: not passed on
  }
  if (json === undefined)
    throw new SealError(
      'SEAL_UNSERIALIZABLE',
      'the payload has no JSON form (undefined, a function, a BigInt or a cycle)',
    );
  const bytes = Buffer.from(json, 'utf8');
  if (bytes.length > maxPayload)
    throw new SealError(
      'SEAL_TOO_LARGE',
      `the payload is ${bytes.length} bytes of JSON, over the ${maxPayload}-byte limit`,
    );
  return armor.encode(await enc.encrypt(bytes));
}

/** The payload of a sealed text, opened with the agent's age identity (AGE-SECRET-KEY-1...); `maxPayload` as for sealForAgent. */
export async function openSealed(identity: string, sealed: string, maxPayload = MAX_SEALED_PAYLOAD): Promise<unknown> {
  const dec = new Decrypter();
  try {
    if (typeof identity !== 'string' || identity.length > MAX_KEY_TEXT || !identity.startsWith('AGE-SECRET-KEY-'))
      throw new Error('not AGE-SECRET-KEY-...');
    dec.addIdentity(identity);
  } catch {
    // The identity is a secret: neither it nor an error that might quote it goes anywhere.
    throw new SealError('SEAL_IDENTITY', "the agent's identity is not an age identity (AGE-SECRET-KEY-1...)");
  }
  if (typeof sealed !== 'string') throw new SealError('SEAL_MALFORMED', 'the sealed value is not a string');
  const maxText = maxPayload === MAX_SEALED_PAYLOAD ? MAX_SEALED_TEXT : Math.ceil(maxPayload * 1.4) + 4096;
  if (sealed.length > maxText) throw new SealError('SEAL_TOO_LARGE', `the sealed text is over ${maxText} characters`);
  let file: Uint8Array;
  try {
    file = armor.decode(sealed);
  } catch (e) {
    throw new SealError('SEAL_MALFORMED', 'the sealed text is not an armored age file', { cause: e });
  }
  let plaintext: Uint8Array;
  try {
    plaintext = await dec.decrypt(file);
  } catch (e) {
    // age-encryption 0.3.1's words for "no stanza opens with this identity" (as in src/state/codec.ts).
    if (e instanceof Error && /no identity matched/.test(e.message)) {
      throw new SealError('SEAL_WRONG_KEY', "the sealed text is not encrypted to this agent's identity", { cause: e });
    }
    throw new SealError('SEAL_CORRUPT', 'the sealed text fails to decrypt: it is damaged or was tampered with', {
      cause: e,
    });
  }
  if (plaintext.length > maxPayload)
    throw new SealError('SEAL_TOO_LARGE', `the sealed payload is over ${maxPayload} bytes`);
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(plaintext)) as unknown;
  } catch {
    throw new SealError('SEAL_NOT_JSON', 'the sealed text decrypts, but not to JSON'); // no cause: it would quote the plaintext
  }
}
