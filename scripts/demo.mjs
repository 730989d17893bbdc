#!/usr/bin/env node
// `npm start`: runs the daemon on the bundled example. policies/ becomes a throwaway git repository
// (.rotor/remote.git, a bare repository standing in for your GitOps remote), the daemon's data
// directory is .rotor/data (keys made on first run), and the daemon rotates demo/ticker every 10 s,
// printing what it does, until Ctrl-C. Start afresh with: rm -rf .rotor
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const dist = (p) => new URL(`../dist/src/${p}`, import.meta.url).href;
const { run } = await import(dist('cli/main.js'));
const { generateKeys, loadKeys } = await import(dist('keys.js'));

// ROTOR_DEMO_DIR: somewhere else than .rotor (the tests use it).
const base = process.env.ROTOR_DEMO_DIR ? path.resolve(process.env.ROTOR_DEMO_DIR) : path.join(root, '.rotor');
const remote = path.join(base, 'remote.git');
const dataDir = path.join(base, 'data');
const git = (cwd, ...args) =>
  execFileSync(
    'git',
    ['-c', 'user.name=rotor demo', '-c', 'user.email=demo@rotor.invalid', '-c', 'commit.gpgsign=false', ...args],
    { cwd, stdio: 'ignore' },
  );

if (!existsSync(path.join(dataDir, 'identity.age'))) {
  const keys = await generateKeys(dataDir);
  console.log(`made the daemon's keys in ${path.relative(root, dataDir)} (recipient ${keys.recipient})`);
}
if (!existsSync(remote)) {
  const work = mkdtempSync(path.join(os.tmpdir(), 'rotor-demo-'));
  cpSync(path.join(root, 'policies'), work, { recursive: true });
  // The example's SOPS file is encrypted to a throwaway key: encrypt its value to this daemon's key, as
  // a person would with `sops updatekeys` after adding the daemon's recipient to .sops.yaml.
  const { recipient } = await loadKeys(dataDir);
  const { sealSops } = await import(dist('sops/write.js'));
  writeFileSync(
    path.join(work, 'secrets/stripe.enc.yaml'),
    await sealSops({ apiKey: 'sk_test_example_only_not_a_real_key' }, [recipient]),
  );
  // Not root: the daemon cannot give sockets to the example's uids (1001-1003), so the demo declares
  // its consumers as you, and you can read through every socket.
  if (process.getuid() !== 0) {
    const file = path.join(work, 'consumers.yaml');
    writeFileSync(
      file,
      readFileSync(file, 'utf8')
        .replace(/^uid: \d+$/gm, `uid: ${process.getuid()}`)
        .replace(/^gid: \d+$/gm, `gid: ${process.getgid()}`),
    );
    console.log(`the demo's consumers run as you (uid ${process.getuid()}): the example declares uids 1001-1003`);
  }
  git(work, 'init', '-q', '-b', 'main');
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'The example declarations (policies/)');
  mkdirSync(base, { recursive: true });
  git(base, 'clone', '-q', '--bare', work, remote);
  rmSync(work, { recursive: true, force: true });
  console.log(`made ${path.relative(root, remote)} from policies/ (a stand-in for your GitOps remote)`);
}
const sockets = path.join(base, 'sockets');
const cli = 'node dist/src/cli/main.js';
const rel = (p) => path.relative(root, p);
console.log(`rotor daemon --repo ${path.relative(root, remote)} --data-dir ${path.relative(root, dataDir)}   (Ctrl-C to stop)

In another terminal, here (each consumer's socket serves only the secrets granted to it):
  ${cli} get demo/ticker --socket ${rel(path.join(sockets, 'reporting.sock'))}      # changes every 10 s
  ${cli} get payments/webhook-signing --socket ${rel(path.join(sockets, 'billing-api.sock'))}
  ${cli} status --data-dir ${rel(dataDir)}
  ${cli} rotate payments/webhook-signing --data-dir ${rel(dataDir)} --reason "trying it"
`);

// The daemon logs JSON lines; show them as short lines. Values never appear in them.
const pretty = (line) => {
  try {
    const { time, level, msg, ...fields } = JSON.parse(line);
    const rest = Object.entries(fields)
      .map(([k, v]) => `${k}=${typeof v === 'string' && v.length === 40 && /^[0-9a-f]+$/.test(v) ? v.slice(0, 7) : v}`)
      .join(' ');
    return `${time.slice(11, 19)} ${level === 'info' ? '' : `${level.toUpperCase()} `}${msg}${rest ? `  ${rest}` : ''}\n`;
  } catch {
    return `${line}\n`;
  }
};
let buffered = '';
const io = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => {
    buffered += s;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      process.stdout.write(pretty(buffered.slice(0, nl)));
      buffered = buffered.slice(nl + 1);
    }
  },
  env: {},
  cwd: root,
  now: () => Date.now(),
  isTTY: Boolean(process.stdout.isTTY),
};
process.exitCode = await run(
  [
    'daemon',
    '--repo',
    remote,
    '--data-dir',
    dataDir,
    '--socket-dir',
    sockets,
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    '127.0.0.1:0',
  ],
  io,
);
