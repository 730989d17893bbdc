/**
 * The `tls:` mapping of the agent's configuration (./config.ts): its CA file read and parsed, so that a
 * missing or wrong file stops the agent at start, and what is wrong with a pin, said for a person.
 * How the daemon's certificate is then checked: ./tls.ts.
 */
import { X509Certificate } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { LIMITS } from 'rotor/internal';

/** How the daemon's certificate is checked (`tls:`). */
export interface AgentTls {
  /** `tls.ca` as written, for messages; the only trusted certificates are then `ca`'s. */
  readonly caFile?: string;
  /** The PEM text of `tls.ca`: its certificates. */
  readonly ca?: string;
  /** `tls.pin`: the pins accepted (sha256/BASE64). */
  readonly pins?: readonly string[];
}

export interface RawTls {
  readonly ca?: string;
  readonly pin?: string | string[];
}

/** A problem of `tls.ca`, at its value. */
export interface TlsCaProblem {
  readonly code: 'AGENT_CONFIG_TLS_CA_UNREADABLE' | 'AGENT_CONFIG_TLS_CA_INVALID';
  readonly message: string;
}

/** `tls:` as the schema let it through, its CA file read (relative to `dir`, the configuration's directory). */
export async function readTlsConfig(raw: RawTls, dir: string): Promise<AgentTls | TlsCaProblem> {
  const pins = raw.pin === undefined ? undefined : typeof raw.pin === 'string' ? [raw.pin] : raw.pin;
  if (raw.ca === undefined) return pins ? { pins } : {};
  const file = path.resolve(dir, raw.ca);
  let text: string;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new Error('not a file');
    if (st.size > LIMITS.fileBytes) throw new Error(`larger than ${LIMITS.fileBytes} bytes`);
    text = await readFile(file, 'utf8');
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    return {
      code: 'AGENT_CONFIG_TLS_CA_UNREADABLE',
      message: `tls.ca: ${raw.ca} cannot be read (${why}; looked for ${file}; a relative path is relative to this file)`,
    };
  }
  // Only the certificates: a bundle may carry comments, and a private key pasted in by mistake is not kept.
  const blocks = text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  const bad = blocks.findIndex((b) => {
    try {
      new X509Certificate(b);
      return false;
    } catch {
      return true;
    }
  });
  if (blocks.length === 0)
    return {
      code: 'AGENT_CONFIG_TLS_CA_INVALID',
      message: `tls.ca: ${raw.ca} holds no PEM certificate ("-----BEGIN CERTIFICATE-----"): give the CA that signed the daemon's certificate, or that certificate itself`,
    };
  if (bad >= 0)
    return {
      code: 'AGENT_CONFIG_TLS_CA_INVALID',
      message: `tls.ca: certificate ${bad + 1} of ${blocks.length} in ${raw.ca} cannot be read: give PEM certificates only`,
    };
  return { caFile: raw.ca, ca: `${blocks.join('\n')}\n`, ...(pins ? { pins } : {}) };
}

/**
 * What is wrong with `tls.pin` (`field`: tls.pin, or tls.pin.N for an item of a list), for the code
 * AGENT_CONFIG_TLS_PIN. `kind` is what the value is ("a number", ...) when it is not a string.
 */
export function pinMessage(field: string, value: unknown, kind: string): string {
  if (Array.isArray(value) && !/\.\d+$/.test(field)) {
    return `${field} must be a pin "sha256/BASE64", or a list of 1 to 16 of them, not ${value.length === 0 ? 'an empty list' : 'a longer list'}`;
  }
  if (typeof value !== 'string') return `${field} must be a pin "sha256/BASE64" (or a list of them), not ${kind}`;
  // curl writes the same hash as sha256//BASE64 (--pinnedpubkey); a bare hash lacks the prefix.
  const hint = /^sha256\/\//i.test(value)
    ? " (this is curl's spelling, sha256//: rotor writes one slash)"
    : /^[A-Za-z0-9+/]{43}=$/.test(value)
      ? ' (prefix it with "sha256/")'
      : '';
  return `${field} ${JSON.stringify(value.slice(0, 80))} is not a pin${hint}: write "sha256/" and the base64 of the SHA-256 of the daemon certificate's public key (44 characters, ending in "="), as the daemon logs it at start`;
}
