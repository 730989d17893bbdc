/**
 * Webhook deliveries: a bounded queue kept on disk (queue-file.ts), sent by a loop off the rotation
 * path. The daemon hands it the audit entries it appends (audited(), synchronous, never throws, never
 * waits), and the watcher hands it state changes (emit()).
 *
 * - At least once: a delivery is written to disk before its first attempt and removed after a 2xx; a
 *   daemon killed in between sends it again when it starts.
 * - Order: deliveries of one lane (the same endpoint and the same secret; events about no secret form
 *   one lane per endpoint) go out one at a time, in the order they were made: a failing one holds the
 *   later ones of its lane back until it succeeds or is dropped. Lanes do not wait for each other.
 * - Retries: jittered exponential backoff (1 s doubling to 10 min); a delivery older than maxAgeMs (24 h)
 *   is dropped (outcome `expired`). When the queue holds maxQueue deliveries (10,000), the oldest is
 *   dropped to make room (outcome `dropped`): adding never blocks and never fails.
 * - Only the daemon that acts sends (`active()`; several daemons: the leader). The queue is this daemon's
 *   own: on failover the new leader queues the events it makes from then on; what the old leader had not
 *   delivered waits on its disk and goes out when it leads again (or expires).
 * - The HMAC key is read at each attempt from the secret the endpoint names (key()), so a rotation of that
 *   secret takes effect at the next delivery; while a previous version overlaps, both sign.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../log.js';
import type { NotifyEndpoint } from '../model/schema-types.js';
import { backoffDelay } from '../util/backoff.js';
import type { AuditLike, NotifyEvent, Occurrence } from './events.js';
import { bodyOf, occurrenceOf } from './events.js';
import type { Delivery, QueueFile } from './queue-file.js';
import { post, SEND_LIMITS, type SendLimits, type SendOutcome } from './send.js';
import { DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, signatureHeader } from './sign.js';

export type Outcome = 'success' | 'failure' | 'dropped' | 'expired';
export const OUTCOMES: readonly Outcome[] = ['success', 'failure', 'dropped', 'expired'];

export interface EndpointStatus {
  readonly name: string;
  /** The URL without its query (which may hold a token). */
  readonly url: string;
  readonly queued: number;
  /** Its oldest lane's head has failed at least once and not yet gone out. */
  readonly failing: boolean;
  readonly lastError?: string;
  readonly lastSuccess?: string;
  readonly outcomes: Readonly<Record<Outcome, number>>;
}

export interface NotifyStatus {
  readonly queued: number;
  readonly max: number;
  readonly endpoints: readonly EndpointStatus[];
}

export interface NotifierOptions {
  readonly file: QueueFile;
  readonly log: Logger;
  readonly now: () => number;
  /** The daemon's name, in every body. */
  readonly daemon: string;
  /** Whether this daemon sends (the leader, or the only daemon). */
  readonly active: () => boolean;
  /** The current value (and the previous one while it overlaps) of a secret, or undefined. */
  readonly key: (secret: string) => readonly string[] | undefined;
  /** The commit in force, for bodies whose event names none. */
  readonly commit: () => string | undefined;
  /** The seq of the audit log's last entry (after an append: the last one appended). */
  readonly auditSeq: () => number;
  readonly maxQueue?: number;
  readonly maxAgeMs?: number;
  /** Requests in flight per endpoint (each on its own lane). */
  readonly perEndpoint?: number;
  readonly limits?: SendLimits;
  /** How often an inactive daemon looks again whether it acts. */
  readonly idlePollMs?: number;
}

const BACKOFF = { baseMs: 1000, maxMs: 600_000, jitter: 'equal' } as const;

interface Counters {
  outcomes: Record<Outcome, number>;
  lastError?: string;
  lastSuccess?: string;
}

export class Notifier {
  /** Every delivery, oldest first. */
  private queue: Delivery[] = [];
  private endpoints = new Map<string, NotifyEndpoint>();
  private configured = false;
  private readonly inFlight = new Set<string>(); // delivery ids
  private readonly counters = new Map<string, Counters>();
  /** Deliveries added since the last write started are not sent before it ends. */
  private readonly unsaved = new Set<string>();
  private saving: Promise<void> | undefined;
  private dirty = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly abort = new AbortController();
  private readonly maxQueue: number;
  private readonly maxAgeMs: number;

  constructor(private readonly o: NotifierOptions) {
    this.maxQueue = o.maxQueue ?? 10_000;
    this.maxAgeMs = o.maxAgeMs ?? 24 * 3600_000;
  }

  /**
   * The audit cursor: every audit entry up to this seq has its deliveries in the queue file (or sent).
   * Saved with the queue, in the same write.
   */
  private cursor: number | undefined;
  /** Entries audited after the saved cursor (a crash between an audit append and the queue's write). */
  private replay: AuditLike[] = [];

  /**
   * Reads the queue left on disk; its deliveries go out once their endpoints are known (setEndpoints).
   * `tail` is the end of the audit log: its entries past the saved cursor are queued at the first
   * setEndpoints (as events of their own time), so that a crash right after an audit append loses no
   * event. Without a queue file (the first start) nothing is replayed: the cursor starts at the log's end.
   */
  async open(tail: readonly (AuditLike & { readonly seq: number })[] = []): Promise<void> {
    const read = await this.o.file.read((message, code) => this.o.log('warn', message, { code }));
    this.queue = read.deliveries;
    for (const d of this.queue) d.nextAt = Math.min(d.nextAt, this.o.now()); // a restart tries at once
    const from = read.auditSeq;
    const oldest = this.o.now() - this.maxAgeMs;
    if (from !== undefined) this.replay = tail.filter((e) => e.seq > from && Date.parse(e.time) >= oldest);
    this.cursor = this.o.auditSeq();
    // The cursor on disk from the start (a crash after the next append replays it); not awaited: a disk
    // that cannot be written must not keep the daemon from starting (the write is retried).
    if (from === undefined) this.save();
  }

  /** The endpoints of the Config in force. Deliveries to an endpoint no longer declared are dropped. */
  setEndpoints(endpoints: readonly NotifyEndpoint[]): void {
    this.endpoints = new Map(endpoints.map((e) => [e.name, e]));
    this.configured = true;
    if (this.replay.length) {
      const replay = this.replay;
      this.replay = [];
      this.o.log('info', 'queuing webhooks for audit entries written before the last stop', { entries: replay.length });
      this.audited(replay);
    }
    const kept = this.queue.filter((d) => this.endpoints.has(d.endpoint) || this.inFlight.has(d.id));
    for (const d of this.queue)
      if (!this.endpoints.has(d.endpoint) && !this.inFlight.has(d.id)) this.count(d.endpoint, 'dropped');
    this.queue = kept;
    this.cursor = this.o.auditSeq(); // what was audited before these endpoints is not theirs to hear of
    this.save();
    this.wake();
  }

  /** The audit entries the daemon appended: those webhooks report are queued. Never throws, never waits. */
  audited(events: readonly AuditLike[]): void {
    for (const e of events) {
      const o = occurrenceOf(e);
      if (o) this.emit(o);
    }
    this.cursor = this.o.auditSeq();
    // Without endpoints nothing is written on the audit path (the cursor is saved once some are declared).
    if (this.endpoints.size > 0 || this.queue.length > 0) this.save();
  }

  /** Whether an endpoint asked for `event` (the watcher looks only then). */
  wants(event: NotifyEvent): boolean {
    for (const ep of this.endpoints.values()) if ((ep.events as readonly NotifyEvent[]).includes(event)) return true;
    return false;
  }

  /** Queues `o` for every endpoint that asked for its event (drift detection and the watcher call this). */
  emit(o: Occurrence): void {
    if (this.closed || !this.o.active()) return;
    try {
      for (const ep of this.endpoints.values()) {
        if (!(ep.events as readonly NotifyEvent[]).includes(o.event)) continue;
        const id = randomBytes(16).toString('hex');
        const now = this.o.now();
        const d: Delivery = {
          id,
          endpoint: ep.name,
          event: o.event,
          secret: o.secret ?? '',
          body: bodyOf(o, id, this.o.daemon, this.o.commit()),
          createdAt: now,
          attempts: 0,
          nextAt: now,
        };
        this.queue.push(d);
        this.unsaved.add(id);
        this.trim();
      }
      this.save();
    } catch (e) {
      this.o.log('warn', 'a webhook delivery could not be queued', { code: (e as { code?: string }).code ?? 'ERROR' });
    }
  }

  /** Drops the oldest deliveries beyond maxQueue (those in flight stay: their answer decides). */
  private trim(): void {
    let i = 0;
    while (this.queue.length > this.maxQueue && i < this.queue.length) {
      const d = this.queue[i]!;
      if (this.inFlight.has(d.id)) {
        i++;
        continue;
      }
      this.queue.splice(i, 1);
      this.unsaved.delete(d.id);
      this.count(d.endpoint, 'dropped');
    }
  }

  /** Writes the queue (coalescing: one write at a time, the next one takes every change made meanwhile). */
  private save(): void {
    if (this.queue.length === 0) for (const w of this.drainWaiters.splice(0)) w();
    this.dirty = true;
    if (this.saving) return;
    this.saving = (async () => {
      while (this.dirty && !this.closed) {
        this.dirty = false;
        const written = new Set(this.unsaved);
        const snapshot = this.queue.map((d) => ({ ...d }));
        try {
          await this.o.file.write(snapshot, this.cursor);
          for (const id of written) this.unsaved.delete(id);
        } catch (e) {
          // Not written: nothing new is sent (at least once needs it on disk first); tried again shortly.
          this.o.log('warn', 'the webhook queue cannot be written; new deliveries wait for it', {
            code: (e as { code?: string }).code ?? 'ERROR',
          });
          await new Promise((r) => setTimeout(r, 1000).unref());
          this.dirty = true;
        }
      }
      this.saving = undefined;
      this.wake();
    })();
  }

  private readonly drainWaiters: (() => void)[] = [];
  /** Resolves when the queue is empty (every delivery acknowledged or dropped). */
  drained(): Promise<void> {
    return this.queue.length === 0 ? Promise.resolve() : new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Resolves once everything queued so far is on disk (tests, and stop). */
  async flushed(): Promise<void> {
    while (this.saving) await this.saving;
  }

  private wake(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, 0);
  }

  /** Starts what may start now and arms the timer for the next due attempt. */
  private pump(): void {
    if (this.closed) return;
    if (!this.o.active() || !this.configured) {
      this.timer = setTimeout(() => this.pump(), this.o.idlePollMs ?? 5000);
      return;
    }
    const now = this.o.now();
    const lanes = new Set<string>();
    const busy = new Map<string, number>();
    for (const id of this.inFlight) {
      const d = this.queue.find((x) => x.id === id);
      if (d) busy.set(d.endpoint, (busy.get(d.endpoint) ?? 0) + 1);
    }
    let next = Number.POSITIVE_INFINITY;
    const expired: Delivery[] = [];
    for (const d of this.queue) {
      const lane = `${d.endpoint}\0${d.secret}`;
      if (lanes.has(lane)) continue; // only the head of a lane goes
      lanes.add(lane);
      if (this.inFlight.has(d.id) || this.unsaved.has(d.id) || !this.endpoints.has(d.endpoint)) continue;
      if (now - d.createdAt > this.maxAgeMs) {
        expired.push(d);
        continue;
      }
      if (d.nextAt > now) {
        next = Math.min(next, d.nextAt);
        continue;
      }
      const n = busy.get(d.endpoint) ?? 0;
      if (n >= (this.o.perEndpoint ?? 4)) continue; // woken again when one of its requests ends
      busy.set(d.endpoint, n + 1);
      this.inFlight.add(d.id);
      void this.attempt(d);
    }
    if (expired.length) {
      for (const d of expired) this.count(d.endpoint, 'expired');
      this.queue = this.queue.filter((d) => !expired.includes(d));
      this.save();
      this.wake();
      return;
    }
    if (next !== Number.POSITIVE_INFINITY)
      this.timer = setTimeout(() => this.pump(), Math.min(Math.max(0, next - now), 2 ** 31 - 1));
  }

  private async attempt(d: Delivery): Promise<void> {
    const ep = this.endpoints.get(d.endpoint)!;
    let outcome: SendOutcome;
    const keys = this.o.key(ep.secret);
    if (!keys || keys.length === 0) outcome = { ok: false, code: 'NOTIFY_KEY_UNAVAILABLE' };
    else {
      const t = Math.floor(this.o.now() / 1000);
      outcome = await post(
        ep.url,
        {
          [SIGNATURE_HEADER]: signatureHeader(keys, t, d.body),
          [DELIVERY_HEADER]: d.id,
          [EVENT_HEADER]: d.event,
        },
        d.body,
        this.o.limits ?? SEND_LIMITS,
        this.abort.signal,
      );
    }
    this.inFlight.delete(d.id);
    if (this.closed) return;
    const c = this.countersOf(d.endpoint);
    if (outcome.ok) {
      c.outcomes.success++;
      c.lastSuccess = new Date(this.o.now()).toISOString();
      delete c.lastError;
      this.queue = this.queue.filter((x) => x !== d);
      this.save();
    } else {
      c.outcomes.failure++;
      c.lastError = outcome.code;
      d.attempts++;
      d.nextAt = this.o.now() + backoffDelay(d.attempts, BACKOFF);
      if (d.attempts === 1 || d.attempts % 10 === 0)
        this.o.log('warn', 'a webhook delivery failed; it is retried with backoff', {
          endpoint: d.endpoint,
          event: d.event,
          delivery: d.id,
          attempts: d.attempts,
          code: outcome.code,
        });
      this.save(); // the attempt count and next time survive a restart
    }
    this.wake();
  }

  private countersOf(endpoint: string): Counters {
    let c = this.counters.get(endpoint);
    if (!c) {
      c = { outcomes: { success: 0, failure: 0, dropped: 0, expired: 0 } };
      this.counters.set(endpoint, c);
    }
    return c;
  }

  private count(endpoint: string, outcome: Outcome): void {
    this.countersOf(endpoint).outcomes[outcome]++;
  }

  status(): NotifyStatus {
    const names = new Set([...this.endpoints.keys(), ...this.counters.keys(), ...this.queue.map((d) => d.endpoint)]);
    const endpoints = [...names].sort().map((name): EndpointStatus => {
      const ep = this.endpoints.get(name);
      const mine = this.queue.filter((d) => d.endpoint === name);
      const c = this.countersOf(name);
      let url = '';
      if (ep)
        try {
          const u = new URL(ep.url);
          url = `${u.origin}${u.pathname}`;
        } catch {}
      return {
        name,
        url,
        queued: mine.length,
        failing: mine.some((d) => d.attempts > 0),
        ...(c.lastError !== undefined ? { lastError: c.lastError } : {}),
        ...(c.lastSuccess !== undefined ? { lastSuccess: c.lastSuccess } : {}),
        outcomes: { ...c.outcomes },
      };
    });
    return { queued: this.queue.length, max: this.maxQueue, endpoints };
  }

  /** Stops sending; what is queued stays on disk for the next start. Requests in flight are abandoned. */
  async close(): Promise<void> {
    await this.flushed();
    this.closed = true;
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
  }
}
