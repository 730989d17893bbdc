/**
 * The daemon's keys in its data directory, made by `rotor keygen DIR`:
 *   identity.age   the age X25519 identity that decrypts the state store (as age-keygen writes it)
 *   signing.key    the Ed25519 private key (PKCS#8 PEM) that signs the daemon's answers to agents
 * Both are created with mode 0600 and never overwritten.
 */

import type { KeyObject } from 'node:crypto';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import { RotorError } from './errors.js';

export const IDENTITY_FILE = 'identity.age';
export const SIGNING_FILE = 'signing.key';

export type KeyErrorCode = 'KEYS_MISSING' | 'KEYS_EXIST' | 'KEYS_PERMISSIONS' | 'KEYS_INVALID';

/** Every code needs a person (a key file missing, present, too open or invalid): never retried. */
export class KeyError extends RotorError {
  declare readonly code: KeyErrorCode;
  constructor(code: KeyErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, { cause: options?.cause });
  }
}

export interface PublicKeys {
  /** age1...: encrypt to it. */
  readonly recipient: string;
  /** ed25519:<base64 of the 32-byte public key>: verify with it. */
  readonly signingKey: string;
}

export interface Keys extends PublicKeys {
  readonly identity: string;
  readonly signing: KeyObject;
}

/** `ed25519:<base64>` of an Ed25519 public key. */
export function formatSigningKey(publicKey: KeyObject): string {
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x!, 'base64url');
  return `ed25519:${raw.toString('base64')}`;
}

/** The KeyObject of an `ed25519:<base64>` public key. */
export function parseSigningKey(text: string): KeyObject {
  const m = /^ed25519:([A-Za-z0-9+/]{43}=)$/.exec(text);
  const raw = m ? Buffer.from(m[1]!, 'base64') : undefined;
  if (raw?.length !== 32) throw new KeyError('KEYS_INVALID', 'a signing key is "ed25519:" and the base64 of 32 bytes');
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
}

/** Creates the keys in `dir` (made 0700 if missing). Refuses to replace existing keys. */
export async function generateKeys(dir: string, now: Date = new Date()): Promise<PublicKeys> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const identity = await generateX25519Identity();
  const recipient = await identityToRecipient(identity);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const signingKey = formatSigningKey(publicKey);
  const files: [string, string][] = [
    [IDENTITY_FILE, `# created: ${now.toISOString()}\n# public key: ${recipient}\n${identity}\n`],
    [
      SIGNING_FILE,
      `# rotor signing key, public: ${signingKey}\n${privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()}`,
    ],
  ];
  for (const [name] of files) {
    if (await stat(path.join(dir, name)).catch(() => undefined)) {
      throw new KeyError(
        'KEYS_EXIST',
        `${path.join(dir, name)} already exists; rotor keygen never replaces keys (move them away first if you really mean to)`,
      );
    }
  }
  for (const [name, text] of files) await writeFile(path.join(dir, name), text, { mode: 0o600, flag: 'wx' });
  return { recipient, signingKey };
}

async function readKeyFile(dir: string, name: string): Promise<string> {
  const file = path.join(dir, name);
  const st = await stat(file).catch(() => undefined);
  if (!st)
    throw new KeyError('KEYS_MISSING', `${file} does not exist; create the daemon's keys with: rotor keygen ${dir}`);
  if ((st.mode & 0o077) !== 0) {
    throw new KeyError(
      'KEYS_PERMISSIONS',
      `${file} is readable by other users (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`,
    );
  }
  return readFile(file, 'utf8');
}

/** Loads the keys of a data directory, checking that only their owner can read them. */
export async function loadKeys(dir: string): Promise<Keys> {
  const identityText = await readKeyFile(dir, IDENTITY_FILE);
  const identity = identityText.split('\n').find((l) => l.startsWith('AGE-SECRET-KEY-1'));
  if (!identity)
    throw new KeyError('KEYS_INVALID', `${path.join(dir, IDENTITY_FILE)} holds no age identity (AGE-SECRET-KEY-1...)`);
  let recipient: string;
  try {
    recipient = await identityToRecipient(identity);
  } catch (e) {
    throw new KeyError('KEYS_INVALID', `${path.join(dir, IDENTITY_FILE)} holds an invalid age identity`, { cause: e });
  }
  let signing: KeyObject;
  try {
    signing = createPrivateKey(await readKeyFile(dir, SIGNING_FILE));
  } catch (e) {
    if (e instanceof KeyError) throw e;
    throw new KeyError('KEYS_INVALID', `${path.join(dir, SIGNING_FILE)} holds no Ed25519 private key`, { cause: e });
  }
  if (signing.asymmetricKeyType !== 'ed25519')
    throw new KeyError('KEYS_INVALID', `${path.join(dir, SIGNING_FILE)} is not an Ed25519 key`);
  return { identity, recipient, signing, signingKey: formatSigningKey(createPublicKey(signing)) };
}
