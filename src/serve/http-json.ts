/** Small helpers for the JSON-over-HTTP APIs on Unix sockets: bounded bodies, JSON errors with codes. */
import type { IncomingMessage, ServerResponse } from 'node:http';

export class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'HttpError';
  }
}

/** Reads a JSON body of at most `limit` bytes. */
export async function readJson(req: IncomingMessage, limit = 64 * 1024): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new HttpError(413, 'BODY_TOO_LARGE', `the request body is over ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new HttpError(400, 'BAD_JSON', 'the request body is not JSON');
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendText(res, status, JSON.stringify(body));
}

/** Sends JSON text (already serialized). */
export function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, ['content-type', 'application/json', 'cache-control', 'no-store', 'content-length', String(Buffer.byteLength(text))]);
  res.end(text);
}

export function sendError(res: ServerResponse, e: unknown): void {
  if (e instanceof HttpError) sendJson(res, e.status, { error: { code: e.code, message: e.message } });
  else sendJson(res, 500, { error: { code: 'INTERNAL', message: 'internal error (see the daemon log)' } });
}
