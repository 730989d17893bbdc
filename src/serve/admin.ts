/**
 * The admin socket, DATA_DIR/admin.sock: mode 0600 inside the 0700 data directory, so only the
 * daemon's user (root in a standard install) can connect. It carries rotate-now and status.
 *   POST /v1/rotate   {"name": "...", "reason": "..."}  -> {"name", "version"}
 *   GET  /v1/status                                     -> the daemon's status
 */
import { chmod, lstat, unlink } from 'node:fs/promises';
import type { Server } from 'node:http';
import { NEVER, RotorError } from '../errors.js';
import { listenPrivately } from './consumer-sockets.js';
import { HttpError, readJson, sendError, sendJson } from './http-json.js';
import { boundedServer, type ListenerLimits } from './limits.js';
import type { DaemonStatus } from './status.js';

/** Only the daemon's user can connect; these bound what a stuck or buggy client can hold. */
export const ADMIN_LIMITS: ListenerLimits = {
  maxConnections: 64,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxHeaderSize: 8192,
};
/** {"name": ..., "reason": ...}: a name of at most 253 characters and a reason of at most 500. */
const ADMIN_BODY = { limit: 16 * 1024, timeoutMs: 10_000 };

export interface AdminHandlers {
  rotate(name: string, reason: string): Promise<{ name: string; version: number }>;
  status(): DaemonStatus;
}

export async function listenAdmin(socketPath: string, handlers: AdminHandlers): Promise<Server> {
  await unlink(socketPath).catch(() => undefined); // a stale socket from a previous run
  const server = boundedServer(ADMIN_LIMITS, (req, res) => {
    void (async () => {
      try {
        if (req.method === 'POST' && req.url === '/v1/rotate') {
          const body = (await readJson(req, ADMIN_BODY)) as { name?: unknown; reason?: unknown };
          if (
            typeof body.name !== 'string' ||
            typeof body.reason !== 'string' ||
            body.reason.trim() === '' ||
            body.reason.length > 500
          ) {
            throw new HttpError(400, 'BAD_REQUEST', 'give "name" and a "reason" of 1 to 500 characters');
          }
          sendJson(res, 200, await handlers.rotate(body.name, body.reason));
        } else if (req.method === 'GET' && req.url === '/v1/status') {
          sendJson(res, 200, handlers.status());
        } else {
          throw new HttpError(404, 'NOT_FOUND', `no ${req.method} ${req.url} here`);
        }
      } catch (e) {
        const err = e as { code?: string; message?: string };
        if (!(e instanceof HttpError) && err.code === 'SECRET_UNKNOWN')
          sendError(res, new HttpError(404, err.code, err.message ?? ''));
        else if (!(e instanceof HttpError) && err.code === 'SECRET_NOT_ROTATABLE')
          sendError(res, new HttpError(409, err.code, err.message ?? ''));
        // A rotation that failed (the audit log or the store cannot be written, an agent...): its code, not INTERNAL.
        else if (!(e instanceof HttpError) && typeof err.code === 'string' && /^[A-Z][A-Z0-9_]+$/.test(err.code))
          sendError(res, new HttpError(503, err.code, `the rotation failed: ${err.message ?? err.code}`));
        else sendError(res, e);
      }
    })();
  });
  await listenPrivately(server, socketPath); // created 0600: never more open, not even briefly
  // chmod follows a link: only the socket node itself (lstat) is chmod'ed.
  if (!(await lstat(socketPath)).isSocket()) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    // The code of the daemon's DataDirError (src/daemon/lock.ts), which this layer cannot import.
    const why = "something else writes to the data directory; make it the daemon's own, mode 0700";
    const message = `${socketPath} was replaced while the daemon made it: ${why}`;
    throw new RotorError('DATA_DIR_UNSAFE', message, { retry: NEVER });
  }
  await chmod(socketPath, 0o600);
  return server;
}
