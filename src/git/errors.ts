/**
 * What the daemon's clone reports: GitRepoError with a stable `code` (when git failed, `cause` is a
 * GitError holding git's stderr, URL credentials removed), and warnings that do not stop it.
 */
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

/** "1 commit", "2 commits". */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}
