/**
 * The daemon's handle on its clone of the GitOps repository.
 *
 * The clone belongs to the daemon. Everything in it comes from the remote branch, except the audit
 * directory, where the daemon commits its log. Its own commits stay on top of origin/BRANCH: every
 * sync and every rejected push puts them onto the new remote head, so the history stays linear and
 * a push is always a fast-forward (never --force, never a +refspec). An audit commit that could not be
 * pushed stays in the clone and goes out with the next push, also after a restart.
 *
 * Putting the audit commits on the new remote head is a rebase in effect. When the remote did not
 * touch the audit directory (the usual case) it is done without a rebase: `git fast-import`
 * re-creates each commit as the remote's tree plus that commit's audit directory (the result a rebase
 * would give), and `git reset --keep` moves the branch. That costs the same few git calls for any
 * number of commits (a fetch-to-push window that other writers rarely win), leaves the audit files
 * untouched (an audit line being written is not clobbered), and on a push retry moves the branch only
 * once the push landed. When the remote did change the audit directory, a real rebase runs, and a
 * conflict aborts it (GIT_AUDIT_CONFLICT) with the clone as it was.
 *
 * Callers that write audit files should do it inside exclusive() together with commitAudit(), so
 * that no sync or push runs in between.
 *
 * Every git call runs through src/git/run.ts, with overrides (`-c ...` and a cleaned environment) so
 * that the operator's global configuration cannot add hooks, signing, prompts, editors, pagers,
 * auto-stash or submodule recursion, and with a time limit and an output limit. Errors are
 * GitRepoError with a stable `code`; when git failed, `cause` is a GitError holding git's stderr (URL
 * credentials removed).
 *
 * This module holds the public API (openRepo, GitRepo) and the push retries; the parts, one concern
 * each: local.ts (the clone on disk: git calls in it, its refs and state), clone.ts (opening: clone,
 * checks, crash recovery, the byte-exact attributes), sync.ts (fetch, and the audit commits onto the
 * remote head), replay.ts (re-creating them with fast-import), push.ts (one push attempt), lock.ts
 * (the clone's lock), errors.ts (GitRepoError, warnings), sign-commits.ts (audit.sign: each commit
 * the clone makes or re-creates gets its signed twin, made in-process with the daemon's key).
 *
 * Plain `git` rather than simple-git (4.x included): simple-git gates every `-c` override, and the
 * environment this module sets, behind allow-lists and "unsafe" switches (core.hooksPath, --template,
 * GIT_EDITOR, the pager), its time limit is an inactivity limit, it has no output limit, and we need
 * the exit status and porcelain output of `git push` as they are.
 */
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { backoffDelay as sharedBackoffDelay } from '../util/backoff.js';
import {
  checkAuthor,
  checkBranch,
  checkExisting,
  cloneInto,
  isLocalPath,
  normalizeAuditDir,
  removeStaleLock,
} from './clone.js';
import { GitRepoError, type GitWarning, plural } from './errors.js';
import { gitFailure, LocalClone } from './local.js';
import { RepoLock } from './lock.js';
import { type PushOutcome, pushOnce, remoteSays } from './push.js';
import { DEFAULT_AUTHOR } from './run.js';
import type { CommitSigner } from './sign-commits.js';
import { fetchAndIntegrate, fetchLocked, integrate, noticeRemoteChanges } from './sync.js';

export type { GitRepoErrorCode, GitRepoErrorDetails, GitWarning } from './errors.js';
export type { CommitSigner } from './sign-commits.js';
export { DEFAULT_AUTHOR, GitRepoError };

export interface RetryPolicy {
  /** Push attempts per push() call, the first one included. */
  attempts: number;
  /** Backoff before retry n is a uniform random delay in [0, min(maxDelayMs, baseMs * 2^(n-1))]. */
  baseMs: number;
  maxDelayMs: number;
  /** push() gives up once this much time has passed (git calls are cut to fit, down to 1 s). */
  totalMs: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  attempts: 8,
  baseMs: 200,
  maxDelayMs: 10_000,
  totalMs: 120_000,
});

export interface OpenRepoOptions {
  /** The remote: a URL or a path (git stores paths absolute; they are compared resolved). */
  url: string;
  /** The daemon's clone; cloned if missing or empty. */
  dir: string;
  branch: string;
  author?: { name: string; email: string };
  /** The audit directory, relative to the repository's top (the Config's `audit.dir`; default `audit`). */
  auditDir?: string;
  onWarning?: (w: GitWarning) => void;
  retry?: Partial<RetryPolicy>;
  /** Time limit of each network git call (clone, fetch, push), in ms (default 120 s). */
  networkTimeoutMs?: number;
  /**
   * The signer of the audit commits, asked before each commit: while it returns one (audit.sign),
   * every commit this clone makes or re-creates is signed, and unsigned unpushed commits are signed
   * before they are pushed (src/git/sign-commits.ts).
   */
  signer?: () => CommitSigner | undefined;
}

export interface SyncResult {
  /** The local branch's commit after the sync. */
  head: string;
  remoteHead: string;
  /** Local audit commits replayed onto the new remote head. */
  rebased: number;
  unpushed: number;
  /**
   * Why the local branch was not brought to remoteHead, when it was not: the remote head makes the
   * audit path a symbolic link, a file or a submodule (GIT_AUDIT_PATH_UNSAFE), so the clone stays
   * where it was until the remote is fixed. Pushes fail with the same error meanwhile.
   */
  held?: GitRepoError;
}

export interface PushResult {
  /** The commits pushed, oldest first (empty when there was nothing to push). */
  pushed: string[];
  /** origin/BRANCH after the push. */
  head: string;
  /** Push attempts made (0 when there was nothing to push). */
  attempts: number;
}
const MAX_MESSAGE = 64 * 1024;

/**
 * The push retry's delay: a uniform random delay in [0, min(maxMs, baseMs * 2^(attempt-1))] ("full
 * jitter"), from node:crypto: util/backoff's backoffDelay, under the arguments GitRepo's callers use.
 */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number): number {
  return sharedBackoffDelay(attempt, { baseMs, maxMs, jitter: 'full' });
}

export class GitRepo {
  readonly dir: string;
  readonly url: string;
  readonly branch: string;
  readonly auditDir: string;
  readonly author: { readonly name: string; readonly email: string };
  /** The clone on disk, which the parts in src/git/ work on. */
  private readonly c: LocalClone;
  private readonly retry: RetryPolicy;
  private readonly lock = new RepoLock();
  /** The last push call gave up because others kept moving the branch: fetch before pushing next time. */
  private busyRemote = false;

  /** Use openRepo(). */
  constructor(o: {
    dir: string;
    url: string;
    branch: string;
    auditDir: string;
    author: { name: string; email: string };
    onWarning?: (w: GitWarning) => void;
    retry: RetryPolicy;
    networkTimeoutMs: number;
    signer?: () => CommitSigner | undefined;
  }) {
    this.c = new LocalClone(o);
    this.dir = this.c.dir;
    this.url = this.c.url;
    this.branch = this.c.branch;
    this.auditDir = this.c.auditDir;
    this.author = this.c.author;
    this.retry = o.retry;
  }

  /** Clones into `dir` when it is missing or empty (`entries` null or []), otherwise checks the clone there. */
  static async open(repo: GitRepo, entries: string[] | null): Promise<GitRepo> {
    if (entries === null || entries.length === 0) await cloneInto(repo.c, entries !== null);
    else await checkExisting(repo.c);
    return repo;
  }

  /**
   * Runs fn while holding the clone: no sync or push rebases the files in between. Use it to
   * append to an audit file and commit it; calls of this repo inside fn do not wait for the lock.
   */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.lock.run(fn);
  }

  /** Fetches BRANCH into origin/BRANCH; returns its commit. */
  fetch(): Promise<string> {
    return this.lock.run(async () => {
      await fetchLocked(this.c);
      await noticeRemoteChanges(this.c);
      return this.c.mustRev(this.c.remoteRef);
    });
  }

  /** The commit of origin/BRANCH as last fetched or pushed (no network). */
  remoteHead(): Promise<string> {
    return this.lock.run(() => this.c.mustRev(this.c.remoteRef));
  }

  /** The commit of the local branch. */
  head(): Promise<string> {
    return this.lock.run(() => this.c.mustRev(this.c.localRef));
  }

  /** Local commits not on origin/BRANCH (as last fetched or pushed). */
  unpushed(): Promise<number> {
    return this.lock.run(() => this.c.countUnpushed());
  }

  /** Fetches, then brings the local branch to origin/BRANCH with the unpushed audit commits on top. */
  sync(): Promise<SyncResult> {
    return this.lock.run(async () => {
      try {
        await fetchLocked(this.c);
        await noticeRemoteChanges(this.c);
        const remoteHead = await this.c.mustRev(this.c.remoteRef);
        let rebased = 0;
        let held: GitRepoError | undefined;
        try {
          rebased = await integrate(this.c);
        } catch (e) {
          if (!(e instanceof GitRepoError && e.code === 'GIT_AUDIT_PATH_UNSAFE')) throw e;
          held = e;
        }
        return {
          head: await this.c.mustRev(this.c.localRef),
          remoteHead,
          rebased,
          unpushed: await this.c.countUnpushed(),
          ...(held ? { held } : {}),
        };
      } catch (e) {
        throw this.c.wrap(e, 'sync');
      }
    });
  }

  /**
   * Fetches, then puts the local branch, the index and the files at origin/BRANCH, dropping unpushed
   * commits and uncommitted or untracked files of the audit directory. For several daemons on one
   * store: the audit files are a copy of the chain in the database, which a daemon that starts leading
   * writes again from there on top of what the remote holds.
   */
  resetToRemote(): Promise<string> {
    return this.lock.run(async () => {
      try {
        await fetchLocked(this.c);
        await noticeRemoteChanges(this.c);
        const remote = await this.c.mustRev(this.c.remoteRef);
        await removeStaleLock(this.c);
        await this.c.must(['reset', '--quiet', '--hard', remote]);
        await this.c.must(['clean', '-q', '-f', '-d', '--', this.auditDir]);
        return remote;
      } catch (e) {
        throw this.c.wrap(e, 'sync');
      }
    });
  }

  private auditPath(p: string): string {
    const rel = path.isAbsolute(p) ? path.relative(this.dir, p) : p;
    const norm = path.posix.normalize(rel.split(path.sep).join('/')).replace(/\/+$/, '');
    if (
      !norm ||
      norm.startsWith('../') ||
      norm === '..' ||
      path.posix.isAbsolute(norm) ||
      !this.c.isAuditPath(norm) ||
      norm.split('/').includes('.git')
    ) {
      throw new GitRepoError(
        'GIT_PATH_OUTSIDE_AUDIT',
        `${p} is outside the audit directory ${this.auditDir}/: rotor commits only audit files`,
        { details: { files: [p] } },
      );
    }
    return norm;
  }

  /**
   * Stages exactly `paths` (files or directories under the audit directory; additions, changes and
   * deletions) and commits them as the configured author, without hooks and never signed by git
   * itself; while the signer says so (audit.sign) the commit is signed with the daemon's key. Returns
   * the new commit, or null when those paths have no change. Other staged changes are not committed.
   */
  async commitAudit(paths: readonly string[], message: string): Promise<string | null> {
    if (paths.length === 0) throw new GitRepoError('GIT_BAD_ARGUMENT', 'commitAudit needs at least one path');
    if (!message.trim() || message.length > MAX_MESSAGE || message.includes('\0')) {
      throw new GitRepoError('GIT_BAD_ARGUMENT', 'the commit message must be non-empty text of at most 64 KiB');
    }
    const rels = [...new Set(paths.map((p) => this.auditPath(p)))];
    return this.lock.run(async () => {
      try {
        await removeStaleLock(this.c);
        // --literal-pathspecs: a file name is a name, never a glob or pathspec magic
        await this.c.must(['--literal-pathspecs', 'add', '--all', '--force', '--', ...rels]);
        const diff = await this.c.run([
          '--literal-pathspecs',
          'diff',
          '--cached',
          '--quiet',
          '--no-ext-diff',
          '--',
          ...rels,
        ]);
        if (diff.exitCode === 0) return null;
        if (diff.exitCode !== 1) throw gitFailure(['diff', '--cached'], diff);
        await this.c.must(
          [
            '--literal-pathspecs',
            'commit',
            '--quiet',
            '--no-verify',
            '--no-gpg-sign',
            '--cleanup=strip',
            '--only',
            '-m',
            message,
            '--',
            ...rels,
          ],
          { asAuthor: true },
        );
        // audit.sign: the commit git made becomes the same commit, signed
        return (await this.c.signBranch([await this.c.mustRev(this.c.localRef)])).at(-1)!;
      } catch (e) {
        throw this.c.wrap(e, 'commit');
      }
    });
  }

  /**
   * Pushes the local audit commits to origin/BRANCH as a fast-forward. When the remote moved on,
   * fetches, rebases the audit commits onto it and retries, with exponential backoff and full jitter,
   * within `retry.attempts` and `retry.totalMs`. Never forces. On giving up the commits stay local
   * (GIT_PUSH_GAVE_UP) and a later push sends them; a conflict (GIT_AUDIT_CONFLICT), a refusal by the
   * remote (GIT_PUSH_REFUSED) or non-audit local commits (GIT_LOCAL_DIVERGED) end it at once.
   */
  async push(opts: { signal?: AbortSignal } = {}): Promise<PushResult> {
    const started = Date.now();
    const deadline = started + this.retry.totalMs;
    let last: Extract<PushOutcome, { done: false }> | null = null;
    let attempt = 0;
    while (attempt < this.retry.attempts) {
      attempt++;
      // after a failure: back off first, then fetch + rebase + push at once, so that the window in
      // which another writer can move the branch again is as short as possible
      // (and on the first attempt too when the last push call gave up behind a busy remote)
      const refresh: boolean = last !== null || this.busyRemote;
      const outcome: PushOutcome = await this.lock.run(() => pushOnce(this.c, deadline, refresh));
      if (outcome.done) this.busyRemote = false;
      if (outcome.done)
        return { pushed: outcome.pushed, head: outcome.head, attempts: outcome.pushed.length ? attempt : attempt - 1 };
      last = outcome;
      if (outcome.kind === 'refused') {
        const n = await this.unpushed();
        throw new GitRepoError(
          'GIT_PUSH_REFUSED',
          `${this.url} refused the push of ${plural(n, 'audit commit')} to ${this.branch}: ${outcome.reason}${remoteSays(outcome.cause.stderr)}. ` +
            `Let rotor push to ${this.branch} (branch protection, hooks, permissions; a branch that requires signed commits needs audit.sign: true and the daemon's key on the forge) or set audit.push: false; the commits stay in ${this.dir} and are pushed on a later push`,
          { cause: outcome.cause, details: { attempts: attempt, unpushed: n } },
        );
      }
      if (attempt >= this.retry.attempts) break;
      const delay = backoffDelay(attempt, this.retry.baseMs, this.retry.maxDelayMs);
      if (Date.now() + delay >= deadline) break;
      this.c.warn(
        'GIT_PUSH_RETRY',
        `push to ${this.c.where} ${outcome.kind === 'behind' ? 'rejected because the remote moved on' : `failed (${outcome.reason})`}; fetch, rebase and retry ${attempt + 1} of ${this.retry.attempts} in ${delay} ms`,
      );
      await sleep(delay, undefined, opts.signal ? { signal: opts.signal } : undefined);
    }
    if (last?.kind === 'behind') {
      this.busyRemote = true;
      // leave the clone rebased onto what the remote has now (a conflict is the better error)
      await this.lock
        .run(() => fetchAndIntegrate(this.c, Math.max(1000, deadline - Date.now())))
        .catch((e: unknown) => {
          if (e instanceof GitRepoError && e.retry.kind === 'never') throw e;
        });
    }
    const n = await this.unpushed();
    throw new GitRepoError(
      'GIT_PUSH_GAVE_UP',
      `gave up pushing ${plural(n, 'audit commit')} to ${this.c.where} after ${plural(attempt, 'attempt')} in ${((Date.now() - started) / 1000).toFixed(1)} s` +
        `${last ? ` (last: ${last.reason})` : ''}; the commits stay in ${this.dir} and are pushed on a later push`,
      { cause: last?.cause, details: { attempts: attempt, unpushed: n } },
    );
  }
}

/**
 * Opens the daemon's clone of `url` in `dir`, cloning it first when `dir` is missing or empty. An
 * existing clone must have `url` as its origin. Does not fetch unless the clone lacks origin/BRANCH.
 */
export async function openRepo(opts: OpenRepoOptions): Promise<GitRepo> {
  const branch = checkBranch(opts.branch);
  const auditDir = normalizeAuditDir(opts.auditDir ?? 'audit');
  const author = checkAuthor(opts.author ?? DEFAULT_AUTHOR);
  if (!opts.url || opts.url.startsWith('-'))
    throw new GitRepoError('GIT_BAD_ARGUMENT', 'the repository URL must not be empty or start with "-"');
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
  if (!(retry.attempts >= 1) || !(retry.baseMs >= 0) || !(retry.maxDelayMs >= 0) || !(retry.totalMs > 0)) {
    throw new GitRepoError('GIT_BAD_ARGUMENT', 'retry: attempts >= 1, delays >= 0 and totalMs > 0');
  }
  const dir = path.resolve(opts.dir);
  const url = isLocalPath(opts.url) ? path.resolve(opts.url) : opts.url;
  const repo = new GitRepo({
    dir,
    url,
    branch,
    auditDir,
    author,
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
    retry,
    networkTimeoutMs: opts.networkTimeoutMs ?? 120_000,
    ...(opts.signer ? { signer: opts.signer } : {}),
  });
  let entries: string[] | null;
  try {
    entries = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    entries = null;
  }
  return GitRepo.open(repo, entries);
}
