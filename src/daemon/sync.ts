/**
 * Following the GitOps repository: fetch on the Config's interval and on demand (SIGHUP), and take
 * each new commit. A valid commit is applied; an invalid one is recorded as attempted and the last
 * good model stays in force (as Flux keeps the last applied revision apart from the last attempted
 * one). Runs on the daemon's git queue, one git operation at a time.
 */

import type { GitRepo } from '../git/repo.js';
import { runGit } from '../git/run.js';
import { GitTreeSource } from '../git/tree.js';
import type { Logger } from '../log.js';
import { loadModel } from '../model/load.js';
import type { Desired, LoadResult } from '../model/model.js';
import type { ConfigStatus } from '../serve/status.js';
import { parseDuration } from '../util/duration.js';
import type { SerialQueue } from '../util/serial.js';
import type { Timers } from './timers.js';

export interface Revision {
  readonly commit: string;
  readonly at: string;
  readonly problems?: number;
}

export interface RepoSyncOptions {
  /** The clone (the daemon may reopen it at start, for the audit directory a commit declares). */
  readonly repo: () => GitRepo;
  /** The audit directory: commits that change only it change no declaration. */
  readonly auditDir: () => string;
  readonly queue: SerialQueue;
  readonly timers: Timers;
  readonly log: Logger;
  readonly now: () => number;
  /** Runs on the queue before each fetch (commits the pending audit entries). */
  readonly beforeFetch: () => Promise<void>;
  /** Records a rejected commit (its problems counted) in the audit log. */
  readonly rejected: (commit: string, at: string, problems: number) => Promise<void>;
  /** Puts a valid commit's declarations in force. */
  readonly apply: (desired: Desired, commit: string, at: string) => Promise<void>;
  /** After every sync, successful or not (the schedule is looked at again). */
  readonly afterSync: () => void;
}

export class RepoSync {
  private applied: Revision | undefined;
  private attempted: Revision | undefined;
  /** Why the clone does not follow the remote head, while that lasts (GIT_AUDIT_PATH_UNSAFE). */
  private held: { commit: string; code: string; message: string } | undefined;
  /** The remote head last looked at. */
  private seenHead: string | undefined;
  private syncMs = 30_000;

  constructor(private readonly o: RepoSyncOptions) {}

  /** The model of a commit. */
  load(commit: string): Promise<LoadResult> {
    return loadModel(new GitTreeSource(this.o.repo().dir, commit, ''), { now: this.o.now() });
  }

  /** The remote head the daemon started from. */
  startAt(head: string): void {
    this.seenHead = head;
  }

  /** Fetches on the Config's interval from now on. */
  schedule(): void {
    this.o.timers.later(this.syncMs, () => void this.syncNow().finally(() => this.schedule()));
  }

  /** Fetches now (SIGHUP), applying a new commit if there is one. */
  syncNow(): Promise<void> {
    return this.o.queue
      .run(async () => {
        await this.o.beforeFetch();
        const repo = this.o.repo();
        const synced = await repo.sync(); // sync fetches
        this.noteHeld(synced);
        const head = synced.remoteHead;
        if (head === this.seenHead) return;
        const previous = this.seenHead;
        this.seenHead = head;
        // The daemon's own audit commits (and anyone else's that touch only the audit log) change no
        // declaration: the applied model stays as it is. Not so when the clone holds (the audit path
        // itself changed: a link, a file) or the last commit was rejected (this one may mend it).
        const lastWasApplied = this.attempted?.commit === this.applied?.commit;
        if (previous && !synced.held && lastWasApplied && (await this.declarationsUnchanged(previous, head))) return;
        await this.consider(head, await this.load(head));
      })
      .catch((e: unknown) =>
        this.o.log('error', 'sync with the repository failed; will retry', {
          code: (e as { code?: string }).code ?? 'ERROR',
        }),
      )
      .finally(() => this.o.afterSync());
  }

  /** Whether nothing but the audit directory differs between two commits. */
  private async declarationsUnchanged(a: string, b: string): Promise<boolean> {
    const args = [
      'diff',
      '--quiet',
      '--no-ext-diff',
      '--no-renames',
      a,
      b,
      '--',
      '.',
      `:(exclude)${this.o.auditDir()}`,
    ];
    const r = await runGit(this.o.repo().dir, args);
    return r.exitCode === 0; // 1: differences; anything else: look at the commit
  }

  /** Notes (and logs, once per commit) that the clone did not take the remote head, or that it does again. */
  noteHeld(synced: { remoteHead: string; held?: { code: string; message: string } }): void {
    if (!synced.held) {
      if (this.held) this.o.log('info', 'the clone follows the remote again', { commit: synced.remoteHead });
      this.held = undefined;
      return;
    }
    if (this.held?.commit !== synced.remoteHead)
      this.o.log('error', synced.held.message, { code: synced.held.code, commit: synced.remoteHead });
    this.held = { commit: synced.remoteHead, code: synced.held.code, message: synced.held.message };
  }

  /** Applies a commit's model when it is valid; records it as rejected when it is not. */
  async consider(commit: string, result: LoadResult): Promise<void> {
    const at = new Date(this.o.now()).toISOString();
    if (!result.valid) {
      const problems = result.problems.filter((p) => p.severity === 'error').length;
      this.attempted = { commit, at, problems };
      await this.o.rejected(commit, at, problems);
      this.o.log('error', 'commit rejected: its declarations are invalid; the last good commit stays in force', {
        commit,
        problems,
        applied: this.applied?.commit,
      });
      for (const p of result.problems.slice(0, 20))
        this.o.log('warn', 'declaration problem', {
          commit,
          file: p.file,
          line: p.line,
          col: p.col,
          code: p.code,
          problem: p.message,
        });
      return;
    }
    this.attempted = { commit, at };
    this.applied = { commit, at };
    this.syncMs = parseDuration(result.desired.config?.decl.sync?.interval ?? '30s') ?? 30_000;
    await this.o.apply(result.desired, commit, at);
  }

  /** The config part of the status: the commits applied and attempted, and why the clone holds. */
  status(): ConfigStatus {
    return { applied: this.applied, attempted: this.attempted, ...(this.held ? { held: this.held } : {}) };
  }
}
