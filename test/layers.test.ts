/**
 * The layers of the code: a module imports only from its own layer group and the groups below it.
 * Reads the import (and re-export) statements of every .ts file in src/ and agent/src/; the order is
 * the data below. Same-row groups are peers and may not import each other.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ROOT } from './helpers.js';

/**
 * Lowest first. A group is a folder of src/ or a file of src/ without its extension. Within a row
 * the groups are peers: neither imports the other.
 */
const LAYERS: readonly (readonly string[])[] = [
  ['errors'],
  ['util', 'log', 'paths', 'version', 'keys', 'sops'],
  ['schedule'],
  ['model'],
  ['state', 'audit', 'protocol', 'client'],
  ['rotation', 'git', 'plan'],
  ['notify'],
  ['serve'],
  ['daemon'],
  ['cli'],
];

/**
 * What agent/src (the rotor-agent package) may use of src/. The agent imports only `rotor/internal`
 * (src/internal.ts, its one door into this package: test/packages.test.ts), so this is what
 * src/internal.ts may re-export.
 */
const AGENT_MAY_IMPORT: readonly string[] = [
  'errors',
  'util',
  'log',
  'paths',
  'version',
  'keys',
  'sops',
  'schedule',
  'model',
  'protocol',
  // The consumer sockets an agent serves on its host: the daemon's own serving code (ConsumerSockets,
  // consumerHandler, ConsumerService), not a second one.
  'serve',
];

/**
 * Imports that break the order and are known, each with what mends it. The test fails when one of
 * them is gone, so that the list stays true.
 */
const KNOWN: Readonly<Record<string, string>> = {};

function tsFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
    .map((e) => path.relative(ROOT, path.join(e.parentPath, e.name)).split(path.sep).join('/'));
}

/** The relative module specifiers of a file's import and export-from statements (type-only ones too). */
function importsOf(text: string): string[] {
  const out: string[] = [];
  const re = /^\s*(?:import|export)\s(?:[^'";]*?\sfrom\s)?['"](\.{1,2}\/[^'"]+)['"]/gm;
  for (const m of text.matchAll(re)) out.push(m[1]!);
  if (/from\s+['"]rotor\/internal['"]/.test(text)) out.push('rotor/internal');
  const dynamic = /\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;
  for (const m of text.matchAll(dynamic)) out.push(m[1]!);
  return out;
}

/** The group of a file: 'agent' for agent/src, else its folder (or file name) under src/. */
function groupOf(file: string): string | undefined {
  if (file.startsWith('agent/')) return 'agent';
  if (file === 'src/internal.ts') return 'internal';
  const m = /^src\/([^/]+?)(?:\.ts)?(?:\/|$)/.exec(file);
  return m?.[1];
}

const rank = new Map<string, number>();
LAYERS.forEach((row, i) => {
  for (const g of row) rank.set(g, i);
});

const files = [...tsFiles('src'), ...tsFiles('agent/src')];
const arrows: { from: string; to: string }[] = [];
for (const file of files) {
  for (const spec of importsOf(readFileSync(path.join(ROOT, file), 'utf8'))) {
    if (spec === 'rotor/internal') {
      arrows.push({ from: file, to: 'src/internal.ts' });
      continue;
    }
    const to = path.posix.normalize(path.posix.join(path.posix.dirname(file), spec)).replace(/\.js$/, '.ts');
    arrows.push({ from: file, to });
  }
}

t.test('every group of src/ has a place in the layers', async (t) => {
  for (const file of files) {
    const g = groupOf(file);
    if (g === 'agent' || g === 'internal') continue;
    t.ok(g !== undefined && rank.has(g), `${file}: its group "${g}" is in LAYERS`);
  }
});

t.test('the import statements are found', async (t) => {
  t.ok(arrows.length > 200, `${arrows.length} imports read`);
  t.ok(
    arrows.some((a) => a.from === 'src/daemon/daemon.ts' && a.to === 'src/serve/admin.ts'),
    'an import the daemon has',
  );
  t.ok(
    arrows.some((a) => a.from === 'agent/src/agent.ts' && a.to === 'src/internal.ts'),
    'the agent through rotor/internal',
  );
});

t.test('no module imports a layer above its own, nor a peer group', async (t) => {
  const broken: string[] = [];
  for (const { from, to } of arrows) {
    const a = groupOf(from);
    const b = groupOf(to);
    if (a === undefined || b === undefined || a === b) continue;
    const arrow = `${from} -> ${to}`;
    let ok: boolean;
    if (a === 'agent') ok = b === 'internal';
    else if (a === 'internal') ok = AGENT_MAY_IMPORT.includes(b);
    else ok = b !== 'agent' && b !== 'internal' && rank.get(b)! < rank.get(a)!;
    if (!ok && !(arrow in KNOWN)) broken.push(arrow);
  }
  t.same(broken, [], 'imports that run upward or sideways (see LAYERS)');
});

t.test('the known exceptions still exist', async (t) => {
  const present = new Set(arrows.map((a) => `${a.from} -> ${a.to}`));
  for (const [arrow, why] of Object.entries(KNOWN))
    t.ok(present.has(arrow), `${arrow} (${why}): remove it from KNOWN once mended`);
});
