/**
 * Re-creating the daemon's audit commits on a new remote head without a rebase: when the remote did
 * not touch the audit directory, each commit becomes the remote's tree plus that commit's audit
 * directory (the result a rebase would give), built by one `git fast-import` whatever the number of
 * commits, and without touching the work tree.
 */
import { gitFailure, type LocalClone, type OwnCommit } from './local.js';

/** Where replay() builds the audit commits before they are pushed. */
export const REPLAY_REF = 'refs/rotor/replay';

/**
 * Re-creates the audit commits on top of `onto` without touching the work tree: each new commit is
 * `onto`'s tree with the audit directory of the original commit, with the original author and
 * message. One `git fast-import`, whatever the number of commits (and, with audit.sign, one
 * `git cat-file` and one `git hash-object` to sign them: git 2.39's fast-import cannot). The caller has checked
 * that the audit directory of `onto` is that of the first commit's parent, which makes the result the
 * same as a rebase's. Returns the new commits, oldest first, or null when git could not do it.
 */
export async function replay(
  c: LocalClone,
  onto: string,
  own: readonly OwnCommit[],
  trees: ReadonlyArray<string | null>,
): Promise<string[] | null> {
  const now = `${Math.floor(Date.now() / 1000)} +0000`;
  const parts: Buffer[] = [Buffer.from('feature done\n')];
  own.forEach((o, i) => {
    const msg = Buffer.from(o.message, 'utf8');
    const tree = trees[i];
    parts.push(
      Buffer.from(
        `commit ${REPLAY_REF}\nmark :${i + 1}\nauthor ${o.authorName} <${o.authorEmail}> ${o.authorDate}\ncommitter ${c.author.name} <${c.author.email}> ${now}\ndata ${msg.length}\n`,
      ),
      msg,
      Buffer.from(
        `\n${i === 0 ? `from ${onto}\n` : ''}${tree ? `M 040000 ${tree} ${c.auditDir}` : `D ${c.auditDir}`}\n\n`,
      ),
    );
  });
  parts.push(Buffer.from(`${own.map((_, i) => `get-mark :${i + 1}\n`).join('')}done\n`));
  // --force: the temporary ref of an earlier attempt is overwritten (a local ref, never a push)
  const r = await c.run(['fast-import', '--quiet', '--force', '--done'], { input: Buffer.concat(parts) });
  if (r.exitCode !== 0) {
    c.warn(
      'GIT_REPLAY_FAILED',
      `could not re-create the audit commits with fast-import (a rebase does it instead): ${gitFailure(['fast-import'], r).message}`,
    );
    return null;
  }
  const ids = r.stdout.toString('utf8').split('\n').filter(Boolean);
  if (ids.length !== own.length || !ids.every((id) => /^[0-9a-f]{40,64}$/.test(id))) return null;
  // audit.sign: the re-created commits are signed like the originals (REPLAY_REF keeps the unsigned
  // ones, which nothing pushes; the caller deletes it)
  return c.sign(ids);
}

/** Whether origin/BRANCH has the same audit directory as `commit`. */
async function auditUnchanged(c: LocalClone, commit: string): Promise<boolean> {
  const r = await c.run(['diff', '--quiet', '--no-ext-diff', commit, c.remoteRef, '--', c.auditDir]);
  return r.exitCode === 0;
}

/**
 * How many of the audit commits `own` (oldest first, `trees` their audit trees) origin/BRANCH holds
 * already: 0 when its audit directory is that of the first one's parent (the usual case: nobody else
 * touched it), k when it is that of own[k-1] (the first k were pushed as re-created commits, by a push
 * that landed although git reported a failure), -1 when it is neither (someone else changed it).
 */
export async function onRemoteAlready(
  c: LocalClone,
  own: readonly OwnCommit[],
  trees: ReadonlyArray<string | null>,
): Promise<number> {
  if (await auditUnchanged(c, own[0]!.parent)) return 0;
  const r = await c.run(['rev-parse', '--verify', '--quiet', `${c.remoteRef}:${c.auditDir}`]);
  const k = r.exitCode === 0 ? trees.lastIndexOf(r.stdout.toString('utf8').trim()) : -1;
  return k < 0 ? -1 : k + 1;
}

/** The audit directory's tree in each commit (null where it has none), for replay(). */
export async function auditTrees(c: LocalClone, own: readonly OwnCommit[]): Promise<Array<string | null> | null> {
  const check = await c.run(['cat-file', '--batch-check=%(objectname) %(objecttype)'], {
    input: own.map((o) => `${o.id}:${c.auditDir}\n`).join(''),
  });
  if (check.exitCode !== 0) return null;
  return check.stdout
    .toString('utf8')
    .split('\n')
    .slice(0, own.length)
    .map((l) => (l.endsWith(' tree') ? l.split(' ')[0]! : null));
}
