/**
 * The MAC (sops.go ToBytes, Tree.Decrypt): SHA-512 over the bytes of every value in document order,
 * or with `mac_only_encrypted` over the encrypted ones after SHA-256("sops"); stored upper-case hex,
 * encrypted with `sops.lastmodified` as the additional data.
 */
import { createHash, type Hash, timingSafeEqual } from 'node:crypto';
import { AuthFailure, decryptValue, type Plain } from './cipher.js';
import { goFormatFloat } from './go-number.js';
import type { Metadata } from './metadata.js';
import type { Leaf } from './tree.js';
import { SopsError } from './types.js';

/** sops.go ToBytes: what a value contributes to the MAC. */
export function macBytes(v: Plain | Leaf): Buffer {
  switch (v.k) {
    case 'str':
      return 'bytes' in v ? v.bytes : Buffer.from(v.v, 'utf8');
    case 'int':
      return Buffer.from(v.v.toString(), 'utf8');
    case 'float':
      return Buffer.from(goFormatFloat(v.v), 'utf8');
    case 'bool':
      return Buffer.from(v.v ? 'True' : 'False', 'utf8');
    case 'bytes':
      return v.v;
    case 'null':
      return Buffer.alloc(0);
  }
}

/** The SHA-256 of "sops": how SOPS starts the hash when mac_only_encrypted is set. */
const MAC_ONLY_ENCRYPTED_INIT = createHash('sha256').update('sops').digest();

/** The hash a file's values go into, in document order (macBytes). */
export function macHash(macOnlyEncrypted: boolean): Hash {
  const hash = createHash('sha512');
  if (macOnlyEncrypted) hash.update(MAC_ONLY_ENCRYPTED_INIT);
  return hash;
}

/** Checks the stored MAC (sops.mac) against `hash`, which has taken every value; SOPS_MAC_MISMATCH if not. */
export function checkMac(hash: Hash, meta: Metadata, key: Buffer, name: string): void {
  const computed = Buffer.from(hash.digest('hex').toUpperCase(), 'utf8');
  if (meta.mac === undefined)
    throw new SopsError('SOPS_MAC_MISMATCH', `${name} has no MAC (sops.mac); re-encrypt it with sops`);
  let stored: Plain;
  try {
    stored = decryptValue(meta.mac, key, meta.lastModifiedAad, () => 'sops.mac', name);
  } catch (e) {
    if (e instanceof AuthFailure)
      throw new SopsError(
        'SOPS_MAC_MISMATCH',
        `${name}: the MAC does not authenticate (sops.mac or sops.lastmodified was changed)`,
      );
    throw e;
  }
  const storedBytes = stored.k === 'str' ? stored.bytes : Buffer.alloc(0);
  if (storedBytes.length !== computed.length || !timingSafeEqual(storedBytes, computed)) {
    throw new SopsError(
      'SOPS_MAC_MISMATCH',
      `${name} was changed after SOPS encrypted it: its MAC does not match its ${meta.macOnlyEncrypted ? 'encrypted values' : 'values'} (a value was edited, added, removed or reordered)`,
    );
  }
}
