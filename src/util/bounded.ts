/**
 * Collecting a body up to a limit: every place that reads a request or an answer into memory (the
 * listeners, the agent's transport, rotor/client, the admin client) counts the bytes as they arrive
 * and stops keeping them past its limit, so that no peer decides how much memory is spent.
 */
export interface BoundedBody {
  /** Adds a chunk; false once the body has passed the limit (then nothing more is kept). */
  add(chunk: Buffer): boolean;
  /** The bytes received so far, kept or not. */
  readonly size: number;
  /** The body, when it stayed within the limit. */
  body(): Buffer;
}

export function boundedBody(limit: number): BoundedBody {
  const chunks: Buffer[] = [];
  let size = 0;
  return {
    add(chunk) {
      size += chunk.length;
      if (size > limit) {
        chunks.length = 0;
        return false;
      }
      chunks.push(chunk);
      return true;
    },
    get size() {
      return size;
    },
    body: () => Buffer.concat(chunks, Math.min(size, limit)),
  };
}

/** Whether a Content-Length header already says the body is over the limit (read nothing then). */
export function declaredOver(contentLength: string | undefined, limit: number): boolean {
  if (contentLength === undefined) return false;
  const n = Number(contentLength);
  return Number.isFinite(n) && n > limit;
}
