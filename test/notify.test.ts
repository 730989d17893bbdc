/**
 * Webhooks (Config.notify): the signature, the config checks, and the Notifier against a real local
 * HTTP receiver (node:http) that checks every signature: order per secret, a full queue dropping the
 * oldest, at least once across a new Notifier on the same queue file, and a hanging receiver that
 * does not hold the daemon's rotations back (a real Daemon in-process, awaited by events).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t from 'tap';
import { jsonLogger } from '../src/log.js';
import { notifyUrlProblem } from '../src/model/notify-config.js';
import type { Occurrence } from '../src/notify/events.js';
import { occurrenceOf } from '../src/notify/events.js';
import { Notifier } from '../src/notify/notifier.js';
import { QueueFile } from '../src/notify/queue-file.js';
import { signatureHeader, verifySignature } from '../src/notify/sign.js';
import { Watcher } from '../src/notify/watch.js';
import { nodeFs } from '../src/state/fs.js';
import { commitAll, gitInit, rotor, tempDir } from './helpers.js';
import { finishes, world } from './world.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

const KEY = 'hmac-key-value-0123456789abcdefghijklmnop';

interface Received {
  id: string;
  event: string;
  body: string;
  data: Record<string, unknown>;
  verified: boolean;
}

/** A real HTTP receiver; `answer` decides each status (or 0: never answer). */
async function receiver(t: T, key: () => string, answer: (r: Received) => number) {
  const got: Received[] = [];
  const waiters: { n: (g: Received[]) => boolean; resolve: () => void }[] = [];
  const hanging: http.ServerResponse[] = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      const r: Received = {
        id: String(req.headers['x-rotor-delivery']),
        event: String(req.headers['x-rotor-event']),
        body,
        data: JSON.parse(body),
        verified: verifySignature(
          req.headers['x-rotor-signature'] as string,
          body,
          key(),
          Math.floor(Date.now() / 1000),
        ),
      };
      const status = answer(r);
      got.push(r);
      for (const w of [...waiters])
        if (w.n(got)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve();
        }
      if (status === 0) hanging.push(res);
      else res.writeHead(status).end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(
    () =>
      new Promise<void>((r) => {
        for (const h of hanging) h.destroy();
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook?token=q`;
  const until = (n: (g: Received[]) => boolean) =>
    n(got) ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ n, resolve }));
  return { url, got, until };
}

const rotated = (secret: string, to: number): Occurrence => ({
  event: 'rotated',
  time: new Date().toISOString(),
  secret,
  from: to - 1,
  to,
  trigger: 'schedule',
});

function notifier(dir: string, url: string, o: Partial<ConstructorParameters<typeof Notifier>[0]> = {}) {
  let logs = '';
  const n = new Notifier({
    file: new QueueFile(dir, nodeFs),
    log: jsonLogger((l) => void (logs += l)),
    now: Date.now,
    daemon: 'test-daemon',
    active: () => true,
    key: () => [KEY],
    commit: () => 'c0ffee',
    auditSeq: () => 0,
    ...o,
  });
  n.setEndpoints([{ name: 'hook', url, events: ['rotated', 'rotation-failed'], secret: 'rotor/hook-key' }]);
  return { n, logs: () => logs };
}

t.test('signatures: Stripe-like header, HMAC over t.body, replay window, both keys during an overlap', async (t) => {
  const body = '{"event":"rotated"}';
  const h = signatureHeader(['new', 'old'], 1_700_000_000, body);
  t.match(h, /^t=1700000000,v1=[0-9a-f]{64},v1=[0-9a-f]{64}$/);
  t.ok(verifySignature(h, body, 'new', 1_700_000_100));
  t.ok(verifySignature(h, body, 'old', 1_700_000_100), 'the previous key still verifies');
  t.notOk(verifySignature(h, body, 'other', 1_700_000_100), 'another key does not');
  t.notOk(verifySignature(h, `${body} `, 'new', 1_700_000_100), 'a changed body does not');
  t.notOk(verifySignature(h, body, 'new', 1_700_000_301), 'outside the 300 s window it is refused');
  t.notOk(verifySignature(undefined, body, 'new', 1_700_000_000));
});

t.test('notify URLs: https, or http to loopback only; no credentials, no fragment', async (t) => {
  t.equal(notifyUrlProblem('https://hooks.example.com/x?y=1'), undefined);
  t.equal(notifyUrlProblem('http://127.0.0.1:8080/x'), undefined);
  t.equal(notifyUrlProblem('http://[::1]/x'), undefined);
  t.equal(notifyUrlProblem('http://localhost/x'), undefined);
  t.match(notifyUrlProblem('http://hooks.example.com/x'), /use https/);
  t.match(notifyUrlProblem('https://user:pw@hooks.example.com/x'), /user name or password/);
  t.notMatch(notifyUrlProblem('https://user:pw@hooks.example.com/x') ?? '', /pw/);
  t.match(notifyUrlProblem('https://hooks.example.com/x#frag'), /fragment/);
  t.match(notifyUrlProblem('ftp://hooks.example.com/x'), /scheme ftp/);
  t.match(notifyUrlProblem('not a url'), /absolute URL/);
});

t.test('rotor validate: bad notify entries are errors with file, line and column', async (t) => {
  const dir = tempDir(t);
  gitInit(dir);
  writeFileSync(
    path.join(dir, 'rotor.yaml'),
    [
      'kind: Config',
      'notify:',
      '  - name: chat',
      '    url: https://user:hunter2@hooks.example.com/x',
      '    events: [rotated, exploded]',
      '    secret: rotor/hook-key',
      '  - name: chat',
      '    url: http://hooks.example.com/x',
      '    events: [rotated]',
      '    secret: rotor/hok-key',
      '  - name: db',
      '    url: https://hooks.example.com/y',
      '    events: [drift-detected]',
      '    secret: app/db',
      '',
    ].join('\n'),
  );
  writeFileSync(
    path.join(dir, 's.yaml'),
    [
      'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n---',
      'kind: Secret\nname: rotor/hook-key\npolicy: p\ngenerate: { length: 40 }\n---',
      'kind: Secret\nname: app/db\npolicy: p\nfields:\n  a: { generate: { length: 40 } }\n',
    ].join('\n'),
  );
  commitAll(dir, 'x');
  const r = await rotor(['validate', dir, '--format', 'json']);
  t.equal(r.code, 1);
  const problems = JSON.parse(r.stdout).problems as { code: string; line: number; col: number; file: string }[];
  const at = (code: string) => problems.filter((p) => p.code === code).map((p) => `${p.file}:${p.line}:${p.col}`);
  // The first entry's unknown event is a schema error: the entry is refused as a whole (Config is not used).
  t.same(at('SCHEMA_ENUM'), ['rotor.yaml:5:23']);
  t.notMatch(r.stdout, /hunter2/, 'a password in a URL is never echoed');

  // Without the schema error, the meaning checks run.
  writeFileSync(
    path.join(dir, 'rotor.yaml'),
    readFileSync(path.join(dir, 'rotor.yaml'), 'utf8').replace(', exploded', ''),
  );
  commitAll(dir, 'y');
  const r2 = await rotor(['validate', dir, '--format', 'json']);
  t.equal(r2.code, 1);
  const p2 = JSON.parse(r2.stdout).problems as {
    code: string;
    line: number;
    col: number;
    file: string;
    message: string;
  }[];
  const at2 = (code: string) => p2.filter((p) => p.code === code).map((p) => `${p.file}:${p.line}:${p.col}`);
  t.same(at2('NOTIFY_URL_INVALID'), ['rotor.yaml:4:10', 'rotor.yaml:8:10']);
  t.same(at2('NOTIFY_NAME_DUPLICATE'), ['rotor.yaml:7:11']);
  t.same(at2('NOTIFY_SECRET_UNKNOWN'), ['rotor.yaml:10:13']);
  t.match(p2.find((p) => p.code === 'NOTIFY_SECRET_UNKNOWN')?.message, /did you mean "rotor\/hook-key"/);
  t.same(at2('NOTIFY_SECRET_INVALID'), ['rotor.yaml:14:13']);
  t.notMatch(r2.stdout, /hunter2/, 'a password in a URL is never echoed');
});

t.test('deliveries: signed, in order per secret (a failing one holds its lane back), values never sent', async (t) => {
  const dir = path.join(tempDir(t), 'notify');
  let failA = 3;
  const rx = await receiver(
    t,
    () => KEY,
    (r) => (r.data.secret === 'a' && r.data.to === 2 && failA-- > 0 ? 500 : 200),
  );
  const { n, logs } = notifier(dir, rx.url);
  t.teardown(() => n.close());
  for (let v = 2; v <= 4; v++) {
    n.emit(rotated('a', v));
    n.emit(rotated('b', v));
  }
  n.emit({ event: 'overdue', time: new Date().toISOString(), secret: 'a' }); // not asked for: not sent
  // a's v2 fails 3 times (backoff 1 s, 2 s...), b's go out meanwhile; then a's in order.
  await n.drained();
  t.ok(
    rx.got.every((r) => r.verified),
    'every request carries a valid signature',
  );
  const ok = (s: string) => rx.got.filter((r) => r.data.secret === s).map((r) => r.data.to);
  t.same(ok('a'), [2, 2, 2, 2, 3, 4], 'a: v2 retried until it went, v3 and v4 held back until then');
  t.same(ok('b'), [2, 3, 4], 'b is not held back by a');
  t.ok(
    rx.got.findIndex((r) => r.data.secret === 'b' && r.data.to === 4) <
      rx.got.findIndex((r) => r.data.secret === 'a' && r.data.to === 3),
    "b's deliveries went out while a's first one was failing",
  );
  const first = rx.got[0]!;
  t.same(Object.keys(first.data).sort(), [
    'commit',
    'daemon',
    'event',
    'from',
    'id',
    'secret',
    'time',
    'to',
    'trigger',
  ]);
  t.equal(first.data.id, first.id, 'the body names the X-Rotor-Delivery id');
  t.equal(first.event, 'rotated');
  t.equal(first.data.daemon, 'test-daemon');
  const st = n.status().endpoints[0]!;
  t.equal(st.url, `${new URL(rx.url).origin}/hook`, 'the status shows the URL without its query');
  t.same(st.outcomes, { success: 6, failure: 3, dropped: 0, expired: 0 });
  t.equal(st.failing, false);
  for (const r of rx.got) t.notMatch(r.body, KEY, 'no body holds the HMAC key');
  t.notMatch(logs(), KEY);
  t.notMatch(logs(), 'token=q', 'the URL query is never logged');
});

t.test('a full queue drops the oldest and counts them; adding never waits', async (t) => {
  const dir = path.join(tempDir(t), 'notify');
  const rx = await receiver(
    t,
    () => KEY,
    () => 200,
  );
  const { n: n2 } = notifier(dir, rx.url, { maxQueue: 5 });
  t.teardown(() => n2.close());
  // emit() is synchronous and nothing is sent before the queue is on disk: all eight meet the bound.
  for (let v = 1; v <= 8; v++) n2.emit(rotated('s', v));
  const st = n2.status();
  t.equal(st.queued, 5, 'the queue holds its maximum');
  t.equal(st.endpoints[0]!.outcomes.dropped, 3, 'three dropped, counted');
  await n2.drained();
  t.same(
    rx.got.map((r) => r.data.to),
    [4, 5, 6, 7, 8],
    'the oldest were dropped; the rest went in order',
  );
});

t.test(
  'at least once: what was queued and not acknowledged goes out from a new Notifier on the same file',
  async (t) => {
    const dir = path.join(tempDir(t), 'notify');
    let up = false;
    const rx = await receiver(
      t,
      () => KEY,
      () => (up ? 200 : 503),
    );
    const first = notifier(dir, rx.url);
    for (let v = 1; v <= 3; v++) first.n.emit(rotated('s', v));
    await rx.until((g) => g.length >= 1); // the first was attempted (and refused)
    await first.n.close(); // a stop (a crash leaves the same file: it is written before each send)
    const kept = JSON.parse(readFileSync(path.join(dir, 'queue.json'), 'utf8')).deliveries as unknown[];
    t.equal(kept.length, 3, 'all three are on disk');
    up = true;
    const second = notifier(dir, rx.url);
    t.teardown(() => second.n.close());
    await second.n.open();
    second.n.setEndpoints([{ name: 'hook', url: rx.url, events: ['rotated'], secret: 'k' }]);
    await second.n.drained();
    const delivered = rx.got.slice(1).map((r) => r.data.to);
    t.same(delivered.slice(-3), [1, 2, 3], 'every one delivered, in order');
    t.ok(rx.got.every((r) => r.verified));
  },
);

t.test('a damaged queue file is set aside; the daemon does not stop', async (t) => {
  const dir = path.join(tempDir(t), 'notify');
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'queue.json'), '{"v":1,"deliveries":[');
  const rx = await receiver(
    t,
    () => KEY,
    () => 200,
  );
  const { n, logs } = notifier(dir, rx.url);
  await n.open();
  t.equal(n.status().queued, 0);
  t.match(logs(), /set aside/);
  t.equal(readFileSync(path.join(dir, 'queue.json.bad'), 'utf8'), '{"v":1,"deliveries":[');
  await n.close();
});

t.test('the watcher: overdue and a failing audit push, once each on the change', async (t) => {
  const w = new Watcher();
  const s = (overdue: boolean, pushFailures: number) => ({
    now: '2026-01-01T00:00:00Z',
    secrets: [{ name: 'x', overdue, version: 3 }],
    audit: { pushFailures, pushError: { code: 'GIT_PUSH_FAILED' } },
  });
  t.same(w.look(s(false, 0)), []);
  t.same(w.look(s(true, 1)), [{ event: 'overdue', time: '2026-01-01T00:00:00Z', secret: 'x', version: 3 }]);
  t.same(w.look(s(true, 3)), [{ event: 'audit-push-failing', time: '2026-01-01T00:00:00Z', code: 'GIT_PUSH_FAILED' }]);
  t.same(w.look(s(true, 4)), [], 'no repeat while it lasts');
  t.same(w.look(s(false, 0)), []);
  t.equal(w.look(s(true, 0)).length, 1, 'overdue again after it was rotated');
});

t.test('audit entries become events; a drift-detected entry is the hook for drift detection', async (t) => {
  t.same(occurrenceOf({ time: 'T', event: 'rotation-failed', secret: 's', to: 4, detail: 'AGENT_TIMEOUT: x' }), {
    time: 'T',
    event: 'rotation-failed',
    secret: 's',
    to: 4,
    code: 'AGENT_TIMEOUT',
  });
  t.same(occurrenceOf({ time: 'T', event: 'drift-detected', secret: 's', to: 2, detail: 'DB_LOGIN_REFUSED: x' }), {
    time: 'T',
    event: 'drift-detected',
    secret: 's',
    version: 2,
    code: 'DB_LOGIN_REFUSED',
  });
  t.same(occurrenceOf({ time: 'T', event: 'config-rejected', commit: 'abc', problems: 2 }), {
    time: 'T',
    commit: 'abc',
    event: 'config-rejected',
    problems: 2,
  });
  t.equal(occurrenceOf({ time: 'T', event: 'created', secret: 's' }), undefined);
});

t.test('a hanging receiver never holds a rotation back (daemon in-process, by events)', async (t) => {
  const rx = await receiver(
    t,
    () => '',
    () => 0,
  ); // never answers
  const config = [
    'kind: Config',
    'sync: { interval: 1d }',
    'notify:',
    '  - name: stuck',
    `    url: ${rx.url}`,
    '    events: [rotated]',
    '    secret: rotor/hook-key',
    '',
  ].join('\n');
  const w = await world(t, {
    'rotor.yaml': config,
    'p.yaml':
      'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n---\nkind: Policy\nname: slow\nevery: 30d\noverlap: 1d\n',
    's.yaml':
      'kind: Secret\nname: app/token\npolicy: fast\ngenerate: { length: 32 }\n---\nkind: Secret\nname: rotor/hook-key\npolicy: slow\ngenerate: { length: 40 }\n',
  });
  const d = await w.start();
  t.teardown(() => d.stop());
  await rx.until((g) => g.length >= 1); // a delivery is hanging now
  const before = rx.got.length;
  await finishes('app/token', 2); // two more rotations finish while it hangs
  t.equal(rx.got.length, before, 'no other request to that endpoint started: its lane waits');
  const st = d.status().notify!;
  t.ok(st.endpoints[0]!.queued >= 2, 'the later deliveries wait in the queue');
  // The stuck endpoint shows in rotor status, the status page and the metrics.
  const { render } = await import('../src/cli/status.js');
  t.match(render(d.status(), false), /webhook stuck: \d+ waiting, 0 delivered/);
  const { renderStatusPage } = await import('../src/serve/status-page.js');
  t.match(renderStatusPage(d.status(), Date.now()), /Webhook <code>stuck<\/code>/);
  const { metricsRegistry } = await import('../src/serve/metrics.js');
  const m = metricsRegistry(d);
  const text = await m.registry.metrics();
  m.close();
  t.match(text, /^rotor_notify_queue_depth\{endpoint="stuck"\} [1-9]\d*$/m);
  t.match(text, /^rotor_notify_deliveries_total\{endpoint="stuck",outcome="success"\} 0$/m);
  t.match(text, /^rotor_notify_failing\{endpoint="stuck"\} [01]$/m);
  const key = d.served('rotor/hook-key')!.value as string;
  const token = d.served('app/token')!.value as string;
  for (const r of rx.got) {
    t.notMatch(r.body, key);
    t.notMatch(r.body, token);
  }
  t.notMatch(w.logs(), key);
});

t.test('rotor plan shows a change to notify as a Config change', async (t) => {
  const dir = tempDir(t);
  gitInit(dir);
  const config = (events: string) =>
    `kind: Config\nnotify:\n  - name: chat\n    url: https://hooks.example.com/x\n    events: [${events}]\n    secret: rotor/hook-key\n`;
  writeFileSync(path.join(dir, 'rotor.yaml'), config('rotated'));
  writeFileSync(
    path.join(dir, 's.yaml'),
    'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n---\nkind: Secret\nname: rotor/hook-key\npolicy: p\ngenerate: { length: 40 }\n',
  );
  commitAll(dir, 'base');
  writeFileSync(path.join(dir, 'rotor.yaml'), config('rotated, rotation-failed'));
  commitAll(dir, 'head');
  const r = await rotor(['plan', '--base', 'HEAD~1', '--head', 'HEAD', '--format', 'json', dir]);
  t.equal(r.code, 0, r.stdout + r.stderr);
  const change = JSON.parse(r.stdout).plan.changes.find((c: { kind: string }) => c.kind === 'Config');
  t.equal(change?.action, 'changed');
  t.match(JSON.stringify(change.fields), /notify/);
  t.match(JSON.stringify(change.fields), /rotation-failed/);
});

t.test('audit entries written after the queue last was (a crash in between) are queued again at start', async (t) => {
  const dir = path.join(tempDir(t), 'notify');
  const rx = await receiver(
    t,
    () => KEY,
    () => 200,
  );
  let seq = 10;
  const first = notifier(dir, rx.url, { auditSeq: () => seq });
  await first.n.open([]); // first start: the cursor (10) is written, nothing replayed
  await first.n.flushed();
  t.equal(JSON.parse(readFileSync(path.join(dir, 'queue.json'), 'utf8')).auditSeq, 10);
  await first.n.close();
  // Entries 11 and 12 were appended, then the daemon died before the queue was written again.
  const time = new Date().toISOString();
  const tail = [
    { seq: 10, time, event: 'rotated', secret: 's', from: 1, to: 2 },
    { seq: 11, time, event: 'rotated', secret: 's', from: 2, to: 3 },
    { seq: 12, time, event: 'retired', secret: 's', from: 2 },
    { seq: 13, time, event: 'rotation-failed', secret: 's', to: 4, detail: 'AGENT_TIMEOUT: x' },
  ];
  seq = 13;
  const second = notifier(dir, rx.url, { auditSeq: () => seq });
  t.teardown(() => second.n.close());
  await second.n.open(tail);
  second.n.setEndpoints([{ name: 'hook', url: rx.url, events: ['rotated', 'rotation-failed'], secret: 'k' }]);
  await rx.until((g) => g.length >= 2);
  await second.n.drained();
  t.same(
    rx.got.map((r) => [r.data.event, r.data.to]),
    [
      ['rotated', 3],
      ['rotation-failed', 4],
    ],
    'only the entries after the cursor, each once',
  );
  t.equal(rx.got[0]!.data.time, time, 'with the time of the audit entry');
});
