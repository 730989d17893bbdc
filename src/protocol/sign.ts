/**
 * The agent protocol's authentication: Ed25519 signatures on the agent's requests and on the daemon's
 * answers, and the replay cache. Pure apart from the clock and the random nonce, both of which a caller
 * may pass in; no I/O.
 *
 * A request carries five headers:
 *   x-rotor-agent           the agent's name (an Agent declaration: ^[a-z0-9][a-z0-9._-]{0,62}$)
 *   x-rotor-timestamp       milliseconds since the epoch, decimal, no leading zeros
 *   x-rotor-nonce           16 random bytes, base64url without padding (22 characters)
 *   x-rotor-content-sha256  SHA-256 of the body, lower-case hex (the hash of '' for an empty body)
 *   x-rotor-signature       base64 (with padding, 88 characters) of the Ed25519 signature of the string
 *
 *     rotor-agent-request-v1\n
 *     <METHOD>\n                 upper case, as on the request line: GET
 *     <path>\n                   the request-target exactly as sent, query included: /v1/jobs?wait=25
 *     <timestamp>\n
 *     <nonce>\n
 *     <content-sha256>\n
 *     <agent>
 *
 * (no newline after the agent's name). Every field is checked to hold no newline and no character
 * outside its grammar, so the fields cannot be shifted from one line to another and the string is
 * unambiguous. The path is not normalised: the daemon verifies req.url as received, and must route on
 * that same string (a proxy that rewrites paths breaks the signature, on purpose).
 *
 * An answer carries x-rotor-content-sha256 and x-rotor-signature over
 *
 *     rotor-daemon-response-v1\n
 *     <status>\n                 three digits: 200
 *     <request nonce>\n          the x-rotor-nonce of the request this answers
 *     <content-sha256>
 *
 * signed with the daemon's key. The agent picks a fresh random nonce for each request, so an answer
 * signed for one request verifies for no other: an old answer (say, an old job) cannot be replayed to
 * the agent. The two labels keep a request signature from ever being read as an answer and back.
 *
 * Verification has two phases, so that a listener can refuse a request before reading its body: the
 * signature covers the body's hash as stated in x-rotor-content-sha256, not the body itself, so
 * everything but the body can be checked from the headers alone.
 *   verifyRequestHeaders, cheapest and stateless first, state last: headers well-formed
 *   (AGENT_UNSIGNED) -> agent known (AGENT_UNKNOWN) -> timestamp within maxSkew (AGENT_SKEW) ->
 *   signature over the header values (AGENT_BAD_SIGNATURE) -> nonce not seen, then reserved
 *   (AGENT_REPLAY, AGENT_RATE).
 *   verifyRequestBody, once the body is read: it matches the signed hash (AGENT_BODY_ALTERED); the
 *   nonce is then used for good (commit), or given back if not (release). abandonRequest gives it back
 *   for a body that is never checked (too large, too slow, cut off).
 * verifyRequest runs both, for a caller that holds the whole request.
 *
 * Only a request signed with the agent's key touches the nonce cache: a forged one can neither burn a
 * nonce the real agent will use nor fill the cache, and only the holder of an agent's key can add
 * entries, at most maxPerAgent of them (reserved and used together), under that agent's name. The
 * reservation made before the body is read means that a signed request is admitted to the body phase
 * once at a time: a replay of its headers, while the first copy is read or after it was served, is
 * refused before any byte of its body is read. A copy whose body turns out altered, or never arrives,
 * gives the nonce back, so that someone who saw the agent's headers go by cannot burn its nonce with a
 * bad body either (a request is only served once, with the body its agent signed).
 */

import type { KeyObject } from 'node:crypto';
import { createHash, randomBytes, sign, timingSafeEqual, verify } from 'node:crypto';
import { RotorError } from '../errors.js';

export const H_AGENT = 'x-rotor-agent';
export const H_TIMESTAMP = 'x-rotor-timestamp';
export const H_NONCE = 'x-rotor-nonce';
export const H_CONTENT_SHA256 = 'x-rotor-content-sha256';
export const H_SIGNATURE = 'x-rotor-signature';

export const REQUEST_LABEL = 'rotor-agent-request-v1';
export const RESPONSE_LABEL = 'rotor-daemon-response-v1';

export const DEFAULT_MAX_SKEW_MS = 60_000;
/** The longest request-target that is signed or verified. */
export const MAX_PATH = 2048;
/** No header value is looked at beyond this many characters (the longest valid one is 88). */
const MAX_HEADER = 128;

const AGENT_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const METHOD_RE = /^[A-Z]{1,16}$/;
/** origin-form request-target: '/' then visible ASCII (no space, no control character, no newline). */
const PATH_RE = /^\/[\x21-\x7e]*$/;
const TIMESTAMP_RE = /^(?:0|[1-9][0-9]{0,15})$/;
const NONCE_RE = /^[A-Za-z0-9_-]{22}$/;
const SHA256_RE = /^[0-9a-f]{64}$/;
const SIGNATURE_RE = /^[A-Za-z0-9+/]{86}==$/;

/** Thrown for a caller's mistake when signing (a bad key, a path that cannot be signed); never on verify. */
export class ProtocolError extends RotorError {
  declare readonly code: 'PROTOCOL_INVALID' | 'PROTOCOL_KEY';
  constructor(code: 'PROTOCOL_INVALID' | 'PROTOCOL_KEY', message: string) {
    super(code, message);
  }
}

export type AgentAuthCode =
  | 'AGENT_UNSIGNED'
  | 'AGENT_UNKNOWN'
  | 'AGENT_SKEW'
  | 'AGENT_BAD_SIGNATURE'
  | 'AGENT_BODY_ALTERED'
  | 'AGENT_REPLAY'
  | 'AGENT_RATE';

/** The HTTP status the daemon should answer each rejection with. */
export const AGENT_AUTH_STATUS: Readonly<Record<AgentAuthCode, number>> = {
  AGENT_UNSIGNED: 401,
  AGENT_UNKNOWN: 401,
  AGENT_SKEW: 401,
  AGENT_BAD_SIGNATURE: 401,
  AGENT_BODY_ALTERED: 400,
  AGENT_REPLAY: 401,
  AGENT_RATE: 429,
};

export type DaemonAuthCode = 'DAEMON_UNSIGNED' | 'DAEMON_BAD_SIGNATURE' | 'DAEMON_BODY_ALTERED';

export type RequestVerdict =
  | { readonly ok: true; readonly agent: string; readonly nonce: string; readonly timestamp: number }
  | { readonly ok: false; readonly code: AgentAuthCode; readonly message: string };

export type ResponseVerdict =
  | { readonly ok: true }
  | { readonly ok: false; readonly code: DaemonAuthCode; readonly message: string };

/** Node's req.headers (lower-case names), a plain record, or a fetch Headers. */
export type HeaderSource =
  | Readonly<Record<string, string | readonly string[] | undefined>>
  | { get(name: string): string | null };

export type Body = string | Uint8Array;

/** A type (not an interface) so that it is also a plain Record<string, string>. */
export type RequestHeaders = {
  readonly [H_AGENT]: string;
  readonly [H_TIMESTAMP]: string;
  readonly [H_NONCE]: string;
  readonly [H_CONTENT_SHA256]: string;
  readonly [H_SIGNATURE]: string;
};

export type ResponseHeaders = {
  readonly [H_CONTENT_SHA256]: string;
  readonly [H_SIGNATURE]: string;
};

export function sha256Hex(body: Body): string {
  return createHash('sha256').update(body).digest('hex');
}

/** A fresh request nonce: 16 random bytes, base64url. */
export function newNonce(): string {
  return randomBytes(16).toString('base64url');
}

function header(h: HeaderSource, name: string): string | undefined {
  const v =
    typeof (h as { get?: unknown }).get === 'function'
      ? (h as { get(n: string): string | null }).get(name)
      : (h as Record<string, unknown>)[name];
  // An array is a repeated header: refuse rather than pick one.
  return typeof v === 'string' && v.length <= MAX_HEADER ? v : undefined;
}

function isNonce(s: string): boolean {
  // Canonical spelling only, so that one 16-byte value has exactly one string form.
  return NONCE_RE.test(s) && Buffer.from(s, 'base64url').toString('base64url') === s;
}

function signatureBytes(s: string): Buffer | undefined {
  if (!SIGNATURE_RE.test(s)) return undefined;
  const b = Buffer.from(s, 'base64');
  return b.length === 64 && b.toString('base64') === s ? b : undefined;
}

function sameHex(a: string, b: string): boolean {
  const x = Buffer.from(a, 'latin1');
  const y = Buffer.from(b, 'latin1');
  return x.length === y.length && timingSafeEqual(x, y);
}

function requestLineProblem(method: string, path: string): string | undefined {
  if (typeof method !== 'string' || !METHOD_RE.test(method)) return 'the method is not an upper-case HTTP method';
  if (typeof path !== 'string' || path.length > MAX_PATH || !PATH_RE.test(path)) {
    return `the path must start with '/' and hold at most ${MAX_PATH} visible ASCII characters (percent-encode the rest)`;
  }
  return undefined;
}

export interface RequestFields {
  readonly method: string;
  readonly path: string;
  readonly timestamp: string;
  readonly nonce: string;
  readonly contentSha256: string;
  readonly agent: string;
}

/** The exact string an agent signs. The fields must already be valid (see the grammar above). */
export function canonicalRequest(f: RequestFields): string {
  return [REQUEST_LABEL, f.method, f.path, f.timestamp, f.nonce, f.contentSha256, f.agent].join('\n');
}

/** The exact string the daemon signs for an answer. */
export function canonicalResponse(status: number, requestNonce: string, contentSha256: string): string {
  return [RESPONSE_LABEL, String(status), requestNonce, contentSha256].join('\n');
}

function checkKey(key: KeyObject, type: 'private' | 'public', who: string): void {
  if (key?.asymmetricKeyType !== 'ed25519' || (type === 'private' && key.type !== 'private')) {
    throw new ProtocolError('PROTOCOL_KEY', `${who} must be an Ed25519 ${type} key`);
  }
}

export interface SignRequestInput {
  readonly agent: string;
  readonly method: string;
  readonly path: string;
  readonly body: Body;
  readonly privateKey: KeyObject;
  /** ms since the epoch; default Date.now(). */
  readonly now?: number;
  /** default a fresh newNonce(); pass one only in tests. */
  readonly nonce?: string;
}

/** The headers that authenticate an agent's request. Throws ProtocolError for input that cannot be signed. */
export function signRequest(input: SignRequestInput): RequestHeaders {
  const { agent, method, path, body, privateKey } = input;
  const now = input.now ?? Date.now();
  const nonce = input.nonce ?? newNonce();
  checkKey(privateKey, 'private', 'the agent signing key');
  if (typeof agent !== 'string' || !AGENT_RE.test(agent))
    throw new ProtocolError('PROTOCOL_INVALID', 'the agent name must match ^[a-z0-9][a-z0-9._-]{0,62}$');
  const problem = requestLineProblem(method, path);
  if (problem) throw new ProtocolError('PROTOCOL_INVALID', problem);
  if (!Number.isSafeInteger(now) || now < 0)
    throw new ProtocolError('PROTOCOL_INVALID', 'the timestamp must be a non-negative integer of ms');
  if (!isNonce(nonce)) throw new ProtocolError('PROTOCOL_INVALID', 'the nonce must be 16 bytes in base64url');
  const fields: RequestFields = { method, path, timestamp: String(now), nonce, contentSha256: sha256Hex(body), agent };
  const signature = sign(null, Buffer.from(canonicalRequest(fields), 'utf8'), privateKey).toString('base64');
  return {
    [H_AGENT]: agent,
    [H_TIMESTAMP]: fields.timestamp,
    [H_NONCE]: nonce,
    [H_CONTENT_SHA256]: fields.contentSha256,
    [H_SIGNATURE]: signature,
  };
}

export interface VerifyRequestHeadersInput {
  readonly headers: HeaderSource;
  readonly method: string;
  /** req.url as received: the request-target, query included. */
  readonly path: string;
  /** The daemon's clock, ms since the epoch. */
  readonly now: number;
  /** The declared public key of an agent, or undefined if no such agent is declared. */
  readonly keyOf: (agent: string) => KeyObject | undefined;
  readonly nonces: NonceCache;
  readonly maxSkewMs?: number;
}

export interface VerifyRequestInput extends VerifyRequestHeadersInput {
  readonly body: Body;
}

/** A request whose headers verified (its nonce now reserved): what the body phase checks against. */
export interface SignedHeaders {
  readonly ok: true;
  readonly agent: string;
  readonly nonce: string;
  readonly timestamp: number;
  /** The body's SHA-256 the agent signed (lower-case hex). */
  readonly contentSha256: string;
}

export type HeadersVerdict =
  | SignedHeaders
  | { readonly ok: false; readonly code: AgentAuthCode; readonly message: string };

function reject(
  code: AgentAuthCode,
  message: string,
): { readonly ok: false; readonly code: AgentAuthCode; readonly message: string } {
  return { ok: false, code, message };
}

/**
 * The first phase: authenticates a request from its request line and headers alone, and reserves its
 * nonce if the signature verifies. The body is not needed (and should not have been read yet): pass
 * the result to verifyRequestBody once it is read, or to abandonRequest if it will not be.
 */
export function verifyRequestHeaders(input: VerifyRequestHeadersInput): HeadersVerdict {
  const { headers, method, path, now, keyOf, nonces } = input;
  const maxSkewMs = input.maxSkewMs ?? DEFAULT_MAX_SKEW_MS;
  if (!(nonces.ttlMs >= 2 * maxSkewMs)) {
    // A shorter memory than the acceptance window would let a replay through: a wiring bug, not a request's fault.
    throw new RangeError(`the nonce cache remembers ${nonces.ttlMs} ms, less than 2 x maxSkewMs (${2 * maxSkewMs} ms)`);
  }

  const agent = header(headers, H_AGENT);
  const timestamp = header(headers, H_TIMESTAMP);
  const nonce = header(headers, H_NONCE);
  const contentSha256 = header(headers, H_CONTENT_SHA256);
  const sigText = header(headers, H_SIGNATURE);
  if (
    agent === undefined ||
    timestamp === undefined ||
    nonce === undefined ||
    contentSha256 === undefined ||
    sigText === undefined
  ) {
    return reject(
      'AGENT_UNSIGNED',
      `a request to the agent API must carry ${H_AGENT}, ${H_TIMESTAMP}, ${H_NONCE}, ${H_CONTENT_SHA256} and ${H_SIGNATURE}, each once`,
    );
  }
  if (!AGENT_RE.test(agent)) return reject('AGENT_UNSIGNED', `${H_AGENT} is not an agent name`);
  if (!TIMESTAMP_RE.test(timestamp) || !Number.isSafeInteger(Number(timestamp)))
    return reject('AGENT_UNSIGNED', `${H_TIMESTAMP} is not an integer of ms since the epoch`);
  if (!isNonce(nonce)) return reject('AGENT_UNSIGNED', `${H_NONCE} is not 16 bytes in base64url`);
  if (!SHA256_RE.test(contentSha256))
    return reject('AGENT_UNSIGNED', `${H_CONTENT_SHA256} is not a lower-case hex SHA-256`);
  const signature = signatureBytes(sigText);
  if (!signature) return reject('AGENT_UNSIGNED', `${H_SIGNATURE} is not the base64 of a 64-byte Ed25519 signature`);
  const problem = requestLineProblem(method, path);
  if (problem) return reject('AGENT_UNSIGNED', `the request cannot be verified: ${problem}`);

  const key = keyOf(agent);
  if (!key) return reject('AGENT_UNKNOWN', `no Agent named "${agent}" is declared`);
  checkKey(key, 'public', `the key of agent "${agent}"`);

  const ts = Number(timestamp);
  const skew = now - ts;
  if (Math.abs(skew) > maxSkewMs) {
    return reject(
      'AGENT_SKEW',
      `the request's timestamp is ${Math.round(Math.abs(skew) / 1000)} s ${skew > 0 ? 'behind' : 'ahead of'} the daemon's clock (at most ${maxSkewMs / 1000} s either way): check the clocks of both hosts`,
    );
  }

  const data = Buffer.from(canonicalRequest({ method, path, timestamp, nonce, contentSha256, agent }), 'utf8');
  if (!verify(null, data, key, signature))
    return reject(
      'AGENT_BAD_SIGNATURE',
      `the signature does not verify with the signing key declared for agent "${agent}"`,
    );

  switch (nonces.reserve(agent, nonce, now)) {
    case 'replay':
      return reject('AGENT_REPLAY', 'this request was already received (its nonce was seen within the replay window)');
    case 'full':
      return reject(
        'AGENT_RATE',
        `agent "${agent}" sent more than ${nonces.maxPerAgent} requests within ${nonces.ttlMs / 1000} s; slow down and retry`,
      );
    case 'fresh':
      return { ok: true, agent, nonce, timestamp: ts, contentSha256 };
  }
}

/**
 * The second phase: the body read for a request whose headers verified is the one its agent signed.
 * Then its nonce is used for good; if not, the reservation is given back (the request was not served).
 */
export function verifyRequestBody(signed: SignedHeaders, body: Body, nonces: NonceCache): RequestVerdict {
  if (!sameHex(sha256Hex(body), signed.contentSha256)) {
    nonces.release(signed.agent, signed.nonce);
    return reject('AGENT_BODY_ALTERED', 'the body is not the one the agent signed');
  }
  nonces.commit(signed.agent, signed.nonce);
  return { ok: true, agent: signed.agent, nonce: signed.nonce, timestamp: signed.timestamp };
}

/**
 * A request whose headers verified but whose body is never checked (too large, too slow, cut off, or
 * refused for another reason before it was read): its nonce reservation is given back. Harmless
 * after verifyRequestBody accepted it (a used nonce stays used).
 */
export function abandonRequest(signed: SignedHeaders, nonces: NonceCache): void {
  nonces.release(signed.agent, signed.nonce);
}

/** Authenticates a whole request (both phases): its nonce is used only if everything checks out. */
export function verifyRequest(input: VerifyRequestInput): RequestVerdict {
  const signed = verifyRequestHeaders(input);
  return signed.ok ? verifyRequestBody(signed, input.body, input.nonces) : signed;
}

export interface SignResponseInput {
  readonly status: number;
  /** The x-rotor-nonce of the request being answered. */
  readonly requestNonce: string;
  readonly body: Body;
  readonly privateKey: KeyObject;
}

/** The headers that authenticate the daemon's answer to one request. */
export function signResponse(input: SignResponseInput): ResponseHeaders {
  const { status, requestNonce, body, privateKey } = input;
  checkKey(privateKey, 'private', 'the daemon signing key');
  if (!Number.isInteger(status) || status < 100 || status > 599)
    throw new ProtocolError('PROTOCOL_INVALID', 'the status must be an HTTP status (100-599)');
  if (typeof requestNonce !== 'string' || !isNonce(requestNonce))
    throw new ProtocolError('PROTOCOL_INVALID', 'the request nonce must be 16 bytes in base64url');
  const contentSha256 = sha256Hex(body);
  const signature = sign(
    null,
    Buffer.from(canonicalResponse(status, requestNonce, contentSha256), 'utf8'),
    privateKey,
  ).toString('base64');
  return { [H_CONTENT_SHA256]: contentSha256, [H_SIGNATURE]: signature };
}

export interface VerifyResponseInput {
  readonly headers: HeaderSource;
  readonly status: number;
  /** The nonce this agent sent with the request. */
  readonly requestNonce: string;
  readonly body: Body;
  /** The daemon's public key (parseSigningKey of the agent config's daemonSigningKey). */
  readonly publicKey: KeyObject;
}

/** Checks that an answer comes from the daemon, for this very request, with the body it signed. */
export function verifyResponse(input: VerifyResponseInput): ResponseVerdict {
  const { headers, status, requestNonce, body, publicKey } = input;
  checkKey(publicKey, 'public', 'the daemon signing key');
  const contentSha256 = header(headers, H_CONTENT_SHA256);
  const sigText = header(headers, H_SIGNATURE);
  const signature = sigText === undefined ? undefined : signatureBytes(sigText);
  if (contentSha256 === undefined || !SHA256_RE.test(contentSha256) || !signature) {
    return {
      ok: false,
      code: 'DAEMON_UNSIGNED',
      message: `the answer lacks a well-formed ${H_CONTENT_SHA256} and ${H_SIGNATURE}: it does not come from a rotor daemon`,
    };
  }
  const okInput =
    Number.isInteger(status) &&
    status >= 100 &&
    status <= 599 &&
    typeof requestNonce === 'string' &&
    isNonce(requestNonce);
  const data = Buffer.from(canonicalResponse(status, requestNonce, contentSha256), 'utf8');
  if (!okInput || !verify(null, data, publicKey, signature)) {
    return {
      ok: false,
      code: 'DAEMON_BAD_SIGNATURE',
      message: "the answer's signature does not verify with daemonSigningKey for this request",
    };
  }
  if (!sameHex(sha256Hex(body), contentSha256))
    return {
      ok: false,
      code: 'DAEMON_BODY_ALTERED',
      message: 'the body of the answer is not the one the daemon signed',
    };
  return { ok: true };
}

export interface NonceCacheOptions {
  /** How long a nonce is remembered; at least 2 x the verifier's maxSkewMs. Default 120 s. */
  readonly ttlMs?: number;
  /** The most nonces remembered per agent. Default 4096 (34 requests a second, sustained, for 120 s). */
  readonly maxPerAgent?: number;
}

/**
 * The nonces of accepted requests, per agent, each remembered for ttlMs from when it was accepted.
 *
 * Why 2 x maxSkew: a request stamped ts is accepted while the daemon's clock is within
 * [ts - maxSkew, ts + maxSkew]. It is first seen at some t0 >= ts - maxSkew, so it can be replayed
 * until ts + maxSkew <= t0 + 2 x maxSkew. A nonce is still remembered at exactly t0 + ttl.
 *
 * Memory: each agent's nonces sit in a Map in insertion order, which is expiry order while the clock
 * moves forward, so expired ones are dropped from the front in amortised O(1). If the clock steps back,
 * some expired entries may wait behind live ones; they still count, and are swept in full when the cap
 * is reached. Only authenticated requests of declared agents get here, so the number of maps is bounded
 * by the configuration and the entries by maxPerAgent each.
 *
 * Why refuse at the cap (AGENT_RATE) instead of forgetting the oldest nonces: a forgotten nonce whose
 * request is still inside the skew window can be replayed, so evicting early would turn an agent that
 * sends too much (a bug, or a stolen key) into a replay hole for anyone who recorded its traffic. Refusing
 * only slows that one agent down; the others have their own caps, and the agent recovers as soon as
 * old nonces expire.
 */
export class NonceCache {
  readonly ttlMs: number;
  readonly maxPerAgent: number;
  readonly #byAgent = new Map<string, Map<string, NonceEntry>>();

  constructor(options: NonceCacheOptions = {}) {
    this.ttlMs = options.ttlMs ?? 2 * DEFAULT_MAX_SKEW_MS;
    this.maxPerAgent = options.maxPerAgent ?? 4096;
    if (!Number.isSafeInteger(this.ttlMs) || this.ttlMs <= 0) throw new RangeError('ttlMs must be a positive integer');
    if (!Number.isSafeInteger(this.maxPerAgent) || this.maxPerAgent <= 0)
      throw new RangeError('maxPerAgent must be a positive integer');
  }

  /** Records a nonce as used: 'fresh' if it was not remembered (now it is), 'replay' if it was, 'full' if the agent is at its cap. */
  remember(agent: string, nonce: string, now: number): 'fresh' | 'replay' | 'full' {
    const r = this.reserve(agent, nonce, now);
    if (r === 'fresh') this.commit(agent, nonce);
    return r;
  }

  /**
   * Like remember, but held for a request still being read: until commit (served) or release (never
   * served: its body was altered, too large, too slow or cut off), the nonce counts as seen, so that a
   * replay of the same headers is refused meanwhile.
   */
  reserve(agent: string, nonce: string, now: number): 'fresh' | 'replay' | 'full' {
    let seen = this.#byAgent.get(agent);
    if (!seen) {
      seen = new Map();
      this.#byAgent.set(agent, seen);
    }
    dropExpiredHead(seen, now);
    const entry = seen.get(nonce);
    if (entry !== undefined) {
      if (now <= entry.expires) return 'replay';
      seen.delete(nonce);
    }
    if (seen.size >= this.maxPerAgent) {
      dropAllExpired(seen, now);
      if (seen.size >= this.maxPerAgent) return 'full';
    }
    seen.set(nonce, { expires: now + this.ttlMs, reserved: true });
    return 'fresh';
  }

  /** A reserved nonce's request was served: the nonce stays used until it expires. */
  commit(agent: string, nonce: string): void {
    const entry = this.#byAgent.get(agent)?.get(nonce);
    if (entry) entry.reserved = false;
  }

  /** A reserved nonce's request was not served: forget the nonce. A used (committed) nonce is never released. */
  release(agent: string, nonce: string): void {
    const seen = this.#byAgent.get(agent);
    if (seen?.get(nonce)?.reserved) seen.delete(nonce);
  }

  /** Whether a nonce is remembered (and live) for an agent, reserved or used. */
  has(agent: string, nonce: string, now: number): boolean {
    const entry = this.#byAgent.get(agent)?.get(nonce);
    return entry !== undefined && now <= entry.expires;
  }

  /** How many nonces are held, for one agent or for all (expired ones not yet dropped included). */
  size(agent?: string): number {
    if (agent !== undefined) return this.#byAgent.get(agent)?.size ?? 0;
    let n = 0;
    for (const m of this.#byAgent.values()) n += m.size;
    return n;
  }

  /** Drops every expired nonce, and agents left with none (for a periodic timer; optional). */
  sweep(now: number): void {
    for (const [agent, seen] of this.#byAgent) {
      dropAllExpired(seen, now);
      if (seen.size === 0) this.#byAgent.delete(agent);
    }
  }
}

interface NonceEntry {
  readonly expires: number;
  /** Held for a request still being read (NonceCache.reserve), not yet served. */
  reserved: boolean;
}

function dropExpiredHead(seen: Map<string, NonceEntry>, now: number): void {
  for (const [nonce, entry] of seen) {
    if (now <= entry.expires) return;
    seen.delete(nonce);
  }
}

function dropAllExpired(seen: Map<string, NonceEntry>, now: number): void {
  for (const [nonce, entry] of seen) if (now > entry.expires) seen.delete(nonce);
}
