/**
 * Several daemons on one PostgreSQL store: what a daemon runs beside its usual parts when its state is
 * in PostgreSQL. The election (leadership.ts, on the lease of state/pg-lease.ts); LISTEN for changes
 * (state/pg-listen.ts); a follower's copy of the store and of the audit chain kept current from the
 * database (on a NOTIFY, and polled, since a NOTIFY sent while a listener reconnects is lost); and the
 * read receipts a follower takes, kept in the receipts table for the leader to fold into the store.
 *
 * One daemon on a PostgreSQL store runs all this too: it is the leader of a cluster of one, which costs
 * one lease renewal every two seconds.
 */
import type { PoolClient } from 'pg';
import type { AuditEntry, AuditInput } from '../audit/entry.js';
import type { Logger } from '../log.js';
import type { LeadershipView } from '../serve/status.js';
import type { TakeoverReason } from '../state/pg-lease.js';
import { NOTIFY_CHANNEL, PgLease } from '../state/pg-lease.js';
import { PgListener } from '../state/pg-listen.js';
import type { PgStore } from '../state/pg-store.js';
import { defaultDaemonName, LEASE_DEFAULTS, Leadership, newDaemonId } from './leadership.js';

/** The audit chain as the database keeps it (audit/pg-log.ts). */
export interface DbAuditLog {
  readonly head: { readonly seq: number; readonly hash: string };
  append(inputs: readonly AuditInput[]): Promise<AuditEntry[]>;
  /** The entries after head that another daemon appended (verified); head moves on. */
  catchUp(): Promise<AuditEntry[]>;
}

export type LeaseTimings = typeof LEASE_DEFAULTS;

export interface ClusterOptions {
  readonly store: PgStore;
  readonly log: Logger;
  /** This daemon's name as the others show it (default: the host name). */
  readonly name?: string;
  readonly timings?: Partial<LeaseTimings>;
  readonly agentUrl: () => string | undefined;
  onLead(term: number, reason: TakeoverReason): Promise<void>;
  onFollow(why: string): void;
  /** A follower caught up: the store keys the leader changed, and the audit entries it appended. */
  onState(keys: readonly string[], entries: readonly AuditEntry[]): void;
  /** The leader: followers stored read receipts. */
  onReceipts(): void;
}

export interface ReceiptRow {
  readonly consumer: string;
  readonly secret: string;
  readonly version: number;
  readonly at: string;
}

export class Cluster {
  readonly leadership: Leadership;
  private readonly lease: PgLease;
  private readonly listener: PgListener;
  private audit: DbAuditLog | undefined;
  private following: Promise<void> | undefined;
  private followAgain = false;
  private pollTimer: NodeJS.Timeout | undefined;
  private followFailing = false;
  private stopped = false;
  private readonly schema: string;

  constructor(private readonly o: ClusterOptions) {
    const timings = { ...LEASE_DEFAULTS, ...o.timings };
    const ctx = o.store.context;
    this.schema = ctx.t.schema.slice(1, -1).replace(/""/g, '"');
    this.lease = new PgLease(ctx, { id: newDaemonId(), name: o.name ?? defaultDaemonName(), ttlMs: timings.ttlMs });
    this.leadership = new Leadership({
      lease: this.lease,
      log: o.log,
      ...timings,
      agentUrl: o.agentUrl,
      onLead: o.onLead,
      onFollow: o.onFollow,
    });
    this.listener = new PgListener(ctx, {
      onNotify: (kind) => {
        if (kind === 'lease') this.leadership.kick();
        else if (kind === 'receipts') {
          if (this.leadership.isLeader()) this.o.onReceipts();
        } else if (!this.leadership.isLeader()) void this.follow();
      },
      onConnect: () => {
        this.leadership.kick();
        void this.follow();
      },
      onError: (message) => o.log('warn', message, { code: 'STATE_IO' }),
    });
  }

  /** The fence of every write of the store and the audit chain: the lease still at this daemon's term. */
  fence(): (client: PoolClient) => Promise<void> {
    return this.lease.fence(() => this.leadership.currentTerm());
  }

  /** The audit chain in the database, once opened (the daemon opens it after the store). */
  setAudit(audit: DbAuditLog): void {
    this.audit = audit;
  }

  get id(): string {
    return this.lease.me.id;
  }

  /** Whether this daemon acts: runs rotations, hands out jobs, appends and pushes the audit log. */
  isLeader(): boolean {
    return this.leadership.isLeader();
  }

  /** Takes the lease now if it is free (the first daemon on a store leads before it applies anything). */
  async first(): Promise<void> {
    await this.leadership.once();
  }

  start(): void {
    this.listener.start();
    this.leadership.start();
    const poll = () => {
      this.pollTimer = setTimeout(() => {
        if (!this.leadership.isLeader()) void this.follow();
        poll();
      }, this.leadership.pollMs * 2);
    };
    poll();
  }

  /**
   * A follower catches up with the store and the audit chain (one at a time; a request meanwhile runs
   * again after). Never rejects: a failure is logged by catchUp, and the next poll or NOTIFY tries
   * again (its callers do not wait for it, and a rejection would end the process).
   */
  follow(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.following) {
      this.followAgain = true;
      return this.following;
    }
    this.following = (async () => {
      do {
        this.followAgain = false;
        await this.catchUp();
      } while (this.followAgain && !this.stopped);
    })()
      .catch(() => undefined)
      .finally(() => {
        this.following = undefined;
      });
    return this.following;
  }

  /** Reads what the leader wrote since this daemon last looked, and reports it. */
  async catchUp(): Promise<void> {
    try {
      const entries = (await this.audit?.catchUp()) ?? [];
      const keys = await this.o.store.catchUp();
      if (this.followFailing) this.o.log('info', 'following the state store again', { seq: this.o.store.seq });
      this.followFailing = false;
      if (keys.length > 0 || entries.length > 0) this.o.onState(keys, entries);
    } catch (e) {
      if (!this.followFailing)
        this.o.log('warn', 'cannot follow the state store; serving what was read last and retrying', {
          code: (e as { code?: string }).code ?? 'ERROR',
          problem: (e as Error).message,
        });
      this.followFailing = true;
      throw e;
    }
  }

  /** A follower's read receipts, for the leader (the version only grows); announced with a NOTIFY. */
  async putReceipts(rows: readonly ReceiptRow[]): Promise<void> {
    if (rows.length === 0) return;
    const { pool, t } = this.o.store.context;
    await pool.query(
      `WITH up AS (
         INSERT INTO ${t.receipts} (consumer, secret, version, at)
           SELECT c, s, v, a::timestamptz FROM unnest($1::text[], $2::text[], $3::int[], $4::text[]) AS u (c, s, v, a)
         ON CONFLICT (consumer, secret) DO UPDATE SET version = excluded.version, at = excluded.at
           WHERE ${t.receipts}.version < excluded.version
         RETURNING 1)
       SELECT pg_notify($5, $6) FROM (SELECT count(*) AS n FROM up) x WHERE x.n > 0`,
      [
        rows.map((r) => r.consumer),
        rows.map((r) => r.secret),
        rows.map((r) => r.version),
        rows.map((r) => r.at),
        NOTIFY_CHANNEL,
        `${this.schema} receipts 0`,
      ],
    );
  }

  /** The receipts followers stored (the leader folds the newer ones into the store). */
  async readReceipts(): Promise<ReceiptRow[]> {
    const { pool, t } = this.o.store.context;
    const { rows } = await pool.query<{ consumer: string; secret: string; version: number; at: Date }>(
      `SELECT consumer, secret, version, at FROM ${t.receipts}`,
    );
    return rows.map((r) => ({ consumer: r.consumer, secret: r.secret, version: r.version, at: r.at.toISOString() }));
  }

  view(): LeadershipView {
    return this.leadership.view();
  }

  /** Stops following and electing; resigns when leading (the others take over at once). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.listener.stop();
    await this.following?.catch(() => undefined);
    await this.leadership.stop();
  }
}
