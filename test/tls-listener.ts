/**
 * The agent API's real listener (listenAgentApi) for the TLS tests, with a real agent hub that declares
 * one agent and counts the requests that reach the handler: each one asks for its agent's key first,
 * so a count that does not move means the daemon received no request. Also TLS and TCP sockets for
 * tests that decide what a peer does.
 */
import type { KeyObject } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import type { Test } from 'tap';
import { AgentHub } from '../src/daemon/agents.js';
import { jsonLogger } from '../src/log.js';
import type { Desired } from '../src/model/model.js';
import { type AgentApiLimits, type AgentJobs, listenAgentApi } from '../src/serve/agent-api.js';
import type { ListenerTls } from '../src/serve/limits.js';

export interface DeclaredAgent {
  readonly name: string;
  readonly signingKey: string;
  readonly recipient: string;
}

export interface CountingListenerOptions {
  /** The one agent declared. */
  readonly agent: DeclaredAgent;
  /** The daemon's signing key (its answers). */
  readonly signing: KeyObject;
  /** HTTPS with this certificate and key; plain HTTP without. */
  readonly tls?: ListenerTls;
  /** Default 127.0.0.1:0. */
  readonly listen?: string;
  readonly limits?: Partial<AgentApiLimits>;
}

/** The listener, closed when `t` ends: its port, the requests that reached it, its log. */
export async function countingListener(t: Test, o: CountingListenerOptions) {
  let logs = '';
  const log = jsonLogger((l) => void (logs += l));
  const hub = new AgentHub({ log, now: Date.now });
  hub.setModel({
    agents: new Map([[o.agent.name, { decl: { signingKey: o.agent.signingKey, recipient: o.agent.recipient } }]]),
    targets: new Map(),
  } as unknown as Desired);
  let requests = 0;
  const counted: AgentJobs = {
    keyOf: (a) => {
      requests++;
      return hub.keyOf(a);
    },
    take: (a, w, c) => hub.take(a, w, c),
    complete: (a, r) => hub.complete(a, r),
  };
  const api = await listenAgentApi(o.listen ?? '127.0.0.1:0', {
    hub: counted,
    signing: o.signing,
    log,
    now: Date.now,
    ...(o.tls ? { tls: o.tls } : {}),
    ...(o.limits ? { limits: o.limits } : {}),
  });
  t.teardown(() => api.close());
  const port = api.address.slice(api.address.lastIndexOf(':') + 1);
  return { api, port, requests: () => requests, logs: () => logs };
}

/** A TLS connection to 127.0.0.1:`port` from `localAddress`, trusting `ca`; resolves after the handshake. */
export function openTls(port: string, localAddress: string, ca: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    // The TCP connection first: it is what carries the local address (the 127.x the listener counts by).
    const socket = net.connect({ host: '127.0.0.1', port: Number(port), localAddress });
    socket.once('error', reject);
    const s = tls.connect({ socket, host: '127.0.0.1', servername: 'localhost', ca }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Everything received on `s` until it closes. */
export function untilClosed(s: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    let text = '';
    s.on('data', (c: Buffer) => (text += c.toString('latin1')));
    s.on('error', () => {});
    s.once('close', () => resolve(text));
  });
}

/** A TCP connection to 127.0.0.1:`port` from `localAddress` (it may be refused at once). */
export function openTcp(port: string, localAddress: string): net.Socket {
  return net.connect({ host: '127.0.0.1', port: Number(port), localAddress });
}
