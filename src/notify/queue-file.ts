/**
 * The webhook queue on disk: one JSON file in the daemon's data directory (DATA_DIR/notify/queue.json),
 * replaced whole and atomically (a temporary file written and fsynced, renamed over it, the directory
 * fsynced), through the state store's file-system layer (src/state/fs.ts: O_NOFOLLOW, mode 0600).
 * A crash leaves the old file or the new one, never a part. Reading is bounded; a file that does not
 * parse is set aside (queue.json.bad) and the queue starts empty, with a warning: deliveries are
 * notifications, and a damaged queue must not stop the daemon.
 */
import path from 'node:path';
import type { StoreFs } from '../state/fs.js';
import { NOTIFY_EVENTS, type NotifyEvent } from './events.js';

/** One delivery waiting to be sent (or re-sent). The body holds no value (events.ts builds it). */
export interface Delivery {
  readonly id: string;
  readonly endpoint: string;
  readonly event: NotifyEvent;
  /** The secret it is about ('' for events about no secret): deliveries of one lane go out in order. */
  readonly secret: string;
  readonly body: string;
  /** ms since the epoch. */
  readonly createdAt: number;
  attempts: number;
  nextAt: number;
}

/** The largest queue file read back (10,000 deliveries of well under 1 KiB each fit many times over). */
export const MAX_QUEUE_FILE = 64 * 1024 * 1024;

export class QueueFile {
  readonly file: string;
  constructor(
    readonly dir: string,
    private readonly fs: StoreFs,
  ) {
    this.file = path.join(dir, 'queue.json');
  }

  /**
   * The deliveries saved last, oldest first ([] when there is no file), and the audit cursor saved with
   * them: the seq of the last audit entry whose deliveries they include (undefined: no file).
   */
  async read(warn: (message: string, code: string) => void): Promise<{ deliveries: Delivery[]; auditSeq?: number }> {
    await this.fs.mkdir(this.dir);
    const size = await this.fs.size(this.file);
    if (size === undefined) return { deliveries: [] };
    let text: string;
    try {
      if (size > MAX_QUEUE_FILE) throw Object.assign(new Error('too large'), { code: 'NOTIFY_QUEUE_TOO_LARGE' });
      const f = await this.fs.open(this.file, 'read');
      try {
        const buf = new Uint8Array(size);
        let at = 0;
        while (at < size) {
          const n = await f.read(buf.subarray(at), at);
          if (n === 0) break;
          at += n;
        }
        text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(0, at));
      } finally {
        await f.close();
      }
      const data = JSON.parse(text) as { v?: unknown; deliveries?: unknown; auditSeq?: unknown };
      if (data.v !== 1 || !Array.isArray(data.deliveries)) throw new Error('not a queue file');
      const seq = Number.isSafeInteger(data.auditSeq) ? (data.auditSeq as number) : undefined;
      return { deliveries: data.deliveries.filter(isDelivery), ...(seq !== undefined ? { auditSeq: seq } : {}) };
    } catch (e) {
      const code = (e as { code?: string }).code ?? 'NOTIFY_QUEUE_UNREADABLE';
      warn(
        `the webhook queue ${this.file} cannot be read; it is set aside as queue.json.bad and the queue starts empty`,
        code,
      );
      await this.fs.rename(this.file, `${this.file}.bad`).catch(() => undefined);
      return { deliveries: [] };
    }
  }

  /** Replaces the file with `deliveries`, durably, before it resolves. */
  async write(deliveries: readonly Delivery[], auditSeq: number | undefined): Promise<void> {
    await this.fs.mkdir(this.dir);
    const tmp = `${this.file}.tmp`;
    const data = new TextEncoder().encode(JSON.stringify({ v: 1, auditSeq, deliveries }));
    const f = await this.fs.open(tmp, 'create');
    try {
      await f.write(data, 0);
      await f.sync();
    } finally {
      await f.close();
    }
    await this.fs.rename(tmp, this.file);
    await this.fs.syncDir(this.dir);
  }
}

function isDelivery(v: unknown): v is Delivery {
  const d = v as Record<string, unknown> | null;
  return (
    typeof d === 'object' &&
    d !== null &&
    typeof d.id === 'string' &&
    typeof d.endpoint === 'string' &&
    typeof d.secret === 'string' &&
    typeof d.body === 'string' &&
    d.body.length <= 16 * 1024 &&
    NOTIFY_EVENTS.includes(d.event as NotifyEvent) &&
    Number.isSafeInteger(d.createdAt) &&
    Number.isSafeInteger(d.attempts) &&
    Number.isSafeInteger(d.nextAt)
  );
}
