/**
 * TLS for the agent API: the files of --agent-tls-cert and --agent-tls-key, checked before the daemon
 * starts (stable codes, the file named, what to do). No message holds a byte of either file: the
 * key's text must never reach a log, and OpenSSL's reasons are short phrases ("key values mismatch"),
 * not the input. The pin the listener logs: src/protocol/tls.ts.
 */
import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { NEVER, RotorError } from '../errors.js';
import { TLS_MIN_VERSION } from '../protocol/tls.js';
import type { ListenerTls } from './limits.js';

/** The codes readAgentTls throws. */
export type AgentTlsCode = 'AGENT_TLS_UNREADABLE' | 'AGENT_TLS_INVALID';

/** A TLS file the daemon refuses: a person must fix it, so it is never retried. */
export class AgentTlsError extends RotorError {
  declare readonly code: AgentTlsCode;
  constructor(code: AgentTlsCode, message: string) {
    super(code, message, { retry: NEVER });
  }
}

const CERT_FLAG = '--agent-tls-cert';
const KEY_FLAG = '--agent-tls-key';

/**
 * Reads and checks the agent listener's certificate and key: readable, a PEM certificate, a PEM key
 * that is not encrypted, the key of that certificate, usable by OpenSSL. `certFile` and `keyFile` are
 * read as given; the messages name them as the user wrote them (`shown`).
 */
export async function readAgentTls(
  certFile: string,
  keyFile: string,
  shown: { readonly cert: string; readonly key: string } = { cert: certFile, key: keyFile },
): Promise<ListenerTls> {
  const read = async (file: string, flag: string, name: string) => {
    try {
      return await readFile(file, 'utf8');
    } catch (e) {
      const why = (e as NodeJS.ErrnoException).code ?? 'unreadable';
      throw new AgentTlsError(
        'AGENT_TLS_UNREADABLE',
        `${flag} ${name} cannot be read (${why}): check the path, and that the daemon's user may read it`,
      );
    }
  };
  const cert = await read(certFile, CERT_FLAG, shown.cert);
  const key = await read(keyFile, KEY_FLAG, shown.key);
  let x509: X509Certificate;
  try {
    if (!/-----BEGIN CERTIFICATE-----/.test(cert)) throw new Error('no PEM certificate');
    x509 = new X509Certificate(cert);
  } catch {
    throw new AgentTlsError(
      'AGENT_TLS_INVALID',
      `${CERT_FLAG} ${shown.cert} holds no PEM certificate ("-----BEGIN CERTIFICATE-----"): give the certificate agents are to see, the leaf first, then any intermediates`,
    );
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch {
    // OpenSSL fails an encrypted key in several ways (no passphrase, an interrupted prompt): its header says it.
    const encrypted = /-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type: 4,ENCRYPTED/m.test(key);
    throw new AgentTlsError(
      'AGENT_TLS_INVALID',
      encrypted
        ? `${KEY_FLAG} ${shown.key} is encrypted: the daemon takes an unencrypted PEM key (decrypt it with openssl pkey, and keep the file mode 0600)`
        : `${KEY_FLAG} ${shown.key} holds no PEM private key ("-----BEGIN PRIVATE KEY-----"): give the key of ${CERT_FLAG} ${shown.cert}`,
    );
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new AgentTlsError(
      'AGENT_TLS_INVALID',
      `${KEY_FLAG} ${shown.key} is not the key of the certificate in ${CERT_FLAG} ${shown.cert}: give the pair made together`,
    );
  }
  try {
    createSecureContext({ cert, key, minVersion: TLS_MIN_VERSION });
  } catch (e) {
    const reason = (e as { reason?: unknown }).reason;
    throw new AgentTlsError(
      'AGENT_TLS_INVALID',
      `${CERT_FLAG} ${shown.cert} and ${KEY_FLAG} ${shown.key} cannot serve TLS${typeof reason === 'string' ? ` (${reason})` : ''}: make a new pair (see docs/security.md)`,
    );
  }
  return { cert, key };
}
