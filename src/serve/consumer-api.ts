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
import type { SecretValue } from '../rotation/generate.js';
import { HttpError, sendError, sendJson } from './http-json.js';

/** What the handler needs from the daemon. */
export interface ConsumerBackend {
  /** Whether the consumer may read `name` (its globs, as of the model in force). */
  granted(consumer: string, name: string): boolean;
  /** Whether a secret is declared (in the model in force). */
  declared(name: string): boolean;
  /** The declared secrets this consumer may read. */
  readable(consumer: string): { name: string; version?: number }[];
  /** The current version and, during the overlap, the previous one. */
  served(name: string): ServedView | undefined;
  /** One retained version. */
  version(name: string, version: number): VersionView | undefined;
  /** When the secret rotates next (ms), if rotor schedules it. */
  nextRotationAt(name: string): number | undefined;
  /** Resolves when `name` changed (a rotation, a retirement, a new model) or after `ms`; `cancel` drops the wait. */
  changed(name: string, ms: number): { promise: Promise<void>; cancel: () => void };
  /** A consumer was given version `version` as current. */
  receipt(consumer: string, name: string, version: number): void;
  /** Counts a request by consumer and status; logs refusals (without values). */
  observe(consumer: string, status: number, code?: string, name?: string): void;
  /** False while the daemon stops. */
  readonly running: boolean;
}

export interface ServedView {
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  readonly rotatedAt: string;
  readonly previous?: { readonly version: number; readonly value: SecretValue; readonly username?: string; readonly validUntil: string };
}

export interface VersionView {
  readonly version: number;
  readonly value: SecretValue;
  readonly username?: string;
  readonly rotatedAt: string;
  readonly state: 'current' | 'previous' | 'retired';
  readonly validUntil?: string;
}

export const MAX_WAIT_SECONDS = 300;
/** Long-polls one consumer may hold open at once. */
export const MAX_WAITERS = 256;
const NAME = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/;
const PREFIX = '/v1/secrets/';

export function consumerHandler(consumer: string, backend: ConsumerBackend): RequestListener {
  let waiting = 0;
  return (req: IncomingMessage, res: ServerResponse) => {
    void handle(req, res).catch((e: unknown) => {
      const status = e instanceof HttpError ? e.status : 500;
      backend.observe(consumer, status, e instanceof HttpError ? e.code : 'INTERNAL', (e as { secret?: string }).secret);
      if (!res.headersSent && !res.destroyed) sendError(res, e);
      else res.destroy();
    });
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'GET') {
      res.setHeader('allow', 'GET');
      throw new HttpError(405, 'METHOD_NOT_ALLOWED', `${req.method} is not allowed: the consumer API is read-only (GET)`);
    }
    if (req.headers['content-length'] && req.headers['content-length'] !== '0' || req.headers['transfer-encoding']) {
      res.setHeader('connection', 'close');
      throw new HttpError(400, 'BODY_NOT_ALLOWED', 'a GET request has no body');
    }
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const pathPart = q < 0 ? url : url.slice(0, q);
    const query = q < 0 ? undefined : new URLSearchParams(url.slice(q + 1));
    if (pathPart.startsWith(PREFIX)) {
      let name: string;
      try {
        name = decodeURIComponent(pathPart.slice(PREFIX.length));
      } catch {
        throw new HttpError(400, 'BAD_NAME', 'the secret name is not valid percent-encoding');
      }
      if (name.length > 253 || !NAME.test(name)) throw new HttpError(400, 'BAD_NAME', 'not a secret name: lowercase segments of a-z 0-9 . _ - separated by /');
      return secret(name, query, res);
    }
    if (query && [...query.keys()].length > 0) throw new HttpError(400, 'BAD_REQUEST', `${pathPart} takes no query parameters`);
    if (pathPart === '/v1/secrets') {
      sendJson(res, 200, { consumer, secrets: backend.readable(consumer) });
    } else if (pathPart === '/v1/health') {
      sendJson(res, 200, { status: backend.running ? 'ok' : 'stopping', consumer });
    } else {
      throw new HttpError(404, 'NOT_FOUND', `no ${pathPart} here: see GET /v1/secrets/NAME, /v1/secrets and /v1/health`);
    }
    backend.observe(consumer, 200);
  }

  async function secret(name: string, query: URLSearchParams | undefined, res: ServerResponse): Promise<void> {
    const check = () => {
      if (!backend.granted(consumer, name)) throw Object.assign(new HttpError(403, 'ACCESS_DENIED', `consumer "${consumer}" may not read "${name}": no glob of its Consumer declaration grants it`), { secret: name });
      if (!backend.declared(name)) throw Object.assign(new HttpError(404, 'SECRET_UNKNOWN', `no secret "${name}" is declared`), { secret: name });
    };
    check();
    const params = parseQuery(query);
    if (params.version !== undefined) {
      const v = backend.version(name, params.version);
      if (!v) throw new HttpError(404, 'VERSION_UNKNOWN', `version ${params.version} of "${name}" is not retained (the policy's retain says how many are kept)`);
      sendJson(res, 200, { name, version: v.version, value: v.value, ...(v.username !== undefined ? { username: v.username } : {}), rotatedAt: v.rotatedAt, state: v.state, ...(v.validUntil ? { validUntil: v.validUntil } : {}) });
      backend.observe(consumer, 200);
      return;
    }
    let s = backend.served(name);
    if (params.wait !== undefined) {
      const after = params.after ?? s?.version ?? 0;
      if (!s || s.version <= after) {
        if (waiting >= MAX_WAITERS) throw new HttpError(429, 'TOO_MANY_WAITERS', `consumer "${consumer}" already holds ${MAX_WAITERS} long-polls open`);
        waiting++;
        try {
          const deadline = Date.now() + params.wait * 1000;
          const closed = new Promise<void>((resolve) => res.once('close', () => resolve()));
          while (backend.running && !res.destroyed) {
            const left = deadline - Date.now();
            if (left <= 0) break;
            const w = backend.changed(name, left);
            await Promise.race([w.promise, closed]);
            w.cancel();
            check(); // grants may have changed with a new commit
            s = backend.served(name);
            if (s && s.version > after) break;
          }
        } finally {
          waiting--;
        }
        if (res.destroyed) return;
      }
    }
    if (!s) throw new HttpError(503, 'SECRET_NOT_READY', `"${name}" has no value yet (a new secret is being created, or its source has not given one); retry, or long-poll with ?wait=`);
    const next = backend.nextRotationAt(name);
    sendJson(res, 200, {
      name,
      version: s.version,
      value: s.value,
      ...(s.username !== undefined ? { username: s.username } : {}),
      rotatedAt: s.rotatedAt,
      nextRotationAt: next === undefined ? null : new Date(next).toISOString(),
      ...(s.previous ? { previous: { version: s.previous.version, value: s.previous.value, ...(s.previous.username !== undefined ? { username: s.previous.username } : {}), validUntil: s.previous.validUntil } } : {}),
    });
    backend.receipt(consumer, name, s.version);
    backend.observe(consumer, 200);
  }
}

function parseQuery(query: URLSearchParams | undefined): { version?: number; wait?: number; after?: number } {
  const out: { version?: number; wait?: number; after?: number } = {};
  if (!query) return out;
  for (const [k, v] of query) {
    if (k !== 'version' && k !== 'wait' && k !== 'after') throw new HttpError(400, 'BAD_REQUEST', `unknown parameter "${k.slice(0, 40)}": use version, or wait and after`);
    if (!/^\d{1,9}$/.test(v)) throw new HttpError(400, 'BAD_REQUEST', `${k} must be a whole number`);
    out[k] = Number(v);
  }
  if (out.version !== undefined && (out.wait !== undefined || out.after !== undefined)) throw new HttpError(400, 'BAD_REQUEST', 'version cannot be combined with wait or after');
  if (out.after !== undefined && out.wait === undefined) throw new HttpError(400, 'BAD_REQUEST', 'after needs wait (seconds to wait for a newer version)');
  if (out.wait !== undefined && out.wait > MAX_WAIT_SECONDS) throw new HttpError(400, 'BAD_REQUEST', `wait is at most ${MAX_WAIT_SECONDS} seconds`);
  return out;
}
