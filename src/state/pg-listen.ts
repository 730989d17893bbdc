/**
 * LISTEN on the store's notification channel (pg-lease.ts NOTIFY_CHANNEL), on a connection of its own:
 * the leader announces new state records, audit entries, receipts and lease changes there, and the
 * other daemons wake up at once instead of at their next poll.
 *
 * A notification is a hint. PostgreSQL does not replay notifications sent while a listener was not
 * connected, so after every (re)connect `onConnect` is called and the listener catches up by sequence
 * number itself; and the daemons poll as well, in case a hint is lost anyway.
 */
import { backoffDelay } from '../util/backoff.js';
import { NOTIFY_CHANNEL } from './pg-lease.js';
import type { PgContext } from './pg-store.js';

export type NotifyKind = 'state' | 'audit' | 'receipts' | 'lease';

export interface ListenOptions {
  onNotify(kind: NotifyKind, n: number): void;
  /** After each (re)connect: notifications may have been missed. */
  onConnect(): void;
  onError(message: string): void;
}

interface ListenClient {
  query(text: string): Promise<unknown>;
  on(event: 'notification', fn: (m: { channel: string; payload?: string }) => void): void;
  on(event: 'error' | 'end', fn: (e?: unknown) => void): void;
  release(destroy?: boolean): void;
}

export class PgListener {
  private client: ListenClient | undefined;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private readonly schema: string;

  constructor(
    private readonly ctx: Pick<PgContext, 'pool' | 't'>,
    private readonly o: ListenOptions,
  ) {
    this.schema = ctx.t.schema.slice(1, -1).replace(/""/g, '"');
  }

  start(): void {
    void this.connect();
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    let c: ListenClient;
    try {
      c = (await this.ctx.pool.connect()) as unknown as ListenClient;
    } catch (e) {
      this.retry(e);
      return;
    }
    if (this.stopped) {
      c.release(true);
      return;
    }
    let lost = false;
    const onLost = (e?: unknown) => {
      if (lost || this.stopped) return; // stop() released it
      lost = true;
      if (this.client === c) this.client = undefined;
      c.release(true);
      this.retry(e);
    };
    c.on('notification', (m) => {
      if (m.channel !== NOTIFY_CHANNEL || !m.payload) return;
      const [schema, kind, n] = m.payload.split(' ');
      if (schema !== this.schema) return;
      if (kind === 'state' || kind === 'audit' || kind === 'receipts' || kind === 'lease')
        this.o.onNotify(kind, Number(n));
    });
    c.on('error', onLost);
    c.on('end', onLost);
    try {
      await c.query(`LISTEN ${NOTIFY_CHANNEL}`);
    } catch (e) {
      onLost(e);
      return;
    }
    this.client = c;
    this.attempt = 0;
    this.o.onConnect();
  }

  private retry(e: unknown): void {
    if (this.stopped) return;
    const message = e instanceof Error ? e.message : 'the connection ended';
    this.o.onError(`listening for changes of the state store failed (${message.slice(0, 200)}); reconnecting`);
    const delay = backoffDelay(this.attempt++, { baseMs: 250, maxMs: 5000, jitter: 'equal' });
    this.timer = setTimeout(() => void this.connect(), delay);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.client?.release(true);
    this.client = undefined;
  }
}
