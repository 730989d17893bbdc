/** rotor validate as a user meets it: exit codes, the three formats, help, the bundled example. */
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { copyFixture, ROOT, rotor } from './helpers.js';

t.test('the bundled example is valid, without warnings', async (t) => {
  const r = await rotor(['validate', 'policies']);
  t.equal(r.code, 0, r.stdout);
  t.equal(r.stdout, 'policies: valid (12 secrets, 4 policies, 6 targets, 2 agents, 4 consumers; 0 warnings)\n');
});

t.test('the built binary validates the example and fails on a bad repository', async (t) => {
  const bin = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
  const ok = spawnSync(process.execPath, [bin, 'validate', 'policies'], { cwd: ROOT, encoding: 'utf8' });
  t.equal(ok.status, 0, ok.stderr);
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(path.join(dir, 'bad.yaml'), 'kind: Policy\nname: p\nevery: 1d\noverlap: 2d\n');
  const bad = spawnSync(process.execPath, [bin, 'validate', dir], { encoding: 'utf8' });
  t.equal(bad.status, 1);
  t.match(
    bad.stdout,
    /^bad.yaml:4:10: error: overlap 2d must be shorter than the rotation interval, every 1d; shorten the overlap or rotate less often \[OVERLAP_TOO_LONG\]$/m,
  );
  t.match(bad.stdout, /: invalid \(1 error, 1 warning\)\n$/, 'the unused policy is a warning');
});

t.test('every problem is reported, not only the first', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(path.join(dir, 'a.yaml'), 'kind: Secret\nname: x/y\npolicy: nope\ngenerate: { length: 8 }\n');
  writeFileSync(path.join(dir, 'b.yaml'), 'kind: Target\nname: t\nengine: oracle\nagent: db-host-1\n');
  const r = await rotor(['validate', dir]);
  t.equal(r.code, 1);
  const lines = r.stdout.trim().split('\n');
  t.same(
    lines.slice(0, -1).map((l) => l.replace(/: error: .*\[/, ' [')),
    ['a.yaml:3:9 [POLICY_UNKNOWN]', 'a.yaml:4:21 [ENTROPY_TOO_LOW]', 'b.yaml:3:9 [SCHEMA_ENUM]'],
  );
});

t.test('--format json and --format github', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(path.join(dir, 'bad.yaml'), 'kind: Secret\nname: Upper/Case\npolicy: standard\ngenerate: {}\n');
  const json = await rotor(['validate', dir, '--format', 'json']);
  t.equal(json.code, 1);
  const out = JSON.parse(json.stdout);
  t.equal(out.valid, false);
  t.match(out.problems, [
    { file: 'bad.yaml', line: 2, col: 7, severity: 'error', code: 'NAME_INVALID', message: /try "upper\/case"/ },
  ]);
  t.match(out.counts, { secrets: 5, policies: 1 });

  const gh = await rotor(['validate', 'repo', '--format', 'github'], { cwd: path.dirname(dir), env: {} });
  t.equal(gh.code, 2, 'a missing directory is a usage error');
  const gh2 = await rotor(['validate', path.basename(dir), '--format', 'github'], { cwd: path.dirname(dir) });
  t.equal(gh2.code, 1);
  t.match(
    gh2.stdout,
    new RegExp(
      `^::error file=${path.basename(dir)}/bad.yaml,line=2,col=7,title=NAME_INVALID::name "Upper/Case" is not valid`,
      'm',
    ),
  );
  const viaEnv = await rotor(['validate', dir], { env: { ROTOR_FORMAT: 'json' } });
  t.doesNotThrow(() => JSON.parse(viaEnv.stdout), 'ROTOR_FORMAT selects the format');
});

t.test('GitHub annotations escape what would break them', async (t) => {
  const { githubLine } = await import('../src/cli/report.js');
  t.equal(
    githubLine(
      { file: 'a,b:c.yaml', line: 1, col: 2, severity: 'warning', code: 'UNUSED', message: '50% done\nnext' },
      'dir',
    ),
    '::warning file=dir/a%2Cb%3Ac.yaml,line=1,col=2,title=UNUSED::50%25 done%0Anext',
  );
});

t.test('usage errors exit 2 with a hint; help exits 0', async (t) => {
  let r = await rotor(['validate', '--format', 'xml', 'policies']);
  t.equal(r.code, 2);
  t.match(r.stderr, /--format must be one of text, json, github/);
  t.match(r.stderr, /rotor validate --help/);
  r = await rotor(['validate', 'policies', 'extra']);
  t.equal(r.code, 2);
  r = await rotor(['validate', '--bogus']);
  t.equal(r.code, 2);
  t.match(r.stderr, /Unknown option '--bogus'/);
  r = await rotor(['validate', '--help']);
  t.equal(r.code, 0);
  t.match(r.stdout, /Exit status: 0 valid \(warnings allowed\), 1 invalid, 2 usage error/);
  r = await rotor(['frobnicate']);
  t.equal(r.code, 2);
  t.match(r.stderr, /unknown command "frobnicate"/);
  r = await rotor([]);
  t.equal(r.code, 2);
  t.match(r.stderr, /Commands:/, 'no command: the command list on stderr');
  t.equal(r.stdout, '');
});

t.test('a repository without rotor.yaml is told how to make one', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  execFileSync('rm', [path.join(dir, 'rotor.yaml')]);
  const r = await rotor(['validate', dir]);
  t.equal(r.code, 1);
  t.match(
    r.stdout,
    /^rotor.yaml:1:1: error: there is no rotor.yaml at the repository root; create it with "kind: Config".*\[CONFIG_MISSING\]$/m,
  );
});

t.test('the generated types match the schemas', async (t) => {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'gen-types.mjs'), '--check'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  t.equal(r.status, 0, r.stderr || 'src/model/schema-types.ts is stale: run npm run gen:types');
});

t.test('the error code reference documents every problem code', async (t) => {
  const { readFileSync } = await import('node:fs');
  const { CODES } = await import('../src/model/problems.js');
  const page = readFileSync(path.join(ROOT, 'docs/reference/errors.md'), 'utf8');
  for (const code of Object.keys(CODES))
    t.ok(page.includes(`| \`${code}\` |`), `docs/reference/errors.md lists ${code}`);
});

t.test(
  'verify and onDrift: bad values at their line and column; a non-database secret on a verifying policy is a warning',
  async (t) => {
    const dir = copyFixture(t, 'test/corpus/base');
    writeFileSync(
      path.join(dir, 'drift.yaml'),
      [
        'kind: Policy',
        'name: checked',
        'every: 30d',
        'overlap: 1d',
        'verify: 0s',
        'onDrift: repair',
        '---',
        'kind: Policy',
        'name: alerting',
        'every: 30d',
        'overlap: 1d',
        'onDrift: alert',
        '---',
        'kind: Policy',
        'name: verifying',
        'every: 30d',
        'overlap: 1d',
        'verify: 15m',
        '---',
        'kind: Secret',
        'name: plain/token',
        'policy: verifying',
        'generate: { length: 32 }',
        '---',
        'kind: Secret',
        'name: plain/db',
        'policy: alerting',
        'generate: { length: 32 }',
        'database: { target: pg, usernames: [drift_a, drift_b] }',
        '',
      ].join('\n'),
    );
    const r = await rotor(['validate', dir, '--format', 'json']);
    t.equal(r.code, 1);
    const problems = (JSON.parse(r.stdout).problems as { file: string; line: number; col: number; code: string }[])
      .filter((p) => p.file === 'drift.yaml')
      .map((p) => `${p.line}:${p.col} ${p.code}`);
    t.same(problems.sort(), ['12:1 DRIFT_WITHOUT_VERIFY', '22:9 VERIFY_NOT_DATABASE', '6:10 SCHEMA_ENUM'].sort());
    // verify: 0s is refused once the enum is fixed (schema problems stop the semantic checks of a document)
    writeFileSync(
      path.join(dir, 'drift.yaml'),
      'kind: Policy\nname: checked\nevery: 30d\noverlap: 1d\nverify: 0s\n---\nkind: Secret\nname: plain/db\npolicy: checked\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [drift_a, drift_b] }\n',
    );
    const r2 = await rotor(['validate', dir]);
    t.equal(r2.code, 1);
    t.match(r2.stdout, /^drift\.yaml:5:9: error: verify must be at least 1s \[DURATION_INVALID\]$/m);
  },
);
