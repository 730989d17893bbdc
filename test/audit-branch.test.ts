/**
 * audit.branch: the daemon keeps its log on a branch of its own, made from the declarations' audit
 * directory, and never writes to the declarations' branch, so a person's push there never races it.
 * Real git: a bare remote, a person's clone, the daemon's clones.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { verifyAuditDir } from '../src/audit/log.js';
import { commitAll, git, rotor, tempDir } from './helpers.js';
import { world } from './world.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

const POLICY = 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n';
const SECRET = 'kind: Secret\nname: app/key\npolicy: p\ngenerate: {}\n';
const BRANCH_CONFIG = 'kind: Config\nsync: { interval: 1d }\naudit: { branch: rotor-audit }\n';

/** The log on a branch of the remote, from a fresh clone of it, after checking its chain. */
async function branchLog(t: T, remote: string, branch: string) {
  const dir = path.join(tempDir(t), 'check');
  execFileSync('git', ['clone', '-q', '--branch', branch, remote, dir]);
  const v = await verifyAuditDir(path.join(dir, 'audit'));
  t.ok(v.result.ok, `the chain on ${branch} verifies: ${JSON.stringify(v.result).slice(0, 300)}`);
  const top = readdirSync(dir).filter((f) => f !== '.git');
  const entries = readdirSync(path.join(dir, 'audit'))
    .sort()
    .flatMap((f) =>
      readFileSync(path.join(dir, 'audit', f), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { seq: number; event: string; secret?: string }),
    );
  return { top, entries };
}

const authors = (remote: string, ref: string) => git(remote, 'log', '--format=%an', ref).split('\n');

t.test('audit.branch: the log goes to its own branch; the declarations branch is never written', async (t) => {
  const w = await world(t, { 'rotor.yaml': BRANCH_CONFIG, 'policy.yaml': POLICY, 'secret.yaml': SECRET });
  const mainBefore = git(w.remote, 'rev-parse', 'main');
  const d = await w.start();
  t.equal(d.status().audit.branch, 'rotor-audit', 'status names the branch');
  t.match((await rotor(['status', '--data-dir', w.dataDir])).stdout, /audit: .*\(to branch rotor-audit\)/);
  await d.rotateNow('app/key', 'first');
  // A person pushes to the declarations' branch without pulling first: the daemon never moved it.
  writeFileSync(path.join(w.person, 'notes.yaml'), '# not a declaration\n');
  commitAll(w.person, 'a person, meanwhile');
  git(w.person, 'push', '-q', 'origin', 'main');
  await d.rotateNow('app/key', 'second');
  await d.stop();
  t.equal(git(w.remote, 'rev-parse', 'main'), git(w.person, 'rev-parse', 'HEAD'), "main is the person's push");
  t.ok(
    git(w.remote, 'merge-base', '--is-ancestor', mainBefore, 'main') === '',
    'main only moved forward, by the person',
  );
  t.notOk(authors(w.remote, 'main').includes('rotor'), 'no commit of the daemon on main');
  const { top, entries } = await branchLog(t, w.remote, 'rotor-audit');
  t.same(top, ['audit'], 'the audit branch holds the audit directory only');
  t.same(
    entries.filter((e) => e.secret === 'app/key').map((e) => e.event),
    ['created', 'rotated', 'rotated'],
  );
  t.ok(
    authors(w.remote, 'rotor-audit').every((a) => a === 'rotor'),
    'every commit on it is the daemon’s',
  );

  // A restart goes on with the same chain, on the same branch.
  const d2 = await w.start();
  await d2.rotateNow('app/key', 'third');
  await d2.stop();
  const again = await branchLog(t, w.remote, 'rotor-audit');
  t.equal(again.entries.length, entries.length + again.entries.filter((e) => e.seq > entries.length).length);
  t.ok(again.entries.at(-1)!.seq > entries.at(-1)!.seq, 'the chain goes on');
  t.notOk(authors(w.remote, 'main').includes('rotor'));
});

t.test('switching to audit.branch: the new branch starts with the log so far, its chain unbroken', async (t) => {
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': POLICY,
    'secret.yaml': SECRET,
  });
  const d = await w.start();
  await d.rotateNow('app/key', 'before the switch');
  await d.stop();
  const before = readdirSync(path.join(w.root, 'data', 'repo', 'audit')).length;
  t.ok(before > 0, 'the log was on main');
  w.push('rotor.yaml', BRANCH_CONFIG, 'keep the audit log on its own branch');
  const mainAtSwitch = git(w.remote, 'rev-parse', 'main');
  const d2 = await w.start();
  await d2.rotateNow('app/key', 'after the switch');
  await d2.stop();
  t.equal(git(w.remote, 'rev-parse', 'main'), mainAtSwitch, 'main is not written after the switch');
  const { entries } = await branchLog(t, w.remote, 'rotor-audit');
  t.equal(entries[0]!.seq, 1, 'from the first entry');
  const keyEvents = entries.filter((e) => e.secret === 'app/key').map((e) => e.event);
  t.same(keyEvents, ['created', 'rotated', 'rotated'], 'the entries from before and after the switch');
});

t.test('rotor audit verify reads the log from the audit branch; a clone without it is told to fetch it', async (t) => {
  const w = await world(t, { 'rotor.yaml': BRANCH_CONFIG, 'policy.yaml': POLICY, 'secret.yaml': SECRET });
  const d = await w.start();
  await d.rotateNow('app/key', 'one');
  await d.stop();
  const full = path.join(tempDir(t), 'full');
  execFileSync('git', ['clone', '-q', w.remote, full]);
  const ok = await rotor(['audit', 'verify', full]);
  t.equal(ok.code, 0, ok.stdout + ok.stderr);
  t.match(ok.stdout, /^origin\/rotor-audit:audit: 3 entries in 1 file, chain intact, head 3:[0-9a-f]{64}\n$/);
  const single = path.join(tempDir(t), 'single');
  execFileSync('git', ['clone', '-q', '--single-branch', w.remote, single]);
  const missing = await rotor(['audit', 'verify', single]);
  t.equal(missing.code, 3);
  t.match(missing.stderr, /on branch rotor-audit .*git fetch origin rotor-audit \[AUDIT_BRANCH_MISSING\]/);
  // An edited line on the branch is found there.
  const edit = path.join(tempDir(t), 'edit');
  execFileSync('git', ['clone', '-q', '--branch', 'rotor-audit', w.remote, edit]);
  const file = path.join(edit, 'audit', readdirSync(path.join(edit, 'audit'))[0]!);
  writeFileSync(file, readFileSync(file, 'utf8').replace('"one"', '"two"'));
  commitAll(edit, 'an edit');
  git(edit, 'push', '-q', 'origin', 'rotor-audit');
  git(full, 'fetch', '-q', 'origin');
  const broken = await rotor(['audit', 'verify', full]);
  t.equal(broken.code, 1);
  t.match(broken.stdout, /^origin\/rotor-audit:audit\/\d{4}-\d\d\.jsonl:3: error: .*\[AUDIT_HASH_MISMATCH\]/);
});
