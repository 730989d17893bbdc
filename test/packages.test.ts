/**
 * The two packages: rotor (root: CLI, daemon, rotor/client) and rotor-agent (agent/, a workspace),
 * which shares rotor's code only through rotor/internal (src/internal.ts).
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ROOT } from './helpers.js';

const DRIVERS = ['ioredis', 'mongodb', 'mssql', 'mysql2', 'pg'];
const json = (rel: string) => JSON.parse(readFileSync(path.join(ROOT, rel), 'utf8'));

/** Every .ts file under ROOT/rel, relative to ROOT. */
function tsFiles(rel: string): string[] {
  return readdirSync(path.join(ROOT, rel), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.join(rel, f));
}

/** The module specifiers a file imports or re-exports (static and dynamic). */
function specifiers(text: string): string[] {
  const found = [...text.matchAll(/\bfrom\s+'([^']+)'|\bimport\s*\(\s*'([^']+)'\s*\)|^import\s+'([^']+)'/gm)];
  return found.map((m) => m[1] ?? m[2] ?? m[3] ?? '');
}

t.test('rotor-agent reaches rotor only through rotor/internal', async (t) => {
  const offenders: string[] = [];
  for (const file of tsFiles('agent/src')) {
    for (const spec of specifiers(readFileSync(path.join(ROOT, file), 'utf8'))) {
      const target = path.join(path.dirname(file), spec);
      const leaves = spec.startsWith('.') && path.relative('agent/src', target).startsWith('..');
      if (leaves || (spec.startsWith('rotor/') && spec !== 'rotor/internal')) offenders.push(`${file}: ${spec}`);
    }
  }
  t.same(offenders, []);
});

t.test('rotor does not import the agent', async (t) => {
  const imported = (file: string) => specifiers(readFileSync(path.join(ROOT, file), 'utf8'));
  const offenders = tsFiles('src').filter((file) =>
    imported(file).some((s) => s.includes('agent/src') || s === 'rotor-agent'),
  );
  t.same(offenders, []);
});

t.test("the database drivers are the agent package's, not rotor's (but pg, for the state store)", async (t) => {
  const root = json('package.json');
  const agent = json('agent/package.json');
  t.same(root.workspaces, ['agent']);
  t.equal(agent.name, 'rotor-agent');
  t.same(agent.bin, { 'rotor-agent': './dist/main.js' });
  t.equal(agent.dependencies.rotor, 'file:..');
  t.ok(root.exports['./internal'], 'rotor exports ./internal');
  for (const d of DRIVERS) {
    // rotor keeps its own state on PostgreSQL when asked to (src/state/postgres.ts): pg is the one driver it lists.
    if (d === 'pg') t.ok(root.dependencies?.[d], 'rotor depends on pg (the PostgreSQL state store)');
    else t.notOk(root.dependencies?.[d] ?? root.devDependencies?.[d], `rotor does not list ${d}`);
    t.ok(agent.dependencies[d], `rotor-agent depends on ${d}`);
  }
});

t.test('one version: package.json, agent/package.json and src/version.ts agree', async (t) => {
  const { VERSION } = await import('../src/version.js');
  for (const f of ['package.json', 'agent/package.json'])
    t.equal(JSON.parse(readFileSync(path.join(ROOT, f), 'utf8')).version, VERSION, f);
});
