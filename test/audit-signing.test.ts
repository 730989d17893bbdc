/**
 * audit.sign on the daemon's clone (src/git/repo.ts with a signer): every commit it makes or makes
 * anew (a commit, a replay after a push race, a rebase over a remote change of the audit directory,
 * the audit branch's first commit) is signed, and git's own `git verify-commit` takes each of them.
 * Without a signer the commits are unsigned, as before. Real git: a bare remote, people's clones.
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ensureAuditBranch } from '../src/git/audit-branch.js';
import { type CommitSigner, type GitRepo, type OpenRepoOptions, openRepo } from '../src/git/repo.js';
import { sshPublicKeyLine, sshsigSign } from '../src/git/sshsig.js';
import { git, gitAsync, gitInitBare, tempDir } from './helpers.js';
import { throwawayKey } from './lib/openssh-key.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

const AUDIT = 'audit/log.jsonl';

function setup(t: T) {
  const root = tempDir(t, 'rotor-sign-');
  const remote = path.join(root, 'remote.git');
  gitInitBare(remote);
  const seed = person(root, remote, 'seed');
  writeFileSync(path.join(seed, 'rotor.yaml'), 'kind: Config\naudit: { sign: true }\n');
  mkdirSync(path.join(seed, 'audit'));
  writeFileSync(path.join(seed, AUDIT), '{"seq":0}\n');
  git(seed, 'add', '-A');
  git(seed, 'commit', '-q', '-m', 'seed');
  git(seed, 'push', '-q', 'origin', 'HEAD:refs/heads/main');
  const key = throwawayKey();
  const allowed = path.join(root, 'allowed_signers');
  writeFileSync(allowed, `rotor@localhost ${sshPublicKeyLine(key, 'rotor-audit')}\n`);
  let signing = true;
  const sign: CommitSigner = (payload) => sshsigSign(payload, key);
  const open = (extra: Partial<OpenRepoOptions> = {}) =>
    openRepo({
      url: remote,
      dir: path.join(root, 'daemon'),
      branch: 'main',
      signer: () => (signing ? sign : undefined),
      ...extra,
    });
  /** git verify-commit with the key in an allowed-signers file: whether git takes the commit. */
  const verified = (repo: string, id: string) => {
    try {
      git(repo, '-c', `gpg.ssh.allowedSignersFile=${allowed}`, 'verify-commit', id);
      return true;
    } catch {
      return false;
    }
  };
  return {
    root,
    remote,
    daemonDir: path.join(root, 'daemon'),
    open,
    verified,
    key,
    allowed,
    setSigning: (on: boolean) => {
      signing = on;
    },
  };
}

function person(root: string, remote: string, name: string): string {
  const dir = path.join(root, name);
  git(root, 'clone', '-q', remote, dir);
  git(dir, 'config', 'commit.gpgsign', 'false');
  return dir;
}

async function audit(repo: GitRepo, line: string): Promise<string | null> {
  return repo.exclusive(async () => {
    appendFileSync(path.join(repo.dir, AUDIT), `${line}\n`);
    return repo.commitAudit([AUDIT], `audit: ${line}`);
  });
}

/** The daemon's commits on the remote branch (author rotor), newest first. */
function rotorCommits(remote: string, ref = 'main'): string[] {
  return git(remote, 'log', '--format=%H %an', ref)
    .split('\n')
    .filter((l) => l.endsWith(' rotor'))
    .map((l) => l.split(' ')[0]!);
}

const hasSignature = (repo: string, id: string) => /^gpgsig /m.test(git(repo, 'cat-file', 'commit', id));

t.test('a signed audit commit: git verify-commit takes it, on the clone and on the remote', async (t) => {
  const { remote, daemonDir, open, verified } = setup(t);
  const repo = await open();
  const id = await audit(repo, '{"seq":1}');
  t.ok(id);
  t.equal(git(daemonDir, 'rev-parse', 'HEAD'), id, 'the branch is at the signed commit');
  t.ok(verified(daemonDir, id!), 'git verify-commit takes it');
  t.equal(git(daemonDir, 'status', '--porcelain'), '', 'the index and the files are as committed');
  t.equal(
    git(daemonDir, 'log', '-1', '--format=%an <%ae>|%cn <%ce>|%s'),
    'rotor <rotor@localhost>|rotor <rotor@localhost>|audit: {"seq":1}',
  );
  const r = await repo.push();
  t.same(r.pushed, [id], 'the signed commit is what is pushed');
  t.ok(verified(remote, git(remote, 'rev-parse', 'main')));
  t.notOk(
    readdirSync(path.join(daemonDir, '.git')).some((f) => f.startsWith('rotor-sign')),
    'nothing left in the git directory',
  );
});

t.test('a push race re-creates the commits (replay): each one signed', async (t) => {
  const { root, remote, daemonDir, open, verified } = setup(t);
  const repo = await open();
  for (let i = 1; i <= 3; i++) await audit(repo, `{"seq":${i}}`);
  const bob = person(root, remote, 'bob');
  writeFileSync(path.join(bob, 'app.yaml'), 'kind: Secret\n');
  git(bob, 'add', 'app.yaml');
  git(bob, 'commit', '-q', '-m', 'bob adds a secret');
  git(bob, 'push', '-q');
  const r = await repo.push();
  t.equal(r.attempts, 2, 'rejected once, then re-created and pushed');
  t.equal(r.pushed.length, 3);
  t.same(rotorCommits(remote).slice(0, 3).reverse(), r.pushed);
  for (const id of r.pushed) t.ok(verified(remote, id), `${id.slice(0, 12)}: git verify-commit takes it`);
  t.equal(git(remote, 'rev-parse', 'main~3'), git(bob, 'rev-parse', 'HEAD'), "bob's commit below them");
  t.equal(git(daemonDir, 'rev-parse', 'HEAD'), r.head);
  t.equal(git(daemonDir, 'for-each-ref', 'refs/rotor/'), '', 'no temporary ref left');

  // the same through sync() (the sync before a fetch): replayed, signed
  await audit(repo, '{"seq":4}');
  git(bob, 'pull', '-q', '--rebase');
  writeFileSync(path.join(bob, 'more.yaml'), 'kind: Policy\n');
  git(bob, 'add', 'more.yaml');
  git(bob, 'commit', '-q', '-m', 'bob again');
  git(bob, 'push', '-q');
  t.equal((await repo.sync()).rebased, 1);
  const head = git(daemonDir, 'rev-parse', 'HEAD');
  t.ok(verified(daemonDir, head), 'the replayed commit on the clone is signed');
  t.same((await repo.push()).pushed, [head]);
});

t.test('a remote change of the audit directory (a real rebase): the rebased commits are signed', async (t) => {
  const { root, remote, daemonDir, open, verified } = setup(t);
  const repo = await open();
  await audit(repo, '{"seq":1}');
  await audit(repo, '{"seq":2}');
  const carol = person(root, remote, 'carol');
  writeFileSync(path.join(carol, 'audit', 'README.md'), 'the audit log: do not edit\n');
  git(carol, 'add', '-A');
  git(carol, 'commit', '-q', '-m', 'carol explains the audit directory');
  git(carol, 'push', '-q');
  const r = await repo.push();
  t.equal(r.pushed.length, 2);
  t.equal(git(remote, 'rev-parse', 'main~2'), git(carol, 'rev-parse', 'HEAD'), 'rebased onto carol');
  for (const id of r.pushed) t.ok(verified(remote, id), `${id.slice(0, 12)}: signed after the rebase`);
  t.equal(git(daemonDir, 'status', '--porcelain'), '');
});

t.test(
  'without a signer the commits are unsigned; a commit made meanwhile is signed before it is pushed',
  async (t) => {
    const { remote, daemonDir, open, verified, setSigning } = setup(t);
    setSigning(false);
    const repo = await open();
    const plain = await audit(repo, '{"seq":1}');
    t.notOk(hasSignature(daemonDir, plain!), 'audit.sign off: no gpgsig header, as before');
    await repo.push();
    t.notOk(hasSignature(remote, git(remote, 'rev-parse', 'main')), 'pushed unsigned');

    const before = await audit(repo, '{"seq":2}'); // made while off...
    t.notOk(hasSignature(daemonDir, before!));
    setSigning(true); // ...and audit.sign is turned on before the push
    const r = await repo.push();
    t.equal(r.pushed.length, 1);
    t.not(r.pushed[0], before, 'the commit was signed (a new id) before it left');
    t.ok(verified(remote, r.pushed[0]!));
    t.equal(git(daemonDir, 'rev-parse', 'HEAD'), r.pushed[0], 'and the branch moved to it');
    t.equal(git(daemonDir, 'diff', before!, r.pushed[0]!), '', 'the same tree');
    t.equal(git(daemonDir, 'rev-parse', `${r.pushed[0]}^`), plain, 'the same parent');
  },
);

t.test("audit.branch: the branch's first commit is signed", async (t) => {
  const { root, remote, verified, key } = setup(t);
  const created = await ensureAuditBranch({
    url: remote,
    from: 'main',
    branch: 'rotor-audit',
    auditDir: 'audit',
    scratch: path.join(root, 'scratch'),
    author: { name: 'rotor', email: 'rotor@localhost' },
    networkTimeoutMs: 60_000,
    signer: (payload) => sshsigSign(payload, key),
  });
  t.ok(created);
  const root1 = git(remote, 'rev-parse', 'rotor-audit');
  t.equal(git(remote, 'rev-list', '--count', 'rotor-audit'), '1');
  t.ok(verified(remote, root1), 'git verify-commit takes it');
  t.equal(git(remote, 'show', `rotor-audit:${AUDIT}`), '{"seq":0}', 'with the log so far');
  const unsignedRemote = path.join(root, 'unsigned.git');
  execFileSync('git', ['clone', '-q', '--bare', remote, unsignedRemote]);
  git(unsignedRemote, 'branch', '-D', 'rotor-audit');
  await ensureAuditBranch({
    url: unsignedRemote,
    from: 'main',
    branch: 'rotor-audit',
    auditDir: 'audit',
    scratch: path.join(root, 'scratch'),
    author: { name: 'rotor', email: 'rotor@localhost' },
    networkTimeoutMs: 60_000,
  });
  t.notOk(hasSignature(unsignedRemote, 'rotor-audit'), 'without a signer, unsigned');
});

t.test('a push race with two writers: every commit of the daemon that lands is signed', async (t) => {
  const { root, remote, open, verified } = setup(t);
  const repo = await open({ retry: { attempts: 8, baseMs: 10, maxDelayMs: 300, totalMs: 60_000 } });
  const ROUNDS = 10;
  const writer = async (i: number) => {
    const dir = path.join(root, `writer${i}`);
    await gitAsync(root, 'clone', '-q', remote, dir);
    mkdirSync(path.join(dir, 'apps'), { recursive: true });
    for (let r = 0; r < ROUNDS; r++) {
      writeFileSync(path.join(dir, 'apps', `w${i}-r${r}.yaml`), `kind: Secret\nname: w${i}/r${r}\n`);
      await gitAsync(dir, 'add', '-A');
      await gitAsync(dir, 'commit', '-q', '-m', `writer ${i} round ${r}`);
      for (let attempt = 1; ; attempt++) {
        if (attempt > 500) throw new Error(`writer ${i} could not push round ${r}`);
        try {
          await gitAsync(dir, 'push', '-q', 'origin', 'HEAD:refs/heads/main');
          break;
        } catch {
          await gitAsync(dir, 'fetch', '-q', 'origin', 'main');
          await gitAsync(dir, 'rebase', '-q', 'origin/main');
        }
      }
    }
  };
  const daemon = async () => {
    for (let r = 1; r <= ROUNDS; r++) {
      await audit(repo, `{"seq":${r}}`);
      await repo.push().catch((e: unknown) => {
        if ((e as { code?: string }).code !== 'GIT_PUSH_GAVE_UP') throw e; // sent with the next push
      });
    }
  };
  await Promise.all([daemon(), writer(0), writer(1)]);
  await repo.push();
  t.equal(await repo.unpushed(), 0);
  const ours = rotorCommits(remote);
  t.equal(ours.length, ROUNDS, 'one commit per entry');
  t.same(
    ours.filter((id) => !verified(remote, id)),
    [],
    'git verify-commit takes every one of them',
  );
  t.equal(git(remote, 'show', `main:${AUDIT}`).split('\n').length, ROUNDS + 1, 'every entry once');
});
