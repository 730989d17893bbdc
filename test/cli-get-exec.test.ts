/** rotor get (in-process) and rotor exec (as a process, with a real child) against a running daemon. */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, mkdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { ROOT, rotor, tempDir } from './helpers.js';
import { world } from './world.js';

const UID = process.getuid!();
const FILES = {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
  'secrets.yaml': `kind: Secret
name: app/token
policy: p
generate: { length: 40 }
---
kind: Secret
name: app/api.v2
policy: p
fields:
  key: { generate: { length: 30 } }
  region: { value: eu-west-1 }
---
kind: Secret
name: other/x
policy: p
generate: {}
`,
  'consumer.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["app/*"]\n---\nkind: Consumer\nname: other\nuid: ${UID}\nsecrets: ["other/*"]\n`,
};
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

async function setup(t: Parameters<Parameters<typeof t.test>[1]>[0]) {
  const w = await world(t, FILES);
  const d = await w.start({ socketDir: path.join(w.root, 'sockets') });
  t.teardown(() => d.stop());
  return { w, d, socket: path.join(w.root, 'sockets', 'app.sock') };
}

t.test('rotor get prints values, fields and JSON; refusals exit 1 without a value', async (t) => {
  const { d, socket } = await setup(t);
  const token = String(d.served('app/token')!.value);
  const api = d.served('app/api.v2')!.value as Record<string, string>;
  t.same(await rotor(['get', 'app/token', '--socket', socket]), { code: 0, stdout: `${token}\n`, stderr: '' });
  t.equal(
    (await rotor(['get', 'app/token'], { env: { ROTOR_SOCKET: socket } })).stdout,
    `${token}\n`,
    'the socket from ROTOR_SOCKET',
  );
  t.equal(
    (await rotor(['get', 'app/api.v2', '--socket', socket])).stdout,
    `${JSON.stringify(api)}\n`,
    'a structured value prints as JSON',
  );
  t.equal((await rotor(['get', 'app/api.v2', '--socket', socket, '--field', 'key'])).stdout, `${api.key}\n`);
  const json = JSON.parse((await rotor(['get', 'app/token', '--socket', socket, '--json'])).stdout);
  t.match(json, { name: 'app/token', version: 1, value: token });
  await d.rotateNow('app/token', 'test');
  t.equal(
    (await rotor(['get', 'app/token', '--socket', socket, '--version', '1'])).stdout,
    `${token}\n`,
    '--version reads a retained one',
  );
  const noField = await rotor(['get', 'app/api.v2', '--socket', socket, '--field', 'nope']);
  t.equal(noField.code, 1);
  t.match(noField.stderr, /has no field "nope"; it has: key, region \[FIELD_UNKNOWN\]/);
  const denied = await rotor(['get', 'other/x', '--socket', socket]);
  t.equal(denied.code, 1);
  t.match(denied.stderr, /\[ACCESS_DENIED\]/);
  const nothing = await rotor(['get', 'app/token', '--socket', path.join(ROOT, 'no.sock')]);
  t.equal(nothing.code, 1);
  t.match(nothing.stderr, /DAEMON_NOT_RUNNING/);
  t.equal((await rotor(['get', 'app/token'])).code, 2, 'no socket: a usage error');
  for (const r of [noField, denied, nothing])
    t.notOk(r.stderr.includes(api.key!) || r.stderr.includes(token), 'no value in an error');
  t.match((await rotor(['get', '--help'])).stdout, /Usage: rotor get NAME/);
});

/** Runs rotor exec as a process; yields the lines its child prints. */
function execProcess(args: string[]) {
  const child = spawn(
    '/usr/bin/env',
    ['-u', 'NODE_OPTIONS', process.execPath, path.join(ROOT, 'dist/src/cli/main.js'), 'exec', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, next: async () => (await lines.next()).value as string, exited, stderr: () => stderr };
}

// The child prints a hash of what it got (never the value), and says when SIGTERM arrives.
const CHILD = `
const h = (s) => require('crypto').createHash('sha256').update(s ?? '').digest('hex');
process.on('SIGTERM', () => { console.log('term ' + process.pid); process.exit(0); }); // before 'start': the test signals as soon as it reads it
console.log('start ' + process.pid + ' ' + h(process.env.TOKEN) + ' ' + h(process.env.KEY) + ' ' + process.env.REGION);
setInterval(() => {}, 1000);
`;

t.test('rotor exec --restart: secrets in the environment, a restart on rotation, signals passed on', async (t) => {
  const { d, socket } = await setup(t);
  const api = d.served('app/api.v2')!.value as Record<string, string>;
  const p = execProcess([
    '--socket',
    socket,
    '--env',
    'TOKEN=app/token',
    '--env',
    'KEY=app/api.v2.key',
    '--env',
    'REGION=app/api.v2.region',
    '--restart',
    '--',
    process.execPath,
    '-e',
    CHILD,
  ]);
  t.teardown(() => p.child.kill('SIGKILL'));
  const first = (await p.next()).split(' ');
  t.equal(first[0], 'start');
  t.equal(first[2], sha(String(d.served('app/token')!.value)), 'the child got the current token');
  t.equal(first[3], sha(api.key!), 'and one field of a structured secret (NAME.field with a dot in NAME)');
  t.equal(first[4], 'eu-west-1');
  await d.rotateNow('app/token', 'exec test');
  t.equal(await p.next(), `term ${first[1]}`, 'the first child got SIGTERM');
  const second = (await p.next()).split(' ');
  t.equal(second[0], 'start');
  t.not(second[1], first[1], 'a new process');
  t.equal(second[2], sha(String(d.served('app/token')!.value)), 'started again with the new version');
  t.equal(d.served('app/token')!.version, 2);
  p.child.kill('SIGTERM');
  t.equal(await p.next(), `term ${second[1]}`, 'SIGTERM to rotor exec is passed to the child');
  t.equal(await p.exited, 0, "rotor exec exits with the child's status");
  t.notOk(p.stderr().includes(String(d.served('app/token')!.value)), "no value in rotor exec's messages");
  t.match(p.stderr(), /app\/token is now at version 2; restarting/);
});

t.test("rotor exec without --restart: the child's exit status; errors before the start", async (t) => {
  const { socket } = await setup(t);
  const p = execProcess([
    '--socket',
    socket,
    '--env',
    'T=app/token',
    '--',
    process.execPath,
    '-e',
    'process.exit(process.env.T.length === 40 ? 7 : 1)',
  ]);
  t.equal(await p.exited, 7, "the child ran with T set, and its status is rotor exec's");
  const denied = execProcess([
    '--socket',
    socket,
    '--env',
    'T=other/x',
    '--',
    process.execPath,
    '-e',
    'process.exit(0)',
  ]);
  t.equal(await denied.exited, 1, 'a secret not granted: CMD does not start');
  t.match(denied.stderr(), /ACCESS_DENIED/);
  const noField = execProcess(['--socket', socket, '--env', 'T=app/api.v2.nope', '--', 'true']);
  t.equal(await noField.exited, 1);
  t.match(noField.stderr(), /FIELD_UNKNOWN/);
  const usage = await rotor(['exec', '--socket', socket, '--env', 'T=app/token']);
  t.equal(usage.code, 2, 'no command after --');
  const badEnv = await rotor(['exec', '--socket', socket, '--env', '1X=app/token', '--', 'true']);
  t.equal(badEnv.code, 2);
});

/** Alive and not a zombie (a zombie left to a PID 1 that does not reap has ended all the same). */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

// A shell that starts a grandchild and waits for it: the shell and the sleep are both in CMD's group.
const SHELL = (trap: string) =>
  `${trap} sleep 600 & echo "started $$ $! $(printf %s "$TOKEN" | sha256sum | cut -c1-64)"; wait`;

t.test("rotor exec stops CMD's whole process group: on a restart and at its own end", async (t) => {
  const { d, socket } = await setup(t);
  const p = execProcess(['--socket', socket, '--env', 'TOKEN=app/token', '--restart', '--', 'sh', '-c', SHELL('')]);
  const pids: number[] = [];
  t.teardown(() => {
    p.child.kill('SIGKILL');
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  });
  const [, shell1, sleep1, hash1] = (await p.next()).split(' ');
  pids.push(Number(shell1), Number(sleep1));
  t.equal(hash1, sha(String(d.served('app/token')!.value)), 'the shell got the token');
  t.ok(alive(Number(sleep1)), 'the grandchild runs');
  await d.rotateNow('app/token', 'exec group test');
  const [, shell2, sleep2, hash2] = (await p.next()).split(' ');
  pids.push(Number(shell2), Number(sleep2));
  t.equal(hash2, sha(String(d.served('app/token')!.value)), 'started again with version 2');
  t.notOk(alive(Number(shell1)), 'the old shell ended');
  t.notOk(alive(Number(sleep1)), "the old shell's child ended before the new one started");
  t.match(p.stderr(), /app\/token is now at version 2; restarting sh/);
  p.child.kill('SIGTERM');
  t.equal(await p.exited, 128 + 15, 'the shell ended by SIGTERM');
  t.notOk(alive(Number(sleep2)), "the grandchild did not outlive rotor exec's end");
  t.notOk(alive(Number(shell2)));
});

t.test(
  'rotor exec: a group that ignores SIGTERM gets SIGKILL after --grace; leftovers of a CMD that exits stop',
  async (t) => {
    const { socket } = await setup(t);
    const p = execProcess([
      '--socket',
      socket,
      '--env',
      'TOKEN=app/token',
      '--grace',
      '1',
      '--',
      'sh',
      '-c',
      SHELL("trap '' TERM;"),
    ]);
    const pids: number[] = [];
    t.teardown(() => {
      p.child.kill('SIGKILL');
      for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    });
    const [, shell, sleep] = (await p.next()).split(' ');
    pids.push(Number(shell), Number(sleep));
    p.child.kill('SIGTERM');
    t.equal(await p.exited, 128 + 9, 'the shell ignored SIGTERM and was killed');
    t.notOk(alive(Number(sleep)), 'so was its child');

    // CMD exits by itself and leaves a child behind in its group: it does not outlive rotor exec.
    const q = execProcess([
      '--socket',
      socket,
      '--env',
      'TOKEN=app/token',
      '--',
      'sh',
      '-c',
      'sleep 600 & echo "left $!"; exit 3',
    ]);
    const left = Number((await q.next()).split(' ')[1]);
    pids.push(left);
    t.equal(await q.exited, 3, "CMD's own status");
    t.notOk(alive(left), 'what it left in its group was stopped');
  },
);

t.test('a refused socket says why: a directory on the way, not "another user", when the socket is yours', async (t) => {
  const root = tempDir(t, 'rotor-denied-');
  chmodSync(root, 0o755);
  // As root, the reader is nobody (root may enter any directory); otherwise the reader is you.
  const asRoot = process.getuid!() === 0;
  const uid = asRoot ? 65534 : process.getuid!();
  const gid = asRoot ? 65534 : process.getgid!();
  const dir = path.join(root, 'closed');
  mkdirSync(dir);
  const socket = path.join(dir, 'app.sock');
  const server = createServer((c) => c.end());
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  chownSync(socket, uid, gid);
  chownSync(dir, uid, gid);
  chmodSync(socket, 0o600);
  chmodSync(dir, 0o600); // the reader's own directory, but not searchable
  const get = () =>
    spawnSync(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'get', 'app/token', '--socket', socket], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
      ...(asRoot ? { uid, gid } : {}),
    });
  const closed = get();
  t.equal(closed.status, 1);
  t.match(closed.stderr, `the directory ${dir} (owner uid ${uid}, mode 0600) cannot be entered by uid ${uid}`);
  t.notMatch(closed.stderr, /belongs to/);
  t.match(closed.stderr, /\[SOCKET_DENIED\]/);
  if (asRoot) {
    // Searchable now; the socket belongs to someone else.
    chmodSync(dir, 0o711);
    chownSync(socket, 0, 0);
    const other = get();
    t.match(other.stderr, `it belongs to uid 0, and this is uid ${uid}`);
  }
});
