/**
 * Publishing the audit log: entries are appended (durable before append resolves), committed to the
 * clone in batches, and pushed; a failed commit or push is retried with backoff, the entries kept.
 * Commits and pushes run on the daemon's git queue, one git operation at a time.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import type { AuditLog } from '../audit/log.js';
import type { GitRepo } from '../git/repo.js';
import type { Logger } from '../log.js';
import type { AuditEvent } from '../rotation/engine.js';
import type { AuditStatus } from '../serve/status.js';
import type { BackoffOptions } from '../util/backoff.js';
import { backoffDelay } from '../util/backoff.js';
import type { SerialQueue } from '../util/serial.js';
import type { Timers } from './timers.js';

/**
 * `rotor:audit-push`: after each commit-and-push of the audit log, `{ ok: true, pushed }` (commits
 * pushed) or `{ ok: false, code }`. Never a value.
 */
export const auditPushChannel = diagnostics_channel.channel('rotor:audit-push');

/**
 * A failed commit or push is retried after 2 s, doubling to 5 minutes, drawn from the upper half of
 * that (equal jitter): daemons pushing to one remote do not retry in step, nor much sooner than that.
 */
export const PUSH_BACKOFF: BackoffOptions = { baseMs: 2000, maxMs: 300_000, jitter: 'equal' };

export interface AuditPublisherOptions {
  /** Where entries are appended, durably (the clone's files, or the chain in the database). */
  readonly audit: Pick<AuditLog, 'append'>;
  /** Several daemons: writes the database's entries into the clone's files before each commit. */
  readonly mirror?: () => Promise<void>;
  /** Several daemons: told when a commit or push failed (the clone's files are then written again from the database). */
  readonly onFailure?: () => void;
  /** Several daemons: whether this one publishes (it leads); a follower commits and pushes nothing. */
  readonly active?: () => boolean;
  readonly repo: GitRepo;
  /** The audit directory inside the clone (what is committed). */
  readonly auditDir: string;
  /** The audit log's own branch (audit.branch), when it is kept on one. */
  readonly branch?: string;
  /** The daemon's git queue (shared with the sync of the repository). */
  readonly queue: SerialQueue;
  readonly timers: Timers;
  readonly log: Logger;
  /** Time between an append and the commit of its batch. */
  readonly commitDelayMs: number;
  /** Called with the events once they are durable (the status keeps the recent outcomes). */
  readonly onAppended: (events: readonly AuditEvent[]) => void;
}

export class AuditPublisher {
  private commitPending = false;
  /** The last audit commit failed: the next flush commits even when no new entry asked for one. */
  private commitFailed = false;
  private pushFailures = 0;
  /** The code and message of the last failed commit or push of the audit log, while pushes fail. */
  private pushError: { code: string; message: string } | undefined;

  constructor(private readonly o: AuditPublisherOptions) {}

  /** Appends to the audit log (durable before it resolves) and schedules a commit of the batch. */
  async append(events: AuditEvent[]): Promise<void> {
    await this.o.audit.append(events);
    this.o.onAppended(events);
    if (!this.commitPending) {
      this.commitPending = true;
      this.o.timers.later(this.o.commitDelayMs, () => void this.publish());
    }
  }

  /** Commits the pending entries to the clone. Call it on the git queue (the sync does before it fetches). */
  async commit(): Promise<void> {
    if (this.inactive()) return;
    if (this.o.mirror) {
      this.commitPending = true; // what the database holds beyond the files is committed now
      await this.o.mirror().catch((e: unknown) => {
        this.commitFailed = true;
        throw e;
      });
    }
    if (!this.commitPending && !this.commitFailed) return;
    this.commitPending = false;
    this.commitFailed = false;
    // A failed commit leaves the entries uncommitted: the retry (flush's backoff) must commit them.
    await this.o.repo.commitAudit([this.o.auditDir], 'rotor: audit entries').catch((e: unknown) => {
      this.commitFailed = true;
      throw e;
    });
  }

  /** Commits and pushes on the git queue (see flush). */
  publish(): Promise<void> {
    return this.o.queue.run(() => this.flush());
  }

  /**
   * The last commit and push of a leader that stops (several daemons): it has given the lease up, so
   * `active` says no, but what it appended is pushed now rather than by the next leader, if any.
   */
  publishFinal(): Promise<void> {
    this.final = true;
    return this.o.queue.run(() => this.flush());
  }

  private final = false;

  private inactive(): boolean {
    return !this.final && this.o.active !== undefined && !this.o.active();
  }

  /** Commits and pushes the audit entries written since the last flush; retries a failed push with backoff. */
  private async flush(): Promise<void> {
    if (this.inactive()) return;
    try {
      await this.commit();
      const pushed = (await this.o.repo.unpushed()) > 0 ? (await this.o.repo.push()).pushed.length : 0;
      this.pushFailures = 0;
      this.pushError = undefined;
      if (auditPushChannel.hasSubscribers) auditPushChannel.publish({ ok: true, pushed });
    } catch (e) {
      this.o.onFailure?.();
      this.pushFailures++;
      const code = (e as { code?: string }).code ?? 'ERROR';
      this.pushError = { code, message: e instanceof Error ? e.message : String(e) };
      if (auditPushChannel.hasSubscribers) auditPushChannel.publish({ ok: false, code });
      const delay = backoffDelay(this.pushFailures, PUSH_BACKOFF);
      this.o.log('warn', 'audit commit or push failed; the entries are kept and pushed later', {
        code,
        problem: this.pushError.message.slice(0, 500),
        retryInMs: delay,
      });
      this.o.timers.later(delay, () => void this.publish());
    }
  }

  /** The publishing part of the audit status. */
  status(): Pick<AuditStatus, 'commitPending' | 'pushFailures' | 'pushError' | 'branch'> {
    return {
      ...(this.o.branch !== undefined ? { branch: this.o.branch } : {}),
      commitPending: this.commitPending,
      pushFailures: this.pushFailures,
      ...(this.pushError ? { pushError: this.pushError } : {}),
    };
  }
}
