/** rotor plan on real two-commit git repositories. */
import { appendFileSync, cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { commitAll, copyFixture, gitInit, ROOT, rotor, tempDir } from './helpers.js';

/** A repository made of policies/ (commit 1) with an audit log, then a change (commit 2). */
function exampleRepo(t: Parameters<Parameters<typeof t.test>[1]>[0]) {
  const dir = copyFixture(t, 'policies');
  mkdirSync(path.join(dir, 'audit'));
  writeFileSync(path.join(dir, 'audit', '2026-11.jsonl'), '{"seq":1,"event":"rotated"}\n{"seq":2,"event":"rotated"}\n');
  gitInit(dir);
  commitAll(dir, 'base');
  return dir;
}

function edit(file: string, from: string, to: string) {
  const text = readFileSync(file, 'utf8');
  if (!text.includes(from)) throw new Error(`${file} does not contain ${from}`);
  writeFileSync(file, text.replace(from, to));
}

function makeChange(dir: string) {
  // a policy change, a new secret, a removed secret, a strategy change to single, a rotate-now
  // request, a consumer glob change, and an audit entry appended (allowed)
  edit(path.join(dir, 'policies.yaml'), 'every: 30d                  #', 'every: 14d                  #');
  appendFileSync(
    path.join(dir, 'payments', 'secrets.yaml'),
    '---\nkind: Secret\nname: payments/refund-key\npolicy: standard\ngenerate: { length: 40 }\n',
  );
  edit(path.join(dir, 'payments', 'secrets.yaml'), 'request: "2026-11-26-1"', 'request: "2026-11-27-1"');
  const creds = path.join(dir, 'databases', 'credentials.yaml');
  const text = readFileSync(creds, 'utf8');
  const start = text.indexOf('kind: Secret\nname: events/mongo-app');
  const end = text.indexOf('---', start);
  writeFileSync(creds, text.slice(0, start) + text.slice(end + 4));
  edit(
    creds,
    'database: { target: catalog-mariadb, strategy: dual, username: catalog_app }',
    'database: { target: catalog-mariadb, strategy: single, username: catalog_app }',
  );
  edit(
    path.join(dir, 'consumers.yaml'),
    'secrets: [orders/db-app, catalog/db-app, sessions/redis-app]',
    'secrets: [orders/db-app, sessions/redis-app, "payments/refund-*"]',
  );
  appendFileSync(path.join(dir, 'audit', '2026-11.jsonl'), '{"seq":3,"event":"rotated"}\n');
}

t.test('plan shows every kind of change, in JSON', async (t) => {
  const dir = exampleRepo(t);
  makeChange(dir);
  commitAll(dir, 'change');
  const r = await rotor(['plan', '--base', 'HEAD~1', '--head', 'HEAD', '--format', 'json', dir]);
  t.equal(r.code, 0, r.stdout + r.stderr);
  const out = JSON.parse(r.stdout);
  t.equal(out.ok, true);
  t.same(out.audit, []);
  const change = (kind: string, name: string) =>
    out.plan.changes.find((c: { kind: string; name: string }) => c.kind === kind && c.name === name);
  t.match(change('Policy', 'standard'), { action: 'changed', fields: [{ path: 'every', from: '30d', to: '14d' }] });
  t.match(change('Secret', 'payments/refund-key'), { action: 'added', file: 'payments/secrets.yaml' });
  t.match(change('Secret', 'events/mongo-app'), { action: 'removed' });
  t.match(change('Secret', 'catalog/db-app'), {
    action: 'changed',
    fields: [{ path: 'database.strategy', from: 'dual', to: 'single' }],
  });
  t.match(change('Consumer', 'order-worker'), { action: 'changed' });
  t.notOk(change('Target', 'payments-pg'), 'unchanged declarations are not listed');

  const rot = (name: string) => out.plan.rotations.find((x: { secret: string }) => x.secret === name);
  t.match(rot('payments/refund-key'), { why: 'new', policy: 'standard' });
  t.equal(rot('payments/refund-key').next.length, 3);
  t.equal(
    rot('payments/refund-key').next[0],
    '2026-11-26T00:00:00.000Z',
    'a new secret gets version 1 when the change is applied',
  );
  t.match(rot('payments/webhook-signing'), { why: 'policy changed' }, 'secrets of a changed policy are rescheduled');
  t.match(rot('payments/session-key'), { why: 'rotate now' });
  // standard: every 14d, window 02:00-05:00 Europe/Berlin (01:00-04:00 UTC in winter), jitter up to 10m
  for (const iso of rot('payments/webhook-signing').next) {
    const d = new Date(iso);
    t.ok(
      (d.getUTCHours() >= 1 && d.getUTCHours() < 4) || (d.getUTCHours() === 4 && d.getUTCMinutes() < 10),
      `${iso} is inside the window (plus jitter)`,
    );
  }
  const gaps = rot('payments/webhook-signing').next.map((x: string) => Date.parse(x));
  t.ok(gaps[1] - gaps[0] >= 14 * 86_400_000 - 10 * 60_000, 'rotations are every 14 days');

  t.same(out.plan.rotateNow, [
    {
      secret: 'payments/session-key',
      request: '2026-11-27-1',
      reason: 'seen in a debug log',
      previousRequest: '2026-11-26-1',
    },
  ]);
  t.same(out.plan.access, [
    { consumer: 'billing-api', secret: 'payments/refund-key', change: 'gained' },
    { consumer: 'order-worker', secret: 'catalog/db-app', change: 'lost' },
    { consumer: 'order-worker', secret: 'payments/refund-key', change: 'gained' },
  ]);
  const codes = out.plan.attention.map((a: { subject: string; code: string }) => `${a.subject} ${a.code}`).sort();
  t.same(codes, [
    'Secret catalog/db-app STRATEGY_CHANGED',
    'Secret catalog/db-app STRATEGY_SINGLE',
    'Secret events/mongo-app SECRET_REMOVED',
  ]);
  t.match(
    out.plan.attention.find((a: { code: string }) => a.code === 'STRATEGY_SINGLE').message,
    /new logins with the old value fail at once/,
  );
  t.match(
    out.plan.attention.find((a: { code: string }) => a.code === 'SECRET_REMOVED').message,
    /kept for the overlap \(48h\).*reporting/,
  );
});

t.test('plan in markdown reads like a pull-request comment', async (t) => {
  const dir = exampleRepo(t);
  makeChange(dir);
  const r = await rotor(['plan', '--base', 'main', '--format', 'markdown'], { cwd: dir });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /^### rotor plan: `main \([0-9a-f]{7}\)` → the work tree/);
  t.match(r.stdout, /✅ 1 added, 4 changed, 1 removed, 1 rotate-now, 3 access changes, 3 need attention/);
  t.match(r.stdout, /#### ⚠️ Needs attention\n\n- \*\*Secret catalog\/db-app\*\*: strategy changes from dual to single/);
  t.match(r.stdout, /\| ✏️ changed \| Policy \| `standard` \| `every`: `30d` → `14d` \|/);
  t.match(r.stdout, /\| ➕ added \| Secret \| `payments\/refund-key` \|/);
  t.match(r.stdout, /\| `payments\/refund-key` \| new \| `standard` \| on apply · 2026-12-\d\d \d\d:\d\d(:\d\d)?Z · /);
  t.match(r.stdout, /\| `order-worker` \| `catalog\/db-app` \| 🔒 loses read \|/);
  t.match(
    r.stdout,
    /#### 🔁 Rotate now\n\n\| Secret \| Request \| Reason \|\n\|---\|---\|---\|\n\| `payments\/session-key` \| `2026-11-27-1` \| seen in a debug log \|/,
  );
  // The same in text, for terminals.
  const text = await rotor(['plan', '--base', 'main'], { cwd: dir });
  t.match(text.stdout, /~ Policy standard \(changed\)\n {6}every: 30d -> 14d/);
  t.match(text.stdout, /! Secret events\/mongo-app: the secret stops rotating/);
});

t.test('plan refuses a change that edits or deletes audit lines', async (t) => {
  const dir = exampleRepo(t);
  const log = path.join(dir, 'audit', '2026-11.jsonl');
  edit(log, '"seq":2', '"seq":9');
  let r = await rotor(['plan', '--base', 'HEAD', '--format', 'json'], { cwd: dir });
  t.equal(r.code, 1);
  t.match(JSON.parse(r.stdout).audit, [{ file: 'audit/2026-11.jsonl', line: 2, kind: 'edited' }]);

  writeFileSync(log, '{"seq":1,"event":"rotated"}\n');
  r = await rotor(['plan', '--base', 'HEAD'], { cwd: dir });
  t.equal(r.code, 1);
  t.match(r.stdout, /REFUSED:\n {2}audit\/2026-11.jsonl:2: the audit log is append-only: lines from 2 on were removed/);

  writeFileSync(log, '{"seq":1,"event":"rotated"}\n{"seq":2,"event":"rotated"}\n{"seq":3}\n');
  r = await rotor(['plan', '--base', 'HEAD'], { cwd: dir });
  t.equal(r.code, 0, 'appending is allowed');

  const { rmSync } = await import('node:fs');
  rmSync(log);
  r = await rotor(['plan', '--base', 'HEAD', '--format', 'markdown'], { cwd: dir });
  t.equal(r.code, 1);
  t.match(
    r.stdout,
    /> \[!CAUTION\]\n> This change cannot be applied as it is:\n> - \*\*audit\/2026-11.jsonl:1\*\*: the audit log audit\/2026-11.jsonl was deleted/,
  );
});

t.test('plan refuses an invalid head and names the problem', async (t) => {
  const dir = exampleRepo(t);
  edit(path.join(dir, 'policies.yaml'), 'overlap: 24h', 'overlap: 40d');
  const r = await rotor(['plan', '--base', 'HEAD'], { cwd: dir });
  t.equal(r.code, 1);
  t.match(
    r.stdout,
    /policies.yaml:\d+:\d+: error: overlap 40d must be shorter than the rotation interval, every 30d.*\[OVERLAP_TOO_LONG\]/,
  );
});

t.test('plan reads declarations from a subdirectory of the repository', async (t) => {
  const dir = tempDir(t);
  gitInit(dir);
  cpSync(path.join(ROOT, 'policies'), path.join(dir, 'gitops'), { recursive: true });
  writeFileSync(path.join(dir, 'README.md'), 'not a declaration\n');
  commitAll(dir, 'base');
  edit(path.join(dir, 'gitops', 'consumers.yaml'), 'uid: 1003', 'uid: 1004');
  commitAll(dir, 'change');
  const r = await rotor(['plan', '--base', 'HEAD~1', '--head', 'HEAD', '--format', 'json', 'gitops'], { cwd: dir });
  t.equal(r.code, 0, r.stdout + r.stderr);
  const out = JSON.parse(r.stdout);
  t.same(
    out.plan.changes.map((c: { kind: string; name: string }) => `${c.kind} ${c.name}`),
    ['Consumer reporting'],
  );
  t.match(out.plan.attention, [{ code: 'CONSUMER_UID_CHANGED' }]);
});

t.test('plan says when a consumer moves to another host', async (t) => {
  const dir = exampleRepo(t);
  edit(path.join(dir, 'consumers.yaml'), 'agent: web-host-1\n', '');
  const r = await rotor(['plan', '--base', 'HEAD', '--format', 'json'], { cwd: dir });
  t.equal(r.code, 0, r.stdout + r.stderr);
  const moved = JSON.parse(r.stdout).plan.attention.filter((a: { code: string }) => a.code === 'CONSUMER_MOVED');
  t.match(moved, [{ subject: 'Consumer storefront', message: /from agent web-host-1's host to the daemon's host/ }]);
});

t.test('plan shows audit.sign changes, and turning it off needs attention', async (t) => {
  const dir = exampleRepo(t);
  edit(path.join(dir, 'rotor.yaml'), '  sign: true ', '  sign: false');
  const r = await rotor(['plan', '--base', 'HEAD', '--format', 'json'], { cwd: dir });
  t.equal(r.code, 0, r.stdout + r.stderr);
  const out = JSON.parse(r.stdout);
  t.match(out.plan.changes, [
    { kind: 'Config', action: 'changed', fields: [{ path: 'audit.sign', from: true, to: false }] },
  ]);
  t.match(out.plan.attention, [
    { subject: 'Config rotor.yaml', code: 'AUDIT_SIGN_OFF', message: /stops signing its audit commits/ },
  ]);
  const text = await rotor(['plan', '--base', 'HEAD'], { cwd: dir });
  t.match(text.stdout, /audit\.sign: true -> false/);
  t.match(text.stdout, /\[AUDIT_SIGN_OFF\]/);
  // turned on: shown as a change, nothing to worry about
  commitAll(dir, 'off');
  edit(path.join(dir, 'rotor.yaml'), '  sign: false', '  sign: true ');
  const on = JSON.parse((await rotor(['plan', '--base', 'HEAD', '--format', 'json'], { cwd: dir })).stdout);
  t.match(on.plan.changes, [{ kind: 'Config', fields: [{ path: 'audit.sign', from: false, to: true }] }]);
  t.notOk(on.plan.attention.some((a: { code: string }) => a.code === 'AUDIT_SIGN_OFF'));
});

t.test('plan usage errors exit 2 and say what to do', async (t) => {
  const dir = exampleRepo(t);
  let r = await rotor(['plan'], { cwd: dir });
  t.equal(r.code, 2);
  t.match(r.stderr, /--base REF is required/);
  r = await rotor(['plan', '--base', 'no-such-branch'], { cwd: dir });
  t.equal(r.code, 2);
  t.match(r.stderr, /"no-such-branch" is not a commit of this repository/);
  const plain = tempDir(t);
  r = await rotor(['plan', '--base', 'main', plain]);
  t.equal(r.code, 2);
  t.match(r.stderr, /is not inside a git work tree/);
  r = await rotor(['plan', '--base', 'HEAD', '--format', 'yaml'], { cwd: dir });
  t.equal(r.code, 2);
  t.match(r.stderr, /--format must be one of text, markdown, json/);
  r = await rotor(['plan', '--help']);
  t.equal(r.code, 0);
  t.match(r.stdout, /Usage: rotor plan --base REF/);
  r = await rotor(['plan', '--format', 'json'], { cwd: dir, env: { ROTOR_BASE: 'HEAD' } });
  t.equal(r.code, 0, 'flags also come from the environment');
});

t.test('plan shows a change of verify and onDrift (drift detection) as policy fields', async (t) => {
  const dir = exampleRepo(t);
  edit(path.join(dir, 'policies.yaml'), 'verify: 15m ', 'verify: 5m  ');
  edit(path.join(dir, 'policies.yaml'), 'onDrift: rotate ', 'onDrift: alert  ');
  commitAll(dir, 'drift checks');
  const r = await rotor(['plan', '--base', 'HEAD~1', '--head', 'HEAD', '--format', 'json', dir]);
  t.equal(r.code, 0, r.stdout + r.stderr);
  const out = JSON.parse(r.stdout);
  const change = out.plan.changes.find((c: { kind: string; name: string }) => c.kind === 'Policy');
  t.match(change, {
    name: 'weekly-sunday',
    action: 'changed',
    fields: [
      { path: 'verify', from: '15m', to: '5m' },
      { path: 'onDrift', from: 'rotate', to: 'alert' },
    ],
  });
});
