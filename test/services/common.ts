/**
 * Throwaway database servers for the integration tests: each test file starts its own, with password
 * authentication enforced, in a temporary directory on a free port, and stops it afterwards.
 *
 * When a server's binaries are missing, the test is skipped with a message saying how to install them,
 * unless ROTOR_REQUIRE_SERVICES=1 (set by .ci/run), where a missing server fails the run instead.
 */
import { existsSync } from 'node:fs';
import net from 'node:net';
import type { Test } from 'tap';

/** A free TCP port on 127.0.0.1 (the kernel's choice; closed again before it is returned). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** The first existing path of `candidates`, or undefined. */
export function findBinary(...candidates: string[]): string | undefined {
  return candidates.find((c) => existsSync(c));
}

/**
 * Whether a service can run here. If not: fails the test under ROTOR_REQUIRE_SERVICES=1, else skips it
 * with `install` (how to get the binaries). Returns false when the caller must stop.
 */
export function needService(t: Test, what: string, available: boolean, install: string): boolean {
  if (available) return true;
  const message = `${what} is not installed here: ${install}`;
  if (process.env.ROTOR_REQUIRE_SERVICES === '1')
    t.fail(`${message} (ROTOR_REQUIRE_SERVICES=1: a missing server fails the run)`);
  else t.skip(`${message}; skipping the live ${what} tests`, () => undefined);
  return false;
}

/** Polls `ready` until it resolves true (a server accepting connections), up to `timeoutMs`. */
export async function waitUntil(ready: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await ready().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what} did not become ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
