/**
 * Bounds on every HTTP listener the daemon opens (the agent API, metrics and the status page, the
 * consumer sockets, the admin socket): how many connections at once, how many from one peer, how long
 * a peer may take to send its headers, how long a connection may idle between requests, and how big
 * the headers may be. Bodies are bounded where they are read (readBody in http-json.ts).
 *
 * Node checks headersTimeout and requestTimeout only every connectionsCheckingInterval (30 s by
 * default, which would stretch a 10 s header timeout to 40 s); here the interval follows the timeouts.
 *
 * With TLS (the agent API's --agent-tls-cert and --agent-tls-key) the same limits hold: the counts
 * are taken on the raw TCP connection ('connection'; 'secureConnection' carries the TLS socket after
 * the handshake), so a refused peer costs no handshake, and the handshake itself must end within the
 * header timeout (Node's own default is 120 s), since the header timeout starts only after it.
 */
import { createServer, type RequestListener, type Server } from 'node:http';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:https';
import type { Socket } from 'node:net';
import { TLS_MIN_VERSION } from '../protocol/tls.js';

export interface ListenerLimits {
  /** Connections open at once; further ones are closed as soon as they are accepted. */
  readonly maxConnections: number;
  /** Connections open at once from one remote address (TCP only; a Unix socket has one owner already). */
  readonly maxConnectionsPerPeer?: number;
  /** Time from a connection (or the first byte of a request) to the end of its headers; then 408 and closed. */
  readonly headersTimeoutMs: number;
  /** Time to receive a whole request, body included (Node's own backstop; bodies have their own timeout). */
  readonly requestTimeoutMs: number;
  /** How long a kept-alive connection may idle between requests. */
  readonly keepAliveTimeoutMs: number;
  /** Bytes of request line and headers (431 beyond). */
  readonly maxHeaderSize: number;
}

/** What the listener reports about connections it refused (for a rate-limited log line). */
export type RefusedConnection = (why: 'peer' | 'total', peer: string | undefined) => void;

/** A listener's certificate (PEM, the leaf first, then any intermediates) and its private key (PEM). */
export interface ListenerTls {
  readonly cert: string | Buffer;
  readonly key: string | Buffer;
}

/**
 * An http.Server with these limits, or an https.Server with `tls`. Connections over the total are
 * dropped by Node (server.maxConnections); over the per-peer count, destroyed before their first byte
 * is parsed (and, with TLS, before the handshake).
 */
export function boundedServer(
  limits: ListenerLimits,
  listener: RequestListener | undefined,
  onRefused?: RefusedConnection,
): Server;
export function boundedServer(
  limits: ListenerLimits,
  listener: RequestListener | undefined,
  onRefused: RefusedConnection | undefined,
  tls: ListenerTls | undefined,
): Server | TlsServer;
export function boundedServer(
  limits: ListenerLimits,
  listener: RequestListener | undefined,
  onRefused?: RefusedConnection,
  tls?: ListenerTls,
): Server | TlsServer {
  const options = {
    maxHeaderSize: limits.maxHeaderSize,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: Math.max(limits.requestTimeoutMs, limits.headersTimeoutMs),
    keepAliveTimeout: limits.keepAliveTimeoutMs,
    connectionsCheckingInterval: checkingInterval(limits),
    requireHostHeader: true,
  };
  const server = tls
    ? createTlsServer(
        {
          ...options,
          cert: tls.cert,
          key: tls.key,
          minVersion: TLS_MIN_VERSION,
          // The header timeout runs from the end of the handshake: a peer that never finishes one is
          // held to the same bound.
          handshakeTimeout: limits.headersTimeoutMs,
        },
        listener,
      )
    : createServer(options, listener);
  server.keepAliveTimeout = limits.keepAliveTimeoutMs;
  server.maxHeadersCount = 100;
  server.maxConnections = limits.maxConnections;
  server.on('drop', (data?: { remoteAddress?: string }) => onRefused?.('total', data?.remoteAddress));
  const perPeer = limits.maxConnectionsPerPeer;
  if (perPeer !== undefined) {
    const open = new Map<string, number>();
    // Before node:http's (or node:tls's) own listener, so that a refused connection gets no parser
    // and no handshake. The raw socket closes with the TLS socket over it, which frees the count.
    server.prependListener('connection', (socket: Socket) => {
      const peer = socket.remoteAddress;
      if (peer === undefined) return; // a Unix socket
      const n = open.get(peer) ?? 0;
      if (n >= perPeer) {
        socket.destroy();
        onRefused?.('peer', peer);
        return;
      }
      open.set(peer, n + 1);
      socket.once('close', () => {
        const left = (open.get(peer) ?? 1) - 1;
        if (left > 0) open.set(peer, left);
        else open.delete(peer);
      });
    });
  }
  return server;
}

/** How often Node looks for requests over their header or request timeout: a quarter of the shorter one, at most 1 s. */
function checkingInterval(limits: ListenerLimits): number {
  return Math.max(10, Math.min(1000, Math.floor(Math.min(limits.headersTimeoutMs, limits.requestTimeoutMs) / 4)));
}

/**
 * At most one log line per key every `intervalMs`, with the number of events it stands for. For
 * refusals that a peer can cause at will, so that a flood does not become a flood of log lines.
 */
export function rateLimited(
  intervalMs: number,
  now: () => number = Date.now,
): (key: string, emit: (suppressed: number) => void) => void {
  const last = new Map<string, { at: number; suppressed: number }>();
  return (key, emit) => {
    const t = now();
    const e = last.get(key);
    if (e && t - e.at < intervalMs) {
      e.suppressed++;
      return;
    }
    if (last.size > 1000) last.clear(); // keys come from a small set; never let them grow
    last.set(key, { at: t, suppressed: 0 });
    emit(e?.suppressed ?? 0);
  };
}
