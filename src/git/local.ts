/**
 * The daemon's clone on disk as the other parts of src/git/ use it: where it is and what it tracks,
 * git run in it (through src/git/run.ts, with the clone's identity and time and output limits), its
 * refs, and the checks of its state (uncommitted changes, the local audit commits, a safe audit path).
 * No network call and no change of the branch here: those are clone.ts, sync.ts and push.ts.
 */
import { unsafeAuditPath } from '../model/audit-path.js';
import { GitRepoError, type GitWarning, plural } from './errors.js';
import { GitError, type GitResult, LOCAL_TIMEOUT_MS, redactUrls, runGit } from './run.js';
import { type CommitSigner, signCommits } from './sign-commits.js';
import { GitTreeSource } from './tree.js';

const MAX_OUTPUT = 64 * 1024 * 1024;

/** A local audit commit not yet on the remote. */
export interface OwnCommit {
  id: string;
  parent: string;
  authorName: string;
  authorEmail: string;
  /** "<unix seconds> <+hhmm>" */
  authorDate: string;
  message: string;
}

/** The records of git's -z output. */
export function nul(out: Buffer): string[] {
  return out
    .toString('utf8')
    .split('\0')
    .filter((s) => s.length > 0);
}

/** The GitError of a git call that failed. */
export function gitFailure(args: readonly string[], r: GitResult): GitError {
  return new GitError(args, r.exitCode, r.stderr, r.killed);
}

export interface LocalCloneOptions {
  dir: string;
  url: string;
  branch: string;
  auditDir: string;
  author: { name: string; email: string };
  onWarning?: (w: GitWarning) => void;
  networkTimeoutMs: number;
  /** The signer of the commits this clone makes, while they are to be signed (audit.sign). */
  signer?: () => CommitSigner | undefined;
}

export class LocalClone {
  readonly dir: string;
  readonly url: string;
  readonly branch: string;
  readonly auditDir: string;
  readonly author: { readonly name: string; readonly email: string };
  readonly networkTimeoutMs: number;
  private readonly warnFn: (w: GitWarning) => void;
  private readonly signerFn: () => CommitSigner | undefined;
  /** The remote head that remote changes were last looked at from (for the warnings; sync.ts). */
  seenRemote: string | null = null;
  /** .git/index.lock, resolved once (clone.ts removeStaleLock). */
  indexLock: string | undefined;

  constructor(o: LocalCloneOptions) {
    this.dir = o.dir;
    this.url = o.url;
    this.branch = o.branch;
    this.auditDir = o.auditDir;
    this.author = Object.freeze({ ...o.author });
    this.warnFn = o.onWarning ?? (() => {});
    this.networkTimeoutMs = o.networkTimeoutMs;
    this.signerFn = o.signer ?? (() => undefined);
  }

  get localRef(): string {
    return `refs/heads/${this.branch}`;
  }

  get remoteRef(): string {
    return `refs/remotes/origin/${this.branch}`;
  }

  get where(): string {
    return `origin/${this.branch}`;
  }

  warn(code: string, message: string): void {
    try {
      this.warnFn({ code, message: redactUrls(message) });
    } catch {
      // a failing listener must not break git operations
    }
  }

  run(
    args: readonly string[],
    o: { network?: boolean; timeoutMs?: number; asAuthor?: boolean; cwd?: string; input?: string | Buffer } = {},
  ): Promise<GitResult> {
    return runGit(o.cwd ?? this.dir, args, {
      identity: this.author,
      asAuthor: o.asAuthor ?? false,
      timeoutMs: o.timeoutMs ?? (o.network ? this.networkTimeoutMs : LOCAL_TIMEOUT_MS),
      maxBuffer: MAX_OUTPUT,
      ...(o.input !== undefined ? { input: o.input } : {}),
    });
  }

  /** Runs git; throws GitError unless it exits 0. */
  async must(
    args: readonly string[],
    o: { network?: boolean; timeoutMs?: number; asAuthor?: boolean; cwd?: string } = {},
  ): Promise<Buffer> {
    const r = await this.run(args, o);
    if (r.exitCode !== 0) throw gitFailure(args, r);
    return r.stdout;
  }

  async text(args: readonly string[]): Promise<string> {
    return (await this.must(args)).toString('utf8').trim();
  }

  /** The commit a ref points to, or null when it does not exist. */
  async rev(ref: string): Promise<string | null> {
    const r = await this.run(['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`]);
    if (r.exitCode === 0) return r.stdout.toString('utf8').trim();
    if (r.exitCode === 1) return null;
    throw gitFailure(['rev-parse', ref], r);
  }

  async mustRev(ref: string): Promise<string> {
    const id = await this.rev(ref);
    if (!id) throw new GitRepoError('GIT_FAILED', `${ref} is missing in ${this.dir}`);
    return id;
  }

  async isAncestor(a: string, b: string): Promise<boolean> {
    const r = await this.run(['merge-base', '--is-ancestor', a, b]);
    if (r.exitCode === 0) return true;
    if (r.exitCode === 1) return false;
    throw gitFailure(['merge-base', '--is-ancestor'], r);
  }

  /** Whether the commits made now are signed (audit.sign). */
  get signing(): boolean {
    return this.signerFn() !== undefined;
  }

  /**
   * `ids` (commits, oldest first, each the parent of the next) signed while audit.sign is on
   * (signCommits; with `onlyUnsigned`, signed ones are kept), else as they are. Moves no ref.
   */
  async sign(ids: readonly string[], onlyUnsigned = false): Promise<string[]> {
    const signer = this.signerFn();
    return signer && ids.length > 0 ? signCommits(this.dir, ids, signer, { onlyUnsigned }) : [...ids];
  }

  /**
   * Signs the local branch's unpushed commits `ids` (its tip last) that are not signed yet, while
   * audit.sign is on, and moves the branch to the signed tip (the same trees: the index and the files
   * stay as they are). Returns the commits now on the branch.
   */
  async signBranch(ids: readonly string[]): Promise<string[]> {
    const signed = await this.sign(ids, true);
    const [from, to] = [ids.at(-1), signed.at(-1)];
    if (from && to && from !== to) await this.must(['update-ref', '-m', 'rotor: signed', this.localRef, to, from]);
    return signed;
  }

  isAuditPath(p: string): boolean {
    return p === this.auditDir || p.startsWith(`${this.auditDir}/`);
  }

  /**
   * Refuses (GIT_AUDIT_PATH_UNSAFE) a commit in which the audit directory, a parent of it or an entry
   * in it is a symbolic link, a file or a submodule: the clone never checks such a tree out, so the
   * daemon's audit writes stay in plain directories (src/model/audit-path.ts says the same of a commit
   * to `rotor validate` and `rotor plan`, and the daemon records it as config-rejected).
   */
  async requireSafeAuditPath(commit: string): Promise<void> {
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

  /** Tracked files with changes (staged or not), relative to the top. */
  async changes(): Promise<{ tracked: string[] }> {
    const out = await this.must(['status', '--porcelain=v1', '-z', '--untracked-files=no', '--no-renames']);
    return { tracked: nul(out).map((rec) => rec.slice(3)) };
  }

  /**
   * Refuses uncommitted changes to tracked files: outside the audit directory always (rotor never
   * writes there), inside it too unless `allowAudit` (when the audit files are not touched).
   */
  async requireClean(allowAudit = false): Promise<void> {
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

  async countUnpushed(): Promise<number> {
    if (!(await this.rev(this.remoteRef))) return Number(await this.text(['rev-list', '--count', this.localRef]));
    return Number(await this.text(['rev-list', '--count', `${this.remoteRef}..${this.localRef}`]));
  }

  /**
   * The local commits not on origin/BRANCH, oldest first. Each must be a non-merge commit that
   * changes only the audit directory; anything else means someone committed in the daemon's clone,
   * or origin/BRANCH was rewritten, and rotor must neither push nor rebase it.
   */
  async ownCommits(): Promise<OwnCommit[]> {
    const out = await this.must([
      'log',
      '--no-renames',
      '--name-only',
      '--date=raw',
      '--format=%x01%H %P%x02%an%x02%ae%x02%ad%x02%B',
      '-z',
      '--reverse',
      `${this.remoteRef}..${this.localRef}`,
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
        current = {
          id,
          parent: parents[0] ?? '',
          authorName,
          authorEmail,
          authorDate,
          message: msg.join('\x02'),
          merge: parents.length !== 1,
          outside: false,
        };
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
        `branch ${this.branch} in ${this.dir} has ${plural(bad.length, 'commit')} not on ${this.where} that ${bad.length === 1 ? 'is not an audit commit' : 'are not audit commits'} (a merge, or changes outside ${this.auditDir}/): ${bad
          .slice(0, 5)
          .map((c) => c.slice(0, 12))
          .join(', ')}. ` +
          `rotor commits only under ${this.auditDir}/, so someone committed in its clone or ${this.where} was rewritten. ` +
          `Inspect with git -C ${this.dir} log ${this.where}..${this.branch}; then remove those commits (keep rotor's audit commits), or move the clone away so that rotor clones afresh`,
        { details: { commits: bad } },
      );
    }
    return own;
  }

  wrap(e: unknown, what: 'sync' | 'commit' | 'push'): Error {
    if (e instanceof GitRepoError) return e;
    if (e instanceof GitError) {
      return new GitRepoError(
        what === 'commit' ? 'GIT_COMMIT_FAILED' : 'GIT_FAILED',
        `${what} in ${this.dir} failed: ${e.message}`,
        { cause: e },
      );
    }
    return e instanceof Error ? e : new Error(String(e));
  }
}
