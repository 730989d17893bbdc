/**
 * Throwaway Ed25519 keys as OpenSSH private key files (openssh-key-v1, unencrypted), for tests that
 * compare rotor's in-process signatures with what ssh-keygen and `git commit -S` make from the same
 * key. Test-only: rotor itself never writes a private key in a form ssh-keygen reads; these keys are
 * made by the test and sign nothing else.
 */
import type { KeyObject } from 'node:crypto';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function str(data: Buffer | string): Buffer {
  const b = typeof data === 'string' ? Buffer.from(data) : data;
  return Buffer.concat([u32(b.length), b]);
}

/** Writes `key` (an Ed25519 private key) to `file`, mode 0600, as ssh-keygen reads it. */
export function writeOpensshKey(file: string, key: KeyObject): void {
  const pub = Buffer.from(createPublicKey(key).export({ format: 'jwk' }).x!, 'base64url');
  const seed = Buffer.from(key.export({ format: 'jwk' }).d!, 'base64url');
  const blob = Buffer.concat([str('ssh-ed25519'), str(pub)]);
  let section = Buffer.concat([
    u32(0x5eed5eed),
    u32(0x5eed5eed),
    str('ssh-ed25519'),
    str(pub),
    str(Buffer.concat([seed, pub])),
    str('test'),
  ]);
  for (let pad = 1; section.length % 8 !== 0; pad++) section = Buffer.concat([section, Buffer.from([pad])]);
  const body = Buffer.concat([
    Buffer.from('openssh-key-v1\0'),
    str('none'),
    str('none'),
    str(''),
    u32(1),
    str(blob),
    str(section),
  ]);
  const b64 = body
    .toString('base64')
    .match(/.{1,70}/g)!
    .join('\n');
  writeFileSync(file, `-----BEGIN OPENSSH PRIVATE KEY-----\n${b64}\n-----END OPENSSH PRIVATE KEY-----\n`, {
    mode: 0o600,
  });
}

/** A new throwaway Ed25519 private key. */
export function throwawayKey(): KeyObject {
  return generateKeyPairSync('ed25519').privateKey;
}
