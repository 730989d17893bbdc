/** Small helpers for the daemon's JSON-over-HTTP APIs: bounded bodies (readBody), JSON errors with codes. */

import type { IncomingMessage, ServerResponse } from 'node:http';
import { NEVER, RotorError } from '../errors.js';
import { boundedBody, declaredOver } from '../util/bounded.js';

/** A request refused with an HTTP status and a code: the client must send another request. */
export class HttpError extends RotorError {
  constructor(
    readonly status: number,
    code: string,
    message: string,
  ) {
    super(code, message, { retry: NEVER });
  }
}

export interface BodyLimits {
  /** Bytes at most: a larger Content-Length is refused before anything is read, a longer body as it arrives. */
  readonly limit: number;
  /** Time to receive the whole body, from when reading starts (a peer that trickles it is cut). */
  readonly timeoutMs: number;
}

/**
 * Reads a request body within `limits`, the one bounded reader of the daemon's listeners. Throws
 * HttpError 413 BODY_TOO_LARGE (a Content-Length over the limit: before reading anything; a chunked
 * body: as soon as it passes the limit), 408 BODY_TIMEOUT, or 400 BODY_INCOMPLETE (the peer went away).
 * After a throw the rest of the body is not read: answer with `connection: close` (sendError does).
 */
export function readBody(req: IncomingMessage, limits: BodyLimits): Promise<Buffer> {
  const declared = req.headers['content-length'];
  // node:http has refused a malformed or repeated Content-Length already (400).
  if (declaredOver(declared, limits.limit)) {
    return Promise.reject(
      new HttpError(
        413,
        'BODY_TOO_LARGE',
        `the request body is ${declared} bytes, over the ${limits.limit}-byte limit of ${req.method} ${(req.url ?? '').slice(0, 100)}`,
      ),
    );
  }
  return new Promise<Buffer>((resolve, reject) => {
    const collected = boundedBody(limits.limit);
    const timer = setTimeout(
      () =>
        fail(
          new HttpError(
            408,
            'BODY_TIMEOUT',
            `the request body did not arrive within ${limits.timeoutMs} ms: send it at once`,
          ),
        ),
      limits.timeoutMs,
    );
    const onData = (chunk: Buffer) => {
      if (!collected.add(chunk))
        fail(
          new HttpError(
            413,
            'BODY_TOO_LARGE',
            `the request body is over the ${limits.limit}-byte limit of ${req.method} ${(req.url ?? '').slice(0, 100)}`,
          ),
        );
    };
    const onEnd = () => {
      done();
      resolve(collected.body());
    };
    const onClose = () => {
      if (!req.complete)
        fail(new HttpError(400, 'BODY_INCOMPLETE', 'the connection closed before the request body was complete'));
    };
    const done = () => {
      clearTimeout(timer);
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('close', onClose);
      req.off('error', onClose);
    };
    const fail = (e: HttpError) => {
      done();
      req.pause(); // read no further; the answer closes the connection
      reject(e);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('close', onClose);
    req.on('error', onClose);
  });
}

/** Reads a JSON body within `limits` (see readBody); an empty body is {}. */
export async function readJson(req: IncomingMessage, limits: BodyLimits): Promise<unknown> {
  const body = await readBody(req, limits);
  if (body.length === 0) return {};
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, 'BAD_JSON', 'the request body is not JSON');
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body));
}

/** Sends JSON text (already serialized). */
export function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, [
    'content-type',
    'application/json',
    'cache-control',
    'no-store',
    'content-length',
    String(Buffer.byteLength(text)),
  ]);
  res.end(text);
}

/** Answers an error; one about the body (413, 408, 400 BODY_*) also closes the connection, so that the rest is never read. */
export function sendError(res: ServerResponse, e: unknown): void {
  if (e instanceof HttpError) {
    if (BODY_CODES.has(e.code)) res.setHeader('connection', 'close');
    sendJson(res, e.status, { error: { code: e.code, message: e.message } });
  } else sendJson(res, 500, { error: { code: 'INTERNAL', message: 'internal error (see the daemon log)' } });
}

/** The codes readBody throws: after them the connection is closed. */
export const BODY_CODES: ReadonlySet<string> = new Set(['BODY_TOO_LARGE', 'BODY_TIMEOUT', 'BODY_INCOMPLETE']);
