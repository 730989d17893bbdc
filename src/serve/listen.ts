/** Listening on a HOST:PORT flag value (--agent-listen, --metrics-listen): parsing, errors with codes, the bound address. */
import type { Server } from 'node:http';
import type { Server as TlsServer } from 'node:https';
import { type AddressInfo, isIP } from 'node:net';
import { NEVER, RotorError } from '../errors.js';

/**
 * Binds `server` to `listen` ("127.0.0.1:7700", "[::1]:0"; port 0 picks a free one). Throws a
 * RotorError `${code}_INVALID` (not HOST:PORT) or `${code}_FAILED` (cannot bind; the listen error is
 * its cause), neither retried: the daemon does not start. Returns the bound address and a close that
 * also ends open connections.
 */
export async function listenTcp(
  server: Server | TlsServer,
  listen: string,
  flag: string,
  code: string,
): Promise<{ address: string; close: () => Promise<void> }> {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:]+):(\d{1,5})$/.exec(listen);
  if (!m || Number(m[2]) > 65535) {
    throw new RotorError(`${code}_INVALID`, `${flag} ${listen} is not HOST:PORT`, { retry: NEVER });
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => {
      const message = `cannot listen on ${listen} (${flag}): ${e.code}`;
      reject(new RotorError(`${code}_FAILED`, message, { cause: e, retry: NEVER }));
    });
    server.listen(Number(m[2]), m[1]!.replace(/^\[|\]$/g, ''), () => resolve());
  });
  const a = server.address() as AddressInfo;
  return {
    address: `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * Whether HOST (a bound address as listenTcp returns it, brackets allowed) is loopback: 127.0.0.0/8,
 * ::1, ::ffff:127.x (IPv4 loopback as IPv6 maps it) or localhost. 0.0.0.0 and :: are every address.
 */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return isIP(h) === 6 && (h === '::1' || h.startsWith('::ffff:127.'));
}
