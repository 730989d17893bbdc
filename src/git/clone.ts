/**
 * Opening the daemon's clone: the checks of openRepo()'s arguments, a fresh clone (into a temporary
 * sibling, renamed into place), the checks of an existing one (its top, its origin, its branch),
 * recovery from a crash (an interrupted rebase, a stale index.lock), and the attributes that keep the
 * audit directory byte for byte.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, realpath, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { AUDIT_DIR_MAX, auditDirShapeProblem, unsafeAuditPath } from '../model/audit-path.js';
import { GitRepoError, plural } from './errors.js';
import { gitFailure, type LocalClone } from './local.js';
import { fetchLocked } from './sync.js';
import { GitTreeSource } from './tree.js';

export function isLocalPath(url: string): boolean {
  return !/^[a-z][a-z0-9+.-]*:\/\//i.test(url) && !/^[^/]+:/.test(url);
}

async function canonicalUrl(url: string): Promise<string> {
  if (!isLocalPath(url)) return url.replace(/\/+$/, '');
  const abs = path.resolve(url);
  return (await realpath(abs).catch(() => abs)).replace(/\/+$/, '');
}

export function normalizeAuditDir(dir: string): string {
  if (dir.length > 2 * AUDIT_DIR_MAX) throw new GitRepoError('GIT_BAD_ARGUMENT', auditDirShapeProblem(dir)!);
  const norm = path.posix.normalize(dir.replace(/\\/g, '/')).replace(/\/+$/, '');
  const bad = auditDirShapeProblem(norm); // the name goes into an attributes pattern as it is
  if (bad) throw new GitRepoError('GIT_BAD_ARGUMENT', bad);
  return norm;
}

export function checkAuthor(a: { name: string; email: string }): { name: string; email: string } {
  const bad = (s: string) => !s || /[\0\n\r<>]/.test(s) || s.length > 256;
  if (bad(a.name) || bad(a.email)) {
    throw new GitRepoError('GIT_BAD_ARGUMENT', 'author name and email must be non-empty, one line, without < or >');
  }
  return { name: a.name, email: a.email };
}

export function checkBranch(branch: string): string {
  // the rules of git check-ref-format, for a branch name
  if (
    !branch ||
    branch.startsWith('-') ||
    branch.startsWith('/') ||
    branch.endsWith('/') ||
    branch.endsWith('.') ||
    branch.endsWith('.lock') ||
    branch === '@' ||
    /\.\.|@\{|\/\/|\/\.|^\.|[\0-\x20\x7f~^:?*[\\]/.test(branch)
  ) {
    throw new GitRepoError('GIT_BAD_ARGUMENT', `"${branch}" is not a valid branch name`);
  }
  return branch;
}

/**
 * Attributes that switch off every content conversion of git for the audit directory: line endings
 * (text, eol, crlf), keyword expansion (ident), clean/smudge filters and re-encoding.
 */
const BYTE_EXACT = '-text -eol -crlf -ident -filter -working-tree-encoding';

/**
 * Makes the clone read and write the audit directory byte for byte, whatever .gitattributes files
 * in the repository say (line-ending conversion, ident, filters, encodings would change the log on
 * checkout and break its hash chain): $GIT_DIR/info/attributes overrides every .gitattributes.
 */
async function writeAttributes(c: LocalClone, dir = c.dir): Promise<void> {
  const file = path.resolve(
    dir,
    (await c.must(['rev-parse', '--git-path', 'info/attributes'], { cwd: dir })).toString('utf8').trim(),
  );
  const text =
    '# Written by rotor: its audit log is kept byte for byte, whatever .gitattributes say.\n' +
    `/${c.auditDir}/** ${BYTE_EXACT}\n`;
  if ((await readFile(file, 'utf8').catch(() => '')) === text) return;
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, text, { mode: 0o644 });
  await rename(tmp, file);
}

/** Clones into a sibling temporary directory and renames it into place, so a crash leaves no half clone. */
export async function cloneInto(c: LocalClone, dirExists: boolean): Promise<void> {
  const parent = path.dirname(c.dir);
  await mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `.${path.basename(c.dir)}.clone-${randomBytes(6).toString('hex')}`);
  const args = [
    'clone',
    '--quiet',
    '--no-checkout',
    '--no-tags',
    '--single-branch',
    '--branch',
    c.branch,
    '--origin',
    'origin',
    '--template=',
    '--',
    c.url,
    tmp,
  ];
  try {
    const r = await c.run(args, { network: true, cwd: parent });
    if (r.exitCode !== 0) {
      // \S+, not .*: a branch name has no spaces, and .* is rescanned from every "Remote branch ".
      const missing = /Remote branch \S+ not found|not found in upstream/.test(r.stderr);
      throw new GitRepoError(
        missing ? 'GIT_BRANCH_MISSING' : 'GIT_CLONE_FAILED',
        missing
          ? `${c.url} has no branch "${c.branch}": push the declarations (rotor.yaml) to that branch first, or start rotor with the right --branch`
          : `could not clone ${c.url} into ${c.dir}: ${gitFailure(args, r).message}`,
        { cause: gitFailure(args, r) },
      );
    }
    // The attributes first, then the check, then the files: nothing unsafe or converted is written.
    await writeAttributes(c, tmp);
    const unsafe = await c.run(['rev-parse', '--verify', '--quiet', 'HEAD^{commit}'], { cwd: tmp });
    const headId = unsafe.stdout.toString('utf8').trim();
    const bad =
      unsafe.exitCode === 0
        ? unsafeAuditPath(c.auditDir, await new GitTreeSource(tmp, headId, '').probe(c.auditDir))
        : undefined;
    if (bad) {
      throw new GitRepoError(
        'GIT_AUDIT_PATH_UNSAFE',
        `${c.url} branch ${c.branch} (${headId.slice(0, 12)}) is not checked out: ${bad.message} (${bad.code}). Revert that change on ${c.branch}, then start rotor again`,
        { details: { files: [bad.path], commits: [headId] } },
      );
    }
    const co = await c.run(['reset', '--quiet', '--hard', 'HEAD'], { cwd: tmp });
    if (co.exitCode !== 0)
      throw new GitRepoError(
        'GIT_CLONE_FAILED',
        `could not check out ${c.branch} in ${tmp}: ${gitFailure(['reset'], co).message}`,
        { cause: gitFailure(['reset'], co) },
      );
    if (dirExists) {
      const mode = (await stat(c.dir)).mode & 0o7777;
      await chmod(tmp, mode);
    }
    await rename(tmp, c.dir); // replaces an empty directory
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** Checks an existing clone: its top, its origin, leftovers of a crash, its branch. */
export async function checkExisting(c: LocalClone): Promise<void> {
  const top = await c.run(['rev-parse', '--show-toplevel']);
  const real = await realpath(c.dir);
  if (top.exitCode !== 0 || (await realpath(top.stdout.toString('utf8').trim()).catch(() => '')) !== real) {
    throw new GitRepoError(
      'GIT_NOT_A_CLONE',
      `${c.dir} is not empty and is not a git clone: point rotor at an empty or missing directory (it clones ${c.url} there), or move the files away`,
      top.exitCode !== 0 ? { cause: gitFailure(['rev-parse', '--show-toplevel'], top) } : {},
    );
  }
  const origin = await c.run(['config', '--get', 'remote.origin.url']);
  const stored = origin.exitCode === 0 ? origin.stdout.toString('utf8').trim() : '';
  if (!stored || (await canonicalUrl(stored)) !== (await canonicalUrl(c.url))) {
    throw new GitRepoError(
      'GIT_ORIGIN_MISMATCH',
      `${c.dir} is a clone of ${stored || '(no origin)'}, not of ${c.url}: start rotor with --repo ${stored || '...'}, or move ${c.dir} away so that rotor clones ${c.url} afresh (push or save any audit commits in it first)`,
    );
  }
  await writeAttributes(c);
  await recover(c);
  await ensureBranch(c);
  const n = await c.countUnpushed();
  if (n > 0)
    c.warn(
      'GIT_UNPUSHED',
      `${plural(n, 'audit commit')} from before are not on ${c.where} yet; the next push sends them`,
    );
  const { tracked } = await c.changes();
  if (tracked.length > 0) {
    const audit = tracked.filter((p) => c.isAuditPath(p));
    const other = tracked.filter((p) => !c.isAuditPath(p));
    if (audit.length)
      c.warn('GIT_UNCOMMITTED_AUDIT', `uncommitted changes in the audit directory: ${audit.join(', ')}`);
    if (other.length)
      c.warn(
        'GIT_WORKTREE_DIRTY',
        `files outside ${c.auditDir}/ were changed in the daemon's clone (${other.join(', ')}); a sync that brings remote changes refuses until they are restored (git -C ${c.dir} checkout -- .)`,
      );
  }
}

/** Leftovers of a crash: a rebase in progress (aborted: the branch is as it was), a stale index lock. */
async function recover(c: LocalClone): Promise<void> {
  for (const name of ['rebase-merge', 'rebase-apply']) {
    const p = await c.text(['rev-parse', '--git-path', name]);
    if (existsSync(path.resolve(c.dir, p))) {
      await c.must(['rebase', '--abort']);
      c.warn('GIT_REBASE_ABORTED', 'an interrupted rebase was aborted; the audit commits are as they were before it');
    }
  }
  await removeStaleLock(c);
}

/**
 * Removes index.lock if it is there. Every git command of the daemon in its clone runs under the
 * clone's lock (RepoLock), so one found while holding it was left by a git that was killed (its time
 * limit, a signal) or crashed, and would fail every later commit until a restart.
 */
export async function removeStaleLock(c: LocalClone): Promise<void> {
  c.indexLock ??= path.resolve(c.dir, await c.text(['rev-parse', '--git-path', 'index.lock']));
  if (!existsSync(c.indexLock)) return;
  await unlink(c.indexLock).catch(() => undefined);
  c.warn('GIT_STALE_LOCK', 'removed a stale index.lock left by an interrupted git command');
}

async function ensureBranch(c: LocalClone): Promise<void> {
  const head = await c.run(['symbolic-ref', '--quiet', 'HEAD']);
  if (!(await c.rev(c.remoteRef))) await fetchLocked(c);
  if (head.exitCode === 0 && head.stdout.toString('utf8').trim() === c.localRef) return;
  await c.requireClean();
  if (await c.rev(c.localRef)) await c.must(['checkout', '--quiet', c.branch]);
  else await c.must(['checkout', '--quiet', '--no-track', '-b', c.branch, c.remoteRef]);
  c.warn('GIT_BRANCH_SWITCHED', `the clone was not on branch ${c.branch}; switched to it`);
}
