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
 * auto-stash or submodule recursion, and with a time limit and an output limit. Errors are GitRepoError with a stable `code`;
 * when git failed, `cause` is a GitError holding git's stderr (URL credentials removed).
 *
 * Plain `git` rather than simple-git: simple-git refuses exactly the overrides this module needs
 * (`-c core.hooksPath`, `--template`, GIT_EDITOR) unless its "unsafe" switches are turned on, and we
 * need the exit status and porcelain output of `git push` as they are.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes, randomInt } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, realpath, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AUDIT_DIR_MAX, auditDirShapeProblem, unsafeAuditPath } from '../model/audit-path.js';
import { DEFAULT_AUTHOR, GitError, LOCAL_TIMEOUT_MS, redactUrls, runGit, type GitResult } from './run.js';
import { GitTreeSource } from './tree.js';

export { DEFAULT_AUTHOR };

export type GitRepoErrorCode =
  | 'GIT_BAD_ARGUMENT' // a caller's mistake (branch name, path, message)
  | 'GIT_NOT_A_CLONE' // dir is neither empty nor the top of a git work tree
  | 'GIT_ORIGIN_MISMATCH' // dir is a clone of another repository
  | 'GIT_CLONE_FAILED'
  | 'GIT_BRANCH_MISSING' // the remote has no such branch
  | 'GIT_FETCH_FAILED'
  | 'GIT_WORKTREE_DIRTY' // uncommitted changes block a rebase
  | 'GIT_AUDIT_CONFLICT' // someone changed the audit files on the remote; our commits do not apply
  | 'GIT_AUDIT_PATH_UNSAFE' // the remote makes the audit path a link, a file or a submodule: not checked out
  | 'GIT_LOCAL_DIVERGED' // the local branch holds commits that are not audit commits
  | 'GIT_PATH_OUTSIDE_AUDIT' // commitAudit was given a path outside the audit directory
  | 'GIT_COMMIT_FAILED'
  | 'GIT_PUSH_REFUSED' // the remote refused the push (hook, protection, permissions)
  | 'GIT_PUSH_GAVE_UP' // bounded retries exhausted; the commits stay local
  | 'GIT_FAILED'; // anything else git reported

export interface GitRepoErrorDetails {
  /** Conflicting files (GIT_AUDIT_CONFLICT), dirty files (GIT_WORKTREE_DIRTY), refused paths. */
  files?: string[];
  /** Remote commits that changed the audit directory, or local commits that are not audit commits. */
  commits?: string[];
  attempts?: number;
  /** Local commits not on origin/BRANCH when the error was raised. */
  unpushed?: number;
}

export class GitRepoError extends Error {
  constructor(readonly code: GitRepoErrorCode, message: string, options: { cause?: unknown; details?: GitRepoErrorDetails } = {}) {
    super(redactUrls(message), options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GitRepoError';
    this.details = options.details ?? {};
  }
  readonly details: GitRepoErrorDetails;
}

export interface GitWarning {
  code: string;
  message: string;
}

export interface RetryPolicy {
  /** Push attempts per push() call, the first one included. */
  attempts: number;
  /** Backoff before retry n is a uniform random delay in [0, min(maxDelayMs, baseMs * 2^(n-1))]. */
  baseMs: number;
  maxDelayMs: number;
  /** push() gives up once this much time has passed (git calls are cut to fit, down to 1 s). */
  totalMs: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({ attempts: 8, baseMs: 200, maxDelayMs: 10_000, totalMs: 120_000 });

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

const MAX_OUTPUT = 64 * 1024 * 1024;
const MAX_MESSAGE = 64 * 1024;

/** A uniform random delay in [0, min(maxMs, baseMs * 2^(attempt-1))] ("full jitter"), from node:crypto. */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number): number {
  const cap = Math.floor(Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(attempt - 1, 0), 40)));
  return cap <= 0 ? 0 : randomInt(0, cap + 1);
}

/** A mutex that the holder may take again (AsyncLocalStorage marks the holder's async context). */
class RepoLock {
  private tail: Promise<void> = Promise.resolve();
  private readonly held = new AsyncLocalStorage<true>();

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.held.getStore()) return fn();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const prev = this.tail;
    this.tail = prev.then(() => mine);
    await prev;
    try {
      return await this.held.run(true, fn);
    } finally {
      release();
    }
  }
}

function isLocalPath(url: string): boolean {
  return !/^[a-z][a-z0-9+.-]*:\/\//i.test(url) && !/^[^/]+:/.test(url);
}

async function canonicalUrl(url: string): Promise<string> {
  if (!isLocalPath(url)) return url.replace(/\/+$/, '');
  const abs = path.resolve(url);
  return (await realpath(abs).catch(() => abs)).replace(/\/+$/, '');
}

function normalizeAuditDir(dir: string): string {
  if (dir.length > 2 * AUDIT_DIR_MAX) throw new GitRepoError('GIT_BAD_ARGUMENT', auditDirShapeProblem(dir)!);
  const norm = path.posix.normalize(dir.replace(/\\/g, '/')).replace(/\/+$/, '');
  const bad = auditDirShapeProblem(norm); // the name goes into an attributes pattern as it is
  if (bad) throw new GitRepoError('GIT_BAD_ARGUMENT', bad);
  return norm;
}

function checkAuthor(a: { name: string; email: string }): { name: string; email: string } {
  const bad = (s: string) => !s || /[\0\n\r<>]/.test(s) || s.length > 256;
  if (bad(a.name) || bad(a.email)) {
    throw new GitRepoError('GIT_BAD_ARGUMENT', 'author name and email must be non-empty, one line, without < or >');
  }
  return { name: a.name, email: a.email };
}

function checkBranch(branch: string): string {
  // the rules of git check-ref-format, for a branch name
  if (
    !branch || branch.startsWith('-') || branch.startsWith('/') || branch.endsWith('/') || branch.endsWith('.') ||
    branch.endsWith('.lock') || branch === '@' || /\.\.|@\{|\/\/|\/\.|^\.|[\0-\x20\x7f~^:?*[\\]/.test(branch)
  ) {
    throw new GitRepoError('GIT_BAD_ARGUMENT', `"${branch}" is not a valid branch name`);
  }
  return branch;
}

function nul(out: Buffer): string[] {
  return out.toString('utf8').split('\0').filter((s) => s.length > 0);
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** A local audit commit not yet on the remote. */
interface OwnCommit {
  id: string;
  parent: string;
  authorName: string;
  authorEmail: string;
  /** "<unix seconds> <+hhmm>" */
  authorDate: string;
  message: string;
}

/**
 * Attributes that switch off every content conversion of git for the audit directory: line endings
 * (text, eol, crlf), keyword expansion (ident), clean/smudge filters and re-encoding.
 */
const BYTE_EXACT = '-text -eol -crlf -ident -filter -working-tree-encoding';

/** Where replay() builds the audit commits before they are pushed. */
const REPLAY_REF = 'refs/rotor/replay';

type PushOutcome =
  | { done: true; pushed: string[]; head: string }
  | { done: false; kind: 'behind' | 'transient' | 'refused'; cause: GitError; reason: string };

/** What a failed `git push --porcelain` means. */
function classifyPush(r: GitResult): { kind: 'behind' | 'transient' | 'refused'; reason: string } {
  const line = r.stdout.toString('utf8').split('\n').find((l) => l.startsWith('!\t'));
  if (!line || r.killed) return { kind: 'transient', reason: r.killed ? `git push ${r.killed === 'timeout' ? 'timed out' : 'was stopped'}` : 'the remote could not be reached' };
  const reason = line.split('\t')[2] ?? '';
  if (reason.startsWith('[rejected]')) {
    return { kind: /fetch first|non-fast-forward|stale info/.test(reason) ? 'behind' : 'refused', reason };
  }
  if (reason.startsWith('[remote rejected]')) {
    // another push held or moved the ref while the remote updated it: a race, worth retrying
    return { kind: /lock|failed to update ref|incorrect old value|expected/i.test(reason) ? 'transient' : 'refused', reason };
  }
  return { kind: reason.startsWith('[remote failure]') ? 'transient' : 'refused', reason };
}

export class GitRepo {
  readonly dir: string;
  readonly url: string;
  readonly branch: string;
  readonly auditDir: string;
  readonly author: { readonly name: string; readonly email: string };
  private readonly warnFn: (w: GitWarning) => void;
  private readonly retry: RetryPolicy;
  private readonly networkTimeoutMs: number;
  private readonly lock = new RepoLock();
  /** The last push call gave up because others kept moving the branch: fetch before pushing next time. */
  private busyRemote = false;

  /** Use openRepo(). */
  constructor(o: { dir: string; url: string; branch: string; auditDir: string; author: { name: string; email: string }; onWarning?: (w: GitWarning) => void; retry: RetryPolicy; networkTimeoutMs: number }) {
    this.dir = o.dir;
    this.url = o.url;
    this.branch = o.branch;
    this.auditDir = o.auditDir;
    this.author = Object.freeze({ ...o.author });
    this.warnFn = o.onWarning ?? (() => {});
    this.retry = o.retry;
    this.networkTimeoutMs = o.networkTimeoutMs;
  }

  private get localRef(): string {
    return `refs/heads/${this.branch}`;
  }
  private get remoteRef(): string {
    return `refs/remotes/origin/${this.branch}`;
  }
  private get where(): string {
    return `origin/${this.branch}`;
  }

  private warn(code: string, message: string): void {
    try {
      this.warnFn({ code, message: redactUrls(message) });
    } catch {
      // a failing listener must not break git operations
    }
  }

  // ---- running git ----------------------------------------------------------------------------

  private run(args: readonly string[], o: { network?: boolean; timeoutMs?: number; asAuthor?: boolean; cwd?: string; input?: string | Buffer } = {}): Promise<GitResult> {
    return runGit(o.cwd ?? this.dir, args, {
      identity: this.author,
      asAuthor: o.asAuthor ?? false,
      timeoutMs: o.timeoutMs ?? (o.network ? this.networkTimeoutMs : LOCAL_TIMEOUT_MS),
      maxBuffer: MAX_OUTPUT,
      ...(o.input !== undefined ? { input: o.input } : {}),
    });
  }

  private static fail(args: readonly string[], r: GitResult): GitError {
    return new GitError(args, r.exitCode, r.stderr, r.killed);
  }

  /** Runs git; throws GitError unless it exits 0. */
  private async must(args: readonly string[], o: { network?: boolean; timeoutMs?: number; asAuthor?: boolean; cwd?: string } = {}): Promise<Buffer> {
    const r = await this.run(args, o);
    if (r.exitCode !== 0) throw GitRepo.fail(args, r);
    return r.stdout;
  }

  private async text(args: readonly string[]): Promise<string> {
    return (await this.must(args)).toString('utf8').trim();
  }

  /** The commit a ref points to, or null when it does not exist. */
  private async rev(ref: string): Promise<string | null> {
    const r = await this.run(['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`]);
    if (r.exitCode === 0) return r.stdout.toString('utf8').trim();
    if (r.exitCode === 1) return null;
    throw GitRepo.fail(['rev-parse', ref], r);
  }

  private async mustRev(ref: string): Promise<string> {
    const id = await this.rev(ref);
    if (!id) throw new GitRepoError('GIT_FAILED', `${ref} is missing in ${this.dir}`);
    return id;
  }

  private async isAncestor(a: string, b: string): Promise<boolean> {
    const r = await this.run(['merge-base', '--is-ancestor', a, b]);
    if (r.exitCode === 0) return true;
    if (r.exitCode === 1) return false;
    throw GitRepo.fail(['merge-base', '--is-ancestor'], r);
  }

  private isAuditPath(p: string): boolean {
    return p === this.auditDir || p.startsWith(`${this.auditDir}/`);
  }

  /**
   * Refuses (GIT_AUDIT_PATH_UNSAFE) a commit in which the audit directory, a parent of it or an entry
   * in it is a symbolic link, a file or a submodule: the clone never checks such a tree out, so the
   * daemon's audit writes stay in plain directories (src/model/audit-path.ts says the same of a commit
   * to `rotor validate` and `rotor plan`, and the daemon records it as config-rejected).
   */
  private async requireSafeAuditPath(commit: string): Promise<void> {
    const id = await this.mustRev(commit);
    const bad = unsafeAuditPath(this.auditDir, await new GitTreeSource(this.dir, id, '').probe(this.auditDir));
    if (!bad) return;
    throw new GitRepoError(
      'GIT_AUDIT_PATH_UNSAFE',
      `${commit === this.remoteRef ? this.where : commit} (${id.slice(0, 12)}) is not checked out, and the audit log is not pushed there: ${bad.message} (${bad.code}). ` +
        `The clone stays where it was; revert that change on ${this.branch}, and rotor continues by itself`,
      { details: { files: [bad.path], commits: [id] } },
    );
  }

  /**
   * Makes the clone read and write the audit directory byte for byte, whatever .gitattributes files
   * in the repository say (line-ending conversion, ident, filters, encodings would change the log on
   * checkout and break its hash chain): $GIT_DIR/info/attributes overrides every .gitattributes.
   */
  private async writeAttributes(dir = this.dir): Promise<void> {
    const file = path.resolve(dir, (await this.runChecked(['rev-parse', '--git-path', 'info/attributes'], dir)).toString('utf8').trim());
    const text =
      '# Written by rotor: its audit log is kept byte for byte, whatever .gitattributes say.\n' +
      `/${this.auditDir}/** ${BYTE_EXACT}\n`;
    if ((await readFile(file, 'utf8').catch(() => '')) === text) return;
    await mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, file);
  }

  private async runChecked(args: readonly string[], cwd: string): Promise<Buffer> {
    const r = await this.run(args, { cwd });
    if (r.exitCode !== 0) throw GitRepo.fail(args, r);
    return r.stdout;
  }

  // ---- opening ----------------------------------------------------------------------------------

  /** Clones into `dir` when it is missing or empty (`entries` null or []), otherwise checks the clone there. */
  static async open(repo: GitRepo, entries: string[] | null): Promise<GitRepo> {
    if (entries === null || entries.length === 0) await repo.cloneInto(entries !== null);
    else await repo.checkExisting();
    return repo;
  }

  /** Clones into a sibling temporary directory and renames it into place, so a crash leaves no half clone. */
  private async cloneInto(dirExists: boolean): Promise<void> {
    const parent = path.dirname(this.dir);
    await mkdir(parent, { recursive: true });
    const tmp = path.join(parent, `.${path.basename(this.dir)}.clone-${randomBytes(6).toString('hex')}`);
    const args = ['clone', '--quiet', '--no-checkout', '--no-tags', '--single-branch', '--branch', this.branch, '--origin', 'origin', '--template=', '--', this.url, tmp];
    try {
      const r = await this.run(args, { network: true, cwd: parent });
      if (r.exitCode !== 0) {
        // \S+, not .*: a branch name has no spaces, and .* is rescanned from every "Remote branch ".
        const missing = /Remote branch \S+ not found|not found in upstream/.test(r.stderr);
        throw new GitRepoError(
          missing ? 'GIT_BRANCH_MISSING' : 'GIT_CLONE_FAILED',
          missing
            ? `${this.url} has no branch "${this.branch}": push the declarations (rotor.yaml) to that branch first, or start rotor with the right --branch`
            : `could not clone ${this.url} into ${this.dir}: ${GitRepo.fail(args, r).message}`,
          { cause: GitRepo.fail(args, r) },
        );
      }
      // The attributes first, then the check, then the files: nothing unsafe or converted is written.
      await this.writeAttributes(tmp);
      const unsafe = await this.run(['rev-parse', '--verify', '--quiet', 'HEAD^{commit}'], { cwd: tmp });
      const headId = unsafe.stdout.toString('utf8').trim();
      const bad = unsafe.exitCode === 0 ? unsafeAuditPath(this.auditDir, await new GitTreeSource(tmp, headId, '').probe(this.auditDir)) : undefined;
      if (bad) {
        throw new GitRepoError(
          'GIT_AUDIT_PATH_UNSAFE',
          `${this.url} branch ${this.branch} (${headId.slice(0, 12)}) is not checked out: ${bad.message} (${bad.code}). Revert that change on ${this.branch}, then start rotor again`,
          { details: { files: [bad.path], commits: [headId] } },
        );
      }
      const co = await this.run(['reset', '--quiet', '--hard', 'HEAD'], { cwd: tmp });
      if (co.exitCode !== 0) throw new GitRepoError('GIT_CLONE_FAILED', `could not check out ${this.branch} in ${tmp}: ${GitRepo.fail(['reset'], co).message}`, { cause: GitRepo.fail(['reset'], co) });
      if (dirExists) {
        const mode = (await stat(this.dir)).mode & 0o7777;
        await chmod(tmp, mode);
      }
      await rename(tmp, this.dir); // replaces an empty directory
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  /** Checks an existing clone: its top, its origin, leftovers of a crash, its branch. */
  private async checkExisting(): Promise<void> {
    const top = await this.run(['rev-parse', '--show-toplevel']);
    const real = await realpath(this.dir);
    if (top.exitCode !== 0 || (await realpath(top.stdout.toString('utf8').trim()).catch(() => '')) !== real) {
      throw new GitRepoError(
        'GIT_NOT_A_CLONE',
        `${this.dir} is not empty and is not a git clone: point rotor at an empty or missing directory (it clones ${this.url} there), or move the files away`,
        top.exitCode !== 0 ? { cause: GitRepo.fail(['rev-parse', '--show-toplevel'], top) } : {},
      );
    }
    const origin = await this.run(['config', '--get', 'remote.origin.url']);
    const stored = origin.exitCode === 0 ? origin.stdout.toString('utf8').trim() : '';
    if (!stored || (await canonicalUrl(stored)) !== (await canonicalUrl(this.url))) {
      throw new GitRepoError(
        'GIT_ORIGIN_MISMATCH',
        `${this.dir} is a clone of ${stored || '(no origin)'}, not of ${this.url}: start rotor with --repo ${stored || '...'}, or move ${this.dir} away so that rotor clones ${this.url} afresh (push or save any audit commits in it first)`,
      );
    }
    await this.writeAttributes();
    await this.recover();
    await this.ensureBranch();
    const n = await this.countUnpushed();
    if (n > 0) this.warn('GIT_UNPUSHED', `${plural(n, 'audit commit')} from before are not on ${this.where} yet; the next push sends them`);
    const { tracked } = await this.changes();
    if (tracked.length > 0) {
      const audit = tracked.filter((p) => this.isAuditPath(p));
      const other = tracked.filter((p) => !this.isAuditPath(p));
      if (audit.length) this.warn('GIT_UNCOMMITTED_AUDIT', `uncommitted changes in the audit directory: ${audit.join(', ')}`);
      if (other.length) this.warn('GIT_WORKTREE_DIRTY', `files outside ${this.auditDir}/ were changed in the daemon's clone (${other.join(', ')}); a sync that brings remote changes refuses until they are restored (git -C ${this.dir} checkout -- .)`);
    }
  }

  /** Leftovers of a crash: a rebase in progress (aborted: the branch is as it was), a stale index lock. */
  private async recover(): Promise<void> {
    for (const name of ['rebase-merge', 'rebase-apply']) {
      const p = await this.text(['rev-parse', '--git-path', name]);
      if (existsSync(path.resolve(this.dir, p))) {
        await this.must(['rebase', '--abort']);
        this.warn('GIT_REBASE_ABORTED', 'an interrupted rebase was aborted; the audit commits are as they were before it');
      }
    }
    await this.removeStaleLock();
  }

  /** .git/index.lock, resolved once. */
  private indexLock: string | undefined;

  /**
   * Removes index.lock if it is there. Every git command of the daemon in its clone runs under the
   * clone's lock (RepoLock), so one found while holding it was left by a git that was killed (its time
   * limit, a signal) or crashed, and would fail every later commit until a restart.
   */
  private async removeStaleLock(): Promise<void> {
    this.indexLock ??= path.resolve(this.dir, await this.text(['rev-parse', '--git-path', 'index.lock']));
    if (!existsSync(this.indexLock)) return;
    await unlink(this.indexLock).catch(() => undefined);
    this.warn('GIT_STALE_LOCK', 'removed a stale index.lock left by an interrupted git command');
  }

  private async ensureBranch(): Promise<void> {
    const head = await this.run(['symbolic-ref', '--quiet', 'HEAD']);
    if (!(await this.rev(this.remoteRef))) await this.fetchLocked();
    if (head.exitCode === 0 && head.stdout.toString('utf8').trim() === this.localRef) return;
    await this.requireClean();
    if (await this.rev(this.localRef)) await this.must(['checkout', '--quiet', this.branch]);
    else await this.must(['checkout', '--quiet', '--no-track', '-b', this.branch, this.remoteRef]);
    this.warn('GIT_BRANCH_SWITCHED', `the clone was not on branch ${this.branch}; switched to it`);
  }

  // ---- state ------------------------------------------------------------------------------------

  /** Tracked files with changes (staged or not), relative to the top. */
  private async changes(): Promise<{ tracked: string[] }> {
    const out = await this.must(['status', '--porcelain=v1', '-z', '--untracked-files=no', '--no-renames']);
    return { tracked: nul(out).map((rec) => rec.slice(3)) };
  }

  /**
   * Refuses uncommitted changes to tracked files: outside the audit directory always (rotor never
   * writes there), inside it too unless `allowAudit` (when the audit files are not touched).
   */
  private async requireClean(allowAudit = false): Promise<void> {
    const { tracked } = await this.changes();
    if (tracked.length === 0 || (allowAudit && tracked.every((p) => this.isAuditPath(p)))) return;
    const audit = tracked.filter((p) => this.isAuditPath(p));
    const other = tracked.filter((p) => !this.isAuditPath(p));
    throw new GitRepoError(
      'GIT_WORKTREE_DIRTY',
      other.length
        ? `files outside ${this.auditDir}/ were changed in the daemon's clone ${this.dir} (${other.join(', ')}); rotor only writes under ${this.auditDir}/ and takes everything else from ${this.where}: restore them (git -C ${this.dir} checkout -- ${other.join(' ')})`
        : `uncommitted audit changes (${audit.join(', ')}) block the update from ${this.where}: commit them (commitAudit) first`,
      { details: { files: tracked } },
    );
  }

  private async countUnpushed(): Promise<number> {
    if (!(await this.rev(this.remoteRef))) return Number(await this.text(['rev-list', '--count', this.localRef]));
    return Number(await this.text(['rev-list', '--count', `${this.remoteRef}..${this.localRef}`]));
  }

  /**
   * The local commits not on origin/BRANCH, oldest first. Each must be a non-merge commit that
   * changes only the audit directory; anything else means someone committed in the daemon's clone,
   * or origin/BRANCH was rewritten, and rotor must neither push nor rebase it.
   */
  private async ownCommits(): Promise<OwnCommit[]> {
    const out = await this.must([
      'log', '--no-renames', '--name-only', '--date=raw', '--format=%x01%H %P%x02%an%x02%ae%x02%ad%x02%B', '-z', '--reverse', `${this.remoteRef}..${this.localRef}`,
    ]);
    const own: OwnCommit[] = [];
    const bad: string[] = [];
    let current: (OwnCommit & { merge: boolean; outside: boolean }) | null = null;
    const close = () => {
      if (current && (current.merge || current.outside)) bad.push(current.id);
    };
    for (const tok of nul(out)) {
      if (tok.startsWith('\x01')) {
        close();
        const [ids = '', authorName = '', authorEmail = '', authorDate = '', ...msg] = tok.slice(1).split('\x02');
        const [id = '', ...parents] = ids.trim().split(' ');
        current = { id, parent: parents[0] ?? '', authorName, authorEmail, authorDate, message: msg.join('\x02'), merge: parents.length !== 1, outside: false };
        own.push(current);
      } else if (current) {
        const file = tok.replace(/^\n/, '');
        if (file && !this.isAuditPath(file)) current.outside = true;
      }
    }
    close();
    if (bad.length > 0) {
      throw new GitRepoError(
        'GIT_LOCAL_DIVERGED',
        `branch ${this.branch} in ${this.dir} has ${plural(bad.length, 'commit')} not on ${this.where} that ${bad.length === 1 ? 'is not an audit commit' : 'are not audit commits'} (a merge, or changes outside ${this.auditDir}/): ${bad.slice(0, 5).map((c) => c.slice(0, 12)).join(', ')}. ` +
          `rotor commits only under ${this.auditDir}/, so someone committed in its clone or ${this.where} was rewritten. ` +
          `Inspect with git -C ${this.dir} log ${this.where}..${this.branch}; then remove those commits (keep rotor's audit commits), or move the clone away so that rotor clones afresh`,
        { details: { commits: bad } },
      );
    }
    return own;
  }

  /**
   * Re-creates the audit commits on top of `onto` without touching the work tree: each new commit is
   * `onto`'s tree with the audit directory of the original commit, with the original author and
   * message. One `git fast-import`, whatever the number of commits. The caller has checked that the
   * audit directory of `onto` is that of the first commit's parent, which makes the result the
   * same as a rebase's. Returns the new commits, oldest first, or null when git could not do it.
   */
  private async replay(onto: string, own: readonly OwnCommit[], trees: ReadonlyArray<string | null>): Promise<string[] | null> {
    const now = `${Math.floor(Date.now() / 1000)} +0000`;
    const parts: Buffer[] = [Buffer.from('feature done\n')];
    own.forEach((c, i) => {
      const msg = Buffer.from(c.message, 'utf8');
      const tree = trees[i];
      parts.push(
        Buffer.from(
          `commit ${REPLAY_REF}\nmark :${i + 1}\nauthor ${c.authorName} <${c.authorEmail}> ${c.authorDate}\ncommitter ${this.author.name} <${this.author.email}> ${now}\ndata ${msg.length}\n`,
        ),
        msg,
        Buffer.from(`\n${i === 0 ? `from ${onto}\n` : ''}${tree ? `M 040000 ${tree} ${this.auditDir}` : `D ${this.auditDir}`}\n\n`),
      );
    });
    parts.push(Buffer.from(`${own.map((_, i) => `get-mark :${i + 1}\n`).join('')}done\n`));
    // --force: the temporary ref of an earlier attempt is overwritten (a local ref, never a push)
    const r = await this.run(['fast-import', '--quiet', '--force', '--done'], { input: Buffer.concat(parts) });
    if (r.exitCode !== 0) {
      this.warn('GIT_REPLAY_FAILED', `could not re-create the audit commits with fast-import (a rebase does it instead): ${GitRepo.fail(['fast-import'], r).message}`);
      return null;
    }
    const ids = r.stdout.toString('utf8').split('\n').filter(Boolean);
    return ids.length === own.length && ids.every((id) => /^[0-9a-f]{40,64}$/.test(id)) ? ids : null;
  }

  /** Whether origin/BRANCH has the same audit directory as `commit`. */
  private async auditUnchanged(commit: string): Promise<boolean> {
    const r = await this.run(['diff', '--quiet', '--no-ext-diff', commit, this.remoteRef, '--', this.auditDir]);
    return r.exitCode === 0;
  }

  /**
   * How many of the audit commits `own` (oldest first, `trees` their audit trees) origin/BRANCH holds
   * already: 0 when its audit directory is that of the first one's parent (the usual case: nobody else
   * touched it), k when it is that of own[k-1] (the first k were pushed as re-created commits, by a push
   * that landed although git reported a failure), -1 when it is neither (someone else changed it).
   */
  private async onRemoteAlready(own: readonly OwnCommit[], trees: ReadonlyArray<string | null>): Promise<number> {
    if (await this.auditUnchanged(own[0]!.parent)) return 0;
    const r = await this.run(['rev-parse', '--verify', '--quiet', `${this.remoteRef}:${this.auditDir}`]);
    const k = r.exitCode === 0 ? trees.lastIndexOf(r.stdout.toString('utf8').trim()) : -1;
    return k < 0 ? -1 : k + 1;
  }

  /** The audit directory's tree in each commit (null where it has none), for replay(). */
  private async auditTrees(own: readonly OwnCommit[]): Promise<Array<string | null> | null> {
    const check = await this.run(['cat-file', '--batch-check=%(objectname) %(objecttype)'], { input: own.map((c) => `${c.id}:${this.auditDir}\n`).join('') });
    if (check.exitCode !== 0) return null;
    return check.stdout.toString('utf8').split('\n').slice(0, own.length).map((l) => (l.endsWith(' tree') ? l.split(' ')[0]! : null));
  }

  // ---- fetch and sync ---------------------------------------------------------------------------

  /** The remote head that remote changes were last looked at from (for the warnings). */
  private seenRemote: string | null = null;

  /**
   * Fetches BRANCH into origin/BRANCH. Only the fetch itself: what changed is looked at later
   * (noticeRemoteChanges), so that a push retry keeps its fetch-rebase-push window short.
   */
  private async fetchLocked(timeoutMs?: number): Promise<void> {
    this.seenRemote ??= await this.rev(this.remoteRef);
    // '+' on the remote-tracking side only: a rewritten remote branch must be seen (and is then
    // refused by ownCommits), not hidden. Pushes never use '+'.
    const args = ['fetch', '--quiet', '--no-tags', '--no-write-fetch-head', '--no-recurse-submodules', 'origin', `+${this.localRef}:${this.remoteRef}`];
    const r = await this.run(args, { network: true, ...(timeoutMs ? { timeoutMs } : {}) });
    if (r.exitCode !== 0) {
      const missing = /couldn't find remote ref/i.test(r.stderr);
      throw new GitRepoError(
        missing ? 'GIT_BRANCH_MISSING' : 'GIT_FETCH_FAILED',
        missing ? `${this.url} has no branch "${this.branch}" any more` : `could not fetch ${this.branch} from ${this.url}: ${GitRepo.fail(args, r).message}`,
        { cause: GitRepo.fail(args, r) },
      );
    }
  }

  /** Warns about remote changes since the last look that the audit log's owner should know of. */
  private async noticeRemoteChanges(): Promise<void> {
    const before = this.seenRemote;
    const after = await this.rev(this.remoteRef);
    this.seenRemote = after;
    if (!before || !after || before === after) return;
    if (!(await this.isAncestor(before, after))) {
      this.warn('GIT_REMOTE_REWRITTEN', `${this.where} was rewritten (force-pushed): ${before.slice(0, 12)} is not in its history any more`);
      return;
    }
    const out = await this.text(['log', '--format=%H %ae', `${before}..${after}`, '--', this.auditDir]);
    const foreign = out.split('\n').filter(Boolean).map((l) => l.split(' ')).filter(([, email]) => email !== this.author.email);
    if (foreign.length > 0) {
      this.warn('GIT_AUDIT_CHANGED_REMOTELY', `${plural(foreign.length, 'commit')} on ${this.where} not made by rotor changed ${this.auditDir}/: ${foreign.map(([id]) => id!.slice(0, 12)).join(', ')}`);
    }
  }

  /**
   * Brings the local branch to origin/BRANCH, replaying the local audit commits on top. On a
   * conflict the rebase is aborted: the branch, the index and the files are as before.
   */
  private async integrate(): Promise<number> {
    const counts = await this.text(['rev-list', '--left-right', '--count', `${this.remoteRef}...${this.localRef}`]);
    const [behind, ahead] = counts.split(/\s+/).map(Number);
    if (behind === 0) return 0;
    await this.requireSafeAuditPath(this.remoteRef);
    await this.requireClean(true);
    const own = ahead === 0 ? [] : await this.ownCommits(); // refuses non-audit commits before touching anything
    // The usual case, the remote did not touch the audit directory: re-create the audit commits on
    // it (replay) and move the branch with `reset --keep`, which leaves the audit files alone (their
    // content is the same), uncommitted appends included. A rebase would rewrite them twice (and
    // refuses to run over uncommitted appends). Commits the remote holds already are not re-created.
    if (own.length > 0) {
      const trees = await this.auditTrees(own);
      const landed = trees ? await this.onRemoteAlready(own, trees) : -1;
      const onto = landed < 0 ? null : landed === own.length ? await this.mustRev(this.remoteRef) : (await this.replay(this.remoteRef, own.slice(landed), trees!.slice(landed)))?.at(-1);
      if (onto) {
        const moved = await this.run(['reset', '--quiet', '--keep', onto]);
        await this.run(['update-ref', '-d', REPLAY_REF]);
        if (moved.exitCode === 0) return own.length;
      }
    }
    const local = own.at(-1)?.id ?? null; // the tip (own is linear, oldest first); null: a fast-forward
    const args = own.length === 0 ? ['merge', '--ff-only', '--quiet', '--no-stat', this.remoteRef] : ['rebase', '--quiet', '--no-fork-point', this.remoteRef, this.branch];
    const r = await this.run(args);
    if (r.exitCode === 0) return own.length;
    const cause = GitRepo.fail(args, r);
    const rebaseDir = path.resolve(this.dir, await this.text(['rev-parse', '--git-path', 'rebase-merge']));
    const stopped = own.length > 0 && existsSync(rebaseDir);
    const conflicted = stopped ? nul(await this.must(['diff', '--name-only', '-z', '--diff-filter=U'])) : [];
    if (stopped) await this.must(['rebase', '--abort']);
    const now = await this.mustRev(this.localRef);
    if (local && now !== local) throw new GitRepoError('GIT_FAILED', `${args[0]} failed and ${this.branch} moved from ${local} to ${now}`, { cause });
    if (conflicted.length === 0) {
      await this.requireClean(); // git refuses to rebase or fast-forward over local changes: say which
      throw new GitRepoError('GIT_FAILED', `could not bring ${this.branch} to ${this.where}: ${cause.message}`, { cause, details: { unpushed: own.length } });
    }
    const remote = await this.mustRev(this.remoteRef);
    const base = await this.text(['merge-base', now, remote]);
    const theirs = (await this.text(['log', '-n', '5', '--format=%h %an: %s', `${base}..${remote}`, '--', ...conflicted])).split('\n').filter(Boolean);
    const first = theirs[0]?.split(' ')[0];
    throw new GitRepoError(
      'GIT_AUDIT_CONFLICT',
      `someone changed ${conflicted.join(', ')} on ${this.where} (${theirs.join('; ') || 'unknown commit'}), and rotor's ${plural(own.length, 'audit commit')} not yet pushed no longer apply on top. ` +
        `Nothing was pushed or lost: the commits stay in ${this.dir}. The audit log is append-only and written only by rotor: ` +
        `revert that change on ${this.branch}${first ? ` (git revert ${first})` : ''} and push it; rotor pushes its entries on its next sync.`,
      { cause, details: { files: conflicted, commits: theirs.map((l) => l.split(' ')[0]!), unpushed: own.length } },
    );
  }

  // ---- the public operations --------------------------------------------------------------------

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
      await this.fetchLocked();
      await this.noticeRemoteChanges();
      return this.mustRev(this.remoteRef);
    });
  }

  /** The commit of origin/BRANCH as last fetched or pushed (no network). */
  remoteHead(): Promise<string> {
    return this.lock.run(() => this.mustRev(this.remoteRef));
  }

  /** The commit of the local branch. */
  head(): Promise<string> {
    return this.lock.run(() => this.mustRev(this.localRef));
  }

  /** Local commits not on origin/BRANCH (as last fetched or pushed). */
  unpushed(): Promise<number> {
    return this.lock.run(() => this.countUnpushed());
  }

  /** Fetches, then brings the local branch to origin/BRANCH with the unpushed audit commits on top. */
  sync(): Promise<SyncResult> {
    return this.lock.run(async () => {
      try {
        await this.fetchLocked();
        await this.noticeRemoteChanges();
        const remoteHead = await this.mustRev(this.remoteRef);
        let rebased = 0;
        let held: GitRepoError | undefined;
        try {
          rebased = await this.integrate();
        } catch (e) {
          if (!(e instanceof GitRepoError && e.code === 'GIT_AUDIT_PATH_UNSAFE')) throw e;
          held = e;
        }
        return { head: await this.mustRev(this.localRef), remoteHead, rebased, unpushed: await this.countUnpushed(), ...(held ? { held } : {}) };
      } catch (e) {
        throw this.wrap(e, 'sync');
      }
    });
  }

  private auditPath(p: string): string {
    const rel = path.isAbsolute(p) ? path.relative(this.dir, p) : p;
    const norm = path.posix.normalize(rel.split(path.sep).join('/')).replace(/\/+$/, '');
    if (!norm || norm.startsWith('../') || norm === '..' || path.posix.isAbsolute(norm) || !this.isAuditPath(norm) || norm.split('/').includes('.git')) {
      throw new GitRepoError('GIT_PATH_OUTSIDE_AUDIT', `${p} is outside the audit directory ${this.auditDir}/: rotor commits only audit files`, { details: { files: [p] } });
    }
    return norm;
  }

  /**
   * Stages exactly `paths` (files or directories under the audit directory; additions, changes and
   * deletions) and commits them as the configured author, without hooks or signing. Returns the new
   * commit, or null when those paths have no change. Other staged changes are not committed.
   */
  async commitAudit(paths: readonly string[], message: string): Promise<string | null> {
    if (paths.length === 0) throw new GitRepoError('GIT_BAD_ARGUMENT', 'commitAudit needs at least one path');
    if (!message.trim() || message.length > MAX_MESSAGE || message.includes('\0')) {
      throw new GitRepoError('GIT_BAD_ARGUMENT', 'the commit message must be non-empty text of at most 64 KiB');
    }
    const rels = [...new Set(paths.map((p) => this.auditPath(p)))];
    return this.lock.run(async () => {
      try {
        await this.removeStaleLock();
        // --literal-pathspecs: a file name is a name, never a glob or pathspec magic
        await this.must(['--literal-pathspecs', 'add', '--all', '--force', '--', ...rels]);
        const diff = await this.run(['--literal-pathspecs', 'diff', '--cached', '--quiet', '--no-ext-diff', '--', ...rels]);
        if (diff.exitCode === 0) return null;
        if (diff.exitCode !== 1) throw GitRepo.fail(['diff', '--cached'], diff);
        await this.must(['--literal-pathspecs', 'commit', '--quiet', '--no-verify', '--no-gpg-sign', '--cleanup=strip', '--only', '-m', message, '--', ...rels], { asAuthor: true });
        return await this.mustRev(this.localRef);
      } catch (e) {
        throw this.wrap(e, 'commit');
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
      const outcome: PushOutcome = await this.lock.run(() => this.pushOnce(deadline, refresh));
      if (outcome.done) this.busyRemote = false;
      if (outcome.done) return { pushed: outcome.pushed, head: outcome.head, attempts: outcome.pushed.length ? attempt : attempt - 1 };
      last = outcome;
      if (outcome.kind === 'refused') {
        const n = await this.unpushed();
        throw new GitRepoError(
          'GIT_PUSH_REFUSED',
          `${this.url} refused the push of ${plural(n, 'audit commit')} to ${this.branch}: ${outcome.reason}${remoteSays(outcome.cause.stderr)}. ` +
            `Let rotor push to ${this.branch} (branch protection, hooks, permissions) or set audit.push: false; the commits stay in ${this.dir} and are pushed on a later push`,
          { cause: outcome.cause, details: { attempts: attempt, unpushed: n } },
        );
      }
      if (attempt >= this.retry.attempts) break;
      const delay = backoffDelay(attempt, this.retry.baseMs, this.retry.maxDelayMs);
      if (Date.now() + delay >= deadline) break;
      this.warn('GIT_PUSH_RETRY', `push to ${this.where} ${outcome.kind === 'behind' ? 'rejected because the remote moved on' : `failed (${outcome.reason})`}; fetch, rebase and retry ${attempt + 1} of ${this.retry.attempts} in ${delay} ms`);
      await sleep(delay, undefined, opts.signal ? { signal: opts.signal } : undefined);
    }
    if (last?.kind === 'behind') {
      this.busyRemote = true;
      // leave the clone rebased onto what the remote has now (a conflict is the better error)
      await this.lock.run(() => this.refresh(Math.max(1000, deadline - Date.now()))).catch((e: unknown) => {
        if (e instanceof GitRepoError && e.code !== 'GIT_FETCH_FAILED') throw e;
      });
    }
    const n = await this.unpushed();
    throw new GitRepoError(
      'GIT_PUSH_GAVE_UP',
      `gave up pushing ${plural(n, 'audit commit')} to ${this.where} after ${plural(attempt, 'attempt')} in ${((Date.now() - started) / 1000).toFixed(1)} s` +
        `${last ? ` (last: ${last.reason})` : ''}; the commits stay in ${this.dir} and are pushed on a later push`,
      { cause: last?.cause, details: { attempts: attempt, unpushed: n } },
    );
  }

  /** Fetch, then rebase the audit commits onto origin/BRANCH. */
  private async refresh(timeoutMs: number): Promise<void> {
    await this.fetchLocked(Math.min(this.networkTimeoutMs, timeoutMs));
    await this.integrate(); // a conflict or non-audit commits end the push here
  }

  private async pushOnce(deadline: number, refresh: boolean): Promise<PushOutcome> {
    const timeoutMs = () => Math.max(1000, Math.min(this.networkTimeoutMs, deadline - Date.now()));
    try {
      if (refresh) return await this.refreshAndPush(timeoutMs);
      const own = await this.ownCommits();
      const tip = own.at(-1)?.id;
      if (!tip) return { done: true, pushed: [], head: await this.mustRev(this.remoteRef) };
      return await this.pushTip(tip, own.map((c) => c.id), null, timeoutMs());
    } catch (e) {
      throw this.wrap(e, 'push');
    }
  }

  /**
   * A retry after the remote moved on: fetch, put the audit commits on the new remote head, push.
   * Everything that does not depend on the fetch is done before it, and when the remote did not
   * touch the audit directory the commits are re-created with replay() rather than a rebase: a
   * constant number of git calls between the fetch and the push (a rebase costs one pick per
   * unpushed commit, and the longer that window, the likelier another writer wins it again). The
   * local branch then moves only once the push has landed.
   */
  private async refreshAndPush(timeoutMs: () => number): Promise<PushOutcome> {
    const own = await this.ownCommits(); // refuses non-audit commits
    const first = own[0];
    const tip = own.at(-1)?.id;
    if (!first || !tip) {
      await this.refresh(timeoutMs()).catch(() => {});
      return { done: true, pushed: [], head: await this.mustRev(this.remoteRef) };
    }
    await this.requireClean(true); // the branch moves after the push: no local change outside the audit directory in the way
    const trees = await this.auditTrees(own);
    try {
      await this.fetchLocked(timeoutMs());
    } catch (e) {
      if (e instanceof GitRepoError && e.code === 'GIT_FETCH_FAILED') return { done: false, kind: 'transient', cause: e.cause as GitError, reason: 'fetch failed' };
      throw e;
    }
    await this.requireSafeAuditPath(this.remoteRef);
    // the remote-tracking ref by name: one git call less between the fetch and the push (when the
    // remote did not move at all, replay() re-creates the same trees: harmless). Commits that an
    // earlier push landed (re-created, although git reported a failure) are not sent again.
    const landed = trees ? await this.onRemoteAlready(own, trees) : -1;
    if (landed === own.length) {
      const head = await this.mustRev(this.remoteRef);
      await this.moveBranch(tip, head);
      return { done: true, pushed: [], head };
    }
    if (trees && landed >= 0) {
      const replayed = await this.replay(this.remoteRef, own.slice(landed), trees.slice(landed));
      if (replayed) return this.pushTip(replayed.at(-1)!, replayed, tip, timeoutMs());
    }
    await this.integrate(); // the remote changed the audit directory: a rebase (or GIT_AUDIT_CONFLICT)
    const rebased = await this.ownCommits();
    if (rebased.length === 0) return { done: true, pushed: [], head: await this.mustRev(this.remoteRef) };
    return this.pushTip(rebased.at(-1)!.id, rebased.map((c) => c.id), null, timeoutMs());
  }

  /**
   * Pushes commit `tip` to BRANCH. `replacing`: the local tip that `tip` re-creates (replay());
   * the local branch moves to `tip` once the push landed.
   */
  private async pushTip(tip: string, ids: string[], replacing: string | null, timeoutMs: number): Promise<PushOutcome> {
    // an exact commit to an exact branch: no '+', no --force, no configured push refspecs
    const args = ['push', '--porcelain', '--no-verify', 'origin', `${tip}:${this.localRef}`];
    const r = await this.run(args, { network: true, timeoutMs });
    await this.noticeRemoteChanges().catch(() => {}); // deferred from the fetch, out of the race window
    if (r.exitCode !== 0) {
      if (replacing) await this.run(['update-ref', '-d', REPLAY_REF]);
      return { done: false, ...classifyPush(r), cause: GitRepo.fail(args, r) };
    }
    if (replacing) await this.moveBranch(replacing, tip);
    await this.must(['update-ref', '-m', 'rotor: pushed', this.remoteRef, tip]);
    this.seenRemote = tip;
    if (replacing) await this.run(['update-ref', '-d', REPLAY_REF]);
    return { done: true, pushed: ids, head: tip };
  }

  /** Moves the local branch from `from` to the pushed `to`, with the index and the files. */
  private async moveBranch(from: string, to: string): Promise<void> {
    const r = await this.run(['reset', '--quiet', '--keep', to]);
    if (r.exitCode === 0) return;
    // The push landed: the branch must match it whatever happens (or the next push would send the
    // entries a second time). The files lag behind until a person resets them.
    await this.must(['update-ref', '-m', 'rotor: pushed', this.localRef, to, from]);
    this.warn(
      'GIT_WORKTREE_STALE',
      `pushed, but the files of ${this.dir} could not be updated to ${to.slice(0, 12)} (${GitRepo.fail(['reset'], r).message}); remove what is in the way, then git -C ${this.dir} reset --hard ${this.branch}`,
    );
  }

  private wrap(e: unknown, what: 'sync' | 'commit' | 'push'): Error {
    if (e instanceof GitRepoError) return e;
    if (e instanceof GitError) {
      return new GitRepoError(what === 'commit' ? 'GIT_COMMIT_FAILED' : 'GIT_FAILED', `${what} in ${this.dir} failed: ${e.message}`, { cause: e });
    }
    return e instanceof Error ? e : new Error(String(e));
  }
}

function remoteSays(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.startsWith('remote:')).map((l) => l.slice(7).trim()).filter(Boolean);
  return lines.length ? ` (the remote says: ${lines.slice(0, 3).join(' / ').slice(0, 300)})` : '';
}

/**
 * Opens the daemon's clone of `url` in `dir`, cloning it first when `dir` is missing or empty. An
 * existing clone must have `url` as its origin. Does not fetch unless the clone lacks origin/BRANCH.
 */
export async function openRepo(opts: OpenRepoOptions): Promise<GitRepo> {
  const branch = checkBranch(opts.branch);
  const auditDir = normalizeAuditDir(opts.auditDir ?? 'audit');
  const author = checkAuthor(opts.author ?? DEFAULT_AUTHOR);
  if (!opts.url || opts.url.startsWith('-')) throw new GitRepoError('GIT_BAD_ARGUMENT', 'the repository URL must not be empty or start with "-"');
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...opts.retry };
  if (!(retry.attempts >= 1) || !(retry.baseMs >= 0) || !(retry.maxDelayMs >= 0) || !(retry.totalMs > 0)) {
    throw new GitRepoError('GIT_BAD_ARGUMENT', 'retry: attempts >= 1, delays >= 0 and totalMs > 0');
  }
  const dir = path.resolve(opts.dir);
  const url = isLocalPath(opts.url) ? path.resolve(opts.url) : opts.url;
  const repo = new GitRepo({ dir, url, branch, auditDir, author, ...(opts.onWarning ? { onWarning: opts.onWarning } : {}), retry, networkTimeoutMs: opts.networkTimeoutMs ?? 120_000 });
  let entries: string[] | null;
  try {
    entries = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    entries = null;
  }
  return GitRepo.open(repo, entries);
}
