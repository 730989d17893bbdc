// `npm run release`: what a person installs, built into release/ (or --out DIR):
//
//   rotor-VERSION.tgz           npm packages without dependencies: all of rotor's code and its
//   rotor-agent-VERSION.tgz     libraries bundled (esbuild) into one file each; `npm install -g FILE`
//                               works offline and installs exactly what was built, nothing fetched
//   rotor-linux-x64             single executables (Node's single executable applications): the
//   rotor-agent-linux-x64       same bundles inside a copy of this node binary, for hosts without Node
//   SHA256SUMS                  `sha256sum -c SHA256SUMS`
//
// The tarballs are deterministic (src/util/tarball.ts): `rotor init` vendors the rotor it runs as the
// same bytes, so a scaffolded repository pins it by checksum. The executable rotor carries its own
// tarball for that. Run after `npm run build` (the npm script does both).
// Usage: node scripts/release.mjs [--out DIR] [--no-sea]

import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const args = process.argv.slice(2);
const outArg = args.includes('--out') ? args[args.indexOf('--out') + 1] : 'release';
if (!outArg) throw new Error('--out needs a directory');
const out = path.resolve(outArg);
const sea = !args.includes('--no-sea');

const { packTarball, integrity, sha256 } = await import(path.join(root, 'dist/src/util/tarball.js'));
const { VERSION } = await import(path.join(root, 'dist/src/version.js'));
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
const agentPkg = JSON.parse(readFileSync(path.join(root, 'agent/package.json'), 'utf8'));
for (const p of [pkg, agentPkg])
  if (p.version !== VERSION) throw new Error(`${p.name} is version ${p.version} but src/version.ts says ${VERSION}`);

// Libraries' optional parts that are not installed and that they load only when asked to (each
// require() is inside a try): the MongoDB driver's Kerberos, compression, AWS and client-side
// encryption add-ons, pg's native binding. A bundle that needs one says so at run time.
const OPTIONAL = [
  'kerberos',
  '@mongodb-js/zstd',
  '@aws-sdk/credential-providers',
  'gcp-metadata',
  'snappy',
  'socks',
  'aws4',
  'mongodb-client-encryption',
  'pg-native',
];

/** src/paths.ts reads schemas/ beside the package; a bundle has them built in instead. */
const schemasBuiltIn = {
  name: 'schemas-built-in',
  setup(b) {
    b.onResolve({ filter: /(^|\/)paths\.js$/ }, (a) =>
      a.importer.startsWith(path.join(root, 'src')) ? { path: 'schemas', namespace: 'rotor-schemas' } : undefined,
    );
    b.onLoad({ filter: /.*/, namespace: 'rotor-schemas' }, () => {
      const files = readdirSync(path.join(root, 'schemas')).filter((f) => f.endsWith('.schema.json'));
      const table = files.map((f) => `${JSON.stringify(f)}: ${readFileSync(path.join(root, 'schemas', f), 'utf8')}`);
      return {
        loader: 'js',
        contents: `const SCHEMAS = {${table.join(',\n')}};
export function readSchema(file) {
  if (!Object.hasOwn(SCHEMAS, file)) throw new Error('rotor: no built-in schema ' + file);
  return structuredClone(SCHEMAS[file]);
}`,
      };
    });
  },
};

async function bundle(entry, format) {
  const r = await build({
    entryPoints: [path.join(root, entry)],
    bundle: true,
    write: false,
    platform: 'node',
    target: 'node20',
    format,
    conditions: ['rotor-source'],
    define: { __ROTOR_BUNDLE__: 'true', ...(format === 'cjs' ? { 'import.meta.url': 'undefined' } : {}) },
    plugins: [schemasBuiltIn],
    external: OPTIONAL,
    minifyWhitespace: true,
    minifySyntax: true,
    legalComments: 'eof',
    logLevel: 'warning',
  });
  return r.outputFiles[0].text;
}

/** The .d.ts files that `from` needs, by their relative imports, as [path under dist/src, text]. */
function typesOf(from) {
  const base = path.join(root, 'dist/src');
  const seen = new Map();
  const visit = (rel) => {
    if (seen.has(rel)) return;
    const text = readFileSync(path.join(base, rel), 'utf8');
    seen.set(rel, text);
    for (const m of text.matchAll(/from '(\.{1,2}\/[^']+)\.js'/g))
      visit(path.posix.normalize(path.posix.join(path.posix.dirname(rel), `${m[1]}.d.ts`)));
  };
  visit(from);
  return seen;
}

const text = (s) => Buffer.from(s, 'utf8');
const file = (p) => readFileSync(path.join(root, p));
const json = (o) => text(`${JSON.stringify(o, null, 2)}\n`);
const common = {
  version: VERSION,
  license: pkg.license,
  engines: pkg.engines,
};

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

const rotorMain = await bundle('src/cli/main.ts', 'cjs');
const agentMain = await bundle('agent/src/main.ts', 'cjs');
const client = await bundle('src/client/index.ts', 'esm');
// The entry points start with their own "#!/usr/bin/env node", which esbuild keeps on top.
const shebang = (code) => (code.startsWith('#!') ? code : `#!/usr/bin/env node\n${code}`);

const rotorFiles = [
  {
    path: 'package.json',
    bytes: json({
      name: 'rotor',
      ...common,
      description: pkg.description,
      bin: { rotor: 'dist/rotor.cjs' },
      exports: {
        './client': { types: './types/client/index.d.ts', default: './dist/client.mjs' },
        './package.json': './package.json',
      },
    }),
  },
  { path: 'dist/rotor.cjs', bytes: text(shebang(rotorMain)), executable: true },
  { path: 'dist/client.mjs', bytes: text(client) },
  ...[...typesOf('client/index.d.ts')].map(([p, t]) => ({ path: `types/${p}`, bytes: text(t) })),
  ...readdirSync(path.join(root, 'schemas'))
    .filter((f) => f.endsWith('.json'))
    .map((f) => ({ path: `schemas/${f}`, bytes: file(`schemas/${f}`) })),
  { path: 'README.md', bytes: file('README.md') },
  { path: 'LICENSE', bytes: file('LICENSE') },
];
const agentFiles = [
  {
    path: 'package.json',
    bytes: json({
      name: 'rotor-agent',
      ...common,
      description: agentPkg.description,
      bin: { 'rotor-agent': 'dist/rotor-agent.cjs' },
    }),
  },
  { path: 'dist/rotor-agent.cjs', bytes: text(shebang(agentMain)), executable: true },
  { path: 'README.md', bytes: file('agent/README.md') },
  { path: 'LICENSE', bytes: file('LICENSE') },
];

const made = [];
const write = (name, bytes, mode = 0o644) => {
  writeFileSync(path.join(out, name), bytes, { mode });
  made.push(name);
};
const rotorTgz = packTarball(rotorFiles);
write(`rotor-${VERSION}.tgz`, rotorTgz);
write(`rotor-agent-${VERSION}.tgz`, packTarball(agentFiles));

if (sea) {
  const { inject } = await import('postject');
  const work = path.join(out, '.sea');
  mkdirSync(work, { recursive: true });
  const single = async (name, main, assets) => {
    const mainFile = path.join(work, `${name}.cjs`);
    const blob = path.join(work, `${name}.blob`);
    writeFileSync(mainFile, main);
    const config = path.join(work, `${name}.json`);
    writeFileSync(
      config,
      JSON.stringify({ main: mainFile, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true, assets }),
    );
    execFileSync(process.execPath, ['--experimental-sea-config', config], { stdio: ['ignore', 'ignore', 'inherit'] });
    const exe = path.join(out, `${name}-linux-x64`);
    copyFileSync(process.execPath, exe);
    chmodSync(exe, 0o755);
    await inject(exe, 'NODE_SEA_BLOB', readFileSync(blob), {
      sentinelFuse: 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2',
    });
    made.push(path.basename(exe));
  };
  if (process.platform !== 'linux' || process.arch !== 'x64')
    throw new Error(
      `single executables are built for linux-x64 only, not ${process.platform}-${process.arch}: use --no-sea`,
    );
  await single('rotor', rotorMain, { 'rotor.tgz': path.join(out, `rotor-${VERSION}.tgz`) });
  await single('rotor-agent', agentMain, {});
  rmSync(work, { recursive: true, force: true });
}

const sums = made.map((f) => `${sha256(readFileSync(path.join(out, f)))}  ${f}\n`).join('');
writeFileSync(path.join(out, 'SHA256SUMS'), sums);
const mib = (f) => `${(statSync(path.join(out, f)).size / 1048576).toFixed(1)} MiB`;
process.stdout.write(
  `${made.map((f) => `${path.join(outArg, f)}  ${mib(f)}`).join('\n')}\n${path.join(outArg, 'SHA256SUMS')}\n` +
    `rotor ${VERSION} tarball integrity ${integrity(rotorTgz)}\n`,
);
