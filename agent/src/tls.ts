/**
 * TLS to an https:// daemon: an https.Agent that opens each connection itself (tls.connect), waits for
 * the handshake to end, checks the daemon's certificate against the configuration's `tls:` (or the
 * system's certificate authorities without it), and only then hands the socket to node:https. So no
 * byte of a request (an agent name, a secret name in a result) is written to a peer whose certificate
 * is refused: node:https on its own may queue a request on a socket whose handshake is still running.
 *
 * The check:
 * - `ca` or no `tls:`: the chain must lead to the trusted certificates (`ca`'s only, or the system's)
 *   and the certificate must name the daemon's host; that is node:tls's own verdict (`authorized`).
 * - `pin`: the certificate's public key must hash to one of the pins (spkiPin); with `ca` as well,
 *   both hold; alone, the chain, the name and the dates are not looked at, only the key.
 * A refusal is AgentError AGENT_DAEMON_CERT, retried with backoff like every failed exchange (a
 * certificate changed on the daemon may be put right there).
 *
 * Sessions are not cached (maxCachedSessions: 0): every new connection is a full handshake whose
 * certificate is checked. Kept-alive connections make that rare.
 */
import https from 'node:https';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { spkiPin, TLS_MIN_VERSION } from 'rotor/internal';
import type { AgentTls } from './config-tls.js';
import { AgentError } from './errors.js';

/** How long a TLS handshake with the daemon may take. */
const HANDSHAKE_MS = 30_000;

/** What node:tls's verification codes mean, for a person. */
function reason(code: string, host: string): string {
  switch (code) {
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return `it does not name ${host} (its subjectAltName must hold the host of \`daemon\`)`;
    case 'CERT_HAS_EXPIRED':
      return 'it has expired';
    case 'CERT_NOT_YET_VALID':
      return 'it is not valid yet (or the clocks differ)';
    default:
      return 'it is not signed by them';
  }
}

/** The agent for https:// daemon URLs. */
export class DaemonTlsAgent extends https.Agent {
  readonly #tls: AgentTls | undefined;
  /** Connections still in their handshake, for destroy(). */
  readonly #opening = new Set<tls.TLSSocket>();

  constructor(config: AgentTls | undefined) {
    super({ keepAlive: true, maxCachedSessions: 0 });
    this.#tls = config;
  }

  /** Node's Agent takes the socket from the callback when this returns nothing. */
  override createConnection(
    options: tls.ConnectionOptions,
    callback: (err: Error | null, socket?: Duplex) => void,
  ): undefined {
    const socket = tls.connect({
      ...options,
      minVersion: TLS_MIN_VERSION,
      ...(this.#tls?.ca !== undefined ? { ca: this.#tls.ca } : {}),
      // The verdict is taken below, before the socket is handed over; node:tls still computes it
      // (`authorized`: chain and host name) for `ca` and the system's authorities.
      rejectUnauthorized: false,
    });
    this.#opening.add(socket);
    const host = options.host ?? 'the daemon';
    const done = (err: Error | null) => {
      this.#opening.delete(socket);
      socket.off('secureConnect', onSecure);
      socket.off('error', done);
      socket.off('close', onClose);
      socket.off('timeout', onTimeout);
      socket.setTimeout(0);
      if (err) {
        socket.destroy();
        callback(err);
      } else {
        callback(null, socket);
      }
    };
    const onSecure = () => done(this.#refusal(socket, host));
    const onClose = () =>
      done(new AgentError('AGENT_DAEMON_UNREACHABLE', 'the connection closed during the TLS handshake'));
    const onTimeout = () =>
      done(
        new AgentError(
          'AGENT_DAEMON_UNREACHABLE',
          `the TLS handshake with the daemon did not end within ${HANDSHAKE_MS / 1000} s`,
        ),
      );
    socket.once('secureConnect', onSecure);
    socket.once('error', done);
    socket.once('close', onClose);
    socket.once('timeout', onTimeout);
    socket.setTimeout(HANDSHAKE_MS);
    return undefined;
  }

  /** Why the daemon's certificate is refused, or null when it is accepted. */
  #refusal(socket: tls.TLSSocket, host: string): AgentError | null {
    const refuse = (message: string) => new AgentError('AGENT_DAEMON_CERT', message);
    const cert = socket.getPeerX509Certificate();
    if (!cert) return refuse('the daemon presented no certificate');
    const pins = this.#tls?.pins;
    const caFile = this.#tls?.caFile;
    if (pins === undefined || caFile !== undefined) {
      if (!socket.authorized) {
        const code = String(socket.authorizationError ?? 'UNVERIFIED');
        const trusted = caFile !== undefined ? `tls.ca (${caFile})` : "the system's certificate authorities";
        return refuse(
          `the daemon's certificate is not accepted by ${trusted}: ${reason(code, host)} [${code}]; check tls.ca, or the daemon's --agent-tls-cert`,
        );
      }
    }
    if (pins !== undefined) {
      const pin = spkiPin(cert);
      if (!pins.includes(pin)) {
        return refuse(
          `the daemon's certificate does not match tls.pin: its public key's pin is ${pin}; if the daemon's key changed on purpose, compare with the pin the daemon logs at start ("listening for agents") before trusting it`,
        );
      }
    }
    return null;
  }

  override destroy(): void {
    for (const s of this.#opening) s.destroy();
    super.destroy();
  }
}
