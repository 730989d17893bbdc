/**
 * Read receipts: the version of each secret each consumer was last given as current. Kept in memory
 * for every read, and written to the state store (receipt/<consumer>/<secret>) only when the version
 * changes, so a restart keeps them at the cost of about one store write per consumer per rotation.
 * The writes of a burst go in one batch, off the request path.
 */
import type { Logger } from '../log.js';
import type { Json, Op, StateStore } from '../state/types.js';

export interface Receipt {
  readonly version: number;
  /** ISO time of the read that first got this version. */
  readonly at: string;
}

const PREFIX = 'receipt/';

export class Receipts {
  private readonly seen = new Map<string, Receipt>();
  private dirty = new Map<string, Receipt | undefined>();
  private flushing: Promise<void> | undefined;

  private readonly persist: (ops: Op[]) => Promise<unknown>;

  constructor(
    private readonly store: StateStore,
    private readonly log: Logger,
    private readonly now: () => number,
    /** Where the changed receipts go (default: the store; a follower of several daemons: the receipts table). */
    options: { persist?: (ops: Op[]) => Promise<unknown> } = {},
  ) {
    this.persist = options.persist ?? ((ops) => store.write(ops));
    for (const [key, value] of store.entries(PREFIX))
      this.seen.set(key.slice(PREFIX.length), value as unknown as Receipt);
  }

  /** A receipt the leader wrote to the store (a follower caught up): kept when newer than this daemon's. */
  reload(key: string): void {
    if (!key.startsWith(PREFIX)) return;
    const id = key.slice(PREFIX.length);
    const stored = this.store.get(key) as unknown as Receipt | undefined;
    const mine = this.seen.get(id);
    if (stored && (!mine || mine.version < stored.version)) this.seen.set(id, stored);
  }

  get(consumer: string, secret: string): Receipt | undefined {
    return this.seen.get(`${consumer}/${secret}`);
  }

  /** Records a read (at `at`, default now); returns true when the consumer is on a newer version than before. */
  record(consumer: string, secret: string, version: number, at?: string): boolean {
    const id = `${consumer}/${secret}`;
    const old = this.seen.get(id);
    if (old && old.version >= version) return false;
    const r = { version, at: at ?? new Date(this.now()).toISOString() };
    this.seen.set(id, r);
    this.mark(id, r);
    return true;
  }

  /** Drops the receipts of consumers or secrets no longer declared. */
  prune(keep: (consumer: string, secret: string) => boolean): void {
    for (const id of [...this.seen.keys()]) {
      const slash = id.indexOf('/');
      if (!keep(id.slice(0, slash), id.slice(slash + 1))) {
        this.seen.delete(id);
        this.mark(id, undefined);
      }
    }
  }

  private mark(id: string, r: Receipt | undefined): void {
    this.dirty.set(id, r);
    if (!this.flushing) this.flushing = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.flush());
  }

  /** Writes pending receipts (also called on stop). */
  async flush(): Promise<void> {
    while (this.dirty.size > 0) {
      const batch = this.dirty;
      this.dirty = new Map();
      const ops = [...batch].map(([id, r]) =>
        r
          ? { op: 'put' as const, key: PREFIX + id, value: r as unknown as Json }
          : { op: 'delete' as const, key: PREFIX + id },
      );
      try {
        await this.persist(ops);
      } catch (e) {
        // Kept in memory; a later change writes them again. Losing one only delays an early retirement.
        for (const [id, r] of batch) if (!this.dirty.has(id)) this.dirty.set(id, r);
        this.log('warn', 'read receipts could not be stored; will retry with the next change', {
          code: (e as { code?: string }).code ?? 'ERROR',
        });
        break;
      }
    }
    this.flushing = undefined;
  }
}
