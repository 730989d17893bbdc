/**
 * One HTTP POST of a delivery, with node:http / node:https rather than fetch: they give a connect
 * timeout apart from the total one without another dependency (fetch's connect timeout needs undici's
 * Agent). Redirects are never followed (a 3xx is a failure), TLS certificates are checked, and the
 * response body is read at most MAX_RESPONSE bytes, then dropped. Resolves with the outcome; never
 * rejects.
 */
import http from 'node:http';
import https from 'node:https';

export interface SendLimits {
  /** From the request's start to the connection being made (TCP, and TLS for https). */
  readonly connectMs: number;
  /** From the request's start to the end of the response (or MAX_RESPONSE bytes of it). */
  readonly totalMs: number;
}

export const SEND_LIMITS: SendLimits = { connectMs: 5_000, totalMs: 15_000 };
const MAX_RESPONSE = 64 * 1024;

export type SendOutcome = { ok: true; status: number } | { ok: false; code: string; status?: number };

export function post(
  url: string,
  headers: Readonly<Record<string, string>>,
  body: string,
  limits: SendLimits = SEND_LIMITS,
  signal?: AbortSignal,
): Promise<SendOutcome> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (o: SendOutcome) => {
      if (done) return;
      done = true;
      clearTimeout(total);
      clearTimeout(connect);
      signal?.removeEventListener('abort', onAbort);
      req.destroy();
      resolve(o);
    };
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      resolve({ ok: false, code: 'NOTIFY_URL_INVALID' });
      return;
    }
    const onAbort = () => finish({ ok: false, code: 'NOTIFY_ABORTED' });
    const lib = u.protocol === 'https:' ? https : http;
    const data = Buffer.from(body, 'utf8');
    const req = lib.request(u, {
      method: 'POST',
      agent: false, // one connection per delivery: nothing lingers after a hanging receiver
      headers: {
        ...headers,
        'content-type': 'application/json',
        'content-length': String(data.length),
        'user-agent': 'rotor-webhooks',
      },
    });
    const total = setTimeout(() => finish({ ok: false, code: 'NOTIFY_TIMEOUT' }), limits.totalMs);
    const connect = setTimeout(() => finish({ ok: false, code: 'NOTIFY_CONNECT_TIMEOUT' }), limits.connectMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('socket', (socket) => {
      const connected = () => clearTimeout(connect);
      if (!socket.connecting) connected();
      else socket.once(u.protocol === 'https:' ? 'secureConnect' : 'connect', connected);
    });
    req.on('error', (e: NodeJS.ErrnoException) => finish({ ok: false, code: e.code ?? 'NOTIFY_REQUEST_FAILED' }));
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      let read = 0;
      const end = () =>
        finish(status >= 200 && status < 300 ? { ok: true, status } : { ok: false, code: `HTTP_${status}`, status });
      res.on('data', (chunk: Buffer) => {
        read += chunk.length;
        if (read >= MAX_RESPONSE) end();
      });
      res.on('end', end);
      res.on('error', end);
    });
    req.end(data);
  });
}
