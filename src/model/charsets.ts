/** The alphabets of `generate.charset`. Shared by validation (entropy, safety) and the generators. */
import type { Generator } from './schema-types.js';

const range = (from: number, to: number) =>
  Array.from({ length: to - from + 1 }, (_, i) => String.fromCharCode(from + i)).join('');
const UPPER = range(65, 90);
const LOWER = range(97, 122);
const DIGITS = range(48, 57);

export const CHARSETS = {
  alphanumeric: UPPER + LOWER + DIGITS,
  hex: `${DIGITS}abcdef`,
  base64url: `${UPPER + LOWER + DIGITS}-_`,
  'ascii-printable': range(0x21, 0x7e),
} as const;

export type Charset = NonNullable<Generator['charset']>;

export const DEFAULT_LENGTH = 32;
export const DEFAULT_CHARSET: Charset = 'alphanumeric';

/** Characters a database password must not contain (defence in depth beside each driver's escaping). */
export const DB_UNSAFE = /['"`\\\s]/;

/** The alphabet of a generator (custom: the characters of `chars`). */
export function alphabetOf(gen: Generator): string {
  const charset = gen.charset ?? DEFAULT_CHARSET;
  return charset === 'custom' ? (gen.chars ?? '') : CHARSETS[charset];
}

/** Bits of entropy of a value drawn uniformly from the generator's alphabet. */
export function entropyBits(gen: Generator): number {
  const charset = gen.charset ?? DEFAULT_CHARSET;
  const size = charset === 'custom' ? new Set(gen.chars ?? '').size : CHARSETS[charset].length;
  return size < 2 ? 0 : (gen.length ?? DEFAULT_LENGTH) * Math.log2(size);
}
