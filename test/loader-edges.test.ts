/** Edge cases of the loader found while building the bad corpus: each would otherwise mislead a user. */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { loadModel } from '../src/model/load.js';
import { DirectorySource } from '../src/model/source.js';
import { flowTooDeep } from '../src/model/yaml.js';
import { copyFixture, FIXED_NOW, rotor } from './helpers.js';

async function loadWith(t: Parameters<Parameters<typeof t.test>[1]>[0], files: Record<string, string>) {
  const dir = copyFixture(t, 'test/corpus/base');
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  return { dir, result: await loadModel(new DirectorySource(dir), { now: FIXED_NOW }) };
}

t.test('empty documents and comment-only preambles are not declarations', async (t) => {
  const { result } = await loadWith(t, {
    'x.yaml': '# header comment\n---\nkind: Policy\nname: p2\nevery: 1d\noverlap: 1h\n---\n--- # nothing here\n---\n',
  });
  t.same(
    result.problems.filter((p) => p.severity === 'error'),
    [],
  );
  t.same(result.desired.policies.get('p2')?.source, { file: 'x.yaml', line: 4, col: 7 });
});

t.test('a file of exactly 10,000 documents after a header comment is accepted', async (t) => {
  const docs = Array.from({ length: 10_000 }, (_, i) => `kind: Policy\nname: p${i}\nevery: 1d\noverlap: 1h\n`);
  const { result } = await loadWith(t, { 'many.yaml': `# generated\n---\n${docs.join('---\n')}` });
  t.notOk(result.problems.some((p) => p.code === 'YAML_TOO_MANY_DOCUMENTS'));
  t.equal(result.desired.policies.size, 10_001);
});

t.test('brackets inside strings and comments do not count as nesting', async (t) => {
  const many = '['.repeat(1500);
  t.equal(flowTooDeep(`description: "${many}"\n# ${many}\nname: '${many}'\n`), -1);
  t.ok(flowTooDeep(`a: ${many}`) > 0);
  const { result } = await loadWith(t, {
    'x.yaml': `kind: Policy\nname: p2\ndescription: "${many}"\nevery: 1d\noverlap: 1h\n`,
  });
  t.notOk(result.problems.some((p) => p.code === 'YAML_TOO_DEEP'));
});

t.test('an invalid Config is reported once, not also as missing', async (t) => {
  const { result } = await loadWith(t, { 'rotor.yaml': 'kind: Config\naudit: { dri: audit }\n' });
  t.same(
    result.problems.map((p) => p.code),
    ['SCHEMA_UNKNOWN_FIELD'],
  );
});

t.test('an empty kind is a missing kind', async (t) => {
  const { result } = await loadWith(t, { 'x.yaml': 'kind:\nname: p\n' });
  t.match(result.problems, [{ code: 'KIND_MISSING', file: 'x.yaml', line: 1 }]);
});

t.test('a value with a line break cannot forge an output line', async (t) => {
  const { dir } = await loadWith(t, {
    'x.yaml': 'kind: Policy\nname: p2\nevery: 1d\noverlap: 1h\ntimezone: "Mars/Olympus\\nrepo: valid (0 errors)"\n',
  });
  const r = await rotor(['validate', dir]);
  t.equal(r.code, 1);
  const lines = r.stdout.trim().split('\n');
  t.equal(lines.length, 3, 'a warning, the error and the summary');
  t.ok(
    lines.slice(0, 2).every((l) => /^x\.yaml:\d+:\d+: (error|warning): .* \[[A-Z_]+\]$/.test(l)),
    'every line but the summary is a problem',
  );
  t.match(lines[1], /unknown time zone "Mars\/Olympus\\nrepo: valid \(0 errors\)"/);
});

t.test('a Secret that forgot its kind is not mistaken for a SOPS file', async (t) => {
  const { result } = await loadWith(t, {
    'x.yaml': 'name: app/x\npolicy: standard\nsops: { file: secrets/stripe.enc.yaml, key: apiKey }\n',
  });
  t.match(result.problems, [{ code: 'KIND_MISSING', file: 'x.yaml' }]);
});

t.test('plain scalars follow the YAML 1.2 core schema on both parser paths', async (t) => {
  // js-yaml reads documents without anchors; the yaml library those with them. Both must agree.
  for (const anchor of ['', '&a ']) {
    const { result } = await loadWith(t, {
      'x.yaml': `kind: Consumer\nname: c2\nuid: ${anchor}0b1111101010\nsecrets: ["app/*"]\n`,
    });
    t.match(
      result.problems,
      [{ code: 'SCHEMA_TYPE', line: 3 }],
      `0b... is a string ${anchor ? 'with' : 'without'} an anchor`,
    );
    const hex = await loadWith(t, { 'x.yaml': `kind: Consumer\nname: c2\nuid: ${anchor}0x3E9\nsecrets: ["app/*"]\n` });
    t.equal(
      hex.result.desired.consumers.get('c2')?.decl.uid,
      1001,
      `0x3E9 is 1001 ${anchor ? 'with' : 'without'} an anchor`,
    );
  }
});
