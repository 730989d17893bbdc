/**
 * `rotor init DIR`: scaffold a new GitOps repository (a Config, a policy, one generated secret, one
 * consumer, .gitattributes, .gitignore, package.json and a CI workflow) and the daemon's keys, kept
 * outside the repository.
 */
import { access, constants, lstat, mkdir, readFile, realpath, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { runGit } from '../git/run.js';
import type { PublicKeys } from '../keys.js';
import { generateKeys, IDENTITY_FILE, KeyError, loadKeys, SIGNING_FILE } from '../keys.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import { integrity, readTarEntry } from '../util/tarball.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import { ownTarball } from './own-package.js';
import { DEFAULT_DATA_DIR } from './rotate.js';

export const INIT_FLAGS = {
  'data-dir': {
    type: 'string',
    arg: 'KEYS_DIR',
    default: DEFAULT_DATA_DIR,
    description:
      'the daemon\'s data directory, where the keys go; later "rotor daemon --data-dir KEYS_DIR". If the default is not writable, pass a directory you can write',
  },
  force: {
    type: 'boolean',
    description: "overwrite the scaffold's files where they exist (never the keys, never an existing package.json)",
  },
  'rotor-tarball': {
    type: 'string',
    arg: 'FILE',
    description:
      'the rotor npm package to vendor (default: the rotor that runs, as its own release tarball; a source checkout has none: run "npm run release" there and pass release/rotor-VERSION.tgz)',
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const INIT_HELP = `rotor init: scaffold a new GitOps repository, and the daemon's keys

Usage: rotor init [DIR] [--data-dir KEYS_DIR] [--force] [--rotor-tarball FILE]

Scaffolds a GitOps repository for rotor in DIR (default: the current directory; made if missing) and
creates the daemon's keys in KEYS_DIR, outside the repository:

  rotor.yaml                  the Config: audit log directory, sync interval, paths to ignore
  policies.yaml               a Policy, "standard": rotate every 30 days, previous value valid a day
  example/secrets.yaml        a generated Secret, example/api-token
  consumers.yaml              a Consumer, example-app, reading example/* (its uid is yours: change
                              it)
  .gitattributes              audit/*.jsonl -text: git must never rewrite the audit log's line
                              endings
  .gitignore                  node_modules/ (and KEYS_DIR, should it be inside DIR)
  vendor/rotor-VERSION.tgz    this rotor, as its npm package: what CI and editors use
  package.json                rotor as a devDependency, "file:vendor/rotor-VERSION.tgz", for CI and
                              for the editor schemas (only written when DIR has none)
  package-lock.json           with the tarball's checksum: "npm ci" installs exactly that file,
                              offline, and refuses any other (only written with package.json)
  .github/workflows/rotor.yml on pull requests: npm ci, rotor validate (annotations) and rotor plan
                              (job summary)

rotor is vendored, not fetched: the scaffold installs the very rotor that made it, pinned by its
checksum, and nothing by a version range from a registry. To move to another rotor later, put its
tarball in vendor/ and run "npm install -D ./vendor/rotor-VERSION.tgz" (it rewrites package.json
and package-lock.json), then remove the old one.

Every YAML file starts with "# yaml-language-server: $schema=...node_modules/rotor/schemas/...",
so that editors with the YAML language server complete and check declarations offline once
"npm install" has run in DIR. The audit directory is not made: the daemon creates it with its first
entry.

The keys are what "rotor keygen KEYS_DIR" makes (identity.age, signing.key, mode 0600). They are
never replaced: keys already in KEYS_DIR are kept. They must never be committed; a KEYS_DIR inside
DIR is added to .gitignore (and to the Config's ignore), but a directory outside it is better.

If DIR is not inside a git work tree, "git init -b main" is run there.

Existing files are never overwritten unless --force (they are listed, and nothing is written).

Options:
${optionsHelp(INIT_FLAGS)}
Exit status: 0 done, 1 refused (files exist, keys cannot be made), 2 usage error.

Examples:
  rotor init my-secrets --data-dir ~/.local/share/rotor     # try it out as yourself
  sudo rotor init /srv/secrets                              # keys in /var/lib/rotor
  rotor init . --force                                      # refresh the scaffold's files here
`;

interface Manifest {
  readonly name?: string;
  readonly version?: string;
  readonly license?: string;
  readonly bin?: Record<string, string>;
  readonly engines?: Record<string, string>;
}

/** The package.json inside an npm tarball. */
function readManifest(tgz: Buffer): Manifest {
  const bytes = readTarEntry(tgz, 'package/package.json');
  if (!bytes) throw new Error('no package/package.json in it');
  return JSON.parse(bytes.toString('utf8')) as Manifest;
}

/** The rotor package to vendor: --rotor-tarball, or this rotor's own; a message when there is none. */
async function vendorTarball(
  file: string | undefined,
  cwd: string,
): Promise<{ tarball: Buffer; version: string } | { error: string }> {
  let tarball: Buffer | undefined;
  if (file !== undefined) {
    try {
      tarball = await readFile(path.resolve(cwd, file));
    } catch (e) {
      return {
        error: `cannot read --rotor-tarball ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      };
    }
  } else {
    tarball = await ownTarball();
    if (!tarball)
      return {
        error:
          'this rotor runs from a source checkout, which is not a package to vendor: run "npm run release" in the checkout and pass --rotor-tarball release/rotor-VERSION.tgz, or run an installed rotor (see the README, "Install")',
      };
  }
  let m: Manifest;
  try {
    m = readManifest(tarball);
  } catch (e) {
    return { error: `${file ?? 'this rotor'} is not an npm package tarball: ${(e as Error).message}` };
  }
  if (m.name !== 'rotor' || typeof m.version !== 'string' || !/^\d+\.\d+\.\d+([-+][\w.-]+)?$/.test(m.version))
    return {
      error: `${file ?? 'this rotor'} is not a rotor package (its package.json names ${JSON.stringify(m.name)} ${JSON.stringify(m.version)})`,
    };
  return { tarball, version: m.version };
}

/** A path as it can be pasted into a shell. */
function sh(p: string): string {
  return /^[\w@%+=:,./-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`;
}

function modeline(file: string): string {
  const up = '../'.repeat(file.split('/').length - 1);
  return `# yaml-language-server: $schema=${up || './'}node_modules/rotor/schemas/rotor.schema.json`;
}

interface ScaffoldOptions {
  readonly uid: number;
  readonly version: string;
  /** The vendored rotor tarball. */
  readonly tarball: Buffer;
  /** The data directory relative to DIR, when it is inside it. */
  readonly dataDirInside?: string;
}

function scaffold(o: ScaffoldOptions): Map<string, string | Buffer> {
  const files = new Map<string, string | Buffer>();
  const inside = o.dataDirInside;
  // A data directory under a dot-directory is skipped by the loader anyway.
  const ignoreData = inside !== undefined && !inside.split('/').some((s) => s.startsWith('.'));

  files.set(
    'rotor.yaml',
    `${modeline('rotor.yaml')}
#
# The line above points editors that use the YAML language server (VS Code's YAML extension, Neovim's
# yamlls, ...) at rotor's JSON Schemas, for completion and checks as you type. The path is relative to
# this file and leads into node_modules/rotor, which "npm ci" makes from package.json and the rotor
# tarball in vendor/: it works offline and always matches the rotor that CI runs. (Without node_modules editors just skip
# the schema; rotor itself never reads this line.)
#
# rotor.yaml: the one Config of this repository. It must sit at the repository root. Everything else
# (policies, secrets, targets, agents, consumers) may live in any *.yaml file, several documents per
# file separated by "---", organised however your teams like.
kind: Config
audit:
  dir: audit          # the daemon appends its hash-chained log here (it makes the directory); never
                      # edit it by hand: \`rotor plan\` refuses changes to its lines
  push: true          # push the daemon's audit commits to the remote (false: commit locally only)
  # branch: rotor-audit # keep the log on its own branch, so that the daemon never pushes to this one
                      # (for a protected main; see "The audit log" in rotor's docs/operations.md)
  # sign: true        # sign the audit commits with the daemon's key (for a branch that requires
                      # signed commits; rotor keygen prints the key for the forge)
sync:
  interval: 30s       # how often the daemon fetches this repository (it also fetches on SIGHUP)
ignore:               # YAML that is not a declaration (dot-directories and SOPS files are always skipped)
  - node_modules/**   # npm's packages: rotor for CI and the editor schemas
${ignoreData ? `  - ${inside}/**${' '.repeat(Math.max(1, 18 - inside!.length))}# the daemon's data directory (keys, state, its clone): never commit it\n` : ''}`,
  );

  files.set(
    'policies.yaml',
    `${modeline('policies.yaml')}
#
# Policies say when secrets rotate and how long a previous version stays valid. A secret names one.
# (The schema line above: see rotor.yaml.)
kind: Policy
name: standard
description: The default for application secrets.
every: 30d                  # rotate 30 days after the last rotation (or: cron: "0 3 * * 0")
# timezone: Europe/Berlin   # the zone of window and cron (default UTC)
# window: { start: "02:00", end: "05:00" }   # start rotations only in this window
jitter: 10m                 # spread the secrets of this policy over up to 10 minutes
overlap: 24h                # the previous version stays valid and readable for a day
retain: 3                   # versions kept in the store: current, previous and one more
maxAge: 45d                 # past this age a secret shows as overdue
`,
  );

  files.set(
    'example/secrets.yaml',
    `${modeline('example/secrets.yaml')}
#
# Secrets are named like paths: [a-z0-9._-] segments joined by "/". Consumers are granted them by glob.
# The daemon gives a new generated secret version 1 at once, then rotates it on its policy.
# (The schema line above: see rotor.yaml.)
kind: Secret
name: example/api-token
description: An example generated secret; rename it or replace it with your own.
policy: standard
generate: { length: 40, charset: base64url }    # 40 x 6 = 240 bits
# To rotate now: add a request, change its value to anything new and merge; rotor rotates once.
# rotate: { request: "1", reason: "why" }
`,
  );

  files.set(
    'consumers.yaml',
    `${modeline('consumers.yaml')}
#
# Consumers are applications on the daemon's host. Each gets its own Unix socket, <name>.sock in the
# daemon's socket directory (default /run/rotor), owned by its uid with mode 0600, and sees only the
# secrets its globs grant: "*" within one path segment, "**" across segments.
#   rotor get example/api-token --socket /run/rotor/example-app.sock
# (The schema line above: see rotor.yaml.)
kind: Consumer
name: example-app
description: An example application; rename it after yours.
uid: ${o.uid}${' '.repeat(Math.max(1, 10 - String(o.uid).length))}# CHANGE THIS to the uid your application runs as (id -u APPUSER); ${o.uid} is the uid of whoever ran rotor init
secrets: ["example/*"]
`,
  );

  files.set(
    '.gitattributes',
    `# The audit log is hash-chained line by line: git must never convert its line endings (core.autocrlf,
# text=auto), or the chain breaks in a checkout and the daemon's commits rewrite every line.
audit/*.jsonl -text
# rotor's npm package, vendored: bytes, checked against package-lock.json's checksum
vendor/*.tgz binary
`,
  );

  files.set(
    '.gitignore',
    `node_modules/
${inside !== undefined ? `# the daemon's data directory (keys, state, its clone): never commit it\n/${inside}/\n` : ''}`,
  );

  files.set(
    '.github/workflows/rotor.yml',
    `# Checks every pull request against the declarations: rotor validate annotates the problems on the
# diff, and rotor plan writes what the change will do (rotations, access changes, removals) to the job
# summary. It uses the rotor in vendor/, which npm ci installs offline after checking it against the
# checksum in package-lock.json (commit both).
name: rotor
on:
  pull_request:
permissions:
  contents: read
jobs:
  check:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
        with:
          fetch-depth: 0          # rotor plan compares with the base branch: it needs its history
      - uses: actions/setup-node@v4
        with:
          node-version: 20
      - run: npm ci
      - name: rotor validate
        run: npx rotor validate --format github
      - name: rotor plan
        run: npx rotor plan --base "origin/\${{ github.base_ref }}" --format markdown >> "$GITHUB_STEP_SUMMARY"
`,
  );

  const vendored = `vendor/rotor-${o.version}.tgz`;
  const spec = `file:${vendored}`;
  files.set(vendored, o.tarball);
  files.set(
    'package.json',
    `${JSON.stringify(
      {
        private: true,
        description: 'rotor declarations: secrets, their rotation policies and consumers',
        scripts: { validate: 'rotor validate' },
        devDependencies: { rotor: spec },
      },
      null,
      2,
    )}\n`,
  );
  // What "npm install" writes for this package.json (lockfile v3), with the tarball's checksum.
  const manifest = readManifest(o.tarball);
  files.set(
    'package-lock.json',
    `${JSON.stringify(
      {
        lockfileVersion: 3,
        requires: true,
        packages: {
          '': { devDependencies: { rotor: spec } },
          'node_modules/rotor': {
            version: manifest.version,
            resolved: spec,
            integrity: integrity(o.tarball),
            dev: true,
            ...(manifest.license ? { license: manifest.license } : {}),
            ...(manifest.bin ? { bin: manifest.bin } : {}),
            ...(manifest.engines ? { engines: manifest.engines } : {}),
          },
        },
      },
      null,
      2,
    )}\n`,
  );
  return files;
}

/** Written only where absent, even with --force: it may be the project's own. */
const ONLY_IF_ABSENT = new Set(['package.json', 'package-lock.json']);

async function git(cwd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  const r = await runGit(cwd, args, { timeoutMs: 30_000 });
  return { ok: r.exitCode === 0, out: (r.exitCode === 0 ? r.stdout.toString('utf8') : r.stderr).trim() };
}

/** The nearest existing ancestor of p (p itself if it exists). */
async function nearestExisting(p: string): Promise<string> {
  let cur = p;
  while (!(await stat(cur).catch(() => undefined))) {
    const up = path.dirname(cur);
    if (up === cur) break;
    cur = up;
  }
  return cur;
}

export async function initCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, INIT_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(INIT_HELP);
    return EXIT.ok;
  }
  const dirArg = positionals[0] ?? '.';
  const dir = path.resolve(io.cwd, dirArg);
  const dirStat = await stat(dir).catch(() => undefined);
  if (dirStat && !dirStat.isDirectory()) throw new UsageError(`${dirArg} is not a directory`);
  const dataDirArg = flags['data-dir'] ?? DEFAULT_DATA_DIR;
  const dataDir = path.resolve(io.cwd, dataDirArg);
  const rel = path.relative(dir, dataDir);
  if (rel === '')
    throw new UsageError(
      '--data-dir must not be DIR itself: the keys must never be committed; choose a directory outside the repository',
    );
  const inside = !rel.startsWith('..') && !path.isAbsolute(rel) ? rel.split(path.sep).join('/') : undefined;
  if (inside !== undefined && (inside === '.git' || inside.startsWith('.git/')))
    throw new UsageError('--data-dir must not be inside DIR/.git');
  if (!path.relative(dataDir, dir).startsWith('..'))
    throw new UsageError('DIR must not be inside --data-dir: the daemon keeps its own clone there');

  const uid = typeof process.getuid === 'function' ? process.getuid() : 1000;
  const vendor = await vendorTarball(flags['rotor-tarball'], io.cwd);
  if ('error' in vendor) {
    io.stderr(`rotor init: ${vendor.error}. Nothing was written\n`);
    return EXIT.invalid;
  }
  const files = scaffold({
    uid,
    version: vendor.version,
    tarball: vendor.tarball,
    ...(inside !== undefined ? { dataDirInside: inside } : {}),
  });

  // Everything is checked before anything is written.
  const existing: string[] = [];
  const skipped: string[] = [];
  for (const f of files.keys()) {
    if (!(await lstat(path.join(dir, f)).catch(() => undefined))) continue;
    if (ONLY_IF_ABSENT.has(f)) skipped.push(f);
    else existing.push(f);
  }
  if (existing.length && !flags.force) {
    io.stderr(
      `rotor init: ${existing.length === 1 ? 'this file exists' : 'these files exist'} in ${dir}; nothing was written (--force overwrites them):\n${existing.map((f) => `  ${f}\n`).join('')}`,
    );
    return EXIT.invalid;
  }

  const keyFiles = [IDENTITY_FILE, SIGNING_FILE];
  const present = [];
  for (const k of keyFiles) if (await lstat(path.join(dataDir, k)).catch(() => undefined)) present.push(k);
  let keys: PublicKeys;
  let keptKeys = false;
  if (present.length === keyFiles.length) {
    try {
      keys = await loadKeys(dataDir);
      keptKeys = true;
    } catch (e) {
      if (!(e instanceof KeyError)) throw e;
      io.stderr(`rotor init: the keys in ${dataDir} cannot be used: ${e.message} [${e.code}]; nothing was written\n`);
      return EXIT.invalid;
    }
  } else if (present.length > 0) {
    io.stderr(
      `rotor init: ${path.join(dataDir, present[0]!)} exists but not the rest of the keys; rotor never replaces keys: move it away, or pass another --data-dir. Nothing was written\n`,
    );
    return EXIT.invalid;
  } else {
    const base = await nearestExisting(dataDir);
    const writable = await access(base, constants.W_OK | constants.X_OK).then(
      () => true,
      () => false,
    );
    const baseStat = await stat(base).catch(() => undefined);
    if (!writable || !baseStat?.isDirectory()) {
      io.stderr(
        `rotor init: cannot create the daemon's keys in ${dataDir}: ${base} is not a directory you can write. ` +
          `Pass --data-dir DIR (or set ROTOR_DATA_DIR): a directory outside the repository that only the daemon's ` +
          `user may read, e.g. --data-dir ${sh(path.join(os.homedir(), '.local/share/rotor'))}; or run as a user who may ` +
          `write ${dataDir}. Nothing was written\n`,
      );
      return EXIT.invalid;
    }
    try {
      keys = await generateKeys(dataDir, new Date(io.now()));
    } catch (e) {
      if (!(e instanceof KeyError)) throw e;
      io.stderr(`rotor init: ${e.message} [${e.code}]; nothing was written\n`);
      return EXIT.invalid;
    }
  }

  const written: string[] = [];
  for (const [f, text] of files) {
    // The lock file belongs to the package.json written with it.
    if (skipped.includes(f) || (f === 'package-lock.json' && skipped.includes('package.json'))) continue;
    const abs = path.join(dir, f);
    await mkdir(path.dirname(abs), { recursive: true });
    await writeFile(abs, text, { flag: flags.force ? 'w' : 'wx' });
    written.push(f);
  }

  // git: a new repository where there is none; a warning where DIR is not the top of one.
  let gitNote: string;
  const top = await git(dir, ['rev-parse', '--show-toplevel']);
  if (top.ok && path.resolve(top.out) === (await realpath(dir).catch(() => dir))) {
    gitNote = `${dir} is already a git repository: nothing changed there.`;
  } else if (top.ok) {
    gitNote = `warning: ${dir} is inside the git repository ${top.out}, not its top: rotor.yaml must be at the root of the repository the daemon follows.`;
  } else {
    const init = await git(dir, ['init', '-q', '-b', 'main']);
    gitNote = init.ok
      ? `Initialized a git repository in ${dir} (branch main).`
      : `git init failed (${init.out}): run "git init -b main" in ${dir} yourself.`;
  }

  const d = sh(dir);
  const dd = sh(dataDir);
  const out: string[] = [];
  out.push(`Created in ${dir}:\n${written.map((f) => `  ${f}\n`).join('')}`);
  if (skipped.length)
    out.push(
      `Kept the existing ${skipped.join(', ')}: add the vendored rotor to its devDependencies (cd ${sh(dir)} && npm install -D ./vendor/rotor-${vendor.version}.tgz).\n`,
    );
  out.push(
    `${keptKeys ? "Kept the daemon's existing keys" : "The daemon's keys (mode 0600; never commit them, never share them)"} in ${dataDir}:\n  ${IDENTITY_FILE}, ${SIGNING_FILE}\n  recipient: "${keys.recipient}"\n  signingKey: "${keys.signingKey}"\n`,
  );
  if (inside !== undefined)
    out.push(
      `warning: ${dataDir} is inside the repository; it is in .gitignore, but a directory outside it is safer.\n`,
    );
  out.push(`${gitNote}\n`);
  out.push(`
Next steps:
  1. Set uid in consumers.yaml to the user your application runs as (it is ${uid}, yours, now).
  2. cd ${d} && npm ci           # rotor from vendor/, checked against package-lock.json (offline)
  3. npx rotor validate
  4. git add -A && git commit -m "rotor: initial declarations"
     git remote add origin git@HOST:TEAM/secrets.git && git push -u origin main
  5. On the daemon's host (its keys are in ${dd}; copy them there, 0600, if that is another machine):
     rotor daemon --repo git@HOST:TEAM/secrets.git --data-dir ${dd}
     The daemon needs to push to the repository: it commits the audit log back.
  6. Read a secret as the consumer's user:
     rotor get example/api-token --socket /run/rotor/example-app.sock
`);
  io.stdout(out.join(''));
  return EXIT.ok;
}
