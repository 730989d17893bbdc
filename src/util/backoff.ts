/**
 * Exponential backoff: the delay before retry number `attempt` (1 for the first retry) is `baseMs`
 * doubled for each attempt after the first, at most `maxMs`. Jitter spreads out many clients retrying
 * together: with `jitter: 'full'` the delay is drawn uniformly from [0, that cap] (AWS's "full
 * jitter"); with `jitter: 'equal'` from its upper half, [cap/2, cap] (never much sooner than the cap).
 * The one backoff of rotor, its daemon, its client and its agent.
 */
import { randomInt } from 'node:crypto';

export interface BackoffOptions {
  /** The delay of the first attempt (the cap of its draw with jitter). */
  readonly baseMs: number;
  /** No delay is longer than this. */
  readonly maxMs: number;
  /**
   * 'none' (the default): the capped exponential delay itself; 'full': a uniform draw up to it;
   * 'equal': a uniform draw from its upper half.
   */
  readonly jitter?: 'full' | 'equal' | 'none';
  /**
   * For jitter: returns a uniform integer in [0, bound) (node:crypto's randomInt unless a test
   * passes another, to stay deterministic).
   */
  readonly random?: (bound: number) => number;
}

/** The delay before retry `attempt` (an attempt below 1 counts as 1), a whole number of ms. */
export function backoffDelay(attempt: number, o: BackoffOptions): number {
  const doublings = Math.min(Math.max(attempt - 1, 0), 40);
  const cap = Math.floor(Math.min(o.maxMs, o.baseMs * 2 ** doublings));
  if (cap <= 0) return 0;
  if (o.jitter !== 'full' && o.jitter !== 'equal') return cap;
  const random = o.random ?? ((bound: number) => randomInt(0, bound));
  const low = o.jitter === 'equal' ? Math.floor(cap / 2) : 0;
  return low + random(cap - low + 1);
}
