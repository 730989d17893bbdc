/**
 * The signature of a webhook delivery, in the manner of Stripe's: `X-Rotor-Signature: t=<unix
 * seconds>,v1=<hex>[,v1=<hex>]`, where each v1 is HMAC-SHA256(key, `${t}.${body}`) in lower-case hex.
 * While a new version of the key's secret overlaps the previous one, a delivery carries one v1 per
 * version, so that a receiver that still holds the previous value keeps verifying. Pure.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export const SIGNATURE_HEADER = 'x-rotor-signature';
export const DELIVERY_HEADER = 'x-rotor-delivery';
export const EVENT_HEADER = 'x-rotor-event';
/** How far a receiver should accept a timestamp from its own clock (the docs say so; verify() defaults to it). */
export const REPLAY_WINDOW_S = 300;

/** One v1 value: HMAC-SHA256 over `${t}.${body}` with `key`, hex. */
export function signatureOf(key: string | Uint8Array, t: number, body: string): string {
  return createHmac('sha256', key).update(`${t}.`).update(body).digest('hex');
}

/** The header value for `body` at unix time `t`, signed with each of `keys` (current first). */
export function signatureHeader(keys: readonly (string | Uint8Array)[], t: number, body: string): string {
  return [`t=${t}`, ...keys.map((k) => `v1=${signatureOf(k, t, body)}`)].join(',');
}

/**
 * A receiver's check (also the reference the docs' snippet follows): the header parses, its timestamp is
 * within `windowS` of `nowS`, and one of its v1 values is the HMAC of `${t}.${body}` with `key`.
 * `body` must be the raw bytes received, before any JSON parsing.
 */
export function verifySignature(
  header: string | undefined,
  body: string,
  key: string | Uint8Array,
  nowS: number,
  windowS = REPLAY_WINDOW_S,
): boolean {
  if (typeof header !== 'string' || header.length > 1024) return false;
  let t: number | undefined;
  const v1: string[] = [];
  for (const part of header.split(',')) {
    const [k, v] = part.split('=', 2);
    if (k === 't' && v !== undefined && /^\d{1,12}$/.test(v)) t = Number(v);
    else if (k === 'v1' && v !== undefined && /^[0-9a-f]{64}$/.test(v)) v1.push(v);
  }
  if (t === undefined || Math.abs(nowS - t) > windowS) return false;
  const want = Buffer.from(signatureOf(key, t, body), 'hex');
  return v1.some((s) => timingSafeEqual(Buffer.from(s, 'hex'), want));
}
