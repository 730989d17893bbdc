/**
 * Keyed fingerprints of secret values, the only trace of a value the audit log may hold.
 *
 * fingerprint(key, value) = "hmac-sha256:" + the first 16 bytes of HMAC-SHA256(key, canonical JSON of
 * the value), base64url. The daemon keeps the key secret. What it allows: an operator who holds the
 * key and a candidate value can compute its fingerprint and see whether that value was version N (the
 * entry that made version N current carries it), e.g. to tell which version leaked. Nothing more:
 * without the key a fingerprint says nothing about the value (not even for short or guessable values,
 * as long as the key is not known), and with the key one can only test candidates, never recover a
 * value. Two versions with the same value have the same fingerprint. 128 bits are kept: enough that two
 * different values do not collide by chance.
 */
import { createHmac } from 'node:crypto';

/** A fingerprint key shorter than this is refused. */
export const MIN_FINGERPRINT_KEY_BYTES = 16;

/**
 * Canonical JSON: object keys sorted (by code unit), no spaces, arrays in order, strings and numbers
 * as JSON.stringify writes them. Refuses what JSON cannot hold (undefined, functions, non-finite numbers,
 * cycles), so that no two different values share a serialization.
 */
export function canonicalJson(value: unknown): string {
  const seen = new Set<object>();
  const walk = (v: unknown): string => {
    if (v === null || typeof v === 'boolean' || typeof v === 'string') return JSON.stringify(v);
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw new TypeError('canonical JSON: a number must be finite');
      return JSON.stringify(v);
    }
    if (typeof v !== 'object') throw new TypeError(`canonical JSON: cannot serialize a ${typeof v}`);
    if (seen.has(v)) throw new TypeError('canonical JSON: the value has a cycle');
    seen.add(v);
    let out: string;
    if (Array.isArray(v)) {
      out = `[${v.map(walk).join(',')}]`;
    } else {
      const proto = Object.getPrototypeOf(v);
      if (proto !== Object.prototype && proto !== null)
        throw new TypeError('canonical JSON: only plain objects and arrays');
      const keys = Object.keys(v).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      out = `{${keys.map((k) => `${JSON.stringify(k)}:${walk((v as Record<string, unknown>)[k])}`).join(',')}}`;
    }
    seen.delete(v);
    return out;
  };
  return walk(value);
}

/** The keyed fingerprint of a secret value (a string, or a structured secret's object of fields). */
export function fingerprint(key: Buffer, value: string | object): string {
  if (!Buffer.isBuffer(key) || key.length < MIN_FINGERPRINT_KEY_BYTES) {
    throw new TypeError(`a fingerprint key must be at least ${MIN_FINGERPRINT_KEY_BYTES} random bytes`);
  }
  const mac = createHmac('sha256', key).update(canonicalJson(value), 'utf8').digest();
  return `hmac-sha256:${mac.subarray(0, 16).toString('base64url')}`;
}
