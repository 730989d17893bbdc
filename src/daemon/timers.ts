/** The daemon's one-shot timers (sync, audit commit, push retry): none is armed once it stops. */
export class Timers {
  private readonly armed = new Set<NodeJS.Timeout>();
  private stopped = false;

  /** Runs `fn` after `ms`, unless the daemon stops first. */
  later(ms: number, fn: () => void): void {
    if (this.stopped) return;
    const t = setTimeout(() => {
      this.armed.delete(t);
      fn();
    }, ms);
    this.armed.add(t);
  }

  /** Cancels every armed timer; later() arms none after this. */
  stop(): void {
    this.stopped = true;
    for (const t of this.armed) clearTimeout(t);
    this.armed.clear();
  }
}
