/**
 * The consumer sockets and their API, against a real daemon (in-process) with real git repositories:
 * permissions, every route and error, long-polls, read receipts and retireAfter: consumers.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { call, getSecret, listSecrets, RotorClientError, watchSecret } from '../src/client/index.js';
import { rotor } from './helpers.js';
import { raw, step, world } from './world.js';

const UID = process.getuid!();
const CONFIG = 'kind: Config\nsync: { interval: 1d }\n';
const POLICIES = `kind: Policy
name: slow
every: 30d
overlap: 1d
---
kind: Policy
name: drain
every: 30d
overlap: 1d
retireAfter: consumers
`;
const SECRETS = `kind: Secret
name: app/token
policy: slow
generate: { length: 32 }
---
kind: Secret
name: app/config
policy: slow
fields:
  key: { generate: { length: 24 } }
  region: { value: eu-west-1 }
---
kind: Secret
name: other/secret
policy: slow
generate: {}
---
kind: Secret
name: shared/drained
policy: drain
generate: {}
---
kind: Secret
name: lonely/drained
policy: drain
generate: {}
`;
const consumers = (extra = '') => `kind: Consumer
name: app
uid: ${UID}
secrets: ["app/*", "shared/*", "app/missing"]
---
kind: Consumer
name: other
uid: ${UID}
secrets: ["other/**", "shared/drained"]
${extra}`;

async function setup(t: Parameters<Parameters<typeof t.test>[1]>[0], files: Record<string, string> = {}) {
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICIES,
    'secrets.yaml': SECRETS,
    'consumers.yaml': consumers(),
    ...files,
  });
  const socketDir = path.join(w.root, 'sockets');
  const d = await w.start({ socketDir });
  t.teardown(() => d.stop());
  const sock = (c: string) => path.join(socketDir, `${c}.sock`);
  return { ...w, d, socketDir, sock };
}

t.test('one socket per consumer, 0600 and owned by its uid, in a 0711 directory', async (t) => {
  const w = await setup(t);
  for (const c of ['app', 'other']) {
    const st = lstatSync(w.sock(c));
    t.ok(st.isSocket(), `${c}.sock is a socket`);
    t.equal(st.mode & 0o777, 0o600, `${c}.sock is 0600`);
    t.equal(st.uid, UID, `${c}.sock belongs to the consumer's uid`);
  }
  t.equal(statSync(w.socketDir).mode & 0o777, 0o711, 'the socket directory is 0711');
  t.same(
    readdirSync(w.socketDir).sort(),
    ['app.sock', 'other.sock'],
    'nothing else is left in the directory (no bind directories)',
  );
});

t.test('GET /v1/secrets/NAME: value, version, times; structured values; no-store', async (t) => {
  const w = await setup(t);
  const r = await raw(w.sock('app'), '/v1/secrets/app/token');
  t.equal(r.status, 200);
  t.equal(r.headers['cache-control'], 'no-store');
  t.equal(r.headers['content-type'], 'application/json');
  t.equal(r.body.name, 'app/token');
  t.equal(r.body.version, 1);
  t.equal(r.body.value, w.d.served('app/token')!.value, 'the value the daemon serves');
  t.match(r.body.value, /^[A-Za-z0-9_-]{32}$/);
  t.ok(Date.parse(r.body.rotatedAt) > 0, 'rotatedAt is a time');
  t.ok(Date.parse(r.body.nextRotationAt) > Date.parse(r.body.rotatedAt), 'nextRotationAt is after rotatedAt');
  t.notOk('previous' in r.body, 'no previous version before the first rotation');
  const c = await getSecret('app/config', { socket: w.sock('app') });
  t.equal(typeof c.value, 'object');
  t.equal((c.value as Record<string, string>).region, 'eu-west-1');
  t.match((c.value as Record<string, string>).key, /^.{24}$/);
});

t.test(
  '403 for what the globs do not grant (existing or not), 404 for granted unknown names; logged without values',
  async (t) => {
    const w = await setup(t);
    const denied = await raw(w.sock('app'), '/v1/secrets/other/secret');
    t.equal(denied.status, 403);
    t.equal(denied.body.error.code, 'ACCESS_DENIED');
    const deniedMissing = await raw(w.sock('app'), '/v1/secrets/other/nothing-here');
    t.equal(deniedMissing.status, 403, 'an ungranted name gets 403 whether or not it exists: nothing leaks');
    const unknown = await raw(w.sock('app'), '/v1/secrets/app/missing');
    t.equal(unknown.status, 404);
    t.equal(unknown.body.error.code, 'SECRET_UNKNOWN');
    const fromOther = await raw(w.sock('other'), '/v1/secrets/app/token');
    t.equal(fromOther.status, 403, 'the other consumer cannot read app/token');
    t.equal((await raw(w.sock('other'), '/v1/secrets/other/secret')).status, 200, 'but reads its own');
    t.match(
      w.logs(),
      /"consumer":"app","secret":"other\/secret","code":"ACCESS_DENIED"/,
      'the refusal is logged with consumer and secret',
    );
    const status = w.d.status();
    t.equal(
      status.sockets.requests.find((r) => r.consumer === 'app' && r.status === 403)?.count,
      2,
      'refusals are counted per consumer',
    );
    for (const n of ['app/token', 'other/secret'])
      t.notOk(w.logs().includes(String(w.d.served(n)!.value)), `the value of ${n} is not in the logs`);
  },
);

t.test('the list and health routes', async (t) => {
  const w = await setup(t);
  const list = await raw(w.sock('app'), '/v1/secrets');
  t.equal(list.status, 200);
  t.same(
    list.body.secrets.map((s: { name: string }) => s.name),
    ['app/config', 'app/token', 'shared/drained'],
    'exactly the declared secrets the globs grant',
  );
  t.same(await listSecrets({ socket: w.sock('other') }), ['other/secret', 'shared/drained']);
  const h = await raw(w.sock('other'), '/v1/health');
  t.same(h.body, { status: 'ok', consumer: 'other' });
});

t.test('every error is JSON with a stable code; requests are bounded', async (t) => {
  const w = await setup(t);
  const s = w.sock('app');
  const cases: [string, Parameters<typeof raw>[2], number, string][] = [
    ['/v1/secrets/app/token', { method: 'POST' }, 405, 'METHOD_NOT_ALLOWED'],
    ['/v1/secrets/App/Token', {}, 400, 'BAD_NAME'],
    ['/v1/secrets/app/../other/secret', {}, 400, 'BAD_NAME'],
    ['/v1/secrets/app%2', {}, 400, 'BAD_NAME'],
    ['/v1/secrets/app/token?nope=1', {}, 400, 'BAD_REQUEST'],
    ['/v1/secrets/app/token?wait=301', {}, 400, 'BAD_REQUEST'],
    ['/v1/secrets/app/token?wait=-1', {}, 400, 'BAD_REQUEST'],
    ['/v1/secrets/app/token?after=1', {}, 400, 'BAD_REQUEST'],
    ['/v1/secrets/app/token?version=1&wait=1', {}, 400, 'BAD_REQUEST'],
    ['/v1/secrets/app/token?version=99', {}, 404, 'VERSION_UNKNOWN'],
    ['/v1/health?x=1', {}, 400, 'BAD_REQUEST'],
    ['/v2/anything', {}, 404, 'NOT_FOUND'],
    ['/v1/secrets/app/token', { headers: { 'content-length': '3' }, body: 'abc' }, 400, 'BODY_NOT_ALLOWED'],
  ];
  for (const [p, o, status, code] of cases) {
    const r = await raw(s, p, o);
    t.equal(r.status, status, `${o?.method ?? 'GET'} ${p}: ${status}`);
    t.equal(r.body?.error?.code, code, `${p}: ${code}`);
  }
  const big = await raw(s, '/v1/health', { headers: { 'x-big': 'a'.repeat(10_000) } });
  t.equal(big.status, 431, 'headers over 8 KiB are refused');
});

t.test('previous during the overlap, retained versions, and long-polls for the next version', async (t) => {
  const w = await setup(t);
  const s = w.sock('app');
  const v1 = await getSecret('app/token', { socket: s });
  // A long-poll waits for a version after 1; the rotation answers it.
  const polled = raw(s, '/v1/secrets/app/token?wait=60&after=1');
  const pollRotated = w.d.rotateNow('app/token', 'test');
  const r = await polled;
  await pollRotated;
  t.equal(r.status, 200);
  t.equal(r.body.version, 2, 'the long-poll returns the new version');
  t.equal(r.body.previous.version, 1);
  t.equal(r.body.previous.value, v1.value, 'previous is the old value');
  t.ok(Date.parse(r.body.previous.validUntil) > Date.now(), 'previous.validUntil is in the future');
  t.not(r.body.value, v1.value, 'a new value');
  const old = await getSecret('app/token', { socket: s, version: 1 });
  t.equal(old.state, 'previous');
  t.equal(old.value, v1.value);
  // Without after, wait means "after the current version".
  const next = raw(s, '/v1/secrets/app/token?wait=60');
  await w.d.rotateNow('app/token', 'test');
  t.equal((await next).body.version, 3);
  const current = await getSecret('app/token', { socket: s, version: 3 });
  t.equal(current.state, 'current');
  const v1Again = await getSecret('app/token', { socket: s, version: 1 });
  t.equal(v1Again.state, 'retired', 'an older retained version is readable, marked retired');
  // A version already newer than `after` answers at once.
  t.equal((await raw(s, '/v1/secrets/app/token?wait=60&after=1')).body.version, 3);
  // A bounded wait with no rotation returns the current version when it runs out.
  const timedOut = await raw(s, '/v1/secrets/app/token?wait=1&after=3');
  t.equal(timedOut.status, 200);
  t.equal(timedOut.body.version, 3, 'the wait ran out: the current version');
  // A long-poll on a secret the consumer loses with a new commit ends with 403.
  const losing = raw(s, '/v1/secrets/shared/drained?wait=60&after=1');
  await new Promise((r) => setImmediate(r));
  w.push('consumers.yaml', consumers().replace('"shared/*", ', ''), 'app loses shared/*');
  await w.d.syncNow();
  t.equal((await losing).status, 403, 'the long-poll re-checks the grants after a new commit');
});

t.test('watchSecret yields the current version and each new one', async (t) => {
  const w = await setup(t);
  const ac = new AbortController();
  const seen: number[] = [];
  const it = watchSecret('app/token', { socket: w.sock('app'), signal: ac.signal, waitSeconds: 30 });
  for await (const s of it) {
    seen.push(s.version);
    if (s.version === 1) void w.d.rotateNow('app/token', 'watch');
    if (s.version === 2) break;
  }
  t.same(seen, [1, 2]);
  ac.abort();
  await t.rejects(call('/v1/secrets/other/secret', { socket: w.sock('app') }), { code: 'ACCESS_DENIED', status: 403 });
  const denied = watchSecret('other/secret', { socket: w.sock('app') });
  await t.rejects(denied.next(), { code: 'ACCESS_DENIED' }, 'a watch of an ungranted secret fails, it does not retry');
  await t.rejects(getSecret('app/token', { socket: path.join(w.root, 'nothing.sock') }), {
    code: 'DAEMON_NOT_RUNNING',
  });
  t.ok(new RotorClientError('X', 'y') instanceof Error);
});

t.test('read receipts; retireAfter: consumers retires once every consumer read the new version', async (t) => {
  const w = await setup(t);
  await getSecret('shared/drained', { socket: w.sock('app') });
  await getSecret('shared/drained', { socket: w.sock('other') });
  await w.d.rotateNow('shared/drained', 'drain test');
  await w.d.rotateNow('lonely/drained', 'no consumers');
  const app = await getSecret('shared/drained', { socket: w.sock('app') });
  t.equal(app.version, 2);
  t.equal(app.previous?.version, 1, 'one consumer read version 2: the previous stays');
  const st = w.d.status().secrets.find((s) => s.name === 'shared/drained')!;
  t.same(
    st.consumers.map((c) => [c.name, c.version, c.behind]),
    [
      ['app', 2, false],
      ['other', 1, true],
    ],
    'status shows the consumer still on version 1',
  );
  const retired = step('shared/drained', 'retired');
  const other = await getSecret('shared/drained', { socket: w.sock('other') });
  t.equal(other.version, 2);
  await retired;
  const after = await getSecret('shared/drained', { socket: w.sock('app') });
  t.notOk(after.previous, 'every consumer read version 2: the previous version is retired before the overlap ends');
  t.ok(Date.now() < Date.parse(app.previous!.validUntil), 'and well before its overlap ended');
  t.equal((await getSecret('shared/drained', { socket: w.sock('app'), version: 1 })).state, 'retired');
  const lonely = w.d.served('lonely/drained')!;
  t.equal(lonely.previous?.version, 1, 'a secret no consumer reads keeps its previous version for the overlap');
  // Receipts survive a restart.
  await w.d.stop();
  const d2 = await w.start({ socketDir: w.socketDir });
  t.teardown(() => d2.stop());
  t.same(
    d2
      .status()
      .secrets.find((s) => s.name === 'shared/drained')!
      .consumers.map((c) => c.version),
    [2, 2],
    'receipts are kept in the store',
  );
});

t.test('sockets follow the declarations: a new consumer gets one, a removed one loses it', async (t) => {
  const w = await setup(t);
  w.push(
    'consumers.yaml',
    consumers(`---\nkind: Consumer\nname: late\nuid: ${UID}\nsecrets: ["app/token"]\n`),
    'add late',
  );
  await w.d.syncNow();
  t.equal(
    (await getSecret('app/token', { socket: w.sock('late') })).version,
    1,
    'the new consumer reads through its new socket',
  );
  const held = raw(w.sock('late'), '/v1/secrets/app/token?wait=60');
  await new Promise((r) => setImmediate(r));
  w.push('consumers.yaml', consumers(), 'remove late');
  await w.d.syncNow();
  await t.rejects(held, 'an open long-poll of a removed consumer is cut');
  t.notOk(readdirSync(w.socketDir).includes('late.sock'), 'the socket of a removed consumer is gone');
  t.same(readdirSync(w.socketDir).sort(), ['app.sock', 'other.sock']);
});

t.test('start: stale sockets are cleared, a live one is not taken over, an unsafe directory is refused', async (t) => {
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICIES,
    'secrets.yaml': SECRETS,
    'consumers.yaml': consumers(),
  });
  const socketDir = path.join(w.root, 'sockets');
  mkdirSync(socketDir, { mode: 0o711 });
  // A socket file nobody listens on (what a killed daemon leaves).
  execFileSync('python3', [
    '-c',
    'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])',
    path.join(socketDir, 'app.sock'),
  ]);
  t.ok(lstatSync(path.join(socketDir, 'app.sock')).isSocket());
  const d = await w.start({ socketDir });
  t.equal(
    (await getSecret('app/token', { socket: path.join(socketDir, 'app.sock') })).version,
    1,
    'the stale socket was replaced',
  );
  // A second daemon (its own data dir) on the same socket directory is refused.
  const w2 = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICIES,
    'secrets.yaml': SECRETS,
    'consumers.yaml': consumers(),
  });
  await t.rejects(w2.start({ socketDir }), { code: 'SOCKET_DIR_IN_USE' });
  await d.stop();
  t.same(readdirSync(socketDir), [], 'stop removes the sockets');
  // Another process listening on a socket there is not taken over either.
  const other = net.createServer().listen(path.join(socketDir, 'other.sock'));
  await new Promise((r) => other.once('listening', r));
  await t.rejects(w2.start({ socketDir }), { code: 'SOCKET_DIR_IN_USE' });
  await new Promise((r) => other.close(r));
  chmodSync(socketDir, 0o733);
  await t.rejects(w2.start({ socketDir }), { code: 'SOCKET_DIR_UNSAFE' }, 'a directory others may write to is refused');
  chmodSync(socketDir, 0o711);
  const d2 = await w2.start({ socketDir });
  await d2.stop();
  t.notOk(readFileSync(path.join(w.dataDir, '..', 'data', 'identity.age'), 'utf8').length === 0);
});

t.test(
  'a socket directory that is a symbolic link is refused (SOCKET_DIR_SYMLINK), its target left as it was',
  async (t) => {
    const w = await world(t, {
      'rotor.yaml': CONFIG,
      'policies.yaml': POLICIES,
      'secrets.yaml': SECRETS,
      'consumers.yaml': consumers(),
    });
    // A directory of the daemon's user, closed (0700): followed, it would be chmod'ed 0711 and get sockets.
    const target = path.join(w.root, 'elsewhere');
    mkdirSync(target, { mode: 0o700 });
    chmodSync(target, 0o700);
    const link = path.join(w.root, 'sockets');
    symlinkSync(target, link);
    await t.rejects(w.start({ socketDir: link }), {
      code: 'SOCKET_DIR_SYMLINK',
      message: /is a symbolic link.*remove the link, or pass the real directory/,
    });
    t.equal(statSync(target).mode & 0o777, 0o700, 'the target keeps its mode');
    t.same(readdirSync(target), [], 'and has nothing put in it');
    t.ok(lstatSync(link).isSymbolicLink(), 'the link is left where it was');

    // A link to nowhere: nothing is created where it points.
    const dangling = path.join(w.root, 'dangling');
    symlinkSync(path.join(w.root, 'nowhere'), dangling);
    await t.rejects(w.start({ socketDir: dangling }), { code: 'SOCKET_DIR_SYMLINK' });
    t.notOk(existsSync(path.join(w.root, 'nowhere')), "the link's target is not created");

    // rotor daemon says so and exits 1.
    const r = await rotor([
      'daemon',
      '--repo',
      w.remote,
      '--data-dir',
      w.dataDir,
      '--socket-dir',
      link,
      '--agent-listen',
      '127.0.0.1:0',
      '--metrics-listen',
      'off',
    ]);
    t.equal(r.code, 1);
    t.match(
      r.stderr,
      new RegExp(
        `rotor daemon: ${link.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is a symbolic link.* \\[SOCKET_DIR_SYMLINK\\]\\n`,
      ),
    );
    t.equal(statSync(target).mode & 0o777, 0o700, 'still 0700');

    // The real directory works.
    const d = await w.start({ socketDir: target });
    t.equal((await getSecret('app/token', { socket: path.join(target, 'app.sock') })).version, 1);
    t.equal(statSync(target).mode & 0o777, 0o711, 'the real directory is made 0711');
    await d.stop();
  },
);
