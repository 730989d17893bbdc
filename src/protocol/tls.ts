/**
 * TLS between rotor-agent and the daemon's agent API: the oldest version either side accepts, and
 * the pin of a certificate as the agent's `tls.pin` takes it. The daemon logs its own pin at start;
 * the agent compares the pin of the certificate it is shown before it sends a byte (agent/src/tls.ts).
 */
import { createHash, type X509Certificate } from 'node:crypto';

/** The oldest TLS version the agent listener accepts and rotor-agent offers. */
export const TLS_MIN_VERSION = 'TLSv1.2';

/**
 * The pin of a certificate's public key: "sha256/" and the base64 of the SHA-256 of the certificate's
 * SubjectPublicKeyInfo (DER). The hash is HPKP's pin-sha256 and curl's --pinnedpubkey "sha256//..."
 * (which writes two slashes). A pin outlives a certificate renewed with the same key.
 */
export function spkiPin(cert: X509Certificate): string {
  const der = cert.publicKey.export({ type: 'spki', format: 'der' });
  return `sha256/${createHash('sha256').update(der).digest('base64')}`;
}
