/** Hostile input: the loader reports a clear problem and neither crashes, hangs nor runs out of memory. */
import { mkdirSync, symlinkSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { loadModel } from '../src/model/load.js';
import { DirectorySource } from '../src/model/source.js';
import { copyFixture, FIXED_NOW, tempDir } from './helpers.js';

async function load(dir: string) {
  return loadModel(new DirectorySource(dir), { now: FIXED_NOW });
}

function only(result: Awaited<ReturnType<typeof load>>, code: string) {
  return result.problems.filter((p) => p.code === code);
}

t.test('a YAML alias bomb is refused', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  const levels = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
  for (let i = 1; i < 10; i++) {
    const prev = String.fromCharCode(96 + i);
    const cur = String.fromCharCode(97 + i);
    levels.push(`${cur}: &${cur} [*${prev},*${prev},*${prev},*${prev},*${prev},*${prev},*${prev},*${prev},*${prev}]`);
  }
  writeFileSync(path.join(dir, 'bomb.yaml'), `kind: Policy\nname: bomb\n${levels.join('\n')}\n`);
  const r = await load(dir);
  t.notOk(r.valid);
  const p = only(r, 'YAML_ALIAS_LIMIT');
  t.equal(p.length, 1);
  t.equal(p[0]?.file, 'bomb.yaml');
  t.equal(p[0]?.line, 1);
});

t.test('a 50 MiB file is refused without being read', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  const file = path.join(dir, 'huge.yaml');
  writeFileSync(file, 'kind: Policy\n');
  truncateSync(file, 50 * 1024 * 1024);
  const r = await load(dir);
  t.notOk(r.valid);
  const p = only(r, 'FILE_TOO_LARGE');
  t.equal(p.length, 1);
  t.equal(p[0]?.file, 'huge.yaml');
  t.match(p[0]?.message, /50 MiB.*1 MiB/);
});

t.test('a file of 100,000 documents is refused at the limit', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(path.join(dir, 'many.yaml'), 'a: 1\n---\n'.repeat(100_000));
  const r = await load(dir);
  t.notOk(r.valid);
  const p = only(r, 'YAML_TOO_MANY_DOCUMENTS');
  t.equal(p.length, 1);
  t.equal(p[0]?.file, 'many.yaml');
  t.equal(p[0]?.line, 20_000, 'reported at the --- that starts the first document past the limit');
});

t.test('deep nesting is refused, not a stack overflow', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(path.join(dir, 'deep.yaml'), `a: ${'['.repeat(200_000)}${']'.repeat(200_000)}\n`);
  const r = await load(dir);
  t.notOk(r.valid);
  t.ok(r.problems.some((p) => p.file === 'deep.yaml' && (p.code === 'YAML_TOO_DEEP' || p.code === 'YAML_SYNTAX')));
});

t.test('a file that is not UTF-8 is refused at its first bad byte', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(
    path.join(dir, 'latin1.yaml'),
    Buffer.concat([Buffer.from('kind: Policy\nname: caf'), Buffer.from([0xe9]), Buffer.from('\n')]),
  );
  const r = await load(dir);
  const p = only(r, 'FILE_NOT_UTF8');
  t.equal(p.length, 1);
  t.match(p[0], { file: 'latin1.yaml', line: 2, col: 10 });
});

t.test('symbolic links that leave the repository are ignored with a warning', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  const outside = tempDir(t);
  writeFileSync(path.join(outside, 'evil.yaml'), 'kind: Secret\nname: stolen\npolicy: standard\ngenerate: {}\n');
  symlinkSync(path.join(outside, 'evil.yaml'), path.join(dir, 'evil.yaml'));
  symlinkSync(outside, path.join(dir, 'evil-dir'));
  mkdirSync(path.join(dir, 'inner'));
  writeFileSync(path.join(dir, 'inner', 'real.yaml'), 'kind: Policy\nname: linked\nevery: 1d\noverlap: 1h\n');
  symlinkSync(path.join(dir, 'inner', 'real.yaml'), path.join(dir, 'link-inside.yaml'));
  const r = await load(dir);
  const warnings = only(r, 'SYMLINK_OUTSIDE');
  t.same(
    warnings.map((w) => [w.file, w.severity]),
    [
      ['evil-dir', 'warning'],
      ['evil.yaml', 'warning'],
    ],
  );
  t.notOk(r.desired.secrets.has('stolen'), 'nothing is read through the link');
  t.ok(
    r.problems.some((p) => p.code === 'NAME_DUPLICATE' && p.file === 'link-inside.yaml'),
    'a link inside the repository is read like its target',
  );
});

t.test('more YAML than the repository limit is refused', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  const chunk = `#${'x'.repeat(1000)}\n`;
  const body = chunk.repeat(1000); // just under 1 MiB of comments
  for (let i = 0; i < 70; i++) writeFileSync(path.join(dir, `filler-${String(i).padStart(2, '0')}.yaml`), body);
  const r = await load(dir);
  t.notOk(r.valid);
  t.equal(only(r, 'REPO_TOO_LARGE').length, 1);
});

t.test('SOPS files and dot-directories are not declarations', async (t) => {
  const dir = copyFixture(t, 'test/corpus/base');
  mkdirSync(path.join(dir, '.github', 'workflows'), { recursive: true });
  writeFileSync(path.join(dir, '.github', 'workflows', 'ci.yml'), 'on: push\njobs: {}\n');
  const r = await load(dir);
  t.ok(r.valid, 'secrets/stripe.enc.yaml and .github/ are skipped');
  t.same(r.problems, []);
});

t.test('rotor.yaml is read before its schema check, without super-linear work on its values', async (t) => {
  // audit.dir and ignore choose which files are read before the schema refuses them. A long run of
  // "/" in audit.dir went through /\/+$/, which is quadratic: this file took many minutes.
  const dir = copyFixture(t, 'test/corpus/base');
  writeFileSync(path.join(dir, 'rotor.yaml'), `kind: Config\naudit: { dir: "${'/'.repeat(900_000)}x", push: true }\n`);
  const r = await load(dir);
  t.notOk(r.valid);
  t.match(only(r, 'SCHEMA_RANGE'), [{ file: 'rotor.yaml', line: 2, message: /audit\.dir.*at most 200/ }]);
});

t.test('only the first 100 ignore globs are applied; more are reported', async (t) => {
  // Each ignore glob is tried on every file: their number is bounded before the schema check too.
  const dir = copyFixture(t, 'test/corpus/base');
  const globs = [...Array.from({ length: 100 }, (_, i) => `"nothing-${i}/**"`), '"broken/**"'];
  writeFileSync(path.join(dir, 'rotor.yaml'), `kind: Config\nignore: [${globs.join(', ')}]\n`);
  mkdirSync(path.join(dir, 'broken'));
  writeFileSync(path.join(dir, 'broken', 'chart.yaml'), 'apiVersion: v2\n');
  const r = await load(dir);
  t.match(only(r, 'SCHEMA_RANGE'), [{ file: 'rotor.yaml', line: 2, message: /ignore.*at most 100/ }]);
  t.match(only(r, 'KIND_MISSING'), [{ file: 'broken/chart.yaml' }], 'the 101st glob is not applied');
});
