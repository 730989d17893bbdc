/**
 * The status page (GET / on the metrics listener): one self-contained HTML document drawn from the
 * daemon's status, with inline CSS and inline SVG only (no script, no external asset), so it works
 * offline and under `Content-Security-Policy: default-src 'none'`. A pure function of the status and
 * the time: the status holds names, versions, times and codes, never a secret value, and every string
 * that goes into the page is escaped (names come from the repository).
 */

import type { LeadershipView, RecentView, SecretStatusView, StatusReading } from './status.js';

export type { RecentView, StorageFailingView } from './status.js';

/** What the page reads: the daemon's status. */
export type StatusView = StatusReading;
export type SecretView = SecretStatusView;

/** The headers the page is served with: nothing loads from anywhere, nothing is cached. */
export const STATUS_PAGE_HEADERS: Readonly<Record<string, string>> = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
  'x-content-type-options': 'nosniff',
  'cache-control': 'no-store',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

/** Rows drawn at most (problems first); `rotor status --json` lists everything. */
const MAX_SECRET_ROWS = 1000;
const MAX_BEHIND_ROWS = 500;
/** Lanes in the timeline: the most recently active secrets; the rest share one lane. */
const MAX_LANES = 24;
const TIMELINE_SPAN_MS = 24 * 3600_000;

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes text for HTML and XML content and quoted attribute values. */
export function esc(text: string | number | undefined): string {
  return String(text ?? '').replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

/** "3d 4h", "5m", "12s": a duration for people. */
function human(ms: number): string {
  let rest = Math.round(Math.abs(ms) / 1000);
  const parts: string[] = [];
  for (const [n, u] of [
    [86400, 'd'],
    [3600, 'h'],
    [60, 'm'],
    [1, 's'],
  ] as const) {
    if (rest >= n && parts.length < 2) {
      parts.push(`${Math.floor(rest / n)}${u}`);
      rest %= n;
    }
  }
  return parts.length ? parts.join(' ') : '0s';
}

/** "2026-11-26 12:32:17" (every time on the page is in UTC, as its header says). */
function utc(ms: number): string {
  return Number.isFinite(ms) ? new Date(ms).toISOString().slice(0, 19).replace('T', ' ') : '-';
}

const ago = (now: number, ms: number) => (ms > now ? `in ${human(ms - now)}` : `${human(now - ms)} ago`);
const version = (v: number | undefined) => (v === undefined ? '–' : `v${v}`);

/** The whole page for `status` as of `now` (ms). */
export function renderStatusPage(status: StatusView, now: number): string {
  const secrets = status.secrets;
  const failing = secrets.filter((s) => s.failing).length;
  const overdue = secrets.filter((s) => s.overdue).length;
  const rotating = secrets.filter((s) => s.pending && !s.failing).length;
  const behind = secrets.flatMap((s) => s.consumers.filter((c) => c.behind).map((c) => ({ consumer: c, secret: s })));
  const tiles = [
    tile('Secrets', secrets.length, ''),
    tile('Failing', failing, failing ? 'bad' : ''),
    tile('Overdue', overdue, overdue ? 'warn' : ''),
    tile('Rotating', rotating, rotating ? 'info' : ''),
    tile('Consumers behind', behind.length, behind.length ? 'warn' : ''),
  ].join('');
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30">
<meta name="color-scheme" content="light">
<title>rotor status${failing ? ` · ${failing} failing` : ''}${overdue ? ` · ${overdue} overdue` : ''}</title>
<style>${CSS}</style>
</head>
<body>
<header>
<div class="brand"><h1>rotor</h1><span class="muted">secret rotation status</span></div>
${status.leadership ? leadershipLine(status.leadership) : ''}<div class="muted small">as of ${esc(utc(now))} UTC (all times in UTC) · refreshes every 30 s · read-only</div>
</header>
<main>
<section class="tiles" aria-label="summary">${tiles}</section>
<section id="secrets">
<h2>Secrets</h2>
${status.leadership ? followerNote(status.leadership) : ''}${secretsTable(secrets, now)}
</section>
<section id="timeline">
<h2>Recent rotations</h2>
${timeline(status.recent ?? [], now)}
</section>
<section id="consumers">
<h2>Consumers not on the current version</h2>
${behindTable(behind, now)}
</section>
<section id="hosts">
<h2>Consumers and their hosts</h2>
${hostsTable(secrets, now)}
</section>
${
  status.leadership
    ? `<section id="daemons">
<h2>Daemons</h2>
${daemonsTable(status.leadership)}
</section>
`
    : ''
}<div class="columns">
<section id="agents">
<h2>Agents</h2>
${agentsTable(status.agents, now)}
</section>
<section id="config">
<h2>Configuration</h2>
${configList(status, now)}
</section>
</div>
</main>
<footer class="muted small">No secret value is ever shown here. <code>rotor status --json</code> gives the same data for scripts; <code>/metrics</code> serves it to Prometheus.</footer>
</body>
</html>
`;
}

function tile(label: string, n: number, tone: string): string {
  return `<div class="tile ${tone}"><div class="n">${n}</div><div class="label">${esc(label)}</div></div>`;
}

/** Problems first (failing, overdue, rotating), then by name. */
function rank(s: SecretView): number {
  return s.failing ? 0 : s.overdue ? 1 : s.pending ? 2 : 3;
}

function secretsTable(all: readonly SecretView[], now: number): string {
  if (all.length === 0) return '<p class="empty">No secret is declared in the applied commit.</p>';
  const rows = [...all].sort((a, b) => rank(a) - rank(b) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const shown = rows.slice(0, MAX_SECRET_ROWS);
  const body = shown
    .map((s) => {
      const cls = s.failing ? 'failing' : s.overdue ? 'overdue' : s.pending ? 'rotating' : '';
      const rotated = s.rotatedAt ? Date.parse(s.rotatedAt) : undefined;
      const source = s.target
        ? `${esc(s.source ?? 'database')}<div class="sub">${esc(s.strategy)} → ${esc(s.target)}${s.engine ? ` (${esc(s.engine)})` : ''}</div>`
        : esc(s.source ?? '–');
      const next = nextCell(s, now);
      const last =
        rotated === undefined
          ? '<span class="muted">never</span>'
          : `${esc(ago(now, rotated))}<div class="sub">${esc(utc(rotated))}</div>`;
      return `<tr class="${cls}" data-secret="${esc(s.name)}">
<td><span class="name">${esc(s.name)}</span>${s.policy ? `<div class="sub">policy ${esc(s.policy)}</div>` : ''}</td>
<td class="num">${version(s.version)}</td>
<td>${source}</td>
<td>${ageCell(s, rotated, now)}</td>
<td>${last}</td>
<td>${next}</td>
<td>${stateCell(s, now)}</td>
</tr>`;
    })
    .join('\n');
  const more =
    rows.length > shown.length
      ? `<p class="muted small">${rows.length - shown.length} more secrets not shown (all without problems); <code>rotor status --json</code> lists every one.</p>`
      : '';
  return `<table class="secrets">
<thead><tr><th>Secret</th><th class="num">Version</th><th>Source</th><th>Age</th><th>Last rotation</th><th>Next rotation</th><th>State</th></tr></thead>
<tbody>
${body}
</tbody>
</table>${more}`;
}

/** The age, and a bar: the share of the current interval (last rotation to the next) already elapsed. */
function ageCell(s: SecretView, rotated: number | undefined, now: number): string {
  if (rotated === undefined) return '<span class="muted">–</span>';
  const age = esc(human(now - rotated));
  if (s.nextRotationAt === undefined || s.nextRotationAt <= rotated) return age;
  const fraction = Math.max(0, (now - rotated) / (s.nextRotationAt - rotated));
  // Red only when overdue: a rotation under way (or within the grace) past its slot is not late yet.
  const tone = s.overdue ? 'bad' : fraction > 0.8 ? 'warn' : 'ok';
  const w = 96;
  // A started interval shows at least a sliver, so that the bar reads as a bar.
  const fill = Math.max(fraction > 0 ? 3 : 0, Math.round(Math.min(1, fraction) * w * 10) / 10);
  const label = `${Math.round(fraction * 100)}% of the rotation interval elapsed`;
  return `<div class="age">${age}<svg class="bar" width="${w}" height="6" viewBox="0 0 ${w} 6" role="img" aria-label="${esc(label)}"><title>${esc(label)}</title><rect class="track" width="${w}" height="6" rx="3"/><rect class="fill ${tone}" width="${fill}" height="6" rx="3"/></svg></div>`;
}

/** When the next rotation is due: a time ahead, "due" (since when, if it is known), or in progress. */
function nextCell(s: SecretView, now: number): string {
  const at = s.nextRotationAt;
  if (at === undefined) return '<span class="muted">–</span>';
  if (at > now) return `${esc(`in ${human(at - now)}`)}<div class="sub">${esc(utc(at))}</div>`;
  if (s.pending && !s.failing) return 'in progress';
  // Due since its schedule slot, or (a request, a retry) now.
  return at > 0 && s.rotatedAt !== undefined ? `due<div class="sub">since ${esc(utc(at))}</div>` : 'due';
}

function stateCell(s: SecretView, now: number): string {
  const badges: string[] = [];
  if (s.failing)
    badges.push(
      `<span class="badge bad">failing</span><div class="sub err"><code>${esc(s.failing.error)}</code> · ${s.failing.attempts} attempt${s.failing.attempts === 1 ? '' : 's'} · ${retry(s.failing.retryAt, now)}</div>`,
    );
  if (s.overdue) badges.push('<span class="badge warn">overdue</span>');
  if (s.pending && !s.failing) badges.push('<span class="badge info">rotating</span>');
  if (badges.length === 0)
    badges.push(
      s.version === undefined ? '<span class="badge none">no version yet</span>' : '<span class="badge ok">ok</span>',
    );
  return badges.join(' ');
}

function retry(at: number | undefined, now: number): string {
  return at === undefined ? 'needs a new commit' : at > now ? esc(`retry in ${human(at - now)}`) : 'retrying now';
}

function behindTable(
  rows: readonly { consumer: SecretView['consumers'][number]; secret: SecretView }[],
  now: number,
): string {
  if (rows.length === 0)
    return '<p class="empty">Every consumer has read the current version of each secret it may read.</p>';
  // Those on an older version first (they are using it), then those that never read the secret.
  const sorted = [...rows].sort(
    (a, b) =>
      Number(a.consumer.version === undefined) - Number(b.consumer.version === undefined) ||
      (a.consumer.name < b.consumer.name ? -1 : a.consumer.name > b.consumer.name ? 1 : 0) ||
      (a.secret.name < b.secret.name ? -1 : a.secret.name > b.secret.name ? 1 : 0),
  );
  const shown = sorted.slice(0, MAX_BEHIND_ROWS);
  const body = shown
    .map(
      ({ consumer: c, secret: s }) => `<tr data-consumer="${esc(c.name)}">
<td><span class="name">${esc(c.name)}</span></td>
<td>${c.host === undefined || c.host === 'daemon' ? '<span class="muted">daemon</span>' : `<span class="name">${esc(c.host)}</span>`}</td>
<td><span class="name">${esc(s.name)}</span></td>
<td class="num">${c.version === undefined ? '<span class="muted">never read</span>' : `<span class="stale">${version(c.version)}</span>`}</td>
<td class="num">${version(s.version)}</td>
<td>${c.readAt ? esc(ago(now, Date.parse(c.readAt))) : '<span class="muted">–</span>'}</td>
</tr>`,
    )
    .join('\n');
  const more =
    sorted.length > shown.length ? `<p class="muted small">${sorted.length - shown.length} more not shown.</p>` : '';
  return `<table class="behind">
<thead><tr><th>Consumer</th><th>Host</th><th>Secret</th><th class="num">Version read</th><th class="num">Current</th><th>Last read</th></tr></thead>
<tbody>
${body}
</tbody>
</table>${more}`;
}

/** Every consumer once: the host that serves its socket, how many of its secrets it read at the current version, its last read. */
function hostsTable(secrets: readonly SecretView[], now: number): string {
  const by = new Map<string, { host: string; total: number; current: number; lastRead?: number }>();
  for (const s of secrets)
    for (const c of s.consumers) {
      let row = by.get(c.name);
      if (!row) by.set(c.name, (row = { host: c.host ?? 'daemon', total: 0, current: 0 }));
      row.total++;
      if (!c.behind && c.version !== undefined) row.current++;
      const at = c.readAt ? Date.parse(c.readAt) : undefined;
      if (at !== undefined && !(at <= (row.lastRead ?? -Infinity))) row.lastRead = at;
    }
  if (by.size === 0) return '<p class="empty">No consumer is declared.</p>';
  const rows = [...by].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).slice(0, MAX_BEHIND_ROWS);
  const body = rows
    .map(
      ([name, r]) => `<tr data-consumer="${esc(name)}">
<td><span class="name">${esc(name)}</span></td>
<td>${r.host === 'daemon' ? '<span class="muted">daemon</span>' : `<span class="name">${esc(r.host)}</span>`}</td>
<td class="num">${r.current} of ${r.total}</td>
<td>${r.lastRead !== undefined ? esc(ago(now, r.lastRead)) : '<span class="muted">never</span>'}</td>
</tr>`,
    )
    .join('\n');
  const more = by.size > rows.length ? `<p class="muted small">${by.size - rows.length} more not shown.</p>` : '';
  return `<table class="hosts">
<thead><tr><th>Consumer</th><th>Host</th><th class="num">On the current version</th><th>Last read</th></tr></thead>
<tbody>
${body}
</tbody>
</table>${more}`;
}

function agentsTable(agents: StatusView['agents'], now: number): string {
  const list = agents?.agents ?? [];
  const where = agents?.listen
    ? `<p class="muted small">Listening for agents on <code>${esc(agents.listen)}</code>.</p>`
    : '<p class="muted small">Not listening for agents (no <code>--agent-listen</code>).</p>';
  if (list.length === 0) return `${where}<p class="empty">No agent is declared.</p>`;
  const body = list
    .map(
      (a) => `<tr data-agent="${esc(a.name)}">
<td><span class="name">${esc(a.name)}</span></td>
<td>${a.lastSeen ? `${esc(ago(now, Date.parse(a.lastSeen)))}<div class="sub">${esc(utc(Date.parse(a.lastSeen)))}</div>` : '<span class="badge warn">never seen</span>'}</td>
<td class="num">${a.queued}</td>
<td class="num">${a.consumers ?? 0}</td>
</tr>`,
    )
    .join('\n');
  return `${where}<table class="agents">
<thead><tr><th>Agent</th><th>Last seen</th><th class="num">Queued jobs</th><th class="num">Consumers</th></tr></thead>
<tbody>
${body}
</tbody>
</table>`;
}

const ROLE_BADGE: Record<LeadershipView['role'], string> = { leader: 'ok', follower: 'none', candidate: 'warn' };

function roleBadge(role: LeadershipView['role']): string {
  return `<span class="badge ${ROLE_BADGE[role]}">${esc(role)}</span>`;
}

/** In the header: this daemon's role, the leader, the term and the lease (durations on the database clock). */
function leadershipLine(l: LeadershipView): string {
  const parts = [
    `${roleBadge(l.role)} this daemon: <span class="name">${esc(l.self.name)}</span>`,
    l.leader
      ? `leader <span class="name">${esc(l.leader.name)}</span>`
      : '<span class="warn-text">no daemon leads as far as this one knows</span>',
    `term ${esc(l.term)}`,
  ];
  if (l.leaseAgeMs !== undefined) parts.push(esc(`lease renewed ${human(l.leaseAgeMs)} ago`));
  if (l.leaseExpiresInMs !== undefined)
    parts.push(
      esc(
        l.leaseExpiresInMs > 0 ? `expires in ${human(l.leaseExpiresInMs)}` : `expired ${human(l.leaseExpiresInMs)} ago`,
      ),
    );
  return `<div class="lead small" id="leadership">${parts.join(' · ')}</div>\n`;
}

/** Above the secrets, on a daemon that does not lead: the rotations are the leader's. */
function followerNote(l: LeadershipView): string {
  if (l.role === 'leader') return '';
  const who = l.leader ? `the leader, <span class="name">${esc(l.leader.name)}</span>,` : 'the leader';
  const none = l.leader ? '' : ' (no daemon leads right now: nothing rotates until one takes the lease)';
  return `<p class="note small">This daemon does not lead: ${who} runs the rotations, and the next rotations are when it is due to run them${none}.</p>\n`;
}

function daemonsTable(l: LeadershipView): string {
  if (l.daemons.length === 0) return '<p class="empty">No daemon seen on the state store.</p>';
  const rank = { leader: 0, follower: 1, candidate: 2 };
  const rows = [...l.daemons]
    .sort((a, b) => rank[a.role] - rank[b.role] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .slice(0, MAX_BEHIND_ROWS);
  const body = rows
    .map(
      (d) => `<tr data-daemon="${esc(d.id)}"${d.id === l.self.id ? ' class="self"' : ''}>
<td><span class="name">${esc(d.name)}</span>${d.id === l.self.id ? '<div class="sub">this daemon</div>' : ''}</td>
<td>${roleBadge(d.role)}</td>
<td class="num">${d.term === undefined ? '<span class="muted">–</span>' : esc(d.term)}</td>
<td>${d.agentUrl ? `<code>${esc(d.agentUrl)}</code>` : '<span class="muted">–</span>'}</td>
<td>${esc(`${human(d.seenAgoMs)} ago`)}</td>
</tr>`,
    )
    .join('\n');
  const more =
    l.daemons.length > rows.length
      ? `<p class="muted small">${l.daemons.length - rows.length} more not shown.</p>`
      : '';
  return `<p class="muted small">The daemons seen on the state store (times on the database clock); only the leader rotates.</p><table class="daemons">
<thead><tr><th>Daemon</th><th>Role</th><th class="num">Term</th><th>Agent URL</th><th>Last seen</th></tr></thead>
<tbody>
${body}
</tbody>
</table>${more}`;
}

function configList(status: StatusView, now: number): string {
  const { applied, attempted } = status.config;
  const when = (at: string) =>
    `${esc(ago(now, Date.parse(at)))} <span class="muted small">(${esc(utc(Date.parse(at)))})</span>`;
  const rows: string[] = [];
  rows.push(
    `<dt>Applied commit</dt><dd>${applied ? `<code title="${esc(applied.commit)}">${esc(applied.commit.slice(0, 12))}</code> · ${when(applied.at)}` : '<span class="muted">none yet</span>'}</dd>`,
  );
  if (attempted && attempted.commit !== applied?.commit) {
    rows.push(
      `<dt>Last attempted</dt><dd class="err"><code title="${esc(attempted.commit)}">${esc(attempted.commit.slice(0, 12))}</code> · ${when(attempted.at)}<div>rejected${attempted.problems !== undefined ? ` with ${attempted.problems} problem${attempted.problems === 1 ? '' : 's'}` : ''}; the applied commit stays in force</div></dd>`,
    );
  } else if (attempted) {
    rows.push('<dt>Last attempted</dt><dd>the applied commit</dd>');
  }
  const held = status.config.held;
  if (held)
    rows.push(
      `<dt>Repository</dt><dd class="err"><span class="badge bad">not followed</span> the clone stays before <code title="${esc(held.commit)}">${esc(held.commit.slice(0, 12))}</code> (<code>${esc(held.code)}</code>)<div>${esc(held.message)}</div></dd>`,
    );
  for (const [label, f] of [
    ['Audit log', status.audit?.failing],
    ['State store', status.store?.failing],
  ] as const) {
    if (f)
      rows.push(
        `<dt>${label}</dt><dd class="err"><span class="badge bad">cannot be written</span> since ${when(f.since)} (<code>${esc(f.code)}${f.errno ? `, ${esc(f.errno)}` : ''}</code>): rotations are paused and retried by themselves</dd>`,
      );
  }
  const a = status.audit;
  if (a) {
    const text =
      a.pushFailures > 0
        ? `<span class="badge warn">not pushed</span> ${a.pushFailures} failed push${a.pushFailures === 1 ? '' : 'es'}${a.pushError ? ` (last <code>${esc(a.pushError.code)}</code>)` : ''}; the entries are kept and retried`
        : a.commitPending
          ? '<span class="badge info">committing</span> entries waiting to be committed and pushed'
          : '<span class="badge ok">pushed</span> every entry is pushed';
    const where = a.branch ? ` · on branch <code>${esc(a.branch)}</code>` : '';
    rows.push(`<dt>Audit log</dt><dd>${text}${where}</dd>`);
  }
  for (const e of status.notify?.endpoints ?? []) {
    const text = e.failing
      ? `<span class="badge warn">failing</span> ${e.queued} waiting${e.lastError ? ` (last <code>${esc(e.lastError)}</code>)` : ''}; retried with backoff`
      : `<span class="badge ok">delivering</span> ${e.queued} waiting`;
    const lost = e.outcomes.dropped + e.outcomes.expired;
    rows.push(
      `<dt>Webhook <code>${esc(e.name)}</code></dt><dd>${text} · ${e.outcomes.success} delivered${lost ? ` · <span class="err">${lost} dropped</span>` : ''}<div class="muted">${esc(e.url)}</div></dd>`,
    );
  }
  return `<dl class="config">${rows.join('')}</dl>`;
}

// --- the timeline ---

const EVENT_LABEL: Record<RecentView['event'], string> = {
  created: 'created',
  rotated: 'rotated',
  retired: 'retired',
  'rotation-failed': 'failed',
};

/** One mark for an event at (x, y): the shape as well as the colour tells the kind. */
function mark(event: RecentView['event'], x: number, y: number, title?: string): string {
  // A mark with a title is an event (class "ev"); one without is the legend's sample.
  const t = title === undefined ? '' : `<title>${esc(title)}</title>`;
  const ev = title === undefined ? '' : 'ev ';
  const at = (n: number) => Math.round(n * 10) / 10;
  switch (event) {
    case 'rotated':
      return `<circle class="${ev}ev-rotated" cx="${at(x)}" cy="${y}" r="5">${t}</circle>`;
    case 'created':
      return `<circle class="${ev}ev-created" cx="${at(x)}" cy="${y}" r="4.5">${t}</circle>`;
    case 'retired':
      return `<rect class="${ev}ev-retired" x="${at(x - 3.5)}" y="${y - 3.5}" width="7" height="7" transform="rotate(45 ${at(x)} ${y})">${t}</rect>`;
    case 'rotation-failed':
      return `<path class="${ev}ev-failed" d="M${at(x - 4)} ${y - 4}L${at(x + 4)} ${y + 4}M${at(x + 4)} ${y - 4}L${at(x - 4)} ${y + 4}">${t}</path>`;
  }
}

function describe(e: RecentView): string {
  const versions =
    e.event === 'rotated'
      ? ` ${version(e.from)} → ${version(e.to)}`
      : e.event === 'created'
        ? ` ${version(e.to)}`
        : e.event === 'retired'
          ? ` ${version(e.from)}`
          : e.to !== undefined
            ? ` (${version(e.to)})`
            : '';
  const why = [e.trigger, e.reason].filter((x) => x !== undefined && x !== '').join(': ');
  return `${utc(Date.parse(e.time))}: ${e.secret} ${e.event === 'rotation-failed' ? 'rotation failed' : e.event}${versions}${e.error ? `, ${e.error}` : ''}${why ? ` (${why})` : ''}`;
}

const TICKS_MS = [1, 2, 5, 10, 15, 30]
  .map((s) => s * 1000)
  .concat(
    [1, 2, 5, 10, 15, 30].map((m) => m * 60_000),
    [1, 2, 3, 6, 12].map((h) => h * 3600_000),
  );

/** The widest a character of a tick label is (11px digits and colons, with room), and the least gap. */
const TICK_CHAR_PX = 7;
const TICK_GAP_PX = 6;

function timeline(recent: readonly RecentView[], now: number): string {
  const legend = `<ul class="legend">${(['rotated', 'created', 'retired', 'rotation-failed'] as const).map((k) => `<li><svg width="14" height="14" viewBox="0 0 14 14" aria-hidden="true">${mark(k, 7, 7)}</svg>${EVENT_LABEL[k]}</li>`).join('')}</ul>`;
  const events = recent.filter(
    (e) => Number.isFinite(Date.parse(e.time)) && Date.parse(e.time) >= now - TIMELINE_SPAN_MS,
  );
  const older = recent.length - events.length;
  const caption = `<p class="muted small">Rotations since the daemon started (the most recent ones, up to 24 hours back), newest on the right; each mark's tooltip tells what happened.${older ? ` ${older} older event${older === 1 ? '' : 's'} not drawn.` : ''}</p>`;
  if (events.length === 0) return `${caption}<p class="empty">No rotation in this period.</p>`;

  const earliest = Math.min(...events.map((e) => Date.parse(e.time)));
  const span = Math.max(60_000, now - earliest) * 1.04;
  const start = now - span;
  // Lanes: one per secret (by name), for the most recently active ones; the rest share a last lane.
  const lastActive = new Map<string, number>();
  for (const e of events) lastActive.set(e.secret, Math.max(lastActive.get(e.secret) ?? 0, Date.parse(e.time)));
  let laneNames = [...lastActive.keys()];
  let others = false;
  if (laneNames.length > MAX_LANES) {
    laneNames = laneNames.sort((a, b) => lastActive.get(b)! - lastActive.get(a)!).slice(0, MAX_LANES - 1);
    others = true;
  }
  laneNames.sort();
  const lane = new Map(laneNames.map((n, i) => [n, i]));
  const lanes = laneNames.length + (others ? 1 : 0);

  const W = 1000,
    left = 200,
    right = 16,
    top = 8,
    laneH = 22,
    axisH = 28;
  const H = top + lanes * laneH + axisH;
  const x = (ms: number) => left + ((Math.min(ms, now) - start) / span) * (W - left - right);
  const parts: string[] = [];
  for (let i = 0; i < lanes; i++) {
    const y = top + i * laneH;
    const name = i < laneNames.length ? laneNames[i]! : `${lastActive.size - laneNames.length} other secrets`;
    const short = name.length > 28 ? `${name.slice(0, 27)}…` : name;
    parts.push(
      `<rect class="lane${i % 2 ? ' odd' : ''}" x="${left}" y="${y}" width="${W - left - right}" height="${laneH}"/>`,
    );
    parts.push(
      `<text class="lane-label" x="${left - 10}" y="${y + laneH / 2 + 4}" text-anchor="end">${esc(short)}${short !== name ? `<title>${esc(name)}</title>` : ''}</text>`,
    );
  }
  const step = TICKS_MS.find((s) => span / s <= 7) ?? 6 * 3600_000;
  const axisY = top + lanes * laneH;
  // A tick's label is centred on it: one whose left half would reach into the "UTC" label (which
  // ends at left - 10) is not drawn, nor one that would meet "now" on the right.
  const labelLength = step < 60_000 ? 8 : 5;
  const half = (labelLength * TICK_CHAR_PX) / 2;
  for (let t = Math.ceil(start / step) * step; x(now) - x(t) > 36; t += step) {
    const tx = Math.round(x(t) * 10) / 10;
    if (tx - half < left - 10 + TICK_GAP_PX) continue;
    const label = new Date(t).toISOString().slice(11, step < 60_000 ? 19 : 16);
    parts.push(
      `<line class="grid" x1="${tx}" y1="${top}" x2="${tx}" y2="${axisY + 4}"/><text class="tick" x="${tx}" y="${axisY + 17}" text-anchor="middle">${label}</text>`,
    );
  }
  parts.push(`<line class="axis" x1="${left}" y1="${axisY}" x2="${W - right}" y2="${axisY}"/>`);
  parts.push(
    `<line class="now" x1="${x(now)}" y1="${top}" x2="${x(now)}" y2="${axisY}"/><text class="tick now-label" x="${x(now) - 4}" y="${axisY + 17}" text-anchor="end">now</text>`,
  );
  parts.push(`<text class="tick" x="${left - 10}" y="${axisY + 17}" text-anchor="end">UTC</text>`);
  // Retirements first and failures last: where marks meet (a rotation and, seconds later, the
  // retirement it brings), the rotation shows over its retirement and a failure over everything.
  const order = (e: RecentView) => (e.event === 'retired' ? 0 : e.event === 'rotation-failed' ? 2 : 1);
  for (const e of [...events].sort((a, b) => order(a) - order(b))) {
    const i = lane.get(e.secret) ?? laneNames.length;
    parts.push(mark(e.event, x(Date.parse(e.time)), top + i * laneH + laneH / 2, describe(e)));
  }
  const counts = (['rotated', 'created', 'retired', 'rotation-failed'] as const)
    .map((k) => [k, events.filter((e) => e.event === k).length] as const)
    .filter(([, n]) => n > 0);
  const label = `Timeline of ${events.length} rotation events: ${counts.map(([k, n]) => `${n} ${EVENT_LABEL[k]}`).join(', ')}`;
  return `${caption}<svg class="timeline" viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="${esc(label)}" preserveAspectRatio="xMinYMin meet"><title>${esc(label)}</title>${parts.join('')}</svg>${legend}`;
}

const CSS = `
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--soft:#f6f8fa;--ok:#1a7f37;--okbg:#dafbe1;--bad:#cf222e;--badbg:#ffebe9;--warn:#9a6700;--warnbg:#fff8c5;--info:#0969da;--infobg:#ddf4ff;--retired:#8c959f}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:var(--fg);background:#fff}
header{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap;gap:8px;padding:14px 28px;border-bottom:1px solid var(--line);background:var(--soft)}
.brand{display:flex;align-items:baseline;gap:12px}
h1{margin:0;font-size:20px;letter-spacing:.02em}
h2{font-size:15px;margin:28px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
main{max-width:1240px;margin:0 auto;padding:8px 28px 12px}
footer{max-width:1240px;margin:0 auto;padding:12px 28px 28px}
.muted{color:var(--muted)}
.small{font-size:12px}
table.secrets .name{white-space:nowrap}
code,.name{font-family:ui-monospace,SFMono-Regular,"SF Mono",Menlo,Consolas,monospace;font-size:12.5px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin-top:18px}
.tile{flex:1 1 140px;border:1px solid var(--line);border-radius:6px;padding:10px 14px;background:#fff}
.tile .n{font-size:24px;font-weight:600;line-height:1.2}
.tile .label{color:var(--muted);font-size:12px}
.tile.bad{border-color:#ff818266;background:var(--badbg)}.tile.bad .n{color:var(--bad)}
.tile.warn{border-color:#d4a72c66;background:var(--warnbg)}.tile.warn .n{color:var(--warn)}
.tile.info{border-color:#54aeff66;background:var(--infobg)}.tile.info .n{color:var(--info)}
table{width:100%;border-collapse:collapse;border:1px solid var(--line);border-radius:6px}
th,td{text-align:left;vertical-align:top;padding:7px 10px;border-bottom:1px solid var(--line)}
th{background:var(--soft);font-weight:600;font-size:12px;color:var(--muted);white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap}
tbody tr:last-child td{border-bottom:0}
.sub{color:var(--muted);font-size:12px;white-space:nowrap}
tr.failing td{background:var(--badbg)}
tr.failing td:first-child{box-shadow:inset 3px 0 0 var(--bad)}
tr.overdue td{background:var(--warnbg)}
tr.overdue td:first-child{box-shadow:inset 3px 0 0 #d4a72c}
tr.rotating td:first-child{box-shadow:inset 3px 0 0 var(--info)}
.err,.sub.err{color:var(--bad)}
.sub.err{white-space:normal}
.stale{color:var(--warn);font-weight:600}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;line-height:20px;border:1px solid transparent}
.badge.ok{color:var(--ok);background:var(--okbg)}
.badge.bad{color:#fff;background:var(--bad)}
.badge.warn{color:var(--warn);background:var(--warnbg);border-color:#d4a72c66}
.badge.info{color:var(--info);background:var(--infobg)}
.badge.none{color:var(--muted);background:var(--soft);border-color:var(--line)}
.age{display:flex;flex-direction:column;gap:4px}
.bar .track{fill:#eaeef2}
.bar .fill.ok{fill:#4ac26b}.bar .fill.warn{fill:#d4a72c}.bar .fill.bad{fill:var(--bad)}
.empty{color:var(--muted);font-style:italic}
.warn-text{color:var(--warn);font-weight:600}
.note{margin:0 0 10px;padding:6px 10px;border-left:3px solid var(--info);background:var(--infobg)}
tr.self td:first-child{box-shadow:inset 3px 0 0 var(--info)}
.timeline{display:block;border:1px solid var(--line);border-radius:6px;background:#fff}
.timeline .lane{fill:#fff}.timeline .lane.odd{fill:#fafbfc}
.timeline .lane-label{font:11.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;fill:var(--fg)}
.timeline .tick{font-size:11px;fill:var(--muted)}
.timeline .grid{stroke:#eaeef2}
.timeline .axis{stroke:#afb8c1}
.timeline .now{stroke:#afb8c1;stroke-dasharray:3 3}
.ev-rotated{fill:var(--ok);stroke:#fff;stroke-width:1}
.ev-created{fill:#fff;stroke:var(--info);stroke-width:2}
.ev-retired{fill:var(--retired);stroke:#fff;stroke-width:1}
.ev-failed{stroke:var(--bad);stroke-width:2.5;stroke-linecap:round;fill:none}
.legend{list-style:none;display:flex;gap:18px;padding:0;margin:8px 0 0;color:var(--muted);font-size:12px}
.legend li{display:flex;align-items:center;gap:6px}
.columns{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:0 28px}
dl.config{display:grid;grid-template-columns:max-content 1fr;gap:8px 16px;margin:0}
dl.config dt{color:var(--muted)}
dl.config dd{margin:0}
`;
