/** Talking to the daemon's admin socket (DATA_DIR/admin.sock) from the command line. */
import { request } from 'node:http';
import path from 'node:path';
import { BACKOFF, NEVER, RotorError } from '../errors.js';
import { boundedBody } from '../util/bounded.js';
import { whyDenied } from '../util/socket-access.js';

/** The largest answer read from the admin socket (the status of many thousands of secrets). */
const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

/** No daemon listening, no answer in time, a broken connection: these may pass. */
const TRANSIENT: ReadonlySet<string> = new Set(['DAEMON_NOT_RUNNING', 'TIMEOUT', 'ADMIN_IO']);

/**
 * The admin socket's answer was an error, or there was none. The TRANSIENT ones may pass (BACKOFF);
 * the rest (a refusal, the daemon's own error codes) is final (NEVER).
 */
export class AdminError extends RotorError {
  constructor(code: string, message: string) {
    super(code, message, { retry: TRANSIENT.has(code) ? BACKOFF : NEVER });
  }
}

export function adminSocket(dataDir: string): string {
  return path.join(dataDir, 'admin.sock');
}

export function callAdmin(
  socketPath: string,
  method: 'GET' | 'POST',
  urlPath: string,
  body?: unknown,
): Promise<unknown> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path: urlPath,
        headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {},
        timeout: 120_000,
        // A connection of its own for each call: a kept-alive socket that the daemon closes for being idle
        // just as a request is written on it fails that request (EPIPE, ECONNRESET).
        agent: false,
      },
      (res) => {
        const collected = boundedBody(MAX_ANSWER_BYTES);
        res.on('data', (c: Buffer) => {
          if (collected.add(c)) return;
          reject(new AdminError('BAD_RESPONSE', `the daemon answered more than ${MAX_ANSWER_BYTES} bytes`));
          res.destroy();
        });
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(collected.body().toString('utf8'));
          } catch {
            reject(new AdminError('BAD_RESPONSE', 'the daemon answered something that is not JSON'));
            return;
          }
          const err = (parsed as { error?: { code: string; message: string } }).error;
          if ((res.statusCode ?? 500) >= 400 && err) reject(new AdminError(err.code, err.message));
          else resolve(parsed);
        });
      },
    );
    req.on('timeout', () => req.destroy(new AdminError('TIMEOUT', 'the daemon did not answer in time')));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e instanceof AdminError) reject(e);
      else if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')
        reject(
          new AdminError(
            'DAEMON_NOT_RUNNING',
            `no daemon is listening on ${socketPath}; start it with rotor daemon, or pass its --data-dir`,
          ),
        );
      else if (e.code === 'EACCES')
        reject(
          new AdminError(
            'ADMIN_DENIED',
            `cannot connect to ${socketPath}: ${whyDenied(socketPath)}; the admin socket is for the daemon's user (usually root)`,
          ),
        );
      else reject(new AdminError('ADMIN_IO', `cannot talk to the daemon: ${e.code ?? e.message}`));
    });
    if (payload) req.write(payload);
    req.end();
  });
}
