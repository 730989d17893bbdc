/**
 * The election of several daemons on one PostgreSQL store (the lease and its fence: state/pg-lease.ts).
 *
 * Every daemon runs this loop. A daemon that does not lead reads the lease every `pollMs` (and at once
 * when a NOTIFY says it changed) and takes it when it is free: nobody holds it, it expired, or its
 * holder is gone (the hint). The leader renews it every `renewMs`. It counts its lease from the moment
 * it *sent* the last renewal that succeeded, on its own monotonic clock: the database's expiry is later
 * than that, whatever the network did. It stops acting `marginMs` before that count runs out when it
 * cannot renew (cut off from the database, or the database down), so that it has stopped before anyone
 * else may take the lease; a renewal that finds another term means it was deposed. Either way it steps
 * down at once (onFollow), and its late writes are refused by the fence anyway.
 *
 * On SIGTERM the leader resigns: the row is freed and a NOTIFY wakes the others, which take it at once.
 *
 * Timing (defaults): lease 15 s, renewed every 2 s, polled every 1 s, margin 3 s. A SIGKILLed leader is
 * replaced at the next poll after its connections end (about 1 s), a hung or cut-off one once its lease
 * expires (at most 15 s plus a poll); a resigning one at once.
 */
import { randomUUID } from 'node:crypto';
import os from 'node:os';
import type { Logger } from '../log.js';
import type { LeadershipView } from '../serve/status.js';
import type { DaemonRow, LeaseState, PgLease, TakeoverReason } from '../state/pg-lease.js';

export interface LeadershipOptions {
  readonly lease: PgLease;
  readonly log: Logger;
  readonly ttlMs: number;
  readonly renewMs: number;
  readonly pollMs: number;
  readonly marginMs: number;
  /** The agent API's URL as agents reach it, shown to the others (and to agents as the leader's). */
  readonly agentUrl?: () => string | undefined;
  /** Called when this daemon takes the lease; it leads once this resolves (a throw resigns). */
  onLead(term: number, reason: TakeoverReason): Promise<void>;
  /** Called when it stops leading (deposed, lease not renewed, resigned): stop acting now. */
  onFollow(why: string): void;
  /** The monotonic clock (performance.now). */
  readonly clock?: () => number;
}

export const LEASE_DEFAULTS = { ttlMs: 15_000, renewMs: 2_000, pollMs: 1_000, marginMs: 3_000 } as const;

/** A new daemon id: random per process (a restarted daemon is a new holder). */
export function newDaemonId(): string {
  return randomUUID();
}

export function defaultDaemonName(): string {
  return os.hostname();
}

export class Leadership {
  private term: number | undefined;
  /** Until when (monotonic ms) this daemon may act as leader without a further renewal. */
  private validUntil = 0;
  private timer: NodeJS.Timeout | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private leading = false;
  private lastLease: LeaseState | undefined;
  private lastDaemons: DaemonRow[] = [];
  private readAt = 0;
  private readonly clock: () => number;
  private failingSince: number | undefined;

  constructor(private readonly o: LeadershipOptions) {
    this.clock = o.clock ?? (() => performance.now());
  }

  /** Whether this daemon leads now: it holds a term and its lease has not run out by its own count. */
  isLeader(): boolean {
    return this.leading && this.clock() < this.validUntil;
  }

  /** The term this daemon writes under (its fence checks it), when it leads. */
  currentTerm(): number | undefined {
    return this.leading ? this.term : undefined;
  }

  /** The leader's agent URL as last read (for agents asking a follower), when known. */
  leaderAgentUrl(): string | undefined {
    const holder = this.lastLease?.holder;
    return this.lastDaemons.find((d) => d.id === holder)?.agentUrl;
  }

  get pollMs(): number {
    return this.o.pollMs;
  }

  start(): void {
    this.kick();
  }

  /** One look at the lease now (at start: a free lease is taken before anything is applied). */
  async once(): Promise<void> {
    if (this.running) return this.running;
    this.running = this.tick().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Looks at the lease now (a NOTIFY said it changed). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.running = this.tick().finally(() => {
      this.running = undefined;
      if (this.stopped) return;
      if (this.again) {
        this.again = false;
        this.kick();
        return;
      }
      this.timer = setTimeout(() => this.kick(), this.leading ? this.o.renewMs : this.o.pollMs);
    });
  }

  /**
   * A lease call bounded by the renewal interval on this side: a connection cut off without a reset
   * would otherwise hang until the kernel gives up. The connection is dropped (the hint lock with it).
   */
  private bounded<T>(p: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const limit = Math.max(this.o.renewMs, 1000);
    return Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          this.o.lease.close();
          reject(Object.assign(new Error(`the database did not answer within ${limit} ms`), { code: 'STATE_IO' }));
        }, limit);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  private async tick(): Promise<void> {
    try {
      if (this.leading) await this.renew();
      else await this.tryLead();
      await this.bounded(this.o.lease.heartbeat(this.role(), this.term, this.o.agentUrl?.()));
      const seen = await this.bounded(this.o.lease.read());
      this.lastLease = seen.lease;
      this.lastDaemons = seen.daemons;
      this.readAt = Date.now();
      if (this.failingSince !== undefined) {
        this.o.log('info', 'the lease can be read again', { term: seen.lease.term });
        this.failingSince = undefined;
      }
    } catch (e) {
      if (this.failingSince === undefined) {
        this.failingSince = Date.now();
        this.o.log('warn', 'the lease cannot be read or renewed; retrying', {
          code: (e as { code?: string }).code ?? 'ERROR',
          problem: (e as Error).message,
        });
      }
      if (this.leading && this.clock() >= this.validUntil) this.stepDown('its lease could not be renewed in time');
    }
  }

  private role(): DaemonRow['role'] {
    return this.leading ? 'leader' : this.lastLease?.holder !== undefined ? 'follower' : 'candidate';
  }

  private async tryLead(): Promise<void> {
    const sent = this.clock();
    const got = await this.bounded(this.o.lease.acquire());
    if (!got) return;
    this.term = got.term;
    this.leading = true;
    this.validUntil = sent + this.o.ttlMs - this.o.marginMs;
    this.watch();
    this.o.log('info', 'leading', { term: got.term, because: got.reason });
    try {
      await this.o.onLead(got.term, got.reason);
    } catch (e) {
      this.o.log('error', 'could not take over as leader; giving the lease up', {
        term: got.term,
        code: (e as { code?: string }).code ?? 'ERROR',
        problem: (e as Error).message,
      });
      await this.resign();
    }
  }

  private async renew(): Promise<void> {
    const term = this.term!;
    const sent = this.clock();
    let ok: boolean;
    try {
      ok = await this.bounded(this.o.lease.renew(term));
    } catch (e) {
      if (this.clock() >= this.validUntil) this.stepDown('its lease could not be renewed in time');
      throw e;
    }
    if (!ok) {
      this.stepDown('another daemon took the lease');
      return;
    }
    this.validUntil = sent + this.o.ttlMs - this.o.marginMs;
    this.watch();
  }

  /** Steps down when the lease runs out by this daemon's count, whatever the loop is waiting for. */
  private watch(): void {
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = setTimeout(
      () => {
        this.watchdog = undefined;
        if (this.leading && this.clock() >= this.validUntil) this.stepDown('its lease could not be renewed in time');
        else if (this.leading) this.watch();
      },
      Math.max(0, this.validUntil - this.clock()) + 1,
    );
  }

  private stepDown(why: string): void {
    if (!this.leading) return;
    if (this.watchdog) clearTimeout(this.watchdog);
    this.watchdog = undefined;
    this.leading = false;
    this.o.log('warn', 'no longer leading', { term: this.term, because: why });
    this.o.onFollow(why);
    void this.o.lease.releaseHint().catch(() => undefined);
  }

  /** Gives the lease up (SIGTERM, or a failed takeover): the others take it at once. */
  async resign(): Promise<void> {
    if (!this.leading || this.term === undefined) return;
    const term = this.term;
    this.stepDown('it resigned');
    await this.o.lease.resign(term).catch((e: unknown) =>
      this.o.log('warn', 'could not give the lease up; it expires by itself', {
        term,
        code: (e as { code?: string }).code ?? 'ERROR',
      }),
    );
  }

  /** Stops the loop; resigns first when leading. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.watchdog) clearTimeout(this.watchdog);
    await this.running?.catch(() => undefined);
    await this.resign();
    await this.o.lease.heartbeat('candidate', this.term, undefined).catch(() => undefined);
    this.o.lease.close();
  }

  /** What status shows. */
  view(): LeadershipView {
    const l = this.lastLease;
    const age = Date.now() - this.readAt; // the lease was read this long ago
    const leader = l?.holder !== undefined ? this.lastDaemons.find((d) => d.id === l.holder) : undefined;
    return {
      role: this.role(),
      self: { id: this.o.lease.me.id, name: this.o.lease.me.name },
      term: l?.term ?? 0,
      ...(l?.holder !== undefined
        ? {
            leader: {
              id: l.holder,
              name: l.holderName ?? leader?.name ?? l.holder,
              ...(leader?.agentUrl !== undefined ? { agentUrl: leader.agentUrl } : {}),
            },
          }
        : {}),
      ...(l?.renewedAt !== undefined && l.holder !== undefined
        ? { leaseAgeMs: Math.max(0, l.now - l.renewedAt + age) }
        : {}),
      ...(l?.expiresAt !== undefined && l.holder !== undefined
        ? { leaseExpiresInMs: Math.max(0, l.expiresAt - l.now - age) }
        : {}),
      daemons: this.lastDaemons.map((d) => ({
        id: d.id,
        name: d.name,
        role: d.id === this.o.lease.me.id ? this.role() : d.role,
        ...(d.agentUrl !== undefined ? { agentUrl: d.agentUrl } : {}),
        seenAgoMs: d.seenAgoMs + age,
        ...(d.term !== undefined ? { term: d.term } : {}),
      })),
    };
  }
}
