import { AsyncLocalStorage } from 'node:async_hooks';

export class RepoLock {
  private tail: Promise<void> = Promise.resolve();
  private readonly held = new AsyncLocalStorage<true>();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.held.getStore()) return fn();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const prev = this.tail;
    this.tail = prev.then(() => mine);
    await prev;
    try {
      return await this.held.run(true, fn);
    } finally {
      release();
    }
  }
}
