/**
 * What the daemon's clone reports: GitRepoError with a stable `code` (when git failed, `cause` is a
 * GitError holding git's stderr, URL credentials removed), and warnings that do not stop it.
 */
import { BACKOFF, NEVER, type Retry, RotorError } from '../errors.js';
import { redactUrls } from './run.js';

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
  | 'GIT_AUDIT_BRANCH_FAILED' // the audit log's branch (audit.branch) could not be looked up or created
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

/**
 * Whether trying again may help: a remote that could not be reached (or did not take a push in the
 * retries allowed) is retried with backoff; the repository's content or the clone's state (a
 * conflict, a link on the audit path, foreign commits, a refusal by the remote) needs a person, and so
 * does a local git failure (GIT_FAILED, GIT_COMMIT_FAILED). A push that fails to fetch retries; any
 * other failure while it brings the clone up to date ends it (GitRepo.push reads this).
 */
const RETRY: Readonly<Record<GitRepoErrorCode, Retry>> = {
  GIT_BAD_ARGUMENT: NEVER,
  GIT_NOT_A_CLONE: NEVER,
  GIT_ORIGIN_MISMATCH: NEVER,
  GIT_CLONE_FAILED: BACKOFF,
  GIT_BRANCH_MISSING: NEVER,
  GIT_AUDIT_BRANCH_FAILED: BACKOFF,
  GIT_FETCH_FAILED: BACKOFF,
  GIT_WORKTREE_DIRTY: NEVER,
  GIT_AUDIT_CONFLICT: NEVER,
  GIT_AUDIT_PATH_UNSAFE: NEVER,
  GIT_LOCAL_DIVERGED: NEVER,
  GIT_PATH_OUTSIDE_AUDIT: NEVER,
  GIT_COMMIT_FAILED: NEVER,
  GIT_PUSH_REFUSED: NEVER,
  GIT_PUSH_GAVE_UP: BACKOFF,
  GIT_FAILED: NEVER,
};

export class GitRepoError extends RotorError {
  declare readonly code: GitRepoErrorCode;
  constructor(
    code: GitRepoErrorCode,
    message: string,
    options: { cause?: unknown; details?: GitRepoErrorDetails } = {},
  ) {
    super(code, redactUrls(message), { cause: options.cause, retry: RETRY[code] });
    this.details = options.details ?? {};
  }
  readonly details: GitRepoErrorDetails;
}

export interface GitWarning {
  code: string;
  message: string;
}

/** "1 commit", "2 commits". */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
