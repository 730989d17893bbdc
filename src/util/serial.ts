/**
 * A serial queue: tasks run one at a time, in the order they were queued. A task runs after the one
 * before it settles, whether that one succeeded or failed; each caller gets its own task's outcome.
 */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  /** Queues `fn`; resolves or rejects as it does. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.tail.then(fn, fn);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** Resolves when every task queued so far has settled (never rejects). */
  idle(): Promise<void> {
    return this.tail.then(() => undefined);
  }
}
