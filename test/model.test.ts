/** The model as the other parts will use it: complete example, immutable, the same from git and disk. */
import { cpSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { GitTreeSource } from '../src/git/tree.js';
import { loadModel } from '../src/model/load.js';
import { DirectorySource } from '../src/model/source.js';
import { commitAll, FIXED_NOW, gitInit, ROOT, tempDir } from './helpers.js';

const KINDS = ['Config', 'Policy', 'Secret', 'Target', 'Agent', 'Consumer'];

/** Every property path a schema declares (through $refs into common.schema.json), e.g. `generate.charset`. */
// biome-ignore lint/suspicious/noExplicitAny: JSON Schema documents, walked loosely
type AnyRecord = Record<string, any>;

function schemaPaths(schema: AnyRecord, prefix = '', out = new Set<string>()): Set<string> {
  const common = JSON.parse(readFileSync(path.join(ROOT, 'schemas/common.schema.json'), 'utf8'));
  const resolve = (s: AnyRecord): AnyRecord =>
    typeof s.$ref === 'string' && s.$ref.startsWith('common.schema.json#/$defs/')
      ? common.$defs[s.$ref.split('/').pop()!]
      : s;
  const props = resolve(schema).properties as Record<string, AnyRecord> | undefined;
  for (const [k, v] of Object.entries(props ?? {})) {
    const p = prefix ? `${prefix}.${k}` : k;
    out.add(p);
    const r = resolve(v);
    if (r.type === 'object' && r.properties) schemaPaths(r, p, out);
    if (r.type === 'object' && typeof r.additionalProperties === 'object')
      schemaPaths(r.additionalProperties, `${p}.*`, out);
  }
  return out;
}

function usedPaths(v: unknown, prefix = '', out = new Set<string>(), wildcard = false): Set<string> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return out;
  for (const [k, x] of Object.entries(v)) {
    const p = prefix ? `${prefix}.${wildcard ? '*' : k}` : k;
    out.add(p);
    usedPaths(x, p, out, p === 'fields');
  }
  return out;
}

t.test('the example repository uses every kind and every field', async (t) => {
  const r = await loadModel(new DirectorySource(path.join(ROOT, 'policies')), { now: FIXED_NOW });
  t.ok(r.valid);
  t.same(r.problems, []);
  const d = r.desired;
  const byKind: Record<string, unknown[]> = {
    Config: [d.config!.decl],
    Policy: [...d.policies.values()].map((x) => x.decl),
    Secret: [...d.secrets.values()].map((x) => x.decl),
    Target: [...d.targets.values()].map((x) => x.decl),
    Agent: [...d.agents.values()].map((x) => x.decl),
    Consumer: [...d.consumers.values()].map((x) => x.decl),
  };
  for (const kind of KINDS) {
    const schema = JSON.parse(readFileSync(path.join(ROOT, 'schemas', `${kind.toLowerCase()}.schema.json`), 'utf8'));
    const used = new Set<string>();
    for (const decl of byKind[kind]!) usedPaths(decl, '', used);
    for (const p of schemaPaths(schema)) t.ok(used.has(p), `${kind}.${p} is used in policies/`);
  }
  const engines = new Set([...d.targets.values()].map((x) => x.decl.engine));
  t.same(
    [...engines].sort(),
    ['mariadb', 'mongodb', 'mssql', 'mysql', 'postgres', 'redis'],
    'a target for each engine',
  );
  const strategies = new Set(
    [...d.secrets.values()]
      .map((x) => x.decl.database?.strategy ?? (x.decl.database ? 'default' : undefined))
      .filter(Boolean),
  );
  t.ok(strategies.has('single') && strategies.has('dual') && strategies.has('alternate'));
});

t.test('the model is immutable and says where each declaration is', async (t) => {
  const r = await loadModel(new DirectorySource(path.join(ROOT, 'policies')), { now: FIXED_NOW });
  const s = r.desired.secrets.get('payments/db-app')!;
  t.ok(Object.isFrozen(s.decl) && Object.isFrozen(s.decl.database) && Object.isFrozen(s.decl.database!.usernames));
  t.throws(() => {
    (s.decl as { policy: string }).policy = 'other';
  });
  t.same(s.source, { file: 'databases/credentials.yaml', line: 10, col: 7 });
  t.same(r.desired.policies.get('demo-fast')!.source.file, 'policies.yaml');
});

t.test('a git commit loads to the same model as its work tree', async (t) => {
  const dir = tempDir(t);
  gitInit(dir);
  cpSync(path.join(ROOT, 'policies'), path.join(dir, 'ops', 'rotor'), { recursive: true });
  const commit = commitAll(dir, 'declarations');
  const fromGit = await loadModel(new GitTreeSource(dir, commit, 'ops/rotor'), { now: FIXED_NOW });
  const fromDisk = await loadModel(new DirectorySource(path.join(dir, 'ops', 'rotor')), { now: FIXED_NOW });
  t.ok(fromGit.valid);
  t.same(fromGit.problems, fromDisk.problems);
  const plain = (m: typeof fromGit.desired) =>
    JSON.stringify([...m.secrets, ...m.policies, ...m.consumers, ...m.targets, ...m.agents]);
  t.equal(plain(fromGit.desired), plain(fromDisk.desired));
});
