/**
 * The consumer API: HTTP/1.1 + JSON on each consumer's socket. Read-only, `Cache-Control: no-store`.
 *
 *   GET /v1/secrets/NAME                     current version (+ previous during the overlap)
 *   GET /v1/secrets/NAME?version=N           a retained version
 *   GET /v1/secrets/NAME?wait=S&after=V      long-poll until a version newer than V exists (S <= 300)
 *   GET /v1/secrets                          the secrets this consumer may read
 *   GET /v1/health
 *
 * A secret the consumer's globs do not grant gets 403 ACCESS_DENIED whether it exists or not (so a
 * consumer learns nothing about others' secrets); a granted name that is not declared gets 404. Every
 * error is {"error": {"code", "message"}} with a stable code. No value is ever logged.
 */
import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';
import type { Served, VersionView } from '../rotation/engine.js';
import type { SecretValue } from '../rotation/generate.js';

export type { VersionView };

import { HttpError, sendError, sendJson, sendText } from './http-json.js';

/** What the handler needs from the daemon. */
export interface ConsumerBackend {
  /** Whether the consumer may read `name` (its globs, as of the model in force). */
  granted(consumer: string, name: string): boolean;
  /** Whether a secret is declared (in the model in force). */
  declared(name: string): boolean;
  /** The declared secrets this consumer may read. */
  readable(consumer: string): { name: string; version?: number }[];
  /**
   * The answer for the current version: its number and the JSON text of `CurrentView` (kept
   * serialized by the backend, since it is the same for every reader until the secret changes).
   */
  current(name: string): { readonly version: number; readonly json: string } | undefined;
  /** One retained version. */
  version(name: string, version: number): VersionView | undefined;
  /** Resolves when `name` changed (a rotation, a retirement, a new model) or after `ms`; `cancel` drops the wait. */
  changed(name: string, ms: number): { promise: Promise<void>; cancel: () => void };
  /** A consumer was given version `version` as current. */
  receipt(consumer: string, name: string, version: number): void;
  /** Counts a request by consumer and status; logs refusals (without values). */
  observe(consumer: string, status: number, code?: string, name?: string): void;
  /** False while the server stops. */
  readonly running: boolean;
  /** What GET /v1/health answers (besides the consumer's name). */
  health(): Health;
}

/**
 * The server's health as a consumer sees it: ok; stale (an agent that has not heard from the daemon
 * since `since`: it serves the last values it received, and never a previous one past its
 * validUntil); stopping.
 */
export interface Health {
  readonly status: 'ok' | 'stale' | 'stopping';
  /** For stale: ISO time of the last answer from the daemon (absent when there never was one). */
  readonly since?: string;
}

/** The answer of GET /v1/secrets/NAME. */
export interface CurrentView {
  readonly name: string;
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  readonly rotatedAt: string;
  /** ISO time, or null when rotor does not schedule the secret. */
  readonly nextRotationAt: string | null;
  readonly previous?: Served['previous'];
}

export const MAX_WAIT_SECONDS = 300;
/** Long-polls one consumer may hold open at once. */
export const MAX_WAITERS = 256;
const NAME = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/;
const PREFIX = '/v1/secrets/';

export function consumerHandler(consumer: string, backend: ConsumerBackend): RequestListener {
  let waiting = 0;
  const fail = (res: ServerResponse, e: unknown) => {
    const status = e instanceof HttpError ? e.status : 500;
    backend.observe(consumer, status, e instanceof HttpError ? e.code : 'INTERNAL', (e as { secret?: string }).secret);
    if (!res.headersSent && !res.destroyed) sendError(res, e);
    else res.destroy();
  };
  // Synchronous on the common path (no promise per request): only long-polls wait.
  return (req: IncomingMessage, res: ServerResponse) => {
    try {
      const waited = handle(req, res);
      if (waited) waited.catch((e: unknown) => fail(res, e));
    } catch (e) {
      fail(res, e);
    }
  };

  function handle(req: IncomingMessage, res: ServerResponse): Promise<void> | undefined {
    if (req.method !== 'GET') {
      res.setHeader('allow', 'GET');
      throw new HttpError(
        405,
        'METHOD_NOT_ALLOWED',
        `${req.method} is not allowed: the consumer API is read-only (GET)`,
      );
    }
    if ((req.headers['content-length'] && req.headers['content-length'] !== '0') || req.headers['transfer-encoding']) {
      res.setHeader('connection', 'close');
      throw new HttpError(400, 'BODY_NOT_ALLOWED', 'a GET request has no body');
    }
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const pathPart = q < 0 ? url : url.slice(0, q);
    const query = q < 0 ? undefined : new URLSearchParams(url.slice(q + 1));
    if (pathPart.startsWith(PREFIX)) {
      let name = pathPart.slice(PREFIX.length);
      if (name.includes('%')) {
        try {
          name = decodeURIComponent(name);
        } catch {
          throw new HttpError(400, 'BAD_NAME', 'the secret name is not valid percent-encoding');
        }
      }
      if (name.length > 253 || !NAME.test(name))
        throw new HttpError(400, 'BAD_NAME', 'not a secret name: lowercase segments of a-z 0-9 . _ - separated by /');
      return secret(name, query, res);
    }
    if (query && [...query.keys()].length > 0)
      throw new HttpError(400, 'BAD_REQUEST', `${pathPart} takes no query parameters`);
    if (pathPart === '/v1/secrets') {
      sendJson(res, 200, { consumer, secrets: backend.readable(consumer) });
    } else if (pathPart === '/v1/health') {
      sendJson(res, 200, { ...backend.health(), consumer });
    } else {
      throw new HttpError(
        404,
        'NOT_FOUND',
        `no ${pathPart} here: see GET /v1/secrets/NAME, /v1/secrets and /v1/health`,
      );
    }
    backend.observe(consumer, 200);
    return undefined;
  }

  function check(name: string): void {
    if (!backend.granted(consumer, name))
      throw Object.assign(
        new HttpError(
          403,
          'ACCESS_DENIED',
          `consumer "${consumer}" may not read "${name}": no glob of its Consumer declaration grants it`,
        ),
        { secret: name },
      );
    if (!backend.declared(name))
      throw Object.assign(new HttpError(404, 'SECRET_UNKNOWN', `no secret "${name}" is declared`), { secret: name });
  }

  function secret(name: string, query: URLSearchParams | undefined, res: ServerResponse): Promise<void> | undefined {
    check(name);
    const params = parseQuery(query);
    if (params.version !== undefined) {
      const v = backend.version(name, params.version);
      if (!v)
        throw new HttpError(
          404,
          'VERSION_UNKNOWN',
          `version ${params.version} of "${name}" is not retained (the policy's retain says how many are kept)`,
        );
      sendJson(res, 200, {
        name,
        version: v.version,
        value: v.value,
        ...(v.username !== undefined ? { username: v.username } : {}),
        rotatedAt: v.rotatedAt,
        state: v.state,
        ...(v.validUntil ? { validUntil: v.validUntil } : {}),
      });
      backend.observe(consumer, 200);
      return undefined;
    }
    const cur = backend.current(name);
    if (params.wait !== undefined) {
      const after = params.after ?? cur?.version ?? 0;
      if (!cur || cur.version <= after) return longPoll(name, after, params.wait, res);
    }
    answer(name, cur, res);
    return undefined;
  }

  function answer(name: string, cur: { version: number; json: string } | undefined, res: ServerResponse): void {
    if (!cur)
      throw new HttpError(
        503,
        'SECRET_NOT_READY',
        `"${name}" has no value yet (a new secret is being created, or its source has not given one); retry, or long-poll with ?wait=`,
      );
    sendText(res, 200, cur.json);
    backend.receipt(consumer, name, cur.version);
    backend.observe(consumer, 200);
  }

  async function longPoll(name: string, after: number, waitSeconds: number, res: ServerResponse): Promise<void> {
    if (waiting >= MAX_WAITERS)
      throw new HttpError(
        429,
        'TOO_MANY_WAITERS',
        `consumer "${consumer}" already holds ${MAX_WAITERS} long-polls open`,
      );
    waiting++;
    let cur = backend.current(name);
    try {
      const deadline = Date.now() + waitSeconds * 1000;
      const closed = new Promise<void>((resolve) => res.once('close', () => resolve()));
      while (backend.running && !res.destroyed) {
        const left = deadline - Date.now();
        if (left <= 0) break;
        const w = backend.changed(name, left);
        await Promise.race([w.promise, closed]);
        w.cancel();
        check(name); // grants may have changed with a new commit
        cur = backend.current(name);
        if (cur && cur.version > after) break;
      }
    } finally {
      waiting--;
    }
    if (!res.destroyed) answer(name, cur, res);
  }
}

function parseQuery(query: URLSearchParams | undefined): { version?: number; wait?: number; after?: number } {
  const out: { version?: number; wait?: number; after?: number } = {};
  if (!query) return out;
  for (const [k, v] of query) {
    if (k !== 'version' && k !== 'wait' && k !== 'after')
      throw new HttpError(400, 'BAD_REQUEST', `unknown parameter "${k.slice(0, 40)}": use version, or wait and after`);
    if (!/^\d{1,9}$/.test(v)) throw new HttpError(400, 'BAD_REQUEST', `${k} must be a whole number`);
    out[k] = Number(v);
  }
  if (out.version !== undefined && (out.wait !== undefined || out.after !== undefined))
    throw new HttpError(400, 'BAD_REQUEST', 'version cannot be combined with wait or after');
  if (out.after !== undefined && out.wait === undefined)
    throw new HttpError(400, 'BAD_REQUEST', 'after needs wait (seconds to wait for a newer version)');
  if (out.wait !== undefined && out.wait > MAX_WAIT_SECONDS)
    throw new HttpError(400, 'BAD_REQUEST', `wait is at most ${MAX_WAIT_SECONDS} seconds`);
  return out;
}
