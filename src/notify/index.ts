/**
 * Webhooks (Config.notify), wired for the daemon in one call: the queue file in DATA_DIR/notify, the
 * Notifier that sends from it, and the Watcher that turns status changes (overdue, a failing audit push)
 * into events. The daemon calls audited() with every audit entry it appends, setEndpoints() with each
 * Config it applies, status() for `rotor status`, and close() when it stops.
 */
import path from 'node:path';
import type { Logger } from '../log.js';
import type { NotifyEndpoint } from '../model/schema-types.js';
import type { Served } from '../rotation/engine.js';
import { nodeFs, type StoreFs } from '../state/fs.js';
import type { AuditLike, Occurrence } from './events.js';
import { Notifier, type NotifyStatus } from './notifier.js';
import { QueueFile } from './queue-file.js';
import { type WatchedStatus, Watcher } from './watch.js';

export type { NotifyStatus } from './notifier.js';

/** How often the watcher looks at the status for overdue secrets and a failing audit push. */
export const WATCH_INTERVAL_MS = 30_000;

export interface NotifyWiring {
  readonly dataDir: string;
  readonly log: Logger;
  readonly now: () => number;
  readonly daemon: string;
  readonly active: () => boolean;
  readonly served: (secret: string) => Served | undefined;
  readonly commit: () => string | undefined;
  /** The audit log's last seq, and its last entries that webhooks report (replayed past the queue's cursor). */
  readonly auditSeq: () => number;
  readonly auditTail: readonly (AuditLike & { readonly seq: number })[];
  readonly status: () => WatchedStatus;
  readonly fs?: StoreFs;
}

export class Notify {
  private watchTimer: NodeJS.Timeout | undefined;
  private readonly watcher = new Watcher();

  private constructor(
    private readonly notifier: Notifier,
    private readonly w: NotifyWiring,
  ) {}

  static async open(w: NotifyWiring): Promise<Notify> {
    const notifier = new Notifier({
      file: new QueueFile(path.join(w.dataDir, 'notify'), w.fs ?? nodeFs),
      log: w.log,
      now: w.now,
      daemon: w.daemon,
      active: w.active,
      key: (secret) => keysOf(w.served(secret)),
      commit: w.commit,
      auditSeq: w.auditSeq,
    });
    await notifier.open(w.auditTail);
    const n = new Notify(notifier, w);
    n.watchTimer = setInterval(() => n.look(), WATCH_INTERVAL_MS);
    n.watchTimer.unref();
    return n;
  }

  /** The endpoints of the Config now in force. */
  setEndpoints(endpoints: readonly NotifyEndpoint[] | undefined): void {
    this.notifier.setEndpoints(endpoints ?? []);
  }

  /** Audit entries just appended (synchronous; never throws). */
  audited(events: readonly AuditLike[]): void {
    this.notifier.audited(events);
  }

  /** One occurrence from elsewhere: drift detection calls this with `{ event: 'drift-detected', ... }` if it appends no audit entry of that name. */
  emit(o: Occurrence): void {
    this.notifier.emit(o);
  }

  private look(): void {
    try {
      if (!this.w.active()) {
        this.watcher.reset();
        return;
      }
      if (!this.notifier.wants('overdue') && !this.notifier.wants('audit-push-failing')) return;
      for (const o of this.watcher.look(this.w.status())) this.notifier.emit(o);
    } catch (e) {
      this.w.log('warn', 'the webhook watcher could not read the status', {
        code: (e as { code?: string }).code ?? 'ERROR',
      });
    }
  }

  /** Undefined while no endpoint is declared and nothing waits. */
  status(): NotifyStatus | undefined {
    const s = this.notifier.status();
    return s.endpoints.length > 0 || s.queued > 0 ? s : undefined;
  }

  async close(): Promise<void> {
    if (this.watchTimer) clearInterval(this.watchTimer);
    await this.notifier.close();
  }
}

/** The HMAC keys of a secret: its current value, and the previous one while it overlaps. Strings only. */
export function keysOf(s: Served | undefined): string[] | undefined {
  if (!s || typeof s.value !== 'string') return undefined;
  return [s.value, ...(s.previous && typeof s.previous.value === 'string' ? [s.previous.value] : [])];
}
