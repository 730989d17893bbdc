/**
 * Values for the consumers an agent hosts: the routes, the payload, and how it is sealed.
 *
 *   POST /v1/agent/values    {"wait": 25, "epoch": E, "after": C}  -> {"epoch", "cursor", "kx", "sealed"}
 *   POST /v1/agent/receipts  {"receipts": [{consumer, secret, version}]}  -> {"accepted": n}
 *
 * The values route is a long-poll: the daemon answers at once when something the agent's consumers may
 * read changed after cursor C of epoch E (a rotation, a retirement, a new commit), or after `wait`
 * seconds with nothing new. The answer holds the changes since C (`full: false`), or everything the
 * agent's consumers may read when C is of another epoch (the daemon restarted), older than the last
 * applied commit, or absent (`full: true`). Like every answer of the agent API it is signed over the
 * request's nonce (sign.ts), so it cannot be replayed or altered; `sealed` makes it confidential.
 *
 * Sealing. age per agent per version costs an X25519 agreement, a fresh file key and the armor each
 * time, in age-encryption's JavaScript: about 2.5 ms of CPU per answer (bench/agent-propagation
 * measures it), 2.5 s of the daemon's CPU per rotation at 1,000 agents. Instead a key is agreed once per daemon
 * process and agent: the daemon makes an ephemeral X25519 key pair when it starts (`kx`, its public
 * half, travels in every answer), agrees a secret with the agent's age recipient (an X25519 public
 * key), and derives an AES-256-GCM key with HKDF-SHA256 bound to both public keys and the agent's
 * name. Each answer is then one AEAD seal with a random 96-bit nonce and the agent, epoch and cursor
 * as associated data (a few microseconds). The agent derives the same key from its age identity and
 * the `kx` of the signed answer. The ephemeral key never touches the disk, so answers recorded on the
 * wire stay closed even to someone who later steals the daemon's data directory.
 */
import {
  type BinaryLike,
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto';
import { bech32 } from '@scure/base';
import { SealError } from './seal.js';

export const AGENT_VALUES_PATH = '/v1/agent/values';
export const AGENT_RECEIPTS_PATH = '/v1/agent/receipts';
/** The largest values request ({"wait", "epoch", "after"}) and receipts request, bytes. */
export const MAX_VALUES_BODY = 1024;
export const MAX_RECEIPTS_BODY = 256 * 1024;
/** Receipts in one request at most. */
export const MAX_RECEIPTS_PER_REQUEST = 1000;
/** The largest values answer an agent takes (a full answer for many secrets), bytes. */
export const MAX_VALUES_ANSWER = 32 * 1024 * 1024;

/** A consumer the agent serves: its socket's owner and the globs of its grants. */
export interface HostedConsumer {
  readonly name: string;
  readonly uid: number;
  readonly gid?: number;
  readonly secrets: readonly string[];
}

/** What a consumer may be served of one secret, as the daemon's consumer sockets serve it. */
export interface SecretCopy {
  readonly name: string;
  /** Absent while the secret has no value yet (declared, granted, not generated), or once it is purged. */
  readonly current?: {
    readonly version: number;
    readonly value: unknown;
    readonly username?: string;
    readonly rotatedAt: string;
  };
  readonly previous?: {
    readonly version: number;
    readonly value: unknown;
    readonly username?: string;
    readonly rotatedAt?: string;
    readonly validUntil: string;
  };
  /** ISO time, or null when rotor does not schedule the secret. */
  readonly nextRotationAt: string | null;
}

/** The sealed part of a values answer. */
export interface ValuesPayload {
  /** true: `secrets` is everything the consumers may read, and `consumers` all of them; false: changes only. */
  readonly full: boolean;
  /** The consumers declared on this agent (in a full answer; a delta keeps the last ones). */
  readonly consumers?: readonly HostedConsumer[];
  /** Declared secrets granted to some consumer of this agent, changed since the cursor (all of them when full). */
  readonly secrets: readonly SecretCopy[];
  /** Names no longer declared or no longer granted to this agent's consumers (a delta only). */
  readonly removed?: readonly string[];
}

export interface ValuesAnswer {
  /** Random per daemon process: a cursor of another epoch means nothing. */
  readonly epoch: string;
  readonly cursor: number;
  /** The daemon's ephemeral X25519 public key, base64url of 32 bytes. */
  readonly kx: string;
  /** base64 of nonce (12) || ciphertext || tag (16). */
  readonly sealed: string;
}

export interface Receipt {
  readonly consumer: string;
  readonly secret: string;
  readonly version: number;
}

const X25519_SPKI = Buffer.from('302a300506032b656e032100', 'hex');
const X25519_PKCS8 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const LABEL = 'rotor-agent-values-v1';

function aad(agent: string, epoch: string, cursor: number): Buffer {
  return Buffer.from(`${LABEL}\n${agent}\n${epoch}\n${cursor}`, 'utf8');
}

/** The 32 bytes of an age X25519 recipient (age1...). */
export function recipientBytes(recipient: string): Buffer {
  const d = bech32.decodeToBytes(recipient);
  if (d.prefix !== 'age' || d.bytes.length !== 32) throw new Error('not an age X25519 recipient');
  return Buffer.from(d.bytes);
}

function identityKey(identity: string): KeyObject {
  const d = bech32.decodeToBytes(identity.toLowerCase());
  if (d.prefix !== 'age-secret-key-' || d.bytes.length !== 32) throw new Error('not an age X25519 identity');
  return createPrivateKey({ key: Buffer.concat([X25519_PKCS8, d.bytes]), format: 'der', type: 'pkcs8' });
}

function publicKeyOf(raw: Buffer): KeyObject {
  return createPublicKey({ key: Buffer.concat([X25519_SPKI, raw]), format: 'der', type: 'spki' });
}

function rawPublic(key: KeyObject): Buffer {
  return Buffer.from(key.export({ format: 'jwk' }).x!, 'base64url');
}

function derive(shared: BinaryLike, kx: Buffer, agentPub: Buffer, agent: string): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([kx, agentPub]), `${LABEL}\n${agent}`, 32));
}

function seal(key: Buffer, plaintext: Buffer, ad: Buffer): string {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(ad);
  const body = Buffer.concat([c.update(plaintext), c.final()]);
  return Buffer.concat([nonce, body, c.getAuthTag()]).toString('base64');
}

/** The daemon's side: one ephemeral key pair per process, one derived key per agent and recipient. */
export class ValuesSealer {
  private readonly priv: KeyObject;
  readonly kx: string;
  private readonly kxRaw: Buffer;
  private readonly keys = new Map<string, Buffer>();

  constructor() {
    const { privateKey, publicKey } = generateKeyPairSync('x25519');
    this.priv = privateKey;
    this.kxRaw = rawPublic(publicKey);
    this.kx = this.kxRaw.toString('base64url');
  }

  private keyFor(agent: string, recipient: string): Buffer {
    const id = `${agent}\n${recipient}`;
    let key = this.keys.get(id);
    if (!key) {
      let pub: Buffer;
      try {
        pub = recipientBytes(recipient);
      } catch (e) {
        throw new SealError('SEAL_RECIPIENT', `agent "${agent}"'s recipient is not an age X25519 recipient`, {
          cause: e,
        });
      }
      const shared = diffieHellman({ privateKey: this.priv, publicKey: publicKeyOf(pub) });
      key = derive(shared, this.kxRaw, pub, agent);
      if (this.keys.size > 100_000) this.keys.clear();
      this.keys.set(id, key);
    }
    return key;
  }

  seal(agent: string, recipient: string, epoch: string, cursor: number, payload: ValuesPayload): ValuesAnswer {
    const text = Buffer.from(JSON.stringify(payload), 'utf8');
    const sealed = seal(this.keyFor(agent, recipient), text, aad(agent, epoch, cursor));
    return { epoch, cursor, kx: this.kx, sealed };
  }
}

/** The agent's side: opens an answer with its age identity (the key is kept per daemon `kx`). */
export class ValuesOpener {
  private readonly priv: KeyObject;
  private readonly pub: Buffer;
  private key: { kx: string; key: Buffer } | undefined;

  constructor(
    private readonly agent: string,
    identity: string,
  ) {
    try {
      this.priv = identityKey(identity);
    } catch {
      throw new SealError('SEAL_IDENTITY', "the agent's identity is not an age identity (AGE-SECRET-KEY-1...)");
    }
    this.pub = rawPublic(createPublicKey(this.priv));
  }

  open(answer: ValuesAnswer): ValuesPayload {
    if (this.key?.kx !== answer.kx) {
      const kx = Buffer.from(answer.kx, 'base64url');
      if (kx.length !== 32) throw new SealError('SEAL_MALFORMED', 'the daemon key of a values answer is not 32 bytes');
      let shared: Buffer;
      try {
        shared = diffieHellman({ privateKey: this.priv, publicKey: publicKeyOf(kx) });
      } catch (e) {
        throw new SealError('SEAL_MALFORMED', 'the daemon key of a values answer is not an X25519 key', { cause: e });
      }
      this.key = { kx: answer.kx, key: derive(shared, kx, this.pub, this.agent) };
    }
    const raw = Buffer.from(answer.sealed, 'base64');
    if (raw.length < 28) throw new SealError('SEAL_MALFORMED', 'a values answer is too short to be sealed');
    const d = createDecipheriv('aes-256-gcm', this.key.key, raw.subarray(0, 12));
    d.setAAD(aad(this.agent, answer.epoch, answer.cursor));
    d.setAuthTag(raw.subarray(raw.length - 16));
    let text: Buffer;
    try {
      text = Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]);
    } catch {
      throw new SealError(
        'SEAL_CORRUPT',
        'a values answer fails to open: it is not sealed to this agent, or was altered',
      );
    }
    try {
      return JSON.parse(text.toString('utf8')) as ValuesPayload;
    } catch {
      throw new SealError('SEAL_NOT_JSON', 'a values answer opens, but not to JSON');
    }
  }
}
