/**
 * What a person installs (scripts/release.mjs, `npm run release`): the npm tarballs install offline
 * into an empty prefix and run; `rotor init` from the installed rotor and from the single executable
 * vendors the release's own tarball, byte for byte, and the scaffold's pull-request workflow commands
 * (npm ci, rotor validate, rotor plan) work offline on it; a tampered tarball is refused. The single
 * executables run with no node_modules and no node on PATH: the daemon and the agent rotate a live
 * Redis user's password (password auth enforced), which only works if the bundled drivers do.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { watchSecret } from '../src/client/index.js';
import { loadKeys } from '../src/keys.js';
import { packTarball } from '../src/util/tarball.js';
import { VERSION } from '../src/version.js';
import { commitAll, git, gitInit, ROOT, tempDir } from './helpers.js';
import { freePort } from './services/common.js';
import { startRedis } from './services/redis.js';

const root = tempDir(t, 'rotor-release-');
const release = path.join(root, 'release');
const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
/** A clean environment: no NODE_OPTIONS (the test loader), no node_modules, the given PATH. */
const cleanEnv = (PATH: string, extra: NodeJS.ProcessEnv = {}) => ({ PATH, HOME: root, LANG: 'C.UTF-8', ...extra });

function run(cmd: string, args: string[], o: { cwd?: string; env: NodeJS.ProcessEnv }) {
  const r = spawnSync(cmd, args, { cwd: o.cwd ?? root, env: o.env, encoding: 'utf8', timeout: 300_000 });
  return { code: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? String(r.error ?? '') };
}

const built = run(process.execPath, [path.join(ROOT, 'scripts/release.mjs'), '--out', release], {
  cwd: ROOT,
  env: cleanEnv(process.env.PATH ?? '/usr/bin:/bin'),
});
const tarball = path.join(release, `rotor-${VERSION}.tgz`);
const agentTarball = path.join(release, `rotor-agent-${VERSION}.tgz`);

t.test('npm run release: two tarballs, two executables, SHA256SUMS that hold', async (t) => {
  t.equal(built.code, 0, built.code === 0 ? 'built' : built.stderr);
  const sums = readFileSync(path.join(release, 'SHA256SUMS'), 'utf8').trim().split('\n');
  t.same(
    sums.map((l) => l.split('  ')[1]).sort(),
    [`rotor-${VERSION}.tgz`, `rotor-agent-${VERSION}.tgz`, 'rotor-agent-linux-x64', 'rotor-linux-x64'].sort(),
  );
  for (const l of sums) {
    const [sum, file] = l.split('  ');
    t.equal(sha256(readFileSync(path.join(release, file!))), sum, `${file}: its checksum`);
  }
});

t.test(
  'the npm tarballs install offline into an empty prefix; init vendors the same bytes; the workflow runs',
  async (t) => {
    const prefix = path.join(root, 'prefix');
    const npmEnv = cleanEnv(process.env.PATH ?? '/usr/bin:/bin', { npm_config_cache: path.join(root, 'npm-cache') });
    const install = run(
      'npm',
      ['install', '-g', '--prefix', prefix, '--offline', '--no-audit', '--no-fund', tarball, agentTarball],
      { env: npmEnv },
    );
    t.equal(install.code, 0, install.code === 0 ? 'npm install -g, offline' : install.stderr);
    // Only the prefix's bin and the system's: node, git and npm, nothing of this checkout.
    const env = cleanEnv(`${prefix}/bin:/usr/bin:/bin`);
    t.equal(run('rotor', ['--version'], { env }).stdout, `rotor ${VERSION}\n`);
    t.equal(run('rotor-agent', ['--version'], { env }).stdout, `rotor-agent ${VERSION}\n`);
    const example = path.join(root, 'example');
    cpSync(path.join(ROOT, 'policies'), example, { recursive: true });
    const v = run('rotor', ['validate', example], { env });
    t.equal(v.code, 0, v.stderr);
    t.match(v.stdout, /valid \(12 secrets/);

    // rotor init from the installed rotor vendors its own tarball: the release's bytes.
    const repo = path.join(root, 'secrets');
    const init = run('rotor', ['init', repo, '--data-dir', path.join(root, 'keys')], { env });
    t.equal(init.code, 0, init.stderr);
    const vendored = path.join(repo, `vendor/rotor-${VERSION}.tgz`);
    t.equal(
      sha256(readFileSync(vendored)),
      sha256(readFileSync(tarball)),
      'the vendored tarball is the release tarball',
    );
    const pkg = readFileSync(path.join(repo, 'package.json'), 'utf8');
    t.notMatch(pkg, /"\^|"~|"\*"|"latest"/, 'no version range');

    // The scaffold's workflow: npm ci (offline, a cold cache: the file itself is checked), validate, plan.
    const wfEnv = cleanEnv(`${repo}/node_modules/.bin:/usr/bin:/bin`, {
      npm_config_cache: path.join(root, 'npm-cache-ci'),
    });
    const ci = run('npm', ['ci', '--offline', '--no-audit', '--no-fund'], { cwd: repo, env: wfEnv });
    t.equal(ci.code, 0, ci.code === 0 ? 'npm ci, offline' : ci.stderr);
    const gh = run('rotor', ['validate', '--format', 'github'], { cwd: repo, env: wfEnv });
    t.equal(gh.code, 0, gh.code === 0 ? 'rotor validate --format github' : gh.stdout + gh.stderr);
    git(repo, 'add', '-A');
    commitAll(repo, 'rotor: initial declarations');
    const remote = path.join(root, 'secrets.git');
    spawnSync('git', ['clone', '-q', '--bare', repo, remote]);
    git(repo, 'remote', 'add', 'origin', remote);
    git(repo, 'fetch', '-q', 'origin');
    git(repo, 'checkout', '-q', '-b', 'change');
    writeFileSync(
      path.join(repo, 'example/more.yaml'),
      'kind: Secret\nname: example/second\npolicy: standard\ngenerate: {}\n',
    );
    commitAll(repo, 'a second secret');
    const plan = run('rotor', ['plan', '--base', 'origin/main', '--format', 'markdown'], { cwd: repo, env: wfEnv });
    t.equal(plan.code, 0, plan.stderr);
    t.match(plan.stdout, /example\/second/, 'the plan names the new secret');

    // A tarball that is not the pinned one is refused (a fresh cache: nothing to fall back on).
    writeFileSync(
      vendored,
      packTarball([
        { path: 'package.json', bytes: Buffer.from(JSON.stringify({ name: 'rotor', version: VERSION })) },
        { path: 'dist/rotor.cjs', bytes: Buffer.from('#!/usr/bin/env node\nconsole.log("not rotor")\n') },
      ]),
    );
    rmSync(path.join(repo, 'node_modules'), { recursive: true, force: true });
    const tampered = run('npm', ['ci', '--offline', '--no-audit', '--no-fund'], {
      cwd: repo,
      env: { ...wfEnv, npm_config_cache: path.join(root, 'npm-cache-tampered') },
    });
    t.not(tampered.code, 0, 'npm ci refuses a tarball with another checksum');
    t.match(tampered.stderr, /EINTEGRITY/);
  },
);

t.test(
  'the single executables: no node_modules, no node; init, and a live Redis rotation through the agent',
  async (t) => {
    const bin = path.join(root, 'bin');
    mkdirSync(bin);
    for (const f of ['rotor-linux-x64', 'rotor-agent-linux-x64'])
      copyFileSync(path.join(release, f), path.join(bin, f));
    spawnSync('chmod', ['755', path.join(bin, 'rotor-linux-x64'), path.join(bin, 'rotor-agent-linux-x64')]);
    const rotor = path.join(bin, 'rotor-linux-x64');
    const agentBin = path.join(bin, 'rotor-agent-linux-x64');
    // git for the daemon and rotor init; no node anywhere on this PATH.
    const gitDir = path.join(root, 'git-only');
    mkdirSync(gitDir);
    symlinkSync(
      spawnSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).stdout.trim(),
      path.join(gitDir, 'git'),
    );
    const env = cleanEnv(gitDir);
    t.equal(run(rotor, ['--version'], { env }).stdout, `rotor ${VERSION}\n`);
    t.equal(run(agentBin, ['--version'], { env }).stdout, `rotor-agent ${VERSION}\n`);
    const example = path.join(root, 'example-sea');
    cpSync(path.join(ROOT, 'policies'), example, { recursive: true });
    t.equal(run(rotor, ['validate', example], { env }).code, 0, 'validate on the example');
    const init = run(rotor, ['init', path.join(root, 'sea-secrets'), '--data-dir', path.join(root, 'sea-keys')], {
      env,
    });
    t.equal(init.code, 0, init.stderr);
    t.equal(
      sha256(readFileSync(path.join(root, `sea-secrets/vendor/rotor-${VERSION}.tgz`))),
      sha256(readFileSync(tarball)),
      'the executable vendors the release tarball it carries',
    );

    const server = await startRedis(t);
    if (!server) return;
    await server.createUser('app_user', 'Initial-app_user-9');
    const agentKeys = path.join(root, 'agent-keys');
    const dataDir = path.join(root, 'daemon-data');
    t.equal(run(rotor, ['keygen', agentKeys], { env }).code, 0);
    t.equal(run(rotor, ['keygen', dataDir], { env }).code, 0);
    const agent = await loadKeys(agentKeys);
    const daemon = await loadKeys(dataDir);
    const person = path.join(root, 'decl');
    mkdirSync(person);
    gitInit(person);
    const files: Record<string, string> = {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
      'agent.yaml': `kind: Agent\nname: cache-host\nsigningKey: "${agent.signingKey}"\nrecipient: ${agent.recipient}\n`,
      'target.yaml': 'kind: Target\nname: cache\nengine: redis\nagent: cache-host\n',
      'secret.yaml':
        'kind: Secret\nname: app/cache\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: cache, strategy: single, username: app_user }\n',
      'consumer.yaml': `kind: Consumer\nname: app\nuid: ${process.getuid!()}\nsecrets: ["app/*"]\n`,
    };
    for (const [f, text] of Object.entries(files)) writeFileSync(path.join(person, f), text);
    commitAll(person, 'declarations');
    const remote = path.join(root, 'decl.git');
    spawnSync('git', ['clone', '-q', '--bare', person, remote]);
    const port = await freePort();
    const sockets = path.join(root, 'sockets');
    const d: ChildProcess = spawn(
      rotor,
      [
        'daemon',
        '--repo',
        remote,
        '--data-dir',
        dataDir,
        '--socket-dir',
        sockets,
        '--agent-listen',
        `127.0.0.1:${port}`,
        '--metrics-listen',
        'off',
      ],
      { env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let daemonOut = '';
    t.teardown(() => {
      d.kill('SIGKILL');
    });
    const ready = new Promise<void>((resolve, reject) => {
      for (const stream of [d.stdout!, d.stderr!])
        createInterface({ input: stream }).on('line', (l) => {
          daemonOut += `${l}\n`;
          if (l.includes('listening for agents')) resolve();
        });
      d.once('exit', (code) => reject(new Error(`the daemon exited (${code}): ${daemonOut}`)));
    });
    await ready;
    const config = path.join(root, 'agent-config.yaml');
    writeFileSync(
      config,
      `daemon: http://127.0.0.1:${port}\nname: cache-host\nkeyDir: ${agentKeys}\ndaemonSigningKey: "${daemon.signingKey}"\ntargets:\n  cache:\n    url: ${server.url}\n    password: { env: REDIS_ADMIN_PASSWORD }\n`,
      { mode: 0o600 },
    );
    // The first version reaches the consumer socket once the agent has set it in Redis.
    const first = (async () => {
      for await (const s of watchSecret('app/cache', { socket: path.join(sockets, 'app.sock'), after: 0 })) return s;
      return undefined;
    })();
    const once = run(agentBin, ['--config', config, '--once'], {
      env: { ...env, REDIS_ADMIN_PASSWORD: server.adminPassword },
    });
    t.equal(once.code, 0, once.code === 0 ? 'rotor-agent --once' : once.stderr);
    const v1 = await first;
    t.equal(v1?.version, 1);
    t.equal(await server.auth('app_user', String(v1!.value)), 'OK', 'the served value logs in to Redis');
    t.notOk(
      (daemonOut + once.stderr + once.stdout).includes(String(v1!.value)),
      "no value in the daemon's or the agent's output",
    );
    d.kill('SIGTERM');
  },
);
