/**
 * The steps of the engine's work, each a small function that returns a result the way Flux's
 * reconcilers do: done, retry (after a delay, or the failure backoff when it gives none), or stalled
 * (a person must act first: a SOPS value that cannot be used until a new commit). A runner walks an
 * explicit list of steps in order and stops at the first that is not done.
 */
import { RotorError } from '../errors.js';

export type StepResult =
  | { readonly kind: 'done' }
  | { readonly kind: 'retry'; readonly error: unknown; readonly afterMs?: number }
  | { readonly kind: 'stalled'; readonly reason: string; readonly error: unknown };

/** A step that did not finish. */
export type StepFailure = Exclude<StepResult, { readonly kind: 'done' }>;

export const DONE: StepResult = { kind: 'done' };

/** A failed step: retried after `afterMs`, or after the failure backoff when undefined. */
export function retry(error: unknown, afterMs?: number): StepFailure {
  return { kind: 'retry', error, ...(afterMs !== undefined ? { afterMs } : {}) };
}

export interface Step<C> {
  /** Its name, which is also the step published on the diagnostics channel once it is done. */
  readonly name: string;
  /** Whether the step has work to do (asked just before it would run); it always runs when absent. */
  readonly when?: (ctx: C) => boolean;
  readonly run: (ctx: C) => Promise<StepResult>;
}

/**
 * Whether a step's error says the daemon stopped while the step waited (for an agent): a RotorError
 * with `stopping` set. Not a failure: the step runs again after the restart.
 */
export function stopped(e: unknown): boolean {
  return e instanceof RotorError && (e as { readonly stopping?: unknown }).stopping === true;
}

/**
 * Walks `steps` in order: each one whose `when` holds runs, and `done(step)` is called once it is done.
 * Returns the first result that is not done (the later steps do not run), or done.
 */
export async function runSteps<C>(
  steps: readonly Step<C>[],
  ctx: C,
  done: (step: Step<C>) => void,
): Promise<StepResult> {
  for (const step of steps) {
    let skip = false;
    // An error a step throws is a retry. Caught here, not in a wrapper: thousands of rotations wait in
    // here at once (for a group commit), and every nested async frame stays alive while they wait.
    let result: StepResult;
    try {
      skip = step.when !== undefined && !step.when(ctx);
      result = skip ? DONE : await step.run(ctx);
    } catch (e) {
      result = retry(e);
    }
    if (result.kind !== 'done') return result;
    if (!skip) done(step);
  }
  return DONE;
}
