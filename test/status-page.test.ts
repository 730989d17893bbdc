/** The status page: the pure renderer (escaping, highlights, the timeline), and GET / on a running daemon. */
import { request } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { getSecret } from '../src/client/index.js';
import type { StatusView } from '../src/serve/status-page.js';
import { renderStatusPage } from '../src/serve/status-page.js';
import { candidateView, followerView, HOSTILE_DAEMON, leaderView } from './lib/leadership.js';
import { statusWorld } from './lib/status-world.js';
import { step } from './world.js';

const NOW = Date.parse('2026-11-26T12:00:00Z');
const H = 3600_000;
const D = 24 * H;
const iso = (ms: number) => new Date(ms).toISOString();
const HOSTILE = '<script>alert(1)</script>';

function sample(): StatusView {
  return {
    now: iso(NOW),
    config: {
      applied: { commit: 'a'.repeat(40), at: iso(NOW - 2 * H) },
      attempted: { commit: 'b'.repeat(40), at: iso(NOW - H), problems: 3 },
    },
    secrets: [
      {
        name: 'app/ok',
        version: 3,
        rotatedAt: iso(NOW - 15 * D),
        nextRotationAt: NOW + 15 * D,
        pending: false,
        overdue: false,
        policy: 'p',
        source: 'generate',
        consumers: [{ name: 'web', version: 3, behind: false }],
      },
      {
        name: 'app/db',
        version: 7,
        rotatedAt: iso(NOW - 50 * D),
        nextRotationAt: NOW - 20 * D,
        pending: true,
        overdue: true,
        policy: 'weekly',
        source: 'database',
        strategy: 'alternate',
        target: 'pg',
        engine: 'postgres',
        failing: { attempts: 4, error: 'AGENT_TIMEOUT', retryAt: NOW + 30_000 },
        consumers: [],
      },
      {
        name: 'app/old',
        version: 2,
        rotatedAt: iso(NOW - 46 * D),
        nextRotationAt: NOW - 16 * D,
        pending: false,
        overdue: true,
        policy: 'p',
        source: 'generate',
        consumers: [],
      },
      {
        name: 'app/turning',
        version: 1,
        rotatedAt: iso(NOW - H),
        nextRotationAt: NOW + H,
        pending: true,
        overdue: false,
        source: 'generate',
        consumers: [],
      },
      {
        name: `evil/${HOSTILE}`,
        version: 1,
        rotatedAt: iso(NOW - D),
        nextRotationAt: NOW + D,
        pending: false,
        overdue: false,
        policy: `"><${'img'} src=x>`,
        source: 'fields',
        consumers: [
          { name: `<img src=x onerror="alert(1)">`, version: 0, behind: true },
          { name: 'web', version: 1, behind: false },
        ],
      },
    ],
    agents: {
      listen: '127.0.0.1:7700',
      agents: [
        { name: 'db&<host>', lastSeen: iso(NOW - 5000), queued: 2 },
        { name: 'idle', queued: 0 },
      ],
    },
    audit: { commitPending: false, pushFailures: 2 },
    recent: [
      { time: iso(NOW - 30 * H), secret: 'app/ok', event: 'rotated', from: 1, to: 2, trigger: 'schedule' },
      { time: iso(NOW - 20 * H), secret: 'app/ok', event: 'rotated', from: 2, to: 3, trigger: 'schedule' },
      { time: iso(NOW - 19 * H), secret: 'app/ok', event: 'retired', from: 2 },
      { time: iso(NOW - 15 * H), secret: 'app/db', event: 'rotation-failed', to: 8, error: 'AGENT_TIMEOUT' },
      { time: iso(NOW - 5 * H), secret: `evil/${HOSTILE}`, event: 'created', to: 1, trigger: 'new' },
      {
        time: iso(NOW - 4 * H),
        secret: 'app/turning',
        event: 'rotated',
        from: 1,
        to: 2,
        trigger: 'cli',
        reason: `</title>${HOSTILE}`,
      },
    ],
  };
}

/** The <tr> of a secret in the secrets table. */
function row(html: string, secret: string): string {
  const start = html.indexOf(`data-secret="${secret}"`);
  if (start < 0) return '';
  return html.slice(html.lastIndexOf('<tr', start), html.indexOf('</tr>', start));
}

function timelineSvg(html: string): string {
  const start = html.indexOf('<svg class="timeline"');
  return start < 0 ? '' : html.slice(start, html.indexOf('</svg>', start));
}

const count = (text: string, re: RegExp) => (text.match(re) ?? []).length;

t.test('renderStatusPage: names from the repository are escaped, never markup', async (t) => {
  const html = renderStatusPage(sample(), NOW);
  t.notOk(html.includes('<script'), 'no script element, not even from a secret name or a reason');
  t.notOk(html.includes('<img'), 'no img element from a consumer name or a policy name');
  t.ok(html.includes('evil/&lt;script&gt;alert(1)&lt;/script&gt;'), 'the hostile secret name is shown as text');
  t.ok(html.includes('&lt;img src=x onerror=&quot;alert(1)&quot;&gt;'), 'the hostile consumer name is shown as text');
  t.ok(html.includes('db&amp;&lt;host&gt;'), 'agent names are escaped');
  t.ok(html.includes('&lt;/title&gt;&lt;script&gt;'), 'a reason cannot close the tooltip');
  t.equal(count(html, /<title>/g), count(html, /<\/title>/g), 'every tooltip is closed by the page itself');
});

t.test('renderStatusPage: failing and overdue rows are highlighted, rotating ones marked', async (t) => {
  const html = renderStatusPage(sample(), NOW);
  const db = row(html, 'app/db');
  t.match(db, /^<tr class="failing"/, 'a failing secret is highlighted as failing (failing wins over overdue)');
  t.match(db, /AGENT_TIMEOUT<\/code> · 4 attempts · retry in 30s/, 'with its error code and attempts');
  t.match(db, /badge warn">overdue/, 'and marked overdue too');
  t.match(db, /alternate → pg \(postgres\)/, 'strategy and target');
  t.match(row(html, 'app/old'), /^<tr class="overdue"/);
  t.match(row(html, 'app/turning'), /^<tr class="rotating"[\s\S]*badge info">rotating/);
  t.match(row(html, 'app/ok'), /^<tr class=""[\s\S]*badge ok">ok/);
  t.ok(
    html.indexOf('data-secret="app/db"') < html.indexOf('data-secret="app/old"') &&
      html.indexOf('data-secret="app/old"') < html.indexOf('data-secret="app/ok"'),
    'problems first: failing, overdue, then the rest',
  );
  t.match(html, /class="tile bad"><div class="n">1<\/div><div class="label">Failing/);
  t.match(html, /class="tile warn"><div class="n">2<\/div><div class="label">Overdue/);
  // The age bar: half of the interval (15 of 30 days) fills half of the 96-pixel track.
  t.match(
    row(html, 'app/ok'),
    /aria-label="50% of the rotation interval elapsed"[\s\S]*<rect class="fill ok" width="48"/,
  );
  t.match(row(html, 'app/old'), /<rect class="fill bad" width="96"/, 'past its interval: a full red bar');
  t.match(
    html,
    /class="err"><code title="b{40}">b{12}<\/code>[\s\S]*rejected with 3 problems/,
    'the rejected commit, apart from the applied one',
  );
  t.match(html, /2 failed pushes/, 'audit entries not pushed');
  t.match(html, /<td class="num">2<\/td>/, 'queued agent jobs');
  t.match(html, /badge warn">never seen/, 'an agent never seen');
});

t.test('renderStatusPage: consumers still on an old version', async (t) => {
  const html = renderStatusPage(sample(), NOW);
  const behind = html.slice(
    html.indexOf('<table class="behind">'),
    html.indexOf('</table>', html.indexOf('<table class="behind">')),
  );
  t.equal(
    count(behind, /<tr data-consumer=/g),
    1,
    'one consumer is behind; the one on the current version is not listed',
  );
  t.match(
    behind,
    /evil\/&lt;script&gt;[\s\S]*<span class="stale">v0<\/span><\/td>\n<td class="num">v1<\/td>/,
    'version read against current',
  );
  const none = renderStatusPage(
    { ...sample(), secrets: sample().secrets.filter((s) => !s.name.startsWith('evil/')) },
    NOW,
  );
  t.match(none, /Every consumer has read the current version/);
});

t.test('renderStatusPage: every consumer with the host that serves it and what it read', async (t) => {
  const status = sample();
  const secrets = status.secrets.map((s) =>
    s.name.startsWith('evil/')
      ? { ...s, consumers: s.consumers.map((c) => (c.name === 'web' ? { ...c, host: 'web-host-1' } : c)) }
      : s.consumers.some((c) => c.name === 'web')
        ? { ...s, consumers: s.consumers.map((c) => ({ ...c, host: 'web-host-1' })) }
        : s,
  );
  const html = renderStatusPage({ ...status, secrets }, NOW);
  const hosts = html.slice(
    html.indexOf('<table class="hosts">'),
    html.indexOf('</table>', html.indexOf('<table class="hosts">')),
  );
  t.match(
    hosts,
    /<tr data-consumer="web">\n<td><span class="name">web<\/span><\/td>\n<td><span class="name">web-host-1<\/span><\/td>\n<td class="num">2 of 2<\/td>/,
    'web: served on web-host-1, on the current version of both its secrets',
  );
  t.match(
    hosts,
    /&lt;img src=x[\s\S]*<span class="muted">daemon<\/span>[\s\S]*0 of 1/,
    'the other one: on the daemon, behind',
  );
  t.notMatch(hosts, /<img/, 'names are escaped');
});

t.test('renderStatusPage: the SVG timeline has one mark per event of the last 24 hours', async (t) => {
  const status = sample();
  const svg = timelineSvg(renderStatusPage(status, NOW));
  t.ok(svg, 'an inline SVG timeline');
  const inWindow = status.recent!.filter((e) => Date.parse(e.time) >= NOW - D);
  t.equal(inWindow.length, 5);
  t.equal(count(svg, /class="ev /g), inWindow.length, 'one mark per event');
  t.equal(count(svg, /class="ev ev-rotated"/g), 2);
  t.equal(count(svg, /class="ev ev-retired"/g), 1);
  t.equal(count(svg, /class="ev ev-failed"/g), 1);
  t.equal(count(svg, /class="ev ev-created"/g), 1);
  t.match(
    svg,
    /<title>2026-11-25 21:00:00: app\/db rotation failed \(v8\), AGENT_TIMEOUT<\/title>/,
    'a tooltip says what happened',
  );
  t.match(svg, /app\/ok rotated v2 → v3 \(schedule\)/);
  t.notMatch(svg, /v1 → v2 \(schedule\)/, 'the event of 30 hours ago is not drawn');
  t.match(renderStatusPage(status, NOW), /1 older event not drawn/);
  // Later marks are further right, on a shared axis.
  const x = (re: RegExp) => Number(re.exec(svg)?.[1]);
  t.ok(
    x(/<rect class="ev ev-retired" x="([\d.]+)"/) < x(/<circle class="ev ev-created" cx="([\d.]+)"/),
    'time runs left to right',
  );
  t.match(
    renderStatusPage(status, NOW),
    /<ul class="legend">(<li><svg[\s\S]*?<\/li>){4}<\/ul>/,
    'a legend of the four kinds',
  );
  t.match(renderStatusPage({ ...status, recent: [] }, NOW), /No rotation in this period/);
});

t.test('renderStatusPage: no value ever, even when the status carries one', async (t) => {
  const status = sample();
  const withValue = {
    ...status,
    secrets: status.secrets.map((s) => ({ ...s, value: 'VALUE-SENTINEL-1', previous: { value: 'VALUE-SENTINEL-2' } })),
  } as StatusView;
  const html = renderStatusPage(withValue, NOW);
  t.notOk(html.includes('VALUE-SENTINEL'), 'the page shows only the fields it knows');
});

t.test('renderStatusPage: an audit log or state store that cannot be written is shown with its code', async (t) => {
  const ok = renderStatusPage(sample(), NOW);
  t.notMatch(ok, /cannot be written/, 'nothing when both work');
  const failing = {
    code: 'AUDIT_WRITE_FAILED',
    errno: 'EROFS',
    since: '2026-11-26T11:59:00Z',
    retryAt: '2026-11-26T12:00:04Z',
  };
  const html = renderStatusPage(
    {
      ...sample(),
      audit: { commitPending: false, pushFailures: 0, failing },
      store: { failing: { ...failing, code: 'STATE_IO', errno: 'ENOSPC' } },
    },
    NOW,
  );
  t.match(
    html,
    /<dt>Audit log<\/dt><dd class="err"><span class="badge bad">cannot be written<\/span>.*?\(<code>AUDIT_WRITE_FAILED, EROFS<\/code>\): rotations are paused/,
  );
  t.match(html, /<dt>State store<\/dt><dd class="err">.*<code>STATE_IO, ENOSPC<\/code>/);
});

/** The Daemons table. */
function daemonsTable(html: string): string {
  const start = html.indexOf('<table class="daemons">');
  return start < 0 ? '' : html.slice(start, html.indexOf('</table>', start));
}

t.test('renderStatusPage: the daemons sharing the store, the leader and the lease in the header', async (t) => {
  const html = renderStatusPage({ ...sample(), leadership: leaderView() }, NOW);
  const header = html.slice(html.indexOf('<header>'), html.indexOf('</header>'));
  t.match(
    header,
    /<div class="lead small" id="leadership"><span class="badge ok">leader<\/span> this daemon: <span class="name">rotor-a<\/span> · leader <span class="name">rotor-a<\/span> · term 7 · lease renewed 2s ago · expires in 13s<\/div>/,
    'the header: this daemon leads, term 7, the lease',
  );
  const table = daemonsTable(html);
  t.ok(table, 'a Daemons table');
  t.match(html, /<section id="daemons">\n<h2>Daemons<\/h2>/);
  t.match(
    table,
    /<thead><tr><th>Daemon<\/th><th>Role<\/th><th class="num">Term<\/th><th>Agent URL<\/th><th>Last seen<\/th><\/tr><\/thead>/,
  );
  t.equal(count(table, /<tr data-daemon=/g), 3, 'a row per daemon seen');
  t.match(
    table,
    /<tr data-daemon="id-a" class="self">\n<td><span class="name">rotor-a<\/span><div class="sub">this daemon<\/div><\/td>\n<td><span class="badge ok">leader<\/span><\/td>\n<td class="num">7<\/td>\n<td><code>https:\/\/10\.0\.0\.1:7700<\/code><\/td>\n<td>2s ago<\/td>/,
    'the leader: this daemon, its term, agent URL, last seen',
  );
  t.match(
    table,
    /<tr data-daemon="id-b">\n<td><span class="name">rotor-b<\/span><\/td>\n<td><span class="badge none">follower<\/span><\/td>\n<td class="num">5<\/td>/,
  );
  t.ok(table.indexOf('id-a') < table.indexOf('id-b'), 'the leader first');
  t.notMatch(html, /This daemon does not lead/, 'no note on the leader');

  t.notOk(html.includes('<img'), 'no img element from a daemon name');
  t.ok(
    table.includes('<span class="name">&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</span>'),
    'the hostile daemon name is shown as text',
  );
  t.ok(HOSTILE_DAEMON.includes('<img'));
  const hostile = renderStatusPage(
    {
      ...sample(),
      leadership: {
        ...followerView(),
        self: { id: '"><x', name: '<img src=x>' },
        leader: { id: 'l', name: '<img src=x>', agentUrl: 'javascript:alert(1)"><img src=x>' },
        daemons: [
          { id: '"><img src=x>', name: '<img src=x>', role: 'leader', agentUrl: '"><img src=x>', seenAgoMs: 0 },
        ],
      },
    },
    NOW,
  );
  t.notOk(hostile.includes('<img'), 'names, ids and URLs from the store are escaped in the header, note and table');
  t.notMatch(hostile, /href=/, 'an agent URL is text, never a link');
  t.match(hostile, /data-daemon="&quot;&gt;&lt;img src=x&gt;"/, 'in an attribute too');

  const follower = renderStatusPage({ ...sample(), leadership: followerView() }, NOW);
  t.match(
    follower,
    /<span class="badge none">follower<\/span> this daemon: <span class="name">rotor-b<\/span> · leader <span class="name">rotor-a<\/span> · term 7/,
  );
  t.match(
    follower,
    /<h2>Secrets<\/h2>\n<p class="note small">This daemon does not lead: the leader, <span class="name">rotor-a<\/span>, runs the rotations, and the next rotations are when it is due to run them\.<\/p>\n<table class="secrets">/,
    'a follower says, above the secrets, that the leader rotates',
  );
  t.match(daemonsTable(follower), /<tr data-daemon="id-b" class="self">/, 'this daemon marked');

  const candidate = renderStatusPage({ ...sample(), leadership: candidateView() }, NOW);
  t.match(
    candidate,
    /<span class="badge warn">candidate<\/span> this daemon: <span class="name">rotor-b<\/span> · <span class="warn-text">no daemon leads as far as this one knows<\/span> · term 7 · expired 3s ago<\/div>/,
  );
  t.match(candidate, /nothing rotates until one takes the lease/);

  const single = renderStatusPage(sample(), NOW);
  t.notMatch(
    single,
    /id="leadership"|id="daemons"|class="daemons"|does not lead|leader/,
    'nothing of it with one daemon',
  );
});

// --- against a running daemon ---

interface Response {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

function http(address: string, urlPath: string, method = 'GET'): Promise<Response> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = request(
      { host: address.slice(0, i), port: Number(address.slice(i + 1)), path: urlPath, method, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

t.test('GET / on the metrics listener: the page of a running daemon, its headers, and no value', async (t) => {
  const w = await statusWorld(t, 'rotor-status-page-');
  // No agent runs: the database secret's first version times out and fails.
  const failed = step('app/db', 'failed');
  const d = await w.start({
    socketDir: path.join(w.root, 'sockets'),
    metricsListen: '127.0.0.1:0',
    agentListen: '127.0.0.1:0',
    agentJobTimeoutMs: 100,
  });
  t.teardown(() => d.stop());
  await failed;
  const sockets = path.join(w.root, 'sockets');
  const v1 = await getSecret('app/token', { socket: path.join(sockets, 'worker.sock') });
  await d.rotateNow('app/token', 'status page test');
  const v2 = await getSecret('app/token', { socket: path.join(sockets, 'web.sock') });
  t.equal(v2.version, 2);
  const values = [v1.value, v2.value].map(String);
  t.equal(values[0]!.length, 32, 'the generated values were read');

  const recent = d.status().recent;
  t.same(
    recent.map((e) => `${e.secret} ${e.event}`),
    ['app/token created', 'app/db rotation-failed', 'app/token rotated'],
    'the daemon keeps the rotation outcomes',
  );
  t.match(
    recent.find((e) => e.event === 'rotation-failed'),
    { secret: 'app/db', to: 1, error: 'AGENT_TIMEOUT' },
  );
  t.match(
    recent.find((e) => e.event === 'rotated'),
    { secret: 'app/token', from: 1, to: 2, trigger: 'cli', reason: 'status page test' },
  );

  const page = await http(d.metricsAddress!, '/');
  t.equal(page.status, 200);
  t.equal(page.headers['content-type'], 'text/html; charset=utf-8');
  t.equal(page.headers['content-security-policy'], "default-src 'none'; style-src 'unsafe-inline'; img-src data:");
  t.equal(page.headers['x-content-type-options'], 'nosniff');
  t.equal(page.headers['cache-control'], 'no-store');
  t.match(page.text, /^<!DOCTYPE html>/);
  t.match(page.text, /<meta http-equiv="refresh" content="30">/);
  t.notMatch(page.text, /<script|<link|src=|href=/, 'self-contained: nothing to load');
  t.match(row(page.text, 'app/db'), /^<tr class="failing"[\s\S]*AGENT_TIMEOUT/);
  t.match(row(page.text, 'app/token'), /<td class="num">v2<\/td>/);
  const svg = timelineSvg(page.text);
  t.equal(count(svg, /class="ev /g), recent.length, 'one mark per recent event');
  t.match(svg, /app\/token rotated v1 → v2 \(cli: status page test\)/);
  t.match(
    page.text,
    /<tr data-consumer="worker">[\s\S]*?<span class="stale">v1<\/span><\/td>\n<td class="num">v2<\/td>/,
    'the worker still reads version 1',
  );
  t.match(page.text, /<tr data-agent="db-host">[\s\S]*?never seen/);
  t.match(page.text, new RegExp(`Listening for agents on <code>${d.agentAddress!.replace(/[.[\]]/g, '\\$&')}</code>`));
  for (const v of values) t.notOk(page.text.includes(v), 'no generated value in the page');
  t.notOk(page.text.includes(String(d.served('app/token')!.previous!.value)), 'nor the previous one');

  const again = await http(d.metricsAddress!, '/status?x=1');
  t.equal(again.status, 200, '/status serves the page too');
  t.match(again.text, /data-secret="app\/token"/);
  const head = await http(d.metricsAddress!, '/', 'HEAD');
  t.equal(head.status, 200);
  t.equal(head.text, '', 'HEAD: no body');
  t.equal(head.headers['content-security-policy'], page.headers['content-security-policy']);
  const post = await http(d.metricsAddress!, '/', 'POST');
  t.equal(post.status, 405, 'read-only');
  t.equal(post.headers.allow, 'GET, HEAD');
  t.equal((await http(d.metricsAddress!, '/nothing')).status, 404);
  t.equal((await http(d.metricsAddress!, '/metrics')).status, 200, 'the metrics are still served');
});

t.test('renderStatusPage: no tick label of the timeline runs into the "UTC" label', async (t) => {
  // Events 10 minutes back: ticks every 2 minutes; "now" placed so that the first tick falls a
  // second after the axis starts, right beside "UTC".
  const span = 10 * 60_000 * 1.04;
  for (const offset of [1000, 5000, 20_000, 60_000]) {
    const boundary = Date.parse('2026-11-26T11:50:00Z');
    const now = boundary - offset + span;
    const status = {
      ...sample(),
      recent: [
        { time: iso(now - 10 * 60_000), secret: 'a/b', event: 'rotated' as const, from: 1, to: 2, trigger: 'schedule' },
      ],
    };
    const svg = timelineSvg(renderStatusPage(status as StatusView, now))!;
    const utc = /<text class="tick" x="([\d.]+)"[^>]*text-anchor="end">UTC<\/text>/.exec(svg);
    t.ok(utc, 'the UTC label');
    for (const m of svg.matchAll(/<text class="tick" x="([\d.]+)"[^>]*text-anchor="middle">([\d:]+)<\/text>/g)) {
      const leftEdge = Number(m[1]) - (m[2]!.length * 7) / 2;
      t.ok(leftEdge > Number(utc![1]), `${m[2]} (first tick ${offset / 1000} s into the axis) starts right of "UTC"`);
    }
  }
});
