/**
 * Decryption: the data key from the age entries, and each `ENC[AES256_GCM,...]` value (aes/cipher.go)
 * with that key.
 */
import { createDecipheriv } from 'node:crypto';
import { armor, Decrypter } from 'age-encryption';
import { RotorError } from '../errors.js';
import { INT64_MAX, INT64_MIN } from './go-number.js';
import type { Metadata } from './metadata.js';
import { SopsError } from './types.js';

export async function unwrapDataKey(meta: Metadata, identities: readonly string[], name: string): Promise<Buffer> {
  const decrypter = new Decrypter();
  for (const id of identities) decrypter.addIdentity(id);
  let malformed = false;
  for (const { enc } of meta.ageKeys) {
    let file: Uint8Array;
    try {
      file = armor.decode(enc);
    } catch {
      malformed = true;
      continue;
    }
    let key: Uint8Array;
    try {
      key = await decrypter.decrypt(file);
    } catch (e) {
      if (!/no identity matched/.test(String((e as Error).message))) malformed = true;
      continue;
    }
    if (key.length !== 32) throw new SopsError('SOPS_CORRUPT', `${name}: the data key is not 32 bytes`);
    return Buffer.from(key);
  }
  if (meta.ageKeys.length === 0) {
    const others = meta.otherKeyTypes.length ? ` (only ${meta.otherKeyTypes.join(', ')})` : '';
    throw new SopsError(
      'SOPS_NO_MATCHING_KEY',
      `${name} is not encrypted to any age recipient${others}; add the agent's recipient: sops updatekeys, or sops rotate --add-age <recipient>`,
    );
  }
  const recipients = meta.ageKeys.map((k) => k.recipient).join(', ');
  throw new SopsError(
    'SOPS_NO_MATCHING_KEY',
    `${name} cannot be opened with the agent's identity: it is encrypted to ${recipients}${malformed ? ' (and an entry that does not decrypt cleanly)' : ''}; add the agent's age recipient to the file (sops rotate --add-age <recipient>)`,
  );
}

/** A decrypted value, typed as its `type:` says. */
export type Plain =
  | { k: 'str'; v: string; bytes: Buffer }
  | { k: 'int'; v: bigint }
  | { k: 'float'; v: number }
  | { k: 'bool'; v: boolean }
  | { k: 'bytes'; v: Buffer };

const ENC = /^ENC\[AES256_GCM,data:([A-Za-z0-9+/=]+),iv:([A-Za-z0-9+/=]+),tag:([A-Za-z0-9+/=]+),type:([a-z0-9]+)\]$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** GCM refused a value (internal: the caller turns it into SOPS_MAC_MISMATCH). */
export class AuthFailure extends RotorError {
  constructor() {
    super('SOPS_MAC_MISMATCH', 'a value does not authenticate');
  }
}

/** aes/cipher.go Decrypt. Throws AuthFailure when GCM refuses (the value or its path changed). */
export function decryptValue(text: string, key: Buffer, aad: string, where: () => string, name: string): Plain {
  if (text === '') return { k: 'str', v: '', bytes: Buffer.alloc(0) };
  const m = ENC.exec(text);
  if (!m || !BASE64.test(m[1]!) || !BASE64.test(m[2]!) || !BASE64.test(m[3]!)) {
    throw new SopsError(
      'SOPS_CORRUPT',
      `${name}: ${where()} should hold an encrypted value (ENC[AES256_GCM,...]) and does not`,
    );
  }
  const [data, iv, tag] = [m[1]!, m[2]!, m[3]!].map((b) => Buffer.from(b, 'base64')) as [Buffer, Buffer, Buffer];
  const type = m[4]!;
  if (iv.length === 0 || tag.length !== 16)
    throw new SopsError('SOPS_CORRUPT', `${name}: ${where()} has a malformed IV or tag`);
  let out: Buffer;
  try {
    const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
    d.setAAD(Buffer.from(aad, 'utf8'));
    d.setAuthTag(tag);
    out = Buffer.concat([d.update(data), d.final()]);
  } catch {
    throw new AuthFailure();
  }
  const s = out.toString('utf8');
  const bad = () => new SopsError('SOPS_CORRUPT', `${name}: ${where()} does not hold a valid ${type}`);
  switch (type) {
    case 'str':
      return { k: 'str', v: s, bytes: out };
    case 'int':
    case 'int64': {
      // strconv.Atoi / ParseInt(s, 10, 64)
      if (!/^[+-]?[0-9]+$/.test(s)) throw bad();
      const n = BigInt(s);
      if (n < INT64_MIN || n > INT64_MAX) throw bad();
      return { k: 'int', v: n };
    }
    case 'float': {
      // strconv.ParseFloat(s, 64) of what FormatFloat writes (decimal, NaN, +Inf, -Inf)
      if (/^[+-]?(?:inf|infinity)$/i.test(s)) return { k: 'float', v: s.startsWith('-') ? -Infinity : Infinity };
      if (/^[+-]?nan$/i.test(s)) return { k: 'float', v: NaN };
      // Not [0-9]+\.?[0-9]*: two ways to split the digits of "111...1x", quadratic on a 4 MB value.
      if (!/^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/.test(s)) throw bad();
      const f = Number(s);
      if (!Number.isFinite(f)) throw bad();
      return { k: 'float', v: f };
    }
    case 'bool': {
      // strconv.ParseBool
      if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(s)) return { k: 'bool', v: true };
      if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(s)) return { k: 'bool', v: false };
      throw bad();
    }
    case 'bytes':
      return { k: 'bytes', v: out };
    case 'comment':
      throw new SopsError('SOPS_CORRUPT', `${name}: ${where()} holds an encrypted comment where a value belongs`);
    default:
      throw new SopsError('SOPS_UNSUPPORTED', `${name}: ${where()} has the unknown SOPS type "${type}"`);
  }
}
