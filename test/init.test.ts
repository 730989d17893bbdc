/**
 * `rotor init`: the scaffold validates cleanly, nothing is overwritten without --force, the keys stay
 * out of git, and a daemon runs on what init made (version 1 of the example secret, audit pushed).
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { verifyAuditDir } from '../src/audit/log.js';
import { INIT_HELP, initCommand } from '../src/cli/init.js';
import type { Io } from '../src/cli/io.js';
import { Daemon } from '../src/daemon/daemon.js';
import { jsonLogger } from '../src/log.js';
import { integrity, packTarball } from '../src/util/tarball.js';
import { commitAll, FIXED_NOW, git, ROOT, rotor, tempDir } from './helpers.js';

/**
 * A stand-in rotor package to vendor: tests run rotor from its sources, which vendor nothing
 * (test/packages.test.ts vendors the real release tarball and runs npm ci on the scaffold).
 */
const FAKE_MANIFEST = { name: 'rotor', version: '9.8.7', license: 'Apache-2.0', bin: { rotor: 'dist/rotor.cjs' } };
const FAKE_TARBALL = packTarball([
  { path: 'package.json', bytes: Buffer.from(JSON.stringify(FAKE_MANIFEST)) },
  { path: 'dist/rotor.cjs', bytes: Buffer.from('#!/usr/bin/env node\n'), executable: true },
]);

async function init(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}, vendor = true) {
  if (vendor && !args.includes('--rotor-tarball')) {
    const file = path.join(cwd, 'rotor-9.8.7.tgz');
    writeFileSync(file, FAKE_TARBALL);
    args = [...args, '--rotor-tarball', file];
  }
  let stdout = '';
  let stderr = '';
  const io: Io = {
    stdout: (s) => void (stdout += s),
    stderr: (s) => void (stderr += s),
    env,
    cwd,
    now: () => FIXED_NOW,
    isTTY: false,
  };
  const code = await initCommand(args, io);
  return { code, stdout, stderr };
}

const SCAFFOLD = [
  'rotor.yaml',
  'policies.yaml',
  'example/secrets.yaml',
  'consumers.yaml',
  '.gitattributes',
  '.gitignore',
  'vendor/rotor-9.8.7.tgz',
  'package.json',
  'package-lock.json',
  '.github/workflows/rotor.yml',
];

async function validateClean(t: Parameters<Parameters<typeof t.test>[1]>[0], dir: string) {
  const v = await rotor(['validate', dir, '--format', 'json']);
  const out = JSON.parse(v.stdout) as { valid: boolean; counts: Record<string, number>; problems: unknown[] };
  t.equal(v.code, 0, 'rotor validate exits 0');
  t.same(out.problems, [], 'no errors and no warnings');
  return out;
}

t.test('the scaffold passes rotor validate with no problems; keys 0600 outside the repository', async (t) => {
  const root = tempDir(t);
  const r = await init(['repo', '--data-dir', 'data'], root);
  t.equal(r.code, 0, r.stderr);
  const dir = path.join(root, 'repo');
  const data = path.join(root, 'data');
  for (const f of SCAFFOLD) t.ok(existsSync(path.join(dir, f)), `${f} made`);
  t.notOk(existsSync(path.join(dir, 'audit')), 'no audit directory: the daemon makes it');
  t.match(r.stdout, /Next steps:/);
  t.match(r.stdout, new RegExp(`rotor daemon --repo \\S+ --data-dir ${data.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  t.match(r.stdout, /recipient: "age1[a-z0-9]+"/);

  // Validate with node_modules present (the editor schemas), including YAML that is not a declaration.
  cpSync(path.join(ROOT, 'schemas'), path.join(dir, 'node_modules/rotor/schemas'), { recursive: true });
  mkdirSync(path.join(dir, 'node_modules/other'), { recursive: true });
  writeFileSync(path.join(dir, 'node_modules/other/config.yaml'), 'kind: Nonsense\n');
  const out = await validateClean(t, dir);
  t.match(out.counts, { secrets: 1, policies: 1, consumers: 1 });

  // Every modeline resolves, relative to its file, to the schema in node_modules/rotor.
  for (const f of SCAFFOLD.filter((x) => x.endsWith('.yaml'))) {
    const m = /^# yaml-language-server: \$schema=(\S+)$/m.exec(readFileSync(path.join(dir, f), 'utf8'));
    t.ok(m && existsSync(path.resolve(path.dirname(path.join(dir, f)), m[1]!)), `${f}: the schema path resolves`);
  }
  t.match(
    readFileSync(path.join(dir, 'consumers.yaml'), 'utf8'),
    new RegExp(`^uid: ${process.getuid!()} +# CHANGE THIS`, 'm'),
  );

  const wf = readFileSync(path.join(dir, '.github/workflows/rotor.yml'), 'utf8');
  t.match(wf, 'npx rotor validate --format github');
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a GitHub Actions expression, not a template
  t.match(wf, 'npx rotor plan --base "origin/${{ github.base_ref }}" --format markdown >> "$GITHUB_STEP_SUMMARY"');
  t.match(wf, /pull_request/);

  // git: a repository was made; the audit log is not text to git; the keys are nowhere in it.
  t.equal(git(dir, 'rev-parse', '--show-toplevel'), dir);
  t.equal(git(dir, 'check-attr', 'text', 'audit/2026-11.jsonl'), 'audit/2026-11.jsonl: text: unset');
  for (const k of ['identity.age', 'signing.key'])
    t.equal(statSync(path.join(data, k)).mode & 0o777, 0o600, `${k} is 0600`);
  t.equal(statSync(data).mode & 0o777, 0o700, 'the data directory is 0700');
  t.notMatch(git(dir, 'status', '--porcelain', '--untracked-files=all'), /identity|signing|data/);
});

t.test(
  'rotor is vendored and pinned by its checksum, never a version range; a source checkout has nothing to vendor',
  async (t) => {
    const root = tempDir(t);
    const r = await init(['repo', '--data-dir', 'data'], root);
    t.equal(r.code, 0, r.stderr);
    const dir = path.join(root, 'repo');
    t.same(readFileSync(path.join(dir, 'vendor/rotor-9.8.7.tgz')), FAKE_TARBALL, 'the given tarball, byte for byte');
    const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
    t.same(pkg.devDependencies, { rotor: 'file:vendor/rotor-9.8.7.tgz' });
    const lock = JSON.parse(readFileSync(path.join(dir, 'package-lock.json'), 'utf8'));
    t.match(lock.packages['node_modules/rotor'], {
      version: '9.8.7',
      resolved: 'file:vendor/rotor-9.8.7.tgz',
      integrity: integrity(FAKE_TARBALL),
      bin: { rotor: 'dist/rotor.cjs' },
    });
    t.notMatch(readFileSync(path.join(dir, 'package.json'), 'utf8'), /[\^~]\d|"\*"|latest/, 'no range anywhere');
    t.match(r.stdout, /npm ci +# rotor from vendor\//);
    t.equal(git(dir, 'check-attr', 'binary', 'vendor/rotor-9.8.7.tgz'), 'vendor/rotor-9.8.7.tgz: binary: set');

    const bare = await init(['bare', '--data-dir', 'data2'], root, {}, false);
    t.equal(bare.code, 1, 'from a source checkout, without --rotor-tarball: refused');
    t.match(bare.stderr, /runs from a source checkout.*npm run release.*--rotor-tarball/);
    t.notOk(existsSync(path.join(root, 'bare')), 'nothing written');
    t.notOk(existsSync(path.join(root, 'data2')), 'no keys made');

    const other = path.join(root, 'other.tgz');
    writeFileSync(
      other,
      packTarball([{ path: 'package.json', bytes: Buffer.from('{"name":"evil","version":"1.0.0"}') }]),
    );
    const wrong = await init(['wrong', '--data-dir', 'data3', '--rotor-tarball', other], root);
    t.equal(wrong.code, 1);
    t.match(wrong.stderr, /is not a rotor package/);
    writeFileSync(other, 'not a tarball');
    const junk = await init(['junk', '--data-dir', 'data3', '--rotor-tarball', other], root);
    t.equal(junk.code, 1);
    t.match(junk.stderr, /is not an npm package tarball/);
  },
);

t.test('--data-dir from ROTOR_DATA_DIR; a data directory inside DIR is ignored by git and by rotor', async (t) => {
  const root = tempDir(t);
  const dir = path.join(root, 'repo');
  const r = await init([dir], root, { ROTOR_DATA_DIR: path.join(dir, 'keys') });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /warning: .* is inside the repository/);
  t.ok(existsSync(path.join(dir, 'keys/identity.age')));
  t.match(readFileSync(path.join(dir, '.gitignore'), 'utf8'), /^\/keys\/$/m);
  const status = git(dir, 'status', '--porcelain', '--untracked-files=all');
  t.notMatch(status, /keys/, 'git status does not list the keys');
  t.match(status, /rotor\.yaml/);
  git(dir, 'add', '-A');
  t.notMatch(git(dir, 'diff', '--cached', '--name-only'), /keys/, 'git add -A does not take them');
  // The daemon's clone lives in the data directory: its YAML is not read as declarations here.
  mkdirSync(path.join(dir, 'keys/repo'));
  cpSync(path.join(dir, 'policies.yaml'), path.join(dir, 'keys/repo/policies.yaml'));
  await validateClean(t, dir);
});

t.test('refuses to overwrite, listing the files; --force overwrites but keeps keys and package.json', async (t) => {
  const root = tempDir(t);
  const dir = path.join(root, 'repo');
  t.equal((await init([dir, '--data-dir', path.join(root, 'data')], root)).code, 0);
  const identity = readFileSync(path.join(root, 'data/identity.age'), 'utf8');
  writeFileSync(path.join(dir, 'policies.yaml'), 'mine\n');
  writeFileSync(path.join(dir, 'package.json'), '{"name":"mine"}\n');
  const again = await init([dir, '--data-dir', path.join(root, 'data')], root);
  t.equal(again.code, 1);
  t.match(again.stderr, /these files exist .*nothing was written \(--force overwrites them\)/);
  for (const f of ['rotor.yaml', 'policies.yaml', 'example/secrets.yaml', '.github/workflows/rotor.yml'])
    t.match(again.stderr, `  ${f}\n`);
  t.notMatch(again.stderr, /package\.json/, 'an existing package.json is never a conflict: it is kept');
  t.equal(readFileSync(path.join(dir, 'policies.yaml'), 'utf8'), 'mine\n', 'untouched');

  // One existing file in a fresh directory is enough to refuse, before the keys are made.
  const other = path.join(root, 'other');
  mkdirSync(other);
  writeFileSync(path.join(other, 'rotor.yaml'), 'kind: Config\n');
  const one = await init([other, '--data-dir', path.join(root, 'data2')], root);
  t.equal(one.code, 1);
  t.match(one.stderr, /this file exists[^\n]*\n {2}rotor\.yaml\n$/);
  t.notOk(existsSync(path.join(root, 'data2')), 'no keys made');

  const forced = await init([dir, '--data-dir', path.join(root, 'data'), '--force'], root);
  t.equal(forced.code, 0, forced.stderr);
  t.not(readFileSync(path.join(dir, 'policies.yaml'), 'utf8'), 'mine\n', 'overwritten');
  t.equal(readFileSync(path.join(dir, 'package.json'), 'utf8'), '{"name":"mine"}\n', 'package.json kept');
  t.match(forced.stdout, /Kept the existing package\.json/);
  t.match(forced.stdout, /Kept the daemon's existing keys/);
  t.equal(readFileSync(path.join(root, 'data/identity.age'), 'utf8'), identity, 'the keys are never replaced');
});

t.test('a data directory that cannot be made: says so, writes nothing', async (t) => {
  const root = tempDir(t);
  writeFileSync(path.join(root, 'file'), '');
  const r = await init(['repo', '--data-dir', 'file/keys'], root);
  t.equal(r.code, 1);
  t.match(r.stderr, /cannot create the daemon's keys in .*Pass --data-dir DIR/);
  t.notOk(existsSync(path.join(root, 'repo')), 'nothing written');
  const half = path.join(root, 'half');
  mkdirSync(half);
  writeFileSync(path.join(half, 'signing.key'), 'x', { mode: 0o600 });
  const h = await init(['repo', '--data-dir', half], root);
  t.equal(h.code, 1);
  t.match(h.stderr, /rotor never replaces keys/);
  await t.rejects(
    init(['repo', '--data-dir', 'repo'], root),
    /must not be DIR itself/,
    'the data directory is not the repository',
  );
});

t.test('--help', async (t) => {
  const r = await init(['--help'], '/');
  t.equal(r.code, 0);
  t.equal(r.stdout, INIT_HELP);
  for (const s of ['--data-dir', '--force', 'ROTOR_DATA_DIR', '.gitattributes', 'rotor keygen', 'git init'])
    t.match(r.stdout, s);
});

t.test('rotor daemon runs on what init made: version 1 of the example secret, audit log pushed', async (t) => {
  const root = tempDir(t, 'rotor-init-');
  const dir = path.join(root, 'repo');
  const data = path.join(root, 'data');
  t.equal((await init([dir, '--data-dir', data], root)).code, 0);
  git(dir, 'config', 'commit.gpgsign', 'false');
  commitAll(dir, 'rotor init');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', dir, remote]);
  let logs = '';
  const d = new Daemon({
    repo: remote,
    branch: 'main',
    dataDir: data,
    breakGlass: [],
    log: jsonLogger((l) => void (logs += l)),
    commitDelayMs: 50,
    socketDir: path.join(root, 'sockets'),
  });
  await d.start();
  let stopped = false;
  t.teardown(() => (stopped ? undefined : d.stop()));
  const s = d.served('example/api-token');
  t.equal(s?.version, 1, 'the example secret has version 1');
  t.match(s?.value, /^[A-Za-z0-9_-]{40}$/);
  t.ok(existsSync(path.join(root, 'sockets/example-app.sock')), 'the example consumer has its socket');
  await d.stop();
  stopped = true;
  t.notMatch(logs, /"level":"error"/, 'no errors logged');
  t.not(git(remote, 'log', '--format=%H', 'main', '--', 'audit/'), '', 'a commit on the remote touches audit/');
  const check = path.join(root, 'check');
  execFileSync('git', ['clone', '-q', remote, check]);
  const v = await verifyAuditDir(path.join(check, 'audit'));
  t.ok(v.result.ok, 'the pushed audit log verifies');
  const lines = readdirSync(path.join(check, 'audit')).flatMap((f) =>
    readFileSync(path.join(check, 'audit', f), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: string; secret?: string; to?: number }),
  );
  t.ok(
    lines.some((e) => e.event === 'created' && e.secret === 'example/api-token' && e.to === 1),
    'created, version 1, in the audit log',
  );
  t.equal(
    git(check, 'check-attr', 'text', ...readdirSync(path.join(check, 'audit')).map((f) => `audit/${f}`))
      .split('\n')
      .every((l) => l.endsWith('text: unset')),
    true,
  );
});
