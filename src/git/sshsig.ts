/**
 * OpenSSH's signature format (SSHSIG, PROTOCOL.sshsig in OpenSSH's sources), the one git uses for
 * commits with `gpg.format=ssh`: made and checked here, in-process, with node:crypto's Ed25519. The
 * private key never leaves this process: no ssh-keygen, no key file, no argument.
 *
 * The signed data, for a namespace (git's is "git") and a hash algorithm (sha512 or sha256):
 *
 *     "SSHSIG" string(namespace) string("") string(hash algorithm) string(H(message))
 *
 * and the signature, armored as "-----BEGIN SSH SIGNATURE-----", base64 in lines of 70:
 *
 *     "SSHSIG" uint32(1) string(public key blob) string(namespace) string("") string(hash algorithm)
 *     string(string("ssh-ed25519") string(64-byte Ed25519 signature))
 *
 * (string: a big-endian uint32 length and the bytes; the public key blob: string("ssh-ed25519")
 * string(32-byte key)). Ed25519 signatures are deterministic: for the same key and message this makes
 * the same bytes as `ssh-keygen -Y sign -n git` (test/sshsig.test.ts compares them with git's own
 * `git commit -S`).
 *
 * Parsing is bounded (the armored text, every length field) and never throws on hostile input other
 * than with a SshsigError that says what is wrong.
 */
import type { KeyObject } from 'node:crypto';
import { createHash, createPublicKey, sign as edSign, verify as edVerify } from 'node:crypto';
import { RotorError } from '../errors.js';

export const SSHSIG_NAMESPACE_GIT = 'git';
const MAGIC = Buffer.from('SSHSIG');
export const SSHSIG_BEGIN = '-----BEGIN SSH SIGNATURE-----';
const BEGIN = SSHSIG_BEGIN;
const END = '-----END SSH SIGNATURE-----';
const ED25519 = 'ssh-ed25519';
/** An armored signature longer than this is refused unread (an Ed25519 one is about 300 bytes). */
export const MAX_ARMORED_SIGNATURE = 8 * 1024;

export class SshsigError extends RotorError {
  constructor(message: string) {
    super('SSHSIG_INVALID', message);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** An SSH wire-format string: its length, then its bytes. */
function sshString(data: Buffer | string): Buffer {
  const b = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  return Buffer.concat([u32(b.length), b]);
}

/** Reads SSH wire-format fields from a buffer, refusing any length that runs past its end. */
class Reader {
  private at = 0;
  constructor(
    private readonly b: Buffer,
    private readonly what: string,
  ) {}
  bytes(n: number): Buffer {
    if (n > this.b.length - this.at) throw new SshsigError(`${this.what} is cut short`);
    const out = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }
  u32(): number {
    return this.bytes(4).readUInt32BE(0);
  }
  string(): Buffer {
    return this.bytes(this.u32());
  }
  text(max: number): string {
    const s = this.string();
    if (s.length > max) throw new SshsigError(`${this.what} holds a field of ${s.length} bytes (at most ${max})`);
    return s.toString('latin1');
  }
  end(): void {
    if (this.at !== this.b.length) throw new SshsigError(`${this.what} has ${this.b.length - this.at} bytes too many`);
  }
}

/** The 32 bytes of an Ed25519 public key. */
function rawEd25519(key: KeyObject): Buffer {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  if (pub.asymmetricKeyType !== 'ed25519') throw new SshsigError('only Ed25519 keys are supported');
  return Buffer.from(pub.export({ format: 'jwk' }).x!, 'base64url');
}

/** The SSH public key blob of an Ed25519 key: string("ssh-ed25519") string(32 bytes). */
export function ed25519Blob(key: KeyObject): Buffer {
  return Buffer.concat([sshString(ED25519), sshString(rawEd25519(key))]);
}

/**
 * The public key as one line of OpenSSH's format, `ssh-ed25519 AAAA... comment`: what a forge takes
 * as a signing key, and what follows the principal in an allowed-signers file.
 */
export function sshPublicKeyLine(key: KeyObject, comment: string): string {
  return `${ED25519} ${ed25519Blob(key).toString('base64')}${comment ? ` ${comment}` : ''}`;
}

/** OpenSSH's fingerprint of a public key blob: "SHA256:" and the unpadded base64 of its SHA-256. */
export function sshFingerprint(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

type HashAlgorithm = 'sha256' | 'sha512';

/** A field of a signature, as a message shows it: at most 64 characters, control characters as "?". */
export function shown(text: string): string {
  return text.slice(0, 64).replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
}

function signedData(namespace: string, hash: HashAlgorithm, message: Buffer): Buffer {
  return Buffer.concat([
    MAGIC,
    sshString(namespace),
    sshString(''),
    sshString(hash),
    sshString(createHash(hash).update(message).digest()),
  ]);
}

function armor(blob: Buffer): string {
  const lines = blob.toString('base64').match(/.{1,70}/g) ?? [];
  return `${BEGIN}\n${lines.join('\n')}\n${END}\n`;
}

/**
 * Signs `message` as `ssh-keygen -Y sign -n NAMESPACE` does with an Ed25519 key (hash sha512), and
 * returns the armored signature, ending with a newline.
 */
export function sshsigSign(message: Buffer, privateKey: KeyObject, namespace = SSHSIG_NAMESPACE_GIT): string {
  const signature = edSign(null, signedData(namespace, 'sha512', message), privateKey);
  return armor(
    Buffer.concat([
      MAGIC,
      u32(1),
      sshString(ed25519Blob(privateKey)),
      sshString(namespace),
      sshString(''),
      sshString('sha512'),
      sshString(Buffer.concat([sshString(ED25519), sshString(signature)])),
    ]),
  );
}

export interface ParsedSshsig {
  /** The signer's public key blob, as the signature carries it. */
  readonly publicKey: Buffer;
  readonly keyType: string;
  readonly namespace: string;
  readonly hashAlgorithm: string;
  readonly signatureType: string;
  readonly signature: Buffer;
}

/** Parses an armored SSHSIG signature (bounded; SshsigError when it is not one). */
export function parseSshsig(armored: string): ParsedSshsig {
  if (armored.length > MAX_ARMORED_SIGNATURE)
    throw new SshsigError(`the signature is ${armored.length} bytes long (at most ${MAX_ARMORED_SIGNATURE})`);
  const lines = armored.replace(/\r\n/g, '\n').replace(/\n+$/, '').split('\n');
  if (lines[0] !== BEGIN || lines.at(-1) !== END) throw new SshsigError(`not an SSH signature (no "${BEGIN}")`);
  const body = lines.slice(1, -1).join('');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0)
    throw new SshsigError('the SSH signature is not valid base64');
  const r = new Reader(Buffer.from(body, 'base64'), 'the SSH signature');
  if (!r.bytes(MAGIC.length).equals(MAGIC)) throw new SshsigError('the SSH signature does not start with SSHSIG');
  const version = r.u32();
  if (version !== 1) throw new SshsigError(`the SSH signature has version ${version} (1 is known)`);
  const publicKey = r.string();
  const namespace = r.text(256);
  r.string(); // reserved
  const hashAlgorithm = r.text(64);
  const sig = new Reader(r.string(), 'the signature inside the SSH signature');
  r.end();
  const signatureType = sig.text(64);
  const signature = sig.string();
  sig.end();
  const key = new Reader(publicKey, "the SSH signature's public key");
  const keyType = key.text(64);
  return { publicKey, keyType, namespace, hashAlgorithm, signatureType, signature };
}

/**
 * Checks an SSHSIG signature over `message`: the namespace, the hash algorithm (sha512 or sha256), an
 * Ed25519 key and signature, and the signature itself. Returns the problem, or undefined when it holds.
 * Which key made it (and whether that key is trusted) is the caller's question: `parsed.publicKey`.
 */
export function sshsigProblem(
  parsed: ParsedSshsig,
  message: Buffer,
  namespace = SSHSIG_NAMESPACE_GIT,
): string | undefined {
  if (parsed.namespace !== namespace)
    return `it was made for the namespace "${shown(parsed.namespace)}", not "${namespace}"`;
  if (parsed.hashAlgorithm !== 'sha512' && parsed.hashAlgorithm !== 'sha256')
    return `it uses the hash algorithm "${shown(parsed.hashAlgorithm)}" (sha512 and sha256 are accepted)`;
  if (parsed.keyType !== ED25519 || parsed.signatureType !== ED25519)
    return `it is made with a ${shown(parsed.keyType)} key; rotor checks Ed25519 (ssh-ed25519) signatures only (git verify-commit checks the others)`;
  let raw: Buffer;
  try {
    const key = new Reader(parsed.publicKey, "the SSH signature's public key");
    key.string();
    raw = key.string();
    key.end();
  } catch (e) {
    return (e as Error).message;
  }
  if (raw.length !== 32 || parsed.signature.length !== 64) return 'its Ed25519 key or signature has the wrong length';
  let ok = false;
  try {
    const publicKey = createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
      format: 'jwk',
    });
    const data = signedData(namespace, parsed.hashAlgorithm as HashAlgorithm, message);
    ok = edVerify(null, data, publicKey, parsed.signature);
  } catch {
    ok = false; // a key node:crypto refuses is no better than a signature that does not match
  }
  return ok ? undefined : 'the signature does not match the signed content';
}
