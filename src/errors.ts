/**
 * One shape for rotor's errors. Every error rotor raises on purpose is a RotorError (or derives from
 * it): a stable `code` that scripts and tests match on, a message that says what happened and what to
 * do, the `cause` it wraps, and a `retry` that says whether, and when, the operation that failed may be
 * tried again. Code that decides about retries reads `retry` (retryOf); it never parses code strings.
 *
 * The module sits at the bottom of the layers: it imports nothing.
 */

/** Whether the operation that failed may be tried again, and when. */
export type Retry =
  /** Needs a person: a declaration, a key, a tampered file, a refused credential. Trying again changes nothing. */
  | { readonly kind: 'never' }
  /** Transient (a network, a busy server, a full disk): try again with the caller's backoff. */
  | { readonly kind: 'backoff' }
  /** Not before `ms` milliseconds from now (the caller may wait longer). */
  | { readonly kind: 'after'; readonly ms: number };

export const NEVER: Retry = Object.freeze({ kind: 'never' });
export const BACKOFF: Retry = Object.freeze({ kind: 'backoff' });
export const retryAfter = (ms: number): Retry => Object.freeze({ kind: 'after', ms });

/**
 * rotor's own storage, which every rotation writes: while either cannot be written, every secret waits
 * for one shared retry instead of each backing off on its own (see the rotation engine).
 */
export type Storage = 'audit log' | 'state store';

export interface RotorErrorOptions {
  readonly cause?: unknown;
  /** Default: `never` (an error is permanent unless its maker says otherwise). */
  readonly retry?: Retry;
  /** Set when the error means rotor's own storage cannot be written. */
  readonly storage?: Storage;
}

export class RotorError extends Error {
  readonly code: string;
  readonly retry: Retry;
  readonly storage?: Storage;

  constructor(code: string, message: string, options: RotorErrorOptions = {}) {
    super(message, options.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = new.target.name;
    this.code = code;
    this.retry = options.retry ?? NEVER;
    if (options.storage !== undefined) this.storage = options.storage;
  }
}

/** The stable code of any error: a RotorError's, a system error's (ENOENT...), or ERROR. */
export function codeOf(e: unknown): string {
  const code = (e as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' && code !== '' ? code : 'ERROR';
}

/**
 * Whether and when to try again after `e`. A RotorError says so itself; anything else (a bug, a
 * library's error that was not wrapped) is retried with backoff, so that an unforeseen failure slows a
 * loop down rather than stopping it.
 */
export function retryOf(e: unknown): Retry {
  return e instanceof RotorError ? e.retry : BACKOFF;
}

/** The storage an error says cannot be written, if any. */
export function storageOf(e: unknown): Storage | undefined {
  return e instanceof RotorError ? e.storage : undefined;
}

/** The first system error code (EROFS, ENOSPC, EIO...) in an error's chain of causes. */
export function errnoOf(e: unknown): string | undefined {
  let c = (e as { cause?: unknown } | null | undefined)?.cause;
  for (let i = 0; c !== undefined && c !== null && i < 6; i++, c = (c as { cause?: unknown }).cause) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return code;
  }
  return undefined;
}
