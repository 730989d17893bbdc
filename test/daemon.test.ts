/**
 * The daemon against real git repositories: a bare repository as the remote, a person's clone beside
 * it, the daemon's own clone in its data directory. Events are awaited on the rotation channel.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { verifyAuditDir } from '../src/audit/log.js';
import { Daemon } from '../src/daemon/daemon.js';
import { loadKeys } from '../src/keys.js';
import type { SecretRecord } from '../src/rotation/record.js';
import { openStore } from '../src/state/store.js';
import { git, tempDir } from './helpers.js';
import { daemonProcess, finishes, step, world } from './world.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

const CONFIG = 'kind: Config\nsync: { interval: 1d }\n';
const FAST = 'kind: Policy\nname: fast\nevery: 1s\noverlap: 500ms\n'
  .replace('500ms', '1s')
  .replace('every: 1s', 'every: 2s');

/** The audit entries on the remote (from a fresh clone), after checking the chain. */
async function remoteAudit(t: T, remote: string) {
  const dir = path.join(tempDir(t), 'check');
  execFileSync('git', ['clone', '-q', remote, dir]);
  const v = await verifyAuditDir(path.join(dir, 'audit'));
  t.ok(v.result.ok, `the audit chain on the remote verifies: ${JSON.stringify(v.result).slice(0, 300)}`);
  const entries = readdirSync(path.join(dir, 'audit'))
    .sort()
    .flatMap((f) =>
      readFileSync(path.join(dir, 'audit', f), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
    );
  return entries as {
    seq: number;
    event: string;
    secret?: string;
    from?: number;
    to?: number;
    trigger?: string;
    reason?: string;
    commit?: string;
    problems?: number;
  }[];
}

const SECRETS = `kind: Secret
name: demo/ticker
policy: fast
generate: { length: 24 }
---
kind: Secret
name: demo/config
policy: fast
fields: { token: { generate: { length: 30, charset: base64url } }, region: { value: eu-west-1 } }
`;

/**
 * Whether `commit` is `ancestor` or descends from it. The daemon names the remote head it applied, and
 * its own audit commits may sit on top of a person's commit there: when the daemon had entries to push
 * as the person pushed, it rebased them onto the person's commit and pushed before it fetched.
 */
function descends(repo: string, commit: string, ancestor: string): boolean {
  try {
    git(repo, 'merge-base', '--is-ancestor', ancestor, commit);
    return true;
  } catch {
    return false;
  }
}
t.test('rotations on schedule become audit commits on the remote', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const done = finishes('demo/ticker', 3);
  const d = await w.start();
  await done;
  t.match(d.served('demo/config')?.value, { token: /^[A-Za-z0-9_-]{30}$/, region: 'eu-west-1' });
  await d.stop();
  const entries = await remoteAudit(t, w.remote);
  const ticker = entries.filter((e) => e.secret === 'demo/ticker' && (e.event === 'created' || e.event === 'rotated'));
  t.same(
    ticker.slice(0, 3).map((e) => [e.event, e.from, e.to, e.trigger]),
    [
      ['created', undefined, 1, 'new'],
      ['rotated', 1, 2, 'schedule'],
      ['rotated', 2, 3, 'schedule'],
    ],
  );
  t.ok(entries.some((e) => e.event === 'config-applied'));
  const log = git(w.remote, 'log', '--format=%an %s', 'main');
  t.match(log, /^rotor rotor: audit entries$/m, 'audit commits by rotor');
  t.match(log, /declarations$/m);
});

t.test('an invalid commit is rejected and the last good model keeps rotating', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const d = await w.start();
  t.teardown(() => d.stop());
  const good = (d.status().config.applied as { commit: string }).commit;
  w.push('policies.yaml', FAST.replace('overlap: 1s', 'overlap: 5d'), 'overlap too long');
  const bad = git(w.person, 'rev-parse', 'HEAD');
  await d.syncNow();
  const st = d.status().config as { applied: { commit: string }; attempted: { commit: string; problems: number } };
  t.equal(st.applied.commit, good, 'the last applied revision stays');
  const contains = (commit: string, ancestor: string) => descends(w.remote, commit, ancestor);
  t.ok(contains(st.attempted.commit, bad), 'the attempted revision is recorded apart');
  t.equal(st.attempted.problems, 1);
  await finishes('demo/ticker', 1);
  t.pass('rotations go on under the last good model');
  w.push('policies.yaml', FAST, 'fix');
  const fixed = git(w.person, 'rev-parse', 'HEAD');
  await d.syncNow();
  t.ok(contains((d.status().config.applied as { commit: string }).commit, fixed), 'the fixed commit is applied');
  await d.stop();
  const entries = await remoteAudit(t, w.remote);
  const rejected = entries.find((e) => e.event === 'config-rejected');
  t.match(rejected, { problems: 1 });
  t.ok(contains(String(rejected?.commit), bad), 'the rejected entry names the bad commit (or an audit commit on it)');
  t.match(w.logs(), /"msg":"commit rejected: its declarations are invalid; the last good commit stays in force"/);
});

t.test('a rotate request in the repository rotates once, with its reason and commit', async (t) => {
  const slow = 'kind: Policy\nname: slow\nevery: 30d\noverlap: 1d\n';
  const secret = 'kind: Secret\nname: app/key\npolicy: slow\ngenerate: {}\n';
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': slow, 'secrets.yaml': secret });
  const d = await w.start();
  t.teardown(() => d.stop());
  t.equal(d.served('app/key')?.version, 1, 'a new secret gets version 1 at once');
  const v1 = d.served('app/key')!.value;
  const rotated = finishes('app/key', 1);
  w.push('secrets.yaml', `${secret}rotate: { request: "2026-11-26-1", reason: "seen in a log" }\n`, 'rotate app/key');
  const commit = git(w.person, 'rev-parse', 'HEAD');
  await d.syncNow();
  await rotated;
  const s = d.served('app/key')!;
  t.equal(s.version, 2);
  t.equal(s.previous?.value, v1, 'the previous value is served during the overlap');
  await d.syncNow();
  t.equal(d.served('app/key')?.version, 2, 'the same request does not rotate again');
  await d.stop();
  const e = (await remoteAudit(t, w.remote)).filter((x) => x.secret === 'app/key' && x.event === 'rotated');
  t.same(
    e.map((x) => [x.to, x.trigger, x.reason]),
    [[2, 'request', 'seen in a log']],
  );
  t.ok(descends(w.remote, String(e[0]?.commit), commit), 'with the commit of the request (or an audit commit on it)');
});

t.test('a removed secret stops rotating, is kept for its overlap, then purged; both audited', async (t) => {
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1s\n',
    'secrets.yaml': 'kind: Secret\nname: old/key\npolicy: p\ngenerate: {}\n',
  });
  const d = await w.start();
  t.teardown(() => d.stop());
  t.equal(d.served('old/key')?.version, 1);
  const purged = step('old/key', 'purged');
  w.push('secrets.yaml', '# nothing here any more\n', 'remove old/key');
  await d.syncNow();
  await purged;
  t.equal(d.served('old/key'), undefined);
  await d.stop();
  const events = (await remoteAudit(t, w.remote)).filter((x) => x.secret === 'old/key').map((x) => x.event);
  t.same(events, ['created', 'removed', 'purged']);
});

t.test('a restart resumes: versions continue, nothing is audited twice, break-glass opens the snapshot', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const bg = path.join(w.root, 'break-glass.key');
  execFileSync('age-keygen', ['-o', bg], { stdio: 'ignore' });
  const bgRecipient = execFileSync('age-keygen', ['-y', bg], { encoding: 'utf8' }).trim();
  let d = await w.start({ breakGlass: [bgRecipient] });
  await finishes('demo/ticker', 2);
  await d.stop();
  const before = d.served('demo/ticker')!.version;
  const again = finishes('demo/ticker', 1);
  d = await w.start({ breakGlass: [bgRecipient] });
  t.ok(d.served('demo/ticker')!.version >= before, 'the store opened where it was');
  await again;
  await d.stop();
  const entries = (await remoteAudit(t, w.remote)).filter((e) => e.secret === 'demo/ticker' && e.to !== undefined);
  t.same(
    entries.map((e) => e.to),
    entries.map((_, i) => i + 1),
    'one audit entry per version, no gap, no duplicate',
  );
  // Offline, with Debian's age and only the break-glass identity.
  const snapshot = JSON.parse(
    execFileSync('age', ['-d', '-i', bg, path.join(w.dataDir, 'state', 'snapshot.age')], { encoding: 'utf8' }),
  );
  const rec = snapshot.entries['secret/demo/ticker'] as SecretRecord;
  t.equal(rec.versions[0]!.version, entries.at(-1)!.to, 'the snapshot holds the current version');
});

t.test('no generated value appears in the logs, the audit log or the git history', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const d = await w.start();
  await finishes('demo/ticker', 3);
  await d.stop();
  const keys = await loadKeys(w.dataDir);
  const store = await openStore({
    dir: path.join(w.dataDir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
  });
  const values: string[] = [];
  for (const [, v] of store.entries('secret/')) {
    for (const ver of (v as unknown as SecretRecord).versions) {
      if (typeof ver.value === 'string') values.push(ver.value);
      else values.push(ver.value.token!);
    }
  }
  await store.close();
  t.ok(values.length >= 5, `${values.length} values to look for`);
  const history = git(w.remote, 'log', '-p', '--all');
  const auditText = readdirSync(path.join(w.dataDir, 'repo', 'audit'))
    .map((f) => readFileSync(path.join(w.dataDir, 'repo', 'audit', f), 'utf8'))
    .join('');
  const haystacks = { logs: w.logs(), history, audit: auditText };
  for (const v of values) {
    for (const form of [v, Buffer.from(v).toString('base64'), Buffer.from(v).toString('hex')]) {
      for (const [where, text] of Object.entries(haystacks))
        t.notOk(text.includes(form), `a value is not in the ${where}`);
    }
  }
});

t.test('the daemon refuses to start without keys and says how to make them', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG });
  const d = new Daemon({
    repo: w.remote,
    branch: 'main',
    dataDir: path.join(w.root, 'nokeys'),
    breakGlass: [],
    log: () => undefined,
  });
  await t.rejects(d.start(), { code: 'KEYS_MISSING', message: /rotor keygen/ });
});

t.test('rotor rotate over the admin socket; concurrent requests for one secret run one rotation', async (t) => {
  const slow = 'kind: Policy\nname: slow\nevery: 30d\noverlap: 1d\n';
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': slow,
    'secrets.yaml': 'kind: Secret\nname: app/key\npolicy: slow\ngenerate: {}\n',
  });
  const d = await w.start();
  t.teardown(() => d.stop());
  const { statSync } = await import('node:fs');
  const sock = path.join(w.dataDir, 'admin.sock');
  t.equal(statSync(sock).mode & 0o777, 0o600, 'the admin socket is 0600');
  const { rotor } = await import('./helpers.js');
  let r = await rotor(['rotate', 'app/key', '--reason', 'suspected leak', '--data-dir', w.dataDir]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'app/key: rotated, version 2 is current\n');
  r = await rotor(['rotate', 'app/nope', '--reason', 'x', '--data-dir', w.dataDir]);
  t.equal(r.code, 1);
  t.match(r.stderr, /secret "app\/nope" is not declared \[SECRET_UNKNOWN\]/);
  r = await rotor(['rotate', 'app/key', '--data-dir', w.dataDir]);
  t.equal(r.code, 2);
  t.match(r.stderr, /--reason TEXT is required/);
  r = await rotor(['rotate', 'app/key', '--reason', 'x', '--data-dir', path.join(w.root, 'elsewhere')]);
  t.equal(r.code, 1);
  t.match(r.stderr, /no daemon is listening.*\[DAEMON_NOT_RUNNING\]/);

  // Ten requests at once: one rotation, which all of them wait for.
  const results = await Promise.all(Array.from({ length: 10 }, () => d.rotateNow('app/key', 'ten at once')));
  t.same(new Set(results.map((x) => x.version)), new Set([3]), 'every request sees the same new version');
  await d.stop();
  const rotated = (await remoteAudit(t, w.remote)).filter((e) => e.secret === 'app/key' && e.event === 'rotated');
  t.same(
    rotated.map((e) => [e.to, e.trigger, e.reason]),
    [
      [2, 'cli', 'suspected leak'],
      [3, 'cli', 'ten at once'],
    ],
  );
});

t.test('a person pushing to the branch while the daemon rotates loses no audit entry', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const d = await w.start();
  for (let i = 0; i < 5; i++) {
    const next = finishes('demo/ticker', 1);
    w.push(`notes-${i}.md`, `note ${i}\n`, `a person's commit ${i}`);
    await d.syncNow();
    await next;
  }
  await d.stop();
  const local = readdirSync(path.join(w.dataDir, 'repo', 'audit')).flatMap((f) =>
    readFileSync(path.join(w.dataDir, 'repo', 'audit', f), 'utf8')
      .split('\n')
      .filter(Boolean),
  );
  const remote = await remoteAudit(t, w.remote);
  t.equal(remote.length, local.length, 'every audit entry the daemon wrote is on the remote');
  t.same(
    remote.map((e) => e.seq),
    local.map((_, i) => i + 1),
    'exactly once each, in order',
  );
  const log = git(w.remote, 'log', '--format=%s', 'main');
  for (let i = 0; i < 5; i++)
    t.match(log, new RegExp(`^a person's commit ${i}$`, 'm'), `the person's commit ${i} is there`);
  t.equal(
    git(w.remote, 'rev-list', '--merges', '--count', 'main'),
    '0',
    'a linear history: audit commits are rebased, never merged',
  );
});

t.test('rotor daemon as a process: SIGHUP fetches at once, SIGTERM stops cleanly', async (t) => {
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
    'secrets.yaml': 'kind: Secret\nname: a/one\npolicy: p\ngenerate: {}\n',
  });
  const d = daemonProcess(t, [
    '--repo',
    w.remote,
    '--data-dir',
    w.dataDir,
    '--socket-dir',
    path.join(w.dataDir, 'sockets'),
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    'off',
  ]);
  await d.ready;
  w.push(
    'secrets.yaml',
    'kind: Secret\nname: a/one\npolicy: p\ngenerate: {}\n---\nkind: Secret\nname: a/two\npolicy: p\ngenerate: {}\n',
    'add a/two',
  );
  d.kill('SIGHUP');
  await d.waitFor(/"msg":"secret created","secret":"a\/two"/);
  t.equal(await d.stop(), 0, 'a clean exit on SIGTERM');
  const err = d.stderr(); // all of it: stop() resolves once stderr has ended
  t.match(err, /"msg":"stopping"/);
  t.ok(
    err
      .split('\n')
      .filter(Boolean)
      .every((l) => JSON.parse(l).level !== undefined),
    'logs are JSON lines',
  );
});

t.test('after downtime an overdue secret rotates once; a changed policy reschedules it', async (t) => {
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': 'kind: Policy\nname: hourly\nevery: 1h\noverlap: 10m\n',
    'secrets.yaml': 'kind: Secret\nname: app/key\npolicy: hourly\ngenerate: {}\n',
  });
  let clock = Date.parse('2026-11-26T00:00:00Z');
  let d = await w.start({ now: () => clock });
  t.equal(d.served('app/key')?.version, 1);
  await d.stop();
  clock += 10 * 3_600_000 + 123; // ten slots missed
  d = await w.start({ now: () => clock });
  t.equal(d.served('app/key')?.version, 2, 'one rotation for ten missed slots');
  const next = () =>
    (d.status().secrets as { name: string; nextRotationAt?: number }[]).find((s) => s.name === 'app/key')!
      .nextRotationAt;
  t.equal(next(), clock + 3_600_000, 'the cadence starts again from the catch-up rotation');
  w.push('policies.yaml', 'kind: Policy\nname: hourly\nevery: 2h\noverlap: 10m\n', 'every 2h');
  await d.syncNow();
  t.equal(next(), clock + 2 * 3_600_000, 'a changed policy reschedules the secret');
  await d.stop();
  const rotated = (await remoteAudit(t, w.remote)).filter((e) => e.secret === 'app/key' && e.event === 'rotated');
  t.same(
    rotated.map((e) => [e.from, e.to, e.trigger]),
    [[1, 2, 'schedule']],
  );
});
