/**
 * The daemon's clone (src/git/repo.ts) against real git: a bare repository as the remote, the
 * daemon's clone beside it, and other clones acting as people and as concurrent writers.
 */

import { randomInt } from 'node:crypto';
import {
  appendFileSync,
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import {
  backoffDelay,
  type GitRepo,
  GitRepoError,
  type GitWarning,
  type OpenRepoOptions,
  openRepo,
} from '../src/git/repo.js';
import { GitError, redactUrls } from '../src/git/run.js';
import { git, gitAsync, gitInitBare, tempDir } from './helpers.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

const AUDIT = 'audit/log.jsonl';

/** A remote with rotor.yaml and an audit log of one line, and where the daemon's clone goes. */
function setup(t: T) {
  const root = tempDir(t, 'rotor-git-');
  const remote = path.join(root, 'remote.git');
  gitInitBare(remote);
  const seed = person(root, remote, 'seed');
  writeFileSync(path.join(seed, 'rotor.yaml'), 'kind: Config\naudit: { dir: audit, push: true }\n');
  mkdirSync(path.join(seed, 'audit'));
  writeFileSync(path.join(seed, AUDIT), '{"seq":0}\n');
  git(seed, 'add', '-A');
  git(seed, 'commit', '-q', '-m', 'seed');
  git(seed, 'push', '-q', 'origin', 'HEAD:refs/heads/main');
  const warnings: GitWarning[] = [];
  const open = (extra: Partial<OpenRepoOptions> = {}) =>
    openRepo({
      url: remote,
      dir: path.join(root, 'daemon'),
      branch: 'main',
      onWarning: (w) => warnings.push(w),
      ...extra,
    });
  return { root, remote, daemonDir: path.join(root, 'daemon'), warnings, open };
}

/** A clone of the remote acting as a person (or a writer). */
function person(root: string, remote: string, name: string): string {
  const dir = path.join(root, name);
  git(root, 'clone', '-q', remote, dir);
  git(dir, 'config', 'commit.gpgsign', 'false');
  return dir;
}

function remoteFile(remote: string, file: string, ref = 'main'): string {
  return git(remote, 'show', `${ref}:${file}`);
}

/** Appends an audit line in the daemon's clone and commits it. */
async function audit(repo: GitRepo, line: string): Promise<string | null> {
  return repo.exclusive(async () => {
    appendFileSync(path.join(repo.dir, AUDIT), `${line}\n`);
    return repo.commitAudit([AUDIT], `audit: ${line}`);
  });
}

async function rejectsWith(t: T, p: Promise<unknown>, code: string): Promise<GitRepoError> {
  try {
    await p;
  } catch (e) {
    t.type(e, GitRepoError, `a GitRepoError (${code})`);
    t.equal((e as GitRepoError).code, code, (e as Error).message);
    return e as GitRepoError;
  }
  t.fail(`expected ${code}, but it succeeded`);
  throw new Error('unreachable');
}

/** Every update of the remote branch, oldest first, from the bare repository's reflog. */
function remoteUpdates(remote: string): string[] {
  return git(remote, 'reflog', 'show', '--format=%H', 'refs/heads/main').split('\n').filter(Boolean).reverse();
}

function isAncestor(repo: string, a: string, b: string): boolean {
  try {
    git(repo, 'merge-base', '--is-ancestor', a, b);
    return true;
  } catch {
    return false;
  }
}

t.test('clone, commit and push, reopen, wrong origin', async (t) => {
  const { root, remote, daemonDir, warnings, open } = setup(t);
  const repo = await open();
  t.equal(git(daemonDir, 'config', '--get', 'remote.origin.url'), remote);
  t.equal(git(daemonDir, 'symbolic-ref', 'HEAD'), 'refs/heads/main');
  t.same(
    readdirSync(root).filter((n) => n.includes('.clone-')),
    [],
    'no temporary clone left behind',
  );
  t.equal(await repo.remoteHead(), git(remote, 'rev-parse', 'main'));
  t.equal(await repo.unpushed(), 0);

  // the operator's configuration must not break commits: signing on, hooks that fail
  const hooks = path.join(root, 'hooks');
  mkdirSync(hooks);
  for (const h of ['pre-commit', 'commit-msg', 'post-commit', 'pre-push'])
    writeFileSync(path.join(hooks, h), '#!/bin/sh\nexit 1\n', { mode: 0o755 });
  git(daemonDir, 'config', 'core.hooksPath', hooks);
  git(daemonDir, 'config', 'commit.gpgSign', 'true');
  git(daemonDir, 'config', 'user.signingKey', 'NO-SUCH-KEY');

  const id = await audit(repo, '{"seq":1}');
  t.match(id, /^[0-9a-f]{40}$/);
  t.equal(await repo.unpushed(), 1);
  t.equal(
    git(daemonDir, 'log', '-1', '--format=%an <%ae>|%cn <%ce>|%G?'),
    'rotor <rotor@localhost>|rotor <rotor@localhost>|N',
    'default author, unsigned',
  );
  t.equal(await repo.commitAudit([AUDIT], 'nothing changed'), null, 'no commit when nothing changed');
  t.equal(await repo.head(), id);

  // exactly the given paths: another staged file is left alone
  writeFileSync(path.join(daemonDir, 'audit', 'other.jsonl'), 'x\n');
  git(daemonDir, 'add', 'audit/other.jsonl');
  appendFileSync(path.join(daemonDir, AUDIT), '{"seq":2}\n');
  const id2 = await repo.commitAudit([path.join(daemonDir, AUDIT)], 'audit: seq 2'); // absolute paths are accepted
  t.same(
    git(daemonDir, 'show', '--format=', '--name-only', id2!).split('\n'),
    [AUDIT],
    'only the given path is committed',
  );
  t.equal(git(daemonDir, 'diff', '--cached', '--name-only'), 'audit/other.jsonl', 'the other staged file stays staged');
  git(daemonDir, 'rm', '-q', '--cached', 'audit/other.jsonl');
  rmSync(path.join(daemonDir, 'audit', 'other.jsonl'));

  const pushed = await repo.push();
  t.same(pushed, { pushed: [id, id2], head: id2, attempts: 1 });
  t.equal(git(remote, 'rev-parse', 'main'), id2, 'the remote has the audit commits');
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}\n{"seq":2}');
  t.equal(await repo.unpushed(), 0);
  t.same(await repo.push(), { pushed: [], head: id2, attempts: 0 }, 'nothing to push');

  // paths outside the audit directory are refused
  writeFileSync(path.join(daemonDir, 'rotor.yaml'), 'kind: Config\n');
  for (const p of [
    'rotor.yaml',
    '../x',
    'audit/../rotor.yaml',
    path.join(root, 'elsewhere'),
    'auditx/a',
    '.git/config',
  ]) {
    await rejectsWith(t, repo.commitAudit([p], 'no'), 'GIT_PATH_OUTSIDE_AUDIT');
  }
  git(daemonDir, 'checkout', '--', 'rotor.yaml');

  // reopen: no clone, same origin, nothing to report
  warnings.length = 0;
  const again = await open();
  t.equal(await again.head(), id2);
  t.same(warnings, []);

  // a clone of another repository is refused
  const other = path.join(root, 'other.git');
  gitInitBare(other);
  const e = await rejectsWith(t, openRepo({ url: other, dir: daemonDir, branch: 'main' }), 'GIT_ORIGIN_MISMATCH');
  t.match(e.message, remote);
  t.match(e.message, 'move');
  // a relative path to the same remote is the same origin
  const cwd = process.cwd();
  process.chdir(root);
  try {
    await openRepo({ url: 'remote.git', dir: 'daemon', branch: 'main' });
    t.pass('relative path accepted');
  } finally {
    process.chdir(cwd);
  }
  // a non-empty directory that is not a clone is refused; so is a missing branch
  const junk = path.join(root, 'junk');
  mkdirSync(junk);
  writeFileSync(path.join(junk, 'file'), 'x');
  await rejectsWith(t, openRepo({ url: remote, dir: junk, branch: 'main' }), 'GIT_NOT_A_CLONE');
  await rejectsWith(
    t,
    openRepo({ url: remote, dir: path.join(root, 'nobranch'), branch: 'release' }),
    'GIT_BRANCH_MISSING',
  );
  t.notOk(existsSync(path.join(root, 'nobranch')), 'a failed clone leaves nothing');
  t.same(
    readdirSync(root).filter((n) => n.includes('.clone-')),
    [],
  );
  // an existing empty directory is cloned into
  const empty = path.join(root, 'empty');
  mkdirSync(empty);
  chmodSync(empty, 0o700);
  const third = await openRepo({ url: remote, dir: empty, branch: 'main' });
  t.equal(await third.head(), id2);
  t.equal((await import('node:fs')).statSync(empty).mode & 0o777, 0o700, 'the directory keeps its mode');
  await rejectsWith(t, openRepo({ url: remote, dir: path.join(root, 'x'), branch: '-x' }), 'GIT_BAD_ARGUMENT');
  await rejectsWith(
    t,
    openRepo({ url: remote, dir: path.join(root, 'x'), branch: 'main', auditDir: '../up' }),
    'GIT_BAD_ARGUMENT',
  );
});

t.test('commitAudit: new files, whole directories, deletions, odd names', async (t) => {
  const { remote, daemonDir, open } = setup(t);
  const repo = await open();
  mkdirSync(path.join(daemonDir, 'audit', '2026'));
  writeFileSync(path.join(daemonDir, 'audit', '2026', '11.jsonl'), 'a\n');
  writeFileSync(path.join(daemonDir, 'audit', '*.jsonl'), 'a file named like a glob\n');
  const c1 = await repo.commitAudit(['audit/2026'], 'audit: a directory');
  t.same(
    git(daemonDir, 'show', '--format=', '--name-only', c1!).split('\n'),
    ['audit/2026/11.jsonl'],
    'a directory commits what is under it',
  );
  const c2 = await repo.commitAudit(['audit/*.jsonl'], 'audit: a literal name');
  t.same(
    git(daemonDir, 'show', '--format=', '--name-only', c2!).split('\n'),
    ['audit/*.jsonl'],
    'names are literal, not globs',
  );
  rmSync(path.join(daemonDir, 'audit', '2026', '11.jsonl'));
  const c3 = await repo.commitAudit(['audit/2026/11.jsonl'], 'audit: remove a file');
  t.equal(
    git(daemonDir, 'show', '--format=', '--name-status', c3!),
    'D\taudit/2026/11.jsonl',
    'deletions are committed',
  );
  await rejectsWith(t, repo.commitAudit([], 'x'), 'GIT_BAD_ARGUMENT');
  await rejectsWith(t, repo.commitAudit([AUDIT], '  '), 'GIT_BAD_ARGUMENT');
  await rejectsWith(t, repo.commitAudit(['audit/missing.jsonl'], 'x'), 'GIT_COMMIT_FAILED');
  t.equal((await repo.push()).pushed.length, 3);
  t.equal(git(remote, 'rev-parse', 'main'), c3);
});

t.test('sync brings remote changes and keeps local audit commits on top', async (t) => {
  const { root, remote, daemonDir, open } = setup(t);
  const repo = await open();
  const alice = person(root, remote, 'alice');
  writeFileSync(
    path.join(alice, 'rotor.yaml'),
    'kind: Config\naudit: { dir: audit, push: true }\nsync: { interval: 1m }\n',
  );
  git(alice, 'commit', '-q', '-am', 'sync every minute');
  git(alice, 'push', '-q');

  let s = await repo.sync();
  t.same(
    s,
    { head: git(remote, 'rev-parse', 'main'), remoteHead: git(remote, 'rev-parse', 'main'), rebased: 0, unpushed: 0 },
    'fast-forward',
  );
  t.match(readFileSync(path.join(daemonDir, 'rotor.yaml'), 'utf8'), 'interval: 1m');

  await audit(repo, '{"seq":1}');
  writeFileSync(path.join(alice, 'new.yaml'), 'kind: Policy\n');
  git(alice, 'add', 'new.yaml');
  git(alice, 'commit', '-q', '-m', 'a policy');
  git(alice, 'push', '-q');
  const alices = git(alice, 'rev-parse', 'HEAD');
  s = await repo.sync();
  t.equal(s.rebased, 1);
  t.equal(s.unpushed, 1);
  t.equal(s.remoteHead, alices);
  t.equal(git(daemonDir, 'rev-parse', 'HEAD~1'), alices, 'the audit commit sits on the new remote head');
  t.ok(existsSync(path.join(daemonDir, 'new.yaml')));

  // hand edits outside the audit directory block a sync that brings changes, with what to do
  writeFileSync(path.join(daemonDir, 'rotor.yaml'), 'edited by hand\n');
  writeFileSync(path.join(alice, 'more.yaml'), 'kind: Policy\n');
  git(alice, 'add', 'more.yaml');
  git(alice, 'commit', '-q', '-m', 'another policy');
  git(alice, 'push', '-q');
  const head = await repo.head();
  const e = await rejectsWith(t, repo.sync(), 'GIT_WORKTREE_DIRTY');
  t.match(e.message, 'checkout -- rotor.yaml');
  t.equal(await repo.head(), head, 'nothing moved');
  git(daemonDir, 'checkout', '--', 'rotor.yaml');
  t.equal((await repo.sync()).rebased, 1);
  t.equal((await repo.push()).pushed.length, 1);
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}');
});

t.test('a person pushes between the daemon commit and push: rebase and retry', async (t) => {
  const { root, remote, daemonDir, warnings, open } = setup(t);
  const repo = await open();
  const bob = person(root, remote, 'bob');
  const mine = await audit(repo, '{"seq":1}');

  writeFileSync(path.join(bob, 'app.yaml'), 'kind: Secret\n');
  git(bob, 'add', 'app.yaml');
  git(bob, 'commit', '-q', '-m', 'bob adds a secret');
  git(bob, 'push', '-q');
  const bobs = git(bob, 'rev-parse', 'HEAD');

  const r = await repo.push();
  t.equal(r.attempts, 2, 'rejected once, then pushed');
  t.equal(r.pushed.length, 1);
  t.not(r.pushed[0], mine, 'the audit commit was rebased (new id)');
  t.equal(git(remote, 'rev-parse', 'main'), r.head);
  t.equal(git(remote, 'rev-parse', 'main~1'), bobs, "bob's commit is intact, right below the audit commit");
  t.equal(git(remote, 'rev-list', '--merges', '--count', 'main'), '0', 'linear history');
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}');
  t.equal(remoteFile(remote, 'app.yaml'), 'kind: Secret');
  t.equal(git(remote, 'log', '-1', '--format=%an|%s', 'main'), 'rotor|audit: {"seq":1}');
  t.ok(
    warnings.some((w) => w.code === 'GIT_PUSH_RETRY'),
    'the retry was reported',
  );
  const updates = remoteUpdates(remote);
  for (let i = 1; i < updates.length; i++)
    t.ok(isAncestor(remote, updates[i - 1]!, updates[i]!), `update ${i} is a fast-forward`);
  t.equal(await repo.unpushed(), 0);
  t.equal(git(daemonDir, 'status', '--porcelain'), '');
  t.equal(git(daemonDir, 'rev-parse', 'HEAD'), r.head, 'the local branch is what was pushed');
  t.ok(existsSync(path.join(daemonDir, 'app.yaml')), "the clone's files follow");
});

t.test('a nested audit directory, several unpushed commits, a busy remote', async (t) => {
  const { root, remote, daemonDir, warnings, open } = setup(t);
  const repo = await open({ auditDir: 'ops/audit/' });
  t.equal(repo.auditDir, 'ops/audit');
  mkdirSync(path.join(daemonDir, 'ops', 'audit'), { recursive: true });
  const log = path.join(daemonDir, 'ops', 'audit', 'log.jsonl');
  const ids: string[] = [];
  for (let i = 1; i <= 3; i++) {
    appendFileSync(log, `{"seq":${i}}\n`);
    ids.push((await repo.commitAudit(['ops/audit/log.jsonl'], `audit ${i}`))!);
  }
  await rejectsWith(t, repo.commitAudit([AUDIT], 'x'), 'GIT_PATH_OUTSIDE_AUDIT');
  const bob = person(root, remote, 'bob');
  mkdirSync(path.join(bob, 'ops'));
  writeFileSync(path.join(bob, 'ops', 'notes.md'), 'next to the audit directory\n');
  git(bob, 'add', '-A');
  git(bob, 'commit', '-q', '-m', 'bob writes notes');
  git(bob, 'push', '-q');
  const r = await repo.push();
  t.equal(r.attempts, 2);
  t.equal(r.pushed.length, 3);
  t.same(git(remote, 'log', '--format=%s', '-4', 'main').split('\n'), [
    'audit 3',
    'audit 2',
    'audit 1',
    'bob writes notes',
  ]);
  t.same(
    git(remote, 'log', '--format=%an <%ae>', '-3', 'main').split('\n'),
    Array(3).fill('rotor <rotor@localhost>'),
    'authors kept',
  );
  t.equal(remoteFile(remote, 'ops/audit/log.jsonl'), '{"seq":1}\n{"seq":2}\n{"seq":3}');
  t.equal(remoteFile(remote, 'ops/notes.md'), 'next to the audit directory');
  for (let i = 0; i < 3; i++) {
    t.equal(
      git(daemonDir, 'diff', `${ids[i]}~1`, ids[i]!),
      git(remote, 'diff', `${r.pushed[i]}~1`, r.pushed[i]!),
      `commit ${i + 1}: the same change`,
    );
  }
  t.equal(git(daemonDir, 'rev-parse', 'HEAD'), r.head);
  t.equal(git(daemonDir, 'status', '--porcelain'), '');
  t.ok(existsSync(path.join(daemonDir, 'ops', 'notes.md')));
  t.notOk(warnings.some((w) => w.code === 'GIT_REPLAY_FAILED'));
  t.equal(git(daemonDir, 'for-each-ref', 'refs/rotor/'), '', 'no temporary ref left');
});

t.test('an audit line written but not yet committed is left alone by sync and push', async (t) => {
  const { root, remote, daemonDir, open } = setup(t);
  const repo = await open();
  await audit(repo, '{"seq":1}');
  appendFileSync(path.join(daemonDir, AUDIT), '{"seq":2}\n'); // the audit log writes; the commit comes later
  const bob = person(root, remote, 'bob');
  for (const [file, op] of [
    ['a.yaml', 'push'],
    ['b.yaml', 'sync'],
  ] as const) {
    git(bob, 'pull', '-q', '--rebase');
    writeFileSync(path.join(bob, file), 'kind: Policy\n');
    git(bob, 'add', file);
    git(bob, 'commit', '-q', '-m', `bob adds ${file}`);
    git(bob, 'push', '-q');
    if (op === 'push') t.equal((await repo.push()).pushed.length, 1, 'pushed past the busy remote');
    else t.equal((await repo.sync()).rebased, 0, 'synced');
    t.ok(existsSync(path.join(daemonDir, file)), `${op}: the new file is there`);
    t.equal(
      readFileSync(path.join(daemonDir, AUDIT), 'utf8'),
      '{"seq":0}\n{"seq":1}\n{"seq":2}\n',
      `${op}: the uncommitted line is still there`,
    );
    t.equal(git(daemonDir, 'status', '--porcelain'), `M ${AUDIT}`);
  }
  // a local audit commit and another uncommitted line, and the remote moved: sync replays the commit
  await repo.commitAudit([AUDIT], 'audit: 2');
  appendFileSync(path.join(daemonDir, AUDIT), '{"seq":3}\n');
  git(bob, 'pull', '-q', '--rebase');
  writeFileSync(path.join(bob, 'c.yaml'), 'kind: Policy\n');
  git(bob, 'add', 'c.yaml');
  git(bob, 'commit', '-q', '-m', 'bob adds c.yaml');
  git(bob, 'push', '-q');
  t.equal((await repo.sync()).rebased, 1);
  t.equal(
    git(daemonDir, 'rev-parse', 'HEAD~1'),
    git(remote, 'rev-parse', 'main'),
    'the audit commit is on top of the remote',
  );
  t.equal(
    readFileSync(path.join(daemonDir, AUDIT), 'utf8'),
    '{"seq":0}\n{"seq":1}\n{"seq":2}\n{"seq":3}\n',
    'the uncommitted line is still there',
  );
  await repo.commitAudit([AUDIT], 'audit: 3');
  t.equal((await repo.push()).pushed.length, 2);
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}\n{"seq":2}\n{"seq":3}');
});

t.test('a push that landed before a crash is not sent twice', async (t) => {
  // The daemon re-creates its audit commits on the new remote head, pushes them, and only then
  // moves its branch. Crash in between: the remote has the entries, the clone still the old commits.
  const { root, remote, daemonDir, open } = setup(t);
  const repo = await open();
  const mine = await audit(repo, '{"seq":1}');
  const bob = person(root, remote, 'bob');
  writeFileSync(path.join(bob, 'app.yaml'), 'kind: Secret\n');
  git(bob, 'add', 'app.yaml');
  git(bob, 'commit', '-q', '-m', 'bob adds a secret');
  git(bob, 'push', '-q');
  const shadow = person(root, remote, 'shadow');
  git(shadow, 'fetch', '-q', daemonDir, 'main');
  git(shadow, 'cherry-pick', mine!); // the same change as a new commit: what the daemon pushed
  git(shadow, 'push', '-q');

  const reopened = await open();
  const r = await reopened.push();
  t.same(r.pushed, [], 'nothing pushed a second time');
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}', 'the entry is on the remote once');
  t.equal(await reopened.head(), git(remote, 'rev-parse', 'main'), 'the clone caught up');
  t.equal(await reopened.unpushed(), 0);
});

t.test('push race: the daemon and four writers pushing to one branch', async (t) => {
  const { root, remote, warnings, open } = setup(t);
  const repo = await open({ retry: { attempts: 8, baseMs: 10, maxDelayMs: 400, totalMs: 60_000 } });
  const ROUNDS = 24;
  const WRITERS = 4;
  const WRITER_ROUNDS = 10;
  const MAX_WRITER_ATTEMPTS = 1000;

  const seen: string[] = [];
  let writerPushes = 0;
  const writer = async (i: number): Promise<string[]> => {
    const dir = path.join(root, `writer${i}`);
    await gitAsync(root, 'clone', '-q', remote, dir);
    mkdirSync(path.join(dir, 'apps', `w${i}`), { recursive: true });
    const pushed: string[] = [];
    for (let r = 0; r < WRITER_ROUNDS; r++) {
      writeFileSync(path.join(dir, 'apps', `w${i}`, `r${r}.yaml`), `kind: Secret\nname: w${i}/r${r}\n`);
      await gitAsync(dir, 'add', '-A');
      await gitAsync(dir, 'commit', '-q', '-m', `writer ${i} round ${r}`);
      for (let attempt = 1; ; attempt++) {
        if (attempt > MAX_WRITER_ATTEMPTS) throw new Error(`writer ${i} could not push round ${r}`);
        try {
          await gitAsync(dir, 'push', '-q', 'origin', 'HEAD:refs/heads/main');
          pushed.push(await gitAsync(dir, 'rev-parse', 'HEAD'));
          writerPushes++;
          break;
        } catch {
          await gitAsync(dir, 'fetch', '-q', 'origin', 'main');
          seen.push(await gitAsync(dir, 'rev-parse', 'origin/main'));
          await gitAsync(dir, 'rebase', '-q', 'origin/main');
          await sleep(randomInt(0, 4)); // a little jitter so that no writer starves
        }
      }
    }
    return pushed;
  };

  let daemonPushes = 0;
  let gaveUp = 0;
  let attempts = 0;
  const daemon = async () => {
    for (let r = 1; r <= ROUNDS; r++) {
      await audit(repo, `{"seq":${r}}`);
      try {
        const res = await repo.push();
        attempts += res.attempts;
        if (res.pushed.length) daemonPushes++;
      } catch (e) {
        if (!(e instanceof GitRepoError && e.code === 'GIT_PUSH_GAVE_UP')) throw e;
        gaveUp++; // the commits stay local; the next round's push takes them along
      }
    }
  };

  const [, ...pushedByWriters] = await Promise.all([daemon(), ...Array.from({ length: WRITERS }, (_, i) => writer(i))]);
  // the writers are done: whatever the daemon still holds goes out now
  const last = await repo.push();
  if (last.pushed.length) daemonPushes++;
  t.equal(await repo.unpushed(), 0, 'the daemon holds nothing back');

  const final = git(remote, 'rev-parse', 'main');
  const expected = Array.from({ length: ROUNDS + 1 }, (_, i) => `{"seq":${i}}`).join('\n');
  t.equal(remoteFile(remote, AUDIT), expected, 'every audit line on the remote exactly once, in order');
  const auditCommits = git(remote, 'log', '--reverse', '--format=%ae %s', 'main', '--', AUDIT).split('\n').slice(1);
  t.same(
    auditCommits,
    Array.from({ length: ROUNDS }, (_, i) => `rotor@localhost audit: {"seq":${i + 1}}`),
    'one rotor commit per entry, in order',
  );

  const files = new Set(git(remote, 'ls-tree', '-r', '--name-only', 'main').split('\n'));
  const subjects = new Set(git(remote, 'log', '--format=%s', 'main').split('\n'));
  let missing = 0;
  for (let i = 0; i < WRITERS; i++) {
    for (let r = 0; r < WRITER_ROUNDS; r++) {
      if (!files.has(`apps/w${i}/r${r}.yaml`) || !subjects.has(`writer ${i} round ${r}`)) missing++;
    }
  }
  t.equal(missing, 0, 'nothing any writer pushed was lost');
  const notAncestors = [...pushedByWriters.flat(), ...seen].filter((c) => !isAncestor(remote, c, final));
  t.same(notAncestors, [], 'every head a writer pushed or saw is in the final history');
  t.equal(git(remote, 'rev-list', '--merges', '--count', 'main'), '0', 'linear history');

  const updates = remoteUpdates(remote);
  const forced = updates.filter((c, i) => i > 0 && !isAncestor(remote, updates[i - 1]!, c));
  t.same(forced, [], 'every update of the remote branch was a fast-forward (no force push)');
  t.equal(updates.length, 1 + writerPushes + daemonPushes, 'one remote update per successful push, and no other');
  t.equal(writerPushes, WRITERS * WRITER_ROUNDS);

  const retries = warnings.filter((w) => w.code === 'GIT_PUSH_RETRY').length;
  if (process.env.ROTOR_DEBUG_RACE) for (const w of warnings) t.comment(w.message);
  t.comment(
    `race: ${ROUNDS} audit entries, ${daemonPushes} daemon pushes in ${attempts + last.attempts} attempts, ${retries} retries, ${gaveUp} push calls gave up (sent later); writers: ${writerPushes} pushes, ${seen.length} rejections`,
  );
});

t.test('unpushed commits survive a refused push and an unreachable remote', async (t) => {
  const { remote, daemonDir, warnings, open } = setup(t);
  const repo = await open({ retry: { attempts: 3, baseMs: 1, maxDelayMs: 2, totalMs: 30_000 } });

  // the remote refuses (a pre-receive hook): no retry, the commit stays
  const hook = path.join(remote, 'hooks', 'pre-receive');
  writeFileSync(hook, '#!/bin/sh\necho "pushes are frozen" >&2\nexit 1\n', { mode: 0o755 });
  const c1 = await audit(repo, '{"seq":1}');
  const refused = await rejectsWith(t, repo.push(), 'GIT_PUSH_REFUSED');
  t.match(refused.message, 'pushes are frozen');
  t.match(refused.details, { attempts: 1, unpushed: 1 });
  t.type(refused.cause, GitError);
  t.equal(await repo.unpushed(), 1);
  t.equal(await repo.head(), c1);
  rmSync(hook);

  // the remote cannot be reached: bounded retries, then GIT_PUSH_GAVE_UP; the commits stay
  const away = `${remote}.away`;
  renameSync(remote, away);
  const c2 = await audit(repo, '{"seq":2}');
  const gaveUp = await rejectsWith(t, repo.push(), 'GIT_PUSH_GAVE_UP');
  t.match(gaveUp.details, { attempts: 3, unpushed: 2 });
  t.type(gaveUp.cause, GitError);
  t.match((gaveUp.cause as GitError).stderr, 'does not appear to be a git repository');
  t.equal(await repo.head(), c2);

  // a restart while the remote is still away: the clone opens, and reports what it holds
  warnings.length = 0;
  const reopened = await open();
  t.equal(await reopened.unpushed(), 2);
  t.match(warnings, [{ code: 'GIT_UNPUSHED' }]);
  renameSync(away, remote);

  const r = await reopened.push();
  t.same(r, { pushed: [git(daemonDir, 'rev-parse', 'HEAD~1'), c2], head: c2, attempts: 1 });
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}\n{"seq":2}');
  t.equal(await reopened.unpushed(), 0);
});

t.test('someone edits the audit file on the remote: GIT_AUDIT_CONFLICT, nothing lost', async (t) => {
  const { root, remote, daemonDir, warnings, open } = setup(t);
  const repo = await open();
  await audit(repo, '{"seq":1}');
  await repo.push();
  const mine = await audit(repo, '{"seq":2}');

  const eve = person(root, remote, 'eve');
  writeFileSync(path.join(eve, AUDIT), '{"seq":0}\n{"seq":1,"edited":true}\n');
  git(eve, 'commit', '-q', '-am', 'tidy the audit log');
  git(eve, 'push', '-q');
  const eves = git(eve, 'rev-parse', '--short=7', 'HEAD');

  for (const op of ['push', 'sync'] as const) {
    const e = await rejectsWith(t, op === 'push' ? repo.push() : repo.sync(), 'GIT_AUDIT_CONFLICT');
    t.same(e.details.files, [AUDIT], `${op}: the conflicting file`);
    t.match(e.message, 'git revert', `${op}: says what a person must do`);
    t.match(e.message, 'tidy the audit log');
    t.equal(e.details.unpushed, 1);
    t.type(e.cause, GitError);
    t.equal(await repo.head(), mine, `${op}: the daemon's commit is in place`);
    t.equal(git(daemonDir, 'status', '--porcelain'), '', `${op}: clean work tree`);
    t.notOk(existsSync(path.join(daemonDir, '.git', 'rebase-merge')), `${op}: no rebase left in progress`);
    t.equal(readFileSync(path.join(daemonDir, AUDIT), 'utf8'), '{"seq":0}\n{"seq":1}\n{"seq":2}\n');
    t.equal(await repo.unpushed(), 1);
  }
  t.ok(
    warnings.some((w) => w.code === 'GIT_AUDIT_CHANGED_REMOTELY'),
    'the foreign audit change was reported',
  );

  // what the message asks for: revert the edit; then the daemon's entry goes out
  git(eve, 'revert', '--no-edit', eves);
  git(eve, 'push', '-q');
  const r = await repo.push();
  t.equal(r.pushed.length, 1);
  t.equal(remoteFile(remote, AUDIT), '{"seq":0}\n{"seq":1}\n{"seq":2}');
});

t.test('commits that are not audit commits are neither pushed nor rebased', async (t) => {
  const { remote, daemonDir, open } = setup(t);
  const repo = await open();
  writeFileSync(path.join(daemonDir, 'rotor.yaml'), 'kind: Config\n# changed in the daemon clone\n');
  git(daemonDir, 'commit', '-q', '-am', 'a change that skipped review');
  await audit(repo, '{"seq":1}');
  const before = git(remote, 'rev-parse', 'main');
  const e = await rejectsWith(t, repo.push(), 'GIT_LOCAL_DIVERGED');
  t.equal(e.details.commits?.length, 1);
  t.match(e.message, 'origin/main..main');
  t.equal(git(remote, 'rev-parse', 'main'), before, 'nothing was pushed');
});

t.test('backoff: crypto jitter within exponential bounds', async (t) => {
  for (let attempt = 1; attempt <= 10; attempt++) {
    const cap = Math.min(1000, 10 * 2 ** (attempt - 1));
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, 10, 1000);
      if (!(Number.isInteger(d) && d >= 0 && d <= cap)) t.fail(`attempt ${attempt}: ${d} outside [0, ${cap}]`);
    }
  }
  t.equal(backoffDelay(1, 0, 100), 0);
  t.ok(new Set(Array.from({ length: 50 }, () => backoffDelay(8, 10, 1000))).size > 1, 'jittered');
});

t.test('errors never carry URL credentials', async (t) => {
  t.equal(
    redactUrls("fatal: unable to access 'https://bot:s3cr3t@git.example/x.git/'"),
    "fatal: unable to access 'https://***@git.example/x.git/'",
  );
  const e = new GitError(
    ['clone', 'https://bot:s3cr3t@git.example/x.git'],
    128,
    'fatal: https://bot:s3cr3t@git.example/x.git not found',
  );
  t.notMatch(JSON.stringify({ m: e.message, a: e.args, s: e.stderr }), 's3cr3t');
  const err = new GitRepoError('GIT_FAILED', 'could not fetch from https://bot:s3cr3t@git.example/x.git');
  t.notMatch(err.message, 's3cr3t');
  t.equal(
    redactUrls('see HTTPS://bot:x@h/a and ssh://git:y@h:22/b, not user@host:path'),
    'see HTTPS://***@h/a and ssh://***@h:22/b, not user@host:path',
  );
  // Text a remote can shape, in linear time: a scheme scanned from every word start took hours on this.
  const dots = 'a.'.repeat(2_000_000);
  t.equal(redactUrls(dots), dots);
  t.equal(redactUrls(`${dots}://u:p@h`), `${dots}://***@h`);
});
