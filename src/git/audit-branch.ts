/**
 * The audit log on a branch of its own (the Config's `audit.branch`). The daemon keeps a second clone
 * that follows that branch and commits and pushes only there (the same GitRepo, fast-forward only),
 * and never writes to the declarations' branch.
 *
 * When the remote has no such branch, the daemon creates it: one root commit whose tree holds only
 * the audit directory as the declarations' branch has it (the log so far, so that its hash chain goes
 * on), pushed as a new ref, never over an existing one. Two daemons racing to create it: the second
 * push is refused because the ref exists, and that daemon clones what the first made.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { GitRepoError } from './errors.js';
import type { GitIdentity } from './run.js';
import { runGit } from './run.js';
import { type CommitSigner, signCommits } from './sign-commits.js';

export interface AuditBranchOptions {
  /** The remote (URL or absolute path). */
  readonly url: string;
  /** The declarations' branch, where the log so far is. */
  readonly from: string;
  /** The audit log's branch. */
  readonly branch: string;
  /** The audit directory, relative to the top of the tree. */
  readonly auditDir: string;
  /** Where a scratch repository may be made (the daemon's data directory). */
  readonly scratch: string;
  readonly author: GitIdentity;
  readonly networkTimeoutMs: number;
  /** audit.sign: the branch's first commit is signed with it. */
  readonly signer?: CommitSigner;
}

async function must(
  cwd: string,
  args: string[],
  o: { network?: boolean; input?: string; identity?: GitIdentity; timeoutMs: number },
) {
  const r = await runGit(cwd, args, {
    timeoutMs: o.timeoutMs,
    ...(o.input !== undefined ? { input: o.input } : {}),
    ...(o.identity ? { identity: o.identity, asAuthor: true } : {}),
  });
  if (r.exitCode !== 0)
    throw new GitRepoError('GIT_AUDIT_BRANCH_FAILED', `git ${args[0]} failed: ${r.stderr.trim().slice(0, 500)}`);
  return r.stdout.toString('utf8').trim();
}

/** Whether the remote has `branch`. */
export async function remoteHasBranch(
  o: Pick<AuditBranchOptions, 'url' | 'branch' | 'scratch' | 'networkTimeoutMs'>,
): Promise<boolean> {
  const out = await must(o.scratch, ['ls-remote', '--heads', '--', o.url, `refs/heads/${o.branch}`], {
    network: true,
    timeoutMs: o.networkTimeoutMs,
  });
  return out.split('\n').some((l) => l.endsWith(`\trefs/heads/${o.branch}`));
}

/**
 * Makes sure the remote has the audit branch; creates it from the declarations' branch's audit
 * directory when it has not. Returns whether it was created (by this call).
 */
export async function ensureAuditBranch(o: AuditBranchOptions): Promise<boolean> {
  await mkdir(o.scratch, { recursive: true, mode: 0o700 });
  if (await remoteHasBranch(o)) return false;
  const tmp = path.join(o.scratch, `.audit-branch-${randomBytes(6).toString('hex')}`);
  const t = { timeoutMs: o.networkTimeoutMs };
  try {
    await must(o.scratch, ['init', '--quiet', '--bare', '--template=', tmp], t);
    await must(tmp, ['fetch', '--quiet', '--no-tags', '--depth=1', '--', o.url, `+refs/heads/${o.from}:refs/seed`], {
      ...t,
      network: true,
    });
    const seed = await must(tmp, ['rev-parse', '--verify', 'refs/seed^{commit}'], t);
    // The audit directory's tree as the declarations' branch has it (none: an empty log).
    // (`REV:PATH` takes everything after the colon as the path: the type is asked for apart.)
    const dirTree = await runGit(tmp, ['rev-parse', '--verify', '--quiet', `refs/seed:${o.auditDir}`]);
    const id = dirTree.stdout.toString('utf8').trim();
    const isTree =
      dirTree.exitCode === 0 && (await runGit(tmp, ['cat-file', '-t', id])).stdout.toString('utf8').trim() === 'tree';
    let tree = await must(tmp, ['mktree'], { ...t, input: '' });
    if (isTree) {
      tree = id;
      // Nest it under each segment of audit.dir, innermost first.
      for (const segment of o.auditDir.split('/').reverse())
        tree = await must(tmp, ['mktree'], { ...t, input: `040000 tree ${tree}\t${segment}\n` });
    }
    const message = `rotor: the audit log's own branch (audit.branch), its entries so far from ${o.from} ${seed}`;
    const unsigned = await must(tmp, ['commit-tree', tree, '-m', message], { ...t, identity: o.author });
    const commit = o.signer
      ? (
          await signCommits(tmp, [unsigned], o.signer).catch((e: unknown) => {
            throw new GitRepoError(
              'GIT_AUDIT_BRANCH_FAILED',
              `could not sign the audit branch's first commit: ${(e as Error).message}`,
              { cause: e },
            );
          })
        )[0]!
      : unsigned;
    // A new ref only: never over a branch someone made meanwhile (then that one is used).
    const r = await runGit(tmp, ['push', '--porcelain', '--', o.url, `${commit}:refs/heads/${o.branch}`], t);
    if (r.exitCode !== 0) {
      if (await remoteHasBranch(o)) return false;
      throw new GitRepoError(
        'GIT_AUDIT_BRANCH_FAILED',
        `could not create the audit branch "${o.branch}" on the remote: ${r.stderr.trim().slice(0, 500)}. Let rotor create branches there, or create it yourself`,
      );
    }
    return true;
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}
