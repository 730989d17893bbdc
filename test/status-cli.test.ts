/** rotor status against a running daemon (in-process, over its admin socket), and its rendering of a status made by hand. */
import { createServer } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { render, statusCommand } from '../src/cli/status.js';
import { getSecret } from '../src/client/index.js';
import { daemonStatus, type StatusParts } from '../src/daemon/status.js';
import type { StatusReading } from '../src/serve/status.js';
import { rotor, tempDir } from './helpers.js';
import { candidateView, followerView, HOSTILE_DAEMON, leaderView } from './lib/leadership.js';
import { statusWorld } from './lib/status-world.js';
import { step } from './world.js';

t.test(
  'rotor status: secrets, consumers behind, failing rotations, agents, config; JSON; colours only on a terminal',
  async (t) => {
    const w = await statusWorld(t, 'rotor-status-');
    // No agent runs: the database secret's first version times out and fails.
    const failed = step('app/db', 'failed');
    // The daemon's clock stands still (injected): the ages, next rotations and retries it reports are
    // exact however long the test takes on a busy machine. The agent job's timeout is a real timer.
    const NOW = Date.parse('2026-11-26T10:00:00.000Z');
    const d = await w.start({
      socketDir: path.join(w.root, 'sockets'),
      agentListen: '127.0.0.1:0',
      agentJobTimeoutMs: 100,
      now: () => NOW,
    });
    t.teardown(() => d.stop());
    await failed;
    await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'web.sock') });
    await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'worker.sock') });
    await d.rotateNow('app/token', 'status test');
    await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'web.sock') });

    const r = await rotor(['status', '--data-dir', w.dataDir]);
    t.equal(r.code, 1, 'exit 1: a rotation is failing');
    t.match(r.stdout, /^SECRET\s+VER\s+AGE\s+NEXT\s+STATE\s+STRATEGY\s+TARGET\s+CONSUMERS/m);
    t.match(
      r.stdout,
      /^app\/token\s+2\s+0s\s+in 30d\s+ok\s+generate\s+-\s+web@2, worker@1\*$/m,
      'rotated just now, next in 30 days; the worker is still on version 1',
    );
    t.match(
      r.stdout,
      /^app\/db\s+-\s+-\s+in 1s\s+failing: AGENT_TIMEOUT \(1x\)\s+alternate\s+pg \(postgres\)\s+web$/m,
      'failed once; its retry is due 1 s after the failure, on the daemon clock',
    );
    t.match(r.stdout, /AGENTS {2}\(listening on 127\.0\.0\.1:\d+\)\n {2}db-host: never seen/);
    t.match(r.stdout, /CONFIG {2}applied [0-9a-f]{12} at /);
    t.notOk(r.stdout.includes('\x1b['), 'no colours when piped');
    const json = JSON.parse((await rotor(['status', '--json', '--data-dir', w.dataDir])).stdout);
    t.match(
      json.secrets.find((s: { name: string }) => s.name === 'app/db'),
      { failing: { error: 'AGENT_TIMEOUT' }, strategy: 'alternate', target: 'pg' },
    );
    t.same(
      json.secrets.find((s: { name: string }) => s.name === 'app/token').previous,
      { version: 1, validUntil: new Date(NOW + 86_400_000).toISOString() },
      'version 1 is still served, for the 1d overlap',
    );
    t.notOk(json.secrets.find((s: { name: string }) => s.name === 'app/db').previous, 'no previous without a rotation');
    let tty = '';
    await statusCommand(['--data-dir', w.dataDir], {
      stdout: (s) => void (tty += s),
      stderr: () => undefined,
      env: {},
      cwd: w.root,
      now: () => NOW,
      isTTY: true,
    });
    t.match(tty, /\x1b\[31mapp\/db/, 'a failing secret in red on a terminal');
    const none = await rotor(['status', '--data-dir', path.join(w.root, 'nowhere')]);
    t.equal(none.code, 1);
    t.match(none.stderr, /DAEMON_NOT_RUNNING/);
    t.notOk(r.stdout.includes(String(d.served('app/token')!.value)), 'no value in the status');
  },
);

/** A status made by hand: one secret, with or without the leadership section. */
function handMade(leadership?: StatusReading['leadership']): StatusReading {
  const now = '2026-11-26T10:00:00.000Z';
  return {
    now,
    config: { applied: { commit: 'a'.repeat(40), at: now } },
    secrets: [
      {
        name: 'app/token',
        version: 2,
        rotatedAt: now,
        nextRotationAt: Date.parse(now) + 30 * 86400_000,
        pending: false,
        overdue: false,
        source: 'generate',
        consumers: [],
      },
    ],
    ...(leadership ? { leadership } : {}),
  };
}

t.test('rotor status: the leadership of daemons sharing a store, before the secrets', async (t) => {
  const leader = render(handMade(leaderView()), false);
  t.match(leader, /^LEADERSHIP {2}this daemon \(rotor-a\) leads, term 7\n/, 'first: the role and the term');
  t.match(
    leader,
    /^ {2}leader: rotor-a \(agents: https:\/\/10\.0\.0\.1:7700\), lease renewed 2s ago, expires in 13s$/m,
    'the leader, its agent URL and its lease',
  );
  t.match(leader, /^ {2}rotor-a \(this daemon\): leader, term 7, agents: https:\/\/10\.0\.0\.1:7700, seen 2s ago$/m);
  t.match(leader, /^ {2}rotor-b: follower, term 5, agents: https:\/\/10\.0\.0\.2:7700, seen 1s ago$/m);
  t.match(leader, /^ {2}<img src=x onerror="alert\(1\)">: follower, seen 1m 35s ago$/m, 'one line per daemon seen');
  t.ok(
    leader.indexOf('rotor-a (this daemon)') < leader.indexOf('  rotor-b:'),
    'the leader first, then the others by name',
  );
  t.notMatch(leader, /rotations are run by the leader/, 'the leader runs them itself');
  t.ok(leader.indexOf('LEADERSHIP') < leader.indexOf('SECRET'), 'above the secrets');
  t.match(leader, /^app\/token\s+2\s+0s\s+in 30d\s+ok/m, 'the secrets as ever');

  const follower = render(handMade(followerView()), false);
  t.match(follower, /^LEADERSHIP {2}this daemon \(rotor-b\) follows, term 7\n {2}leader: rotor-a /);
  t.match(
    follower,
    /^ {2}rotations are run by the leader \(rotor-a\), not this daemon: NEXT is when the leader is due to rotate$/m,
    'a follower says that the leader rotates',
  );
  t.match(follower, /^ {2}rotor-b \(this daemon\): follower, term 5/m);

  const candidate = render(handMade(candidateView()), true);
  t.match(candidate, /this daemon \(rotor-b\) is a candidate \(no daemon leads as far as it knows\), term 7/);
  t.match(
    candidate,
    /\x1b\[33m {2}no daemon holds the lease: nothing rotates until one takes it\x1b\[0m/,
    'nobody leads: in yellow on a terminal',
  );
  t.notMatch(candidate, /leader:/);

  const hostile = handMade({
    ...followerView(),
    daemons: [{ id: 'id-e', name: 'evil\x1b[2J\x07', role: 'follower', seenAgoMs: 0 }],
  });
  t.match(
    render(hostile, false),
    /^ {2}evil\?\[2J\?: follower, seen 0s ago$/m,
    'no control character from a name reaches the terminal',
  );

  const single = render(handMade(), false);
  t.notMatch(single, /LEADERSHIP|leader|daemon/, 'nothing of it with one daemon (the file store)');
  t.match(single, /^SECRET/, 'the secrets first');
  t.notOk(single.includes(HOSTILE_DAEMON));
});

t.test('rotor status --json: the leadership section as the daemon gives it', async (t) => {
  const dataDir = tempDir(t, 'rotor-status-lead-');
  const status = handMade(followerView());
  const server = createServer((req, res) => {
    const body = JSON.stringify(req.url === '/v1/status' ? status : { error: { code: 'NOT_FOUND', message: req.url } });
    res.writeHead(req.url === '/v1/status' ? 200 : 404, { 'content-type': 'application/json' });
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(path.join(dataDir, 'admin.sock'), resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const json = await rotor(['status', '--json', '--data-dir', dataDir]);
  t.equal(json.code, 0, 'a follower is no trouble');
  t.same(JSON.parse(json.stdout).leadership, followerView(), 'the section whole');
  const text = await rotor(['status', '--data-dir', dataDir]);
  t.equal(text.code, 0);
  t.match(text.stdout, /^LEADERSHIP {2}this daemon \(rotor-b\) follows, term 7$/m);
});

t.test('daemonStatus: the leadership section is passed through when the daemon has one', async (t) => {
  const parts: StatusParts = {
    engine: { status: () => [], storageFailure: () => undefined },
    desired: undefined,
    consumersOf: () => [],
    receipt: () => undefined,
    config: {},
    sockets: { dir: '/run/rotor', consumers: [], requests: [] },
    agents: { agents: [] },
    store: { seq: 1, storeId: 's' },
    audit: { commitPending: false, pushFailures: 0 },
    recent: [],
    now: () => Date.parse('2026-11-26T10:00:00.000Z'),
  };
  t.notOk('leadership' in daemonStatus(parts), 'none with the file store');
  t.same(daemonStatus({ ...parts, leadership: followerView() }).leadership, followerView());
});
