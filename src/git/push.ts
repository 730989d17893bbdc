/**
 * One attempt at pushing the audit commits to origin/BRANCH as a fast-forward (never --force, never a
 * +refspec), and what a failed `git push --porcelain` means: the remote moved on ('behind'), a race or
 * an unreachable remote ('transient'), or a refusal ('refused'). The retries around it, with their
 * backoff, are GitRepo.push().
 */
import { GitRepoError } from './errors.js';
import { gitFailure, type LocalClone } from './local.js';
import { auditTrees, onRemoteAlready, REPLAY_REF, replay } from './replay.js';
import type { GitError, GitResult } from './run.js';
import { fetchAndIntegrate, fetchLocked, integrate, noticeRemoteChanges } from './sync.js';

export type PushOutcome =
  | { done: true; pushed: string[]; head: string }
  | { done: false; kind: 'behind' | 'transient' | 'refused'; cause: GitError; reason: string };

/** What a failed `git push --porcelain` means. */
function classifyPush(r: GitResult): { kind: 'behind' | 'transient' | 'refused'; reason: string } {
  const line = r.stdout
    .toString('utf8')
    .split('\n')
    .find((l) => l.startsWith('!\t'));
  if (!line || r.killed)
    return {
      kind: 'transient',
      reason: r.killed
        ? `git push ${r.killed === 'timeout' ? 'timed out' : 'was stopped'}`
        : 'the remote could not be reached',
    };
  const reason = line.split('\t')[2] ?? '';
  if (reason.startsWith('[rejected]')) {
    return { kind: /fetch first|non-fast-forward|stale info/.test(reason) ? 'behind' : 'refused', reason };
  }
  if (reason.startsWith('[remote rejected]')) {
    // another push held or moved the ref while the remote updated it: a race, worth retrying
    return {
      kind: /lock|failed to update ref|incorrect old value|expected/i.test(reason) ? 'transient' : 'refused',
      reason,
    };
  }
  return { kind: reason.startsWith('[remote failure]') ? 'transient' : 'refused', reason };
}

export async function pushOnce(c: LocalClone, deadline: number, refresh: boolean): Promise<PushOutcome> {
  const timeoutMs = () => Math.max(1000, Math.min(c.networkTimeoutMs, deadline - Date.now()));
  try {
    if (refresh) return await refreshAndPush(c, timeoutMs);
    const own = await c.ownCommits();
    if (own.length === 0) return { done: true, pushed: [], head: await c.mustRev(c.remoteRef) };
    // audit.sign: nothing unsigned leaves (commits made while it was off, or left unsigned by a failure)
    const ids = await c.signBranch(own.map((o) => o.id));
    return await pushTip(c, ids.at(-1)!, ids, null, timeoutMs());
  } catch (e) {
    throw c.wrap(e, 'push');
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
async function refreshAndPush(c: LocalClone, timeoutMs: () => number): Promise<PushOutcome> {
  const own = await c.ownCommits(); // refuses non-audit commits
  const first = own[0];
  const tip = own.at(-1)?.id;
  if (!first || !tip) {
    await fetchAndIntegrate(c, timeoutMs()).catch(() => {});
    return { done: true, pushed: [], head: await c.mustRev(c.remoteRef) };
  }
  await c.requireClean(true); // the branch moves after the push: no local change outside the audit directory in the way
  const trees = await auditTrees(c, own);
  try {
    await fetchLocked(c, timeoutMs());
  } catch (e) {
    if (e instanceof GitRepoError && e.retry.kind !== 'never') {
      return { done: false, kind: 'transient', cause: e.cause as GitError, reason: 'fetch failed' };
    }
    throw e;
  }
  await c.requireSafeAuditPath(c.remoteRef);
  // the remote-tracking ref by name: one git call less between the fetch and the push (when the
  // remote did not move at all, replay() re-creates the same trees: harmless). Commits that an
  // earlier push landed (re-created, although git reported a failure) are not sent again.
  const landed = trees ? await onRemoteAlready(c, own, trees) : -1;
  if (landed === own.length) {
    const head = await c.mustRev(c.remoteRef);
    await moveBranch(c, tip, head);
    return { done: true, pushed: [], head };
  }
  if (trees && landed >= 0) {
    const replayed = await replay(c, c.remoteRef, own.slice(landed), trees.slice(landed));
    if (replayed) return pushTip(c, replayed.at(-1)!, replayed, tip, timeoutMs());
  }
  await integrate(c); // the remote changed the audit directory: a rebase (or GIT_AUDIT_CONFLICT)
  const rebased = await c.ownCommits();
  if (rebased.length === 0) return { done: true, pushed: [], head: await c.mustRev(c.remoteRef) };
  return pushTip(
    c,
    rebased.at(-1)!.id,
    rebased.map((o) => o.id),
    null,
    timeoutMs(),
  );
}

/**
 * Pushes commit `tip` to BRANCH. `replacing`: the local tip that `tip` re-creates (replay());
 * the local branch moves to `tip` once the push landed.
 */
async function pushTip(
  c: LocalClone,
  tip: string,
  ids: string[],
  replacing: string | null,
  timeoutMs: number,
): Promise<PushOutcome> {
  // an exact commit to an exact branch: no '+', no --force, no configured push refspecs
  const args = ['push', '--porcelain', '--no-verify', 'origin', `${tip}:${c.localRef}`];
  const r = await c.run(args, { network: true, timeoutMs });
  await noticeRemoteChanges(c).catch(() => {}); // deferred from the fetch, out of the race window
  if (r.exitCode !== 0) {
    if (replacing) await c.run(['update-ref', '-d', REPLAY_REF]);
    return { done: false, ...classifyPush(r), cause: gitFailure(args, r) };
  }
  if (replacing) await moveBranch(c, replacing, tip);
  await c.must(['update-ref', '-m', 'rotor: pushed', c.remoteRef, tip]);
  c.seenRemote = tip;
  if (replacing) await c.run(['update-ref', '-d', REPLAY_REF]);
  return { done: true, pushed: ids, head: tip };
}

/** Moves the local branch from `from` to the pushed `to`, with the index and the files. */
async function moveBranch(c: LocalClone, from: string, to: string): Promise<void> {
  const r = await c.run(['reset', '--quiet', '--keep', to]);
  if (r.exitCode === 0) return;
  // The push landed: the branch must match it whatever happens (or the next push would send the
  // entries a second time). The files lag behind until a person resets them.
  await c.must(['update-ref', '-m', 'rotor: pushed', c.localRef, to, from]);
  c.warn(
    'GIT_WORKTREE_STALE',
    `pushed, but the files of ${c.dir} could not be updated to ${to.slice(0, 12)} (${gitFailure(['reset'], r).message}); remove what is in the way, then git -C ${c.dir} reset --hard ${c.branch}`,
  );
}

/** What the remote said about a refused push (its `remote:` lines), for the error message. */
export function remoteSays(stderr: string): string {
  const lines = stderr
    .split('\n')
    .filter((l) => l.startsWith('remote:'))
    .map((l) => l.slice(7).trim())
    .filter(Boolean);
  return lines.length ? ` (the remote says: ${lines.slice(0, 3).join(' / ').slice(0, 300)})` : '';
}
