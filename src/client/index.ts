/**
 * rotor/client: read secrets from the rotor daemon over a consumer's Unix socket.
 *
 *   import { getSecret, watchSecret } from 'rotor/client';
 *   const db = await getSecret('payments/db', { socket: '/run/rotor/billing-api.sock' });
 *   for await (const s of watchSecret('payments/db', { signal })) reconnect(s.username, s.value);
 *
 * The socket defaults to $ROTOR_SOCKET. No dependency beyond node:http and rotor's errors module (which
 * imports nothing); connections are kept alive per socket. Errors are RotorClientError (a RotorError)
 * with the daemon's stable code (ACCESS_DENIED, SECRET_UNKNOWN, ...) or a client-side one
 * (DAEMON_NOT_RUNNING, SOCKET_DENIED, TIMEOUT, BAD_RESPONSE), and a `retry` that says whether trying
 * again can help. A value never appears in an error.
 */
import { Agent, request } from 'node:http';
import { BACKOFF, NEVER, RotorError, retryOf } from '../errors.js';
import type { BackoffOptions } from '../util/backoff.js';
import { backoffDelay } from '../util/backoff.js';
import { boundedBody } from '../util/bounded.js';
import { whyDenied } from '../util/socket-access.js';

/** The largest answer read from a socket (the list of a consumer's secrets, or one structured value). */
export const MAX_ANSWER_BYTES = 16 * 1024 * 1024;

export type SecretValue = string | Readonly<Record<string, string>>;

export interface PreviousVersion {
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  /** ISO time after which the previous version no longer works. */
  readonly validUntil: string;
}

export interface Secret {
  readonly name: string;
  readonly version: number;
  readonly value: SecretValue;
  /** The database user to log in as (database secrets; with `alternate` it changes between versions). */
  readonly username?: string;
  /** ISO time this version became current. */
  readonly rotatedAt: string;
  /** ISO time of the next scheduled rotation, or null when rotor does not schedule one. */
  readonly nextRotationAt: string | null;
  /** The version before, while its overlap lasts. */
  readonly previous?: PreviousVersion;
}

/** One retained version, from `getSecret(name, { version })`. */
export interface SecretVersion {
  readonly name: string;
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  readonly rotatedAt: string;
  readonly state: 'current' | 'previous' | 'retired';
  readonly validUntil?: string;
}

export interface ClientOptions {
  /** The consumer's socket; default $ROTOR_SOCKET. */
  readonly socket?: string;
  /** Per request (default 10 s; long-polls add their wait). */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
}

/** Codes that trying again cannot fix (watchSecret throws them); every other one is retried with backoff. */
const PERMANENT: ReadonlySet<string> = new Set([
  'ACCESS_DENIED',
  'SECRET_UNKNOWN',
  'NO_SOCKET',
  'SOCKET_DENIED',
  'BAD_REQUEST',
  'ABORTED',
]);

export class RotorClientError extends RotorError {
  constructor(
    code: string,
    message: string,
    readonly status?: number,
  ) {
    super(code, message, { retry: PERMANENT.has(code) ? NEVER : BACKOFF });
  }
}

const agents = new Map<string, Agent>();
function agentFor(socket: string): Agent {
  let a = agents.get(socket);
  if (!a) {
    a = new Agent({ keepAlive: true, maxSockets: 16 });
    agents.set(socket, a);
  }
  return a;
}

function socketOf(o: ClientOptions): string {
  const socket = o.socket ?? process.env.ROTOR_SOCKET;
  if (!socket)
    throw new RotorClientError(
      'NO_SOCKET',
      'no socket given: pass { socket } or set ROTOR_SOCKET to the consumer socket (SOCKET_DIR/<consumer>.sock)',
    );
  return socket;
}

/** GETs `path` on the socket and returns the parsed JSON; daemon errors become RotorClientError. */
export function call<T>(path: string, o: ClientOptions = {}, extraMs = 0): Promise<T> {
  const socket = socketOf(o);
  return new Promise<T>((resolve, reject) => {
    if (o.signal?.aborted) {
      reject(new RotorClientError('ABORTED', 'the request was aborted'));
      return;
    }
    const req = request(
      {
        socketPath: socket,
        path,
        method: 'GET',
        agent: agentFor(socket),
        timeout: (o.timeoutMs ?? 10_000) + extraMs,
        ...(o.signal ? { signal: o.signal } : {}),
      },
      (res) => {
        const collected = boundedBody(MAX_ANSWER_BYTES);
        res.on('data', (c: Buffer) => {
          if (collected.add(c)) return;
          reject(
            new RotorClientError(
              'BAD_RESPONSE',
              `${socket} answered more than ${MAX_ANSWER_BYTES} bytes (status ${res.statusCode})`,
              res.statusCode,
            ),
          );
          res.destroy();
        });
        res.on('error', (e) =>
          reject(
            new RotorClientError(
              'IO',
              `the answer from ${socket} broke off: ${(e as NodeJS.ErrnoException).code ?? e.message}`,
            ),
          ),
        );
        res.on('end', () => {
          let body: unknown;
          try {
            body = JSON.parse(collected.body().toString('utf8'));
          } catch {
            reject(
              new RotorClientError(
                'BAD_RESPONSE',
                `${socket} answered something that is not JSON (status ${res.statusCode})`,
                res.statusCode,
              ),
            );
            return;
          }
          const status = res.statusCode ?? 500;
          if (status >= 400) {
            const err = (body as { error?: { code?: string; message?: string } }).error;
            reject(new RotorClientError(err?.code ?? `HTTP_${status}`, err?.message ?? `status ${status}`, status));
          } else resolve(body as T);
        });
      },
    );
    req.on('timeout', () =>
      req.destroy(new RotorClientError('TIMEOUT', `the daemon did not answer on ${socket} in time`)),
    );
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e instanceof RotorClientError) reject(e);
      else if (e.name === 'AbortError') reject(new RotorClientError('ABORTED', 'the request was aborted'));
      else if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED')
        reject(
          new RotorClientError(
            'DAEMON_NOT_RUNNING',
            `nothing listens on ${socket}: is the daemon running, and is this consumer declared?`,
          ),
        );
      else if (e.code === 'EACCES')
        reject(new RotorClientError('SOCKET_DENIED', `cannot connect to ${socket}: ${whyDenied(socket)}`));
      else reject(new RotorClientError('IO', `cannot talk to the daemon on ${socket}: ${e.code ?? e.message}`));
    });
    req.end();
  });
}

function secretPath(name: string): string {
  return `/v1/secrets/${name.split('/').map(encodeURIComponent).join('/')}`;
}

/** The current version of a secret (with `previous` during the overlap), or a retained one with `version`. */
export function getSecret(name: string, o?: ClientOptions): Promise<Secret>;
export function getSecret(name: string, o: ClientOptions & { version: number }): Promise<SecretVersion>;
export function getSecret(name: string, o: ClientOptions & { version?: number } = {}): Promise<Secret | SecretVersion> {
  return call(secretPath(name) + (o.version !== undefined ? `?version=${o.version}` : ''), o);
}

/** The names of the secrets this consumer may read. */
export async function listSecrets(o: ClientOptions = {}): Promise<string[]> {
  const r = await call<{ secrets: { name: string }[] }>('/v1/secrets', o);
  return r.secrets.map((s) => s.name);
}

export interface WatchOptions extends ClientOptions {
  /** Seconds each long-poll waits (1 to 300, default 60). */
  readonly waitSeconds?: number;
  /** Yield only versions after this one (default: yield the current version first). */
  readonly after?: number;
}

/** watchSecret's retry after failure n: 0.5 s doubling to 30 s, drawn from the upper half (equal jitter). */
const WATCH_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000, jitter: 'equal' };

/**
 * Yields the current version, then every newer one as it appears (a long-poll per step). Survives a
 * daemon restart (retries with backoff up to 30 s); ends when `signal` aborts; throws on errors that
 * retrying cannot fix (ACCESS_DENIED, SECRET_UNKNOWN, NO_SOCKET, SOCKET_DENIED).
 */
export async function* watchSecret(name: string, o: WatchOptions = {}): AsyncGenerator<Secret> {
  const wait = Math.min(300, Math.max(1, Math.floor(o.waitSeconds ?? 60)));
  let after = o.after;
  let failures = 0;
  while (!o.signal?.aborted) {
    try {
      const s: Secret =
        after === undefined
          ? await call<Secret>(secretPath(name), o)
          : await call<Secret>(`${secretPath(name)}?wait=${wait}&after=${after}`, o, wait * 1000);
      failures = 0;
      if (after === undefined || s.version > after) {
        after = s.version;
        yield s;
      }
    } catch (e) {
      if ((e as RotorClientError).code === 'ABORTED' || o.signal?.aborted) return;
      if (retryOf(e).kind === 'never') throw e;
      failures++;
      const delay = backoffDelay(failures, WATCH_BACKOFF);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        o.signal?.addEventListener(
          'abort',
          () => {
            clearTimeout(t);
            resolve();
          },
          { once: true },
        );
      });
    }
  }
}
