/**
 * Generating secret values: each character drawn uniformly from the charset with the operating
 * system's cryptographic random source, by rejection sampling (a byte at or above the largest multiple
 * of the alphabet size is thrown away), so that no character is more likely than another.
 */
import { randomBytes } from 'node:crypto';
import { alphabetOf, DEFAULT_LENGTH } from '../model/charsets.js';
import type { Generator, Secret } from '../model/schema-types.js';

/** Fills a buffer with random bytes; node:crypto's randomBytes unless a test passes another. */
export type RandomSource = (size: number) => Buffer;

/** A random string of `length` characters drawn uniformly from `alphabet` (2 to 256 distinct characters). */
export function randomString(alphabet: string, length: number, random: RandomSource = randomBytes): string {
  const n = alphabet.length;
  if (n < 2 || n > 256) throw new RangeError(`an alphabet needs 2 to 256 characters, not ${n}`);
  const limit = 256 - (256 % n); // bytes below limit map evenly onto the alphabet
  let out = '';
  while (out.length < length) {
    // Ask for a little more than needed: about (256 - limit) / 256 of the bytes are rejected.
    const bytes = random(Math.ceil(((length - out.length) * 256) / limit) + 8);
    for (let i = 0; i < bytes.length && out.length < length; i++) {
      const b = bytes[i]!;
      if (b < limit) out += alphabet[b % n];
    }
  }
  return out;
}

export function generate(gen: Generator, random: RandomSource = randomBytes): string {
  return randomString(alphabetOf(gen), gen.length ?? DEFAULT_LENGTH, random);
}

/** A secret's value: a string, or for `fields` an object of generated and static fields. */
export type SecretValue = string | { readonly [field: string]: string };

/** The next value of a generated or structured secret (sops secrets are not generated: undefined). */
export function generateSecretValue(secret: Secret, random: RandomSource = randomBytes): SecretValue | undefined {
  if (secret.generate) return generate(secret.generate, random);
  if (secret.fields) {
    const out: Record<string, string> = {};
    for (const [name, field] of Object.entries(secret.fields)) {
      out[name] = field.generate ? generate(field.generate, random) : (field.value ?? '');
    }
    return out;
  }
  return undefined;
}
