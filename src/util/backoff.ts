/**
 * Exponential backoff: the delay before retry number `attempt` (1 for the first retry) is `baseMs`
 * doubled for each attempt after the first, at most `maxMs`. With `jitter: 'full'` the delay is drawn
 * uniformly from [0, that cap] (AWS's "full jitter", so that many clients retrying together spread out).
 */
import { randomInt } from 'node:crypto';

export interface BackoffOptions {
  /** The delay of the first attempt (the cap of its draw with full jitter). */
  readonly baseMs: number;
  /** No delay is longer than this. */
  readonly maxMs: number;
  /** 'none' (the default): the capped exponential delay itself; 'full': a uniform draw up to it. */
  readonly jitter?: 'full' | 'none';
  /**
   * For full jitter: returns a uniform integer in [0, bound) (node:crypto's randomInt unless a test
   * passes another, to stay deterministic).
   */
  readonly random?: (bound: number) => number;
}

/** The delay before retry `attempt` (an attempt below 1 counts as 1). */
export function backoffDelay(attempt: number, o: BackoffOptions): number {
  const doublings = Math.min(Math.max(attempt - 1, 0), 40);
  const cap = Math.floor(Math.min(o.maxMs, o.baseMs * 2 ** doublings));
  if (cap <= 0) return 0;
  if (o.jitter !== 'full') return cap;
  return (o.random ?? ((bound: number) => randomInt(0, bound)))(cap + 1);
}
