/**
 * Fetching origin/BRANCH and bringing the local branch onto it with the unpushed audit commits on top:
 * replay() when the remote left the audit directory alone, a rebase otherwise (a conflict aborts it:
 * GIT_AUDIT_CONFLICT, the clone as it was). Warnings about what others changed on the remote.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { GitRepoError, plural } from './errors.js';
import { gitFailure, type LocalClone, nul } from './local.js';
import { auditTrees, onRemoteAlready, REPLAY_REF, replay } from './replay.js';

/**
 * Fetches BRANCH into origin/BRANCH. Only the fetch itself: what changed is looked at later
 * (noticeRemoteChanges), so that a push retry keeps its fetch-rebase-push window short.
 */
export async function fetchLocked(c: LocalClone, timeoutMs?: number): Promise<void> {
  c.seenRemote ??= await c.rev(c.remoteRef);
  // '+' on the remote-tracking side only: a rewritten remote branch must be seen (and is then
  // refused by ownCommits), not hidden. Pushes never use '+'.
  const args = [
    'fetch',
    '--quiet',
    '--no-tags',
    '--no-write-fetch-head',
    '--no-recurse-submodules',
    'origin',
    `+${c.localRef}:${c.remoteRef}`,
  ];
  const r = await c.run(args, { network: true, ...(timeoutMs ? { timeoutMs } : {}) });
  if (r.exitCode !== 0) {
    const missing = /couldn't find remote ref/i.test(r.stderr);
    throw new GitRepoError(
      missing ? 'GIT_BRANCH_MISSING' : 'GIT_FETCH_FAILED',
      missing
        ? `${c.url} has no branch "${c.branch}" any more`
        : `could not fetch ${c.branch} from ${c.url}: ${gitFailure(args, r).message}`,
      { cause: gitFailure(args, r) },
    );
  }
}

/** Warns about remote changes since the last look that the audit log's owner should know of. */
export async function noticeRemoteChanges(c: LocalClone): Promise<void> {
  const before = c.seenRemote;
  const after = await c.rev(c.remoteRef);
  c.seenRemote = after;
  if (!before || !after || before === after) return;
  if (!(await c.isAncestor(before, after))) {
    c.warn(
      'GIT_REMOTE_REWRITTEN',
      `${c.where} was rewritten (force-pushed): ${before.slice(0, 12)} is not in its history any more`,
    );
    return;
  }
  const out = await c.text(['log', '--format=%H %ae', `${before}..${after}`, '--', c.auditDir]);
  const foreign = out
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' '))
    .filter(([, email]) => email !== c.author.email);
  if (foreign.length > 0) {
    c.warn(
      'GIT_AUDIT_CHANGED_REMOTELY',
      `${plural(foreign.length, 'commit')} on ${c.where} not made by rotor changed ${c.auditDir}/: ${foreign.map(([id]) => id!.slice(0, 12)).join(', ')}`,
    );
  }
}

/**
 * Brings the local branch to origin/BRANCH, replaying the local audit commits on top. On a
 * conflict the rebase is aborted: the branch, the index and the files are as before.
 */
export async function integrate(c: LocalClone): Promise<number> {
  const counts = await c.text(['rev-list', '--left-right', '--count', `${c.remoteRef}...${c.localRef}`]);
  const [behind, ahead] = counts.split(/\s+/).map(Number);
  if (behind === 0) return 0;
  await c.requireSafeAuditPath(c.remoteRef);
  await c.requireClean(true);
  const own = ahead === 0 ? [] : await c.ownCommits(); // refuses non-audit commits before touching anything
  // The usual case, the remote did not touch the audit directory: re-create the audit commits on
  // it (replay) and move the branch with `reset --keep`, which leaves the audit files alone (their
  // content is the same), uncommitted appends included. A rebase would rewrite them twice (and
  // refuses to run over uncommitted appends). Commits the remote holds already are not re-created.
  if (own.length > 0) {
    const trees = await auditTrees(c, own);
    const landed = trees ? await onRemoteAlready(c, own, trees) : -1;
    const onto =
      landed < 0
        ? null
        : landed === own.length
          ? await c.mustRev(c.remoteRef)
          : (await replay(c, c.remoteRef, own.slice(landed), trees!.slice(landed)))?.at(-1);
    if (onto) {
      const moved = await c.run(['reset', '--quiet', '--keep', onto]);
      await c.run(['update-ref', '-d', REPLAY_REF]);
      if (moved.exitCode === 0) return own.length;
    }
  }
  const local = own.at(-1)?.id ?? null; // the tip (own is linear, oldest first); null: a fast-forward
  const args =
    own.length === 0
      ? ['merge', '--ff-only', '--quiet', '--no-stat', c.remoteRef]
      : ['rebase', '--quiet', '--no-fork-point', c.remoteRef, c.branch];
  const r = await c.run(args);
  if (r.exitCode === 0) {
    // git rebase makes the commits anew, unsigned: sign them (audit.sign)
    if (own.length > 0 && c.signing) await c.signBranch((await c.ownCommits()).map((o) => o.id));
    return own.length;
  }
  const cause = gitFailure(args, r);
  const rebaseDir = path.resolve(c.dir, await c.text(['rev-parse', '--git-path', 'rebase-merge']));
  const stopped = own.length > 0 && existsSync(rebaseDir);
  const conflicted = stopped ? nul(await c.must(['diff', '--name-only', '-z', '--diff-filter=U'])) : [];
  if (stopped) await c.must(['rebase', '--abort']);
  const now = await c.mustRev(c.localRef);
  if (local && now !== local)
    throw new GitRepoError('GIT_FAILED', `${args[0]} failed and ${c.branch} moved from ${local} to ${now}`, { cause });
  if (conflicted.length === 0) {
    await c.requireClean(); // git refuses to rebase or fast-forward over local changes: say which
    throw new GitRepoError('GIT_FAILED', `could not bring ${c.branch} to ${c.where}: ${cause.message}`, {
      cause,
      details: { unpushed: own.length },
    });
  }
  const remote = await c.mustRev(c.remoteRef);
  const base = await c.text(['merge-base', now, remote]);
  const theirs = (await c.text(['log', '-n', '5', '--format=%h %an: %s', `${base}..${remote}`, '--', ...conflicted]))
    .split('\n')
    .filter(Boolean);
  const first = theirs[0]?.split(' ')[0];
  throw new GitRepoError(
    'GIT_AUDIT_CONFLICT',
    `someone changed ${conflicted.join(', ')} on ${c.where} (${theirs.join('; ') || 'unknown commit'}), and rotor's ${plural(own.length, 'audit commit')} not yet pushed no longer apply on top. ` +
      `Nothing was pushed or lost: the commits stay in ${c.dir}. The audit log is append-only and written only by rotor: ` +
      `revert that change on ${c.branch}${first ? ` (git revert ${first})` : ''} and push it; rotor pushes its entries on its next sync.`,
    { cause, details: { files: conflicted, commits: theirs.map((l) => l.split(' ')[0]!), unpushed: own.length } },
  );
}

/** Fetch, then rebase the audit commits onto origin/BRANCH. */
export async function fetchAndIntegrate(c: LocalClone, timeoutMs: number): Promise<void> {
  await fetchLocked(c, Math.min(c.networkTimeoutMs, timeoutMs));
  await integrate(c); // a conflict or non-audit commits end the push here
}
