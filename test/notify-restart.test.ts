/**
 * Webhooks across a crash, with the daemon as a real process: a receiver (node:http, checking every
 * signature) answers 500 while secrets rotate; the daemon is SIGKILLed and started again; the receiver
 * then answers 200 and gets every delivery it had seen refused at least once, in order per secret.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t from 'tap';
import { generateKeys, loadKeys } from '../src/keys.js';
import { verifySignature } from '../src/notify/sign.js';
import { openStore } from '../src/state/store.js';
import { commitAll, gitInit, ROOT, tempDir } from './helpers.js';

const BIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

function startDaemon(remote: string, dataDir: string) {
  // env -u NODE_OPTIONS: tap puts its own loaders into NODE_OPTIONS, which doubles a child's start-up.
  const child = spawn(
    '/usr/bin/env',
    [
      '-u',
      'NODE_OPTIONS',
      process.execPath,
      BIN,
      'daemon',
      '--repo',
      remote,
      '--data-dir',
      dataDir,
      '--socket-dir',
      path.join(dataDir, 'sockets'),
      '--metrics-listen',
      'off',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString();
    if (stderr.length > 400_000) stderr = stderr.slice(-200_000);
  });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return { child, exited, stderr: () => stderr };
}

interface Got {
  id: string;
  secret: string;
  to: number;
  status: number;
  body: string;
  verified: boolean;
}

t.test('at least once across SIGKILL, in order per secret', async (t) => {
  const root = tempDir(t, 'rotor-notify-');
  let key = ''; // read from the store after the first start: the receiver verifies with the real key
  let status = 500;
  const got: Got[] = [];
  const waiters: { done: () => boolean; resolve: () => void }[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      const data = JSON.parse(body);
      got.push({
        id: String(req.headers['x-rotor-delivery']),
        secret: data.secret,
        to: data.to,
        status,
        body,
        verified: key === '' || verifySignature(String(req.headers['x-rotor-signature']), body, key, Date.now() / 1000),
      });
      res.writeHead(status).end();
      for (const w of [...waiters])
        if (w.done()) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve();
        }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const until = (done: () => boolean) =>
    done() ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ done, resolve }));

  const person = path.join(root, 'person');
  mkdirSync(person);
  gitInit(person);
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  writeFileSync(
    path.join(person, 'rotor.yaml'),
    `kind: Config\nsync: { interval: 1d }\nnotify:\n  - name: rx\n    url: ${url}\n    events: [rotated]\n    secret: rotor/hook-key\n`,
  );
  writeFileSync(
    path.join(person, 'p.yaml'),
    'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n---\nkind: Policy\nname: slow\nevery: 30d\noverlap: 1d\n',
  );
  writeFileSync(
    path.join(person, 's.yaml'),
    [
      'kind: Secret\nname: app/a\npolicy: fast\ngenerate: { length: 24 }\n',
      'kind: Secret\nname: app/b\npolicy: fast\ngenerate: { length: 24 }\n',
      'kind: Secret\nname: rotor/hook-key\npolicy: slow\ngenerate: { length: 40 }\n',
    ].join('---\n'),
  );
  commitAll(person, 'declarations');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', person, remote]);
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);

  // 1. Every delivery is refused; rotations go on, and their deliveries queue behind each secret's first
  // (held back: order per secret). Killed once each secret's first has been refused four times.
  const first = startDaemon(remote, dataDir);
  t.teardown(() => void first.child.kill('SIGKILL'));
  const refused = (s: string) => got.filter((g) => g.secret === s).length;
  await until(() => refused('app/a') >= 4 && refused('app/b') >= 4); // 3 backoffs: >= 3.5 s, later rotations queued
  first.child.kill('SIGKILL');
  await first.exited;
  const seen = new Set(got.map((g) => g.id));
  const queued = JSON.parse(readFileSync(path.join(dataDir, 'notify', 'queue.json'), 'utf8')).deliveries as {
    id: string;
  }[];
  t.ok(
    [...seen].every((id) => queued.some((d) => d.id === id)),
    'every delivery attempted is still in the queue on disk after the kill',
  );
  t.ok(queued.length > seen.size, 'later deliveries wait behind them on disk');
  const mustArrive = new Set(queued.map((d) => d.id));

  // The HMAC key, read as an operator would (the receiver now checks every signature).
  const keys = await loadKeys(dataDir);
  const store = await openStore({
    dir: path.join(dataDir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
  });
  const rec = store.get('secret/rotor/hook-key') as { versions: { value: string }[] };
  key = rec.versions[0]!.value;
  await store.close();
  t.ok(key.length === 40);

  // 2. Started again, answered 200: every delivery seen before arrives, in order per secret.
  status = 200;
  const second = startDaemon(remote, dataDir);
  t.teardown(() => void second.child.kill('SIGKILL'));
  const okIds = () => new Set(got.filter((g) => g.status === 200).map((g) => g.id));
  await until(() => [...mustArrive].every((id) => okIds().has(id)));
  second.child.kill('SIGTERM');
  await second.exited;

  const delivered = got.filter((g) => g.status === 200);
  t.ok(
    delivered.every((g) => g.verified),
    'every delivery after the restart carries a valid signature',
  );
  for (const s of ['app/a', 'app/b']) {
    const versions = delivered.filter((g) => g.secret === s).map((g) => g.to);
    t.same(
      versions,
      [...versions].sort((x, y) => x - y),
      `${s}: delivered in order (${versions.join(',')})`,
    );
    // The audit entries written after the queue's last write before the kill are queued again at the
    // start: no version is missing from the first rotation (version 2) on.
    const distinct = [...new Set(versions)];
    t.same(
      distinct,
      distinct.map((_, i) => i + 2),
      `${s}: every rotation from version 2 on was delivered`,
    );
  }
  // No value of any secret, nor the HMAC key, in a body or the logs.
  const all = got.map((g) => g.body).join('\n') + first.stderr() + second.stderr();
  t.notMatch(all, key, 'the HMAC key appears nowhere');
  const store2 = await openStore({
    dir: path.join(dataDir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
  });
  for (const s of ['app/a', 'app/b']) {
    const r = store2.get(`secret/${s}`) as { versions: { value: string }[] };
    for (const v of r.versions) t.notOk(all.includes(v.value), `no value of ${s} appears`);
  }
  await store2.close();
});
