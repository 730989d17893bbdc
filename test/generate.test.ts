/** Value generators: uniform choice by rejection sampling, every charset, structured secrets. */
import t from 'tap';
import { CHARSETS } from '../src/model/charsets.js';
import { generate, generateSecretValue, randomString } from '../src/rotation/generate.js';

t.test('bytes at or above the largest multiple of the alphabet size are rejected', async (t) => {
  // 62 characters: 256 % 62 = 8, so bytes 248..255 must be thrown away, never mapped to "A".."H".
  const script = [Buffer.from([248, 255, 0, 61, 62, 247])];
  let asked = 0;
  const random = (n: number) => {
    asked++;
    const next = script.shift() ?? Buffer.alloc(n, 1);
    return next;
  };
  const s = randomString(CHARSETS.alphanumeric, 4, random);
  t.equal(s, 'A9A9', '248 and 255 skipped; 0 -> A, 61 -> 9, 62 -> A (62 % 62), 247 -> 9 (247 % 62 = 61)');
  t.equal(asked, 1);
});

t.test('every character of the alphabet is equally likely', async (t) => {
  const alphabet = CHARSETS.alphanumeric;
  const s = randomString(alphabet, 620_000);
  const counts = new Map<string, number>();
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  t.equal(counts.size, 62, 'all 62 characters occur');
  // Expected 10,000 each, standard deviation about 99: a modulo bias (8 of 62 characters at 5/4 the
  // odds) would put those near 12,000. Allow six standard deviations.
  for (const [c, n] of counts) t.ok(Math.abs(n - 10_000) < 600, `${c}: ${n}`);
});

t.test('each charset gives only its own characters, at the length asked', async (t) => {
  for (const charset of ['alphanumeric', 'hex', 'base64url', 'ascii-printable'] as const) {
    const v = generate({ length: 200, charset });
    t.equal(v.length, 200);
    t.ok(
      [...v].every((c) => CHARSETS[charset].includes(c)),
      charset,
    );
  }
  const custom = generate({ length: 50, charset: 'custom', chars: 'xyz' });
  t.match(custom, /^[xyz]{50}$/);
  t.equal(generate({}).length, 32, 'length defaults to 32');
  t.match(generate({}), /^[A-Za-z0-9]{32}$/, 'charset defaults to alphanumeric');
});

t.test('structured secrets generate each field and keep static ones', async (t) => {
  const v = generateSecretValue({
    kind: 'Secret',
    name: 'a/b',
    policy: 'p',
    fields: { token: { generate: { length: 40, charset: 'base64url' } }, region: { value: 'eu-west-1' } },
  });
  t.match(v, { token: /^[A-Za-z0-9_-]{40}$/, region: 'eu-west-1' });
  t.equal(
    generateSecretValue({ kind: 'Secret', name: 'a/c', policy: 'p', sops: { file: 'x', key: 'y' } }),
    undefined,
    'sops values are not generated',
  );
  const a = generateSecretValue({ kind: 'Secret', name: 'a/d', policy: 'p', generate: { length: 32 } });
  const b = generateSecretValue({ kind: 'Secret', name: 'a/d', policy: 'p', generate: { length: 32 } });
  t.not(a, b);
});
