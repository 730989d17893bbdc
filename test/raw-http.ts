/** Raw HTTP/1.1 over TCP for tests that decide exactly which bytes a peer sends, and when. */
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { newNonce } from '../src/protocol/sign.js';

export interface Raw {
  readonly sock: net.Socket;
  /** The first answer on the connection (status, headers, body). */
  readonly answer: Promise<{ status: number; head: string; headers: Record<string, string>; body: string }>;
  /** Resolves when the connection is closed (by either side). */
  readonly closed: Promise<void>;
  /** Whether the connection closed. */
  isClosed(): boolean;
  /** Everything received so far. */
  received(): string;
}

/** A raw TCP connection (from `localAddress`, a 127.x address); resolves once connected. */
export function connect(address: string, localAddress = '127.0.0.1'): Promise<Raw> {
  const i = address.lastIndexOf(':');
  const sock = net.connect({ host: address.slice(0, i), port: Number(address.slice(i + 1)), localAddress });
  let data = '';
  let closed = false;
  const closedP = new Promise<void>((resolve) =>
    sock.once('close', () => {
      closed = true;
      resolve();
    }),
  );
  sock.on('error', () => {});
  const answer = new Promise<{ status: number; head: string; headers: Record<string, string>; body: string }>(
    (resolve, reject) => {
      const check = () => {
        // Skip interim answers (100 Continue).
        let text = data;
        while (/^HTTP\/1\.1 1\d\d [^\r]*\r\n\r\n/.test(text)) text = text.slice(text.indexOf('\r\n\r\n') + 4);
        const end = text.indexOf('\r\n\r\n');
        if (end < 0) return false;
        const head = text.slice(0, end);
        const headers: Record<string, string> = {};
        for (const line of head.split('\r\n').slice(1))
          headers[line.slice(0, line.indexOf(':')).toLowerCase()] = line.slice(line.indexOf(':') + 1).trim();
        const length = Number(headers['content-length'] ?? 0);
        const body = text.slice(end + 4);
        if (Buffer.byteLength(body) < length) return false;
        resolve({ status: Number(head.slice(9, 12)), head, headers, body: body.slice(0, length) });
        return true;
      };
      sock.on('data', (c: Buffer) => {
        data += c.toString('latin1');
        check();
      });
      void closedP.then(
        () => check() || reject(new Error(`closed without an answer (received ${JSON.stringify(data.slice(0, 80))})`)),
      );
    },
  );
  answer.catch(() => {});
  return new Promise((resolve, reject) => {
    sock.once('connect', () =>
      resolve({ sock, answer, closed: closedP, isClosed: () => closed, received: () => data }),
    );
    sock.once('error', reject);
  });
}

/** The head of a POST, with the given extra headers; no body. */
export function head(address: string, p: string, headers: Record<string, string | number>): string {
  return [
    `POST ${p} HTTP/1.1`,
    `Host: ${address}`,
    'Content-Type: application/json',
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    '',
    '',
  ].join('\r\n');
}

/** Unsigned-looking headers: well-formed, for `agent`, with a random (so forged) signature. */
export function forged(agent: string): Record<string, string> {
  return {
    'x-rotor-agent': agent,
    'x-rotor-timestamp': String(Date.now()),
    'x-rotor-nonce': newNonce(),
    'x-rotor-content-sha256': randomBytes(32).toString('hex'),
    'x-rotor-signature': randomBytes(64).toString('base64'),
  };
}
