/**
 * A push that landed although git reported a failure (the connection broke after the remote updated
 * its branch), seen by prove/1-faults.mjs: when it carried re-created (replayed) audit commits, the
 * remote then holds the daemon's entries under other commit ids. The next push must see that they are
 * there, and send only what is new, even while audit lines are being appended (uncommitted) in the
 * clone, as they are whenever rotations run: a rebase would refuse to run over those lines, and the
 * push would fail for as long as rotations go on. Real git; a wrapper first on PATH makes pushes fail.
 * And an index.lock left by a killed git (also seen there) is removed before the next commit.
 */
import { execFileSync } from 'node:child_process';
import { appendFileSync, chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { openRepo } from '../src/git/repo.js';
import { git, gitInitBare, tempDir } from './helpers.js';

/** ROOT/remote.git, a bare repository whose main holds one commit (a rotor.yaml), pushed from ROOT/seed. */
function seededRemote(root: string): string {
  const remote = path.join(root, 'remote.git');
  gitInitBare(remote);
  const seed = path.join(root, 'seed');
  git(root, 'clone', '-q', remote, seed);
  writeFileSync(path.join(seed, 'rotor.yaml'), 'kind: Config\n');
  git(seed, 'add', '-A');
  git(seed, 'commit', '-q', '-m', 'seed');
  git(seed, 'push', '-q', 'origin', 'HEAD:main');
  return remote;
}

t.test(
  'entries that landed under replayed commits are not pushed again; the next push works over uncommitted appends',
  async (t) => {
    const root = tempDir(t, 'rotor-ambiguous-push-');
    const remote = seededRemote(root);

    // Each push takes its outcome from the next line of PLAN: "before" fails without pushing; "after"
    // pushes, appends an audit line in the clone (a rotation writing meanwhile), then fails.
    const bin = path.join(root, 'bin');
    mkdirSync(bin);
    const plan = path.join(root, 'plan');
    const clone = path.join(root, 'clone');
    const real = execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim();
    writeFileSync(
      path.join(bin, 'git'),
      `#!/bin/bash
sub=""; skip=0
for a in "$@"; do if [ "$skip" = 1 ]; then skip=0; continue; fi; case "$a" in -c|-C) skip=1;; -*) ;; *) sub="$a"; break;; esac; done
if [ "$sub" = push ]; then
  w=$(head -n1 ${JSON.stringify(plan)} 2>/dev/null); sed -i 1d ${JSON.stringify(plan)} 2>/dev/null
  case "$w" in
    before) echo "fatal: injected" >&2; exit 128;;
    after) ${JSON.stringify(real)} "$@"; echo '{"seq":"appended meanwhile"}' >> ${JSON.stringify(path.join(clone, 'audit', 'log.jsonl'))}; echo "fatal: injected after" >&2; exit 128;;
  esac
fi
exec ${JSON.stringify(real)} "$@"
`,
    );
    chmodSync(path.join(bin, 'git'), 0o755);
    const PATH = process.env.PATH;
    process.env.PATH = `${bin}:${PATH}`;
    t.teardown(() => void (process.env.PATH = PATH));

    const repo = await openRepo({
      url: remote,
      dir: clone,
      branch: 'main',
      retry: { attempts: 4, baseMs: 1, maxDelayMs: 5, totalMs: 30_000 },
    });
    const file = path.join(clone, 'audit', 'log.jsonl');
    mkdirSync(path.dirname(file));
    appendFileSync(file, '{"seq":1}\n');
    await repo.commitAudit(['audit'], 'audit 1');
    // The first push fails; the retry re-creates the commit (replay) and pushes it, which lands, but
    // git says it failed; a line is appended meanwhile. The third attempt must not need a rebase.
    writeFileSync(plan, 'before\nafter\n');
    const first = await repo.push();
    t.equal(first.pushed.length, 0, 'nothing left to push: the entry is there');
    t.equal(git(remote, 'show', 'main:audit/log.jsonl'), '{"seq":1}', 'the remote holds the entry, once');

    // With the appended line still uncommitted, the next entries go out by themselves.
    appendFileSync(file, '{"seq":2}\n');
    await repo.commitAudit(['audit'], 'audit 2');
    appendFileSync(file, '{"seq":3}\n'); // a rotation writing while git works
    const second = await repo.push();
    t.equal(second.pushed.length, 1);
    t.same(
      git(remote, 'show', 'main:audit/log.jsonl').split('\n'),
      ['{"seq":1}', '{"seq":"appended meanwhile"}', '{"seq":2}'],
      'each entry once, in order',
    );
    t.equal(git(clone, 'rev-parse', 'main'), git(remote, 'rev-parse', 'main'), 'the clone is on the remote head');
    t.match(
      git(clone, 'status', '--porcelain', '--untracked-files=no'),
      /audit\/log\.jsonl/,
      'the line being written stays uncommitted, untouched',
    );
  },
);

t.test('an index.lock left by a killed git does not fail every later commit', async (t) => {
  const root = tempDir(t, 'rotor-stale-lock-');
  const remote = seededRemote(root);
  const warnings: string[] = [];
  const repo = await openRepo({
    url: remote,
    dir: path.join(root, 'clone'),
    branch: 'main',
    onWarning: (w) => void warnings.push(w.code),
  });
  mkdirSync(path.join(repo.dir, 'audit'));
  appendFileSync(path.join(repo.dir, 'audit', 'log.jsonl'), '{"seq":1}\n');
  // What a git commit killed by its time limit (or any signal) leaves behind.
  writeFileSync(path.join(repo.dir, '.git', 'index.lock'), '');
  t.ok(await repo.commitAudit(['audit'], 'audit 1'), 'the commit is made');
  t.same(warnings, ['GIT_STALE_LOCK'], 'and the stale lock reported');
});
