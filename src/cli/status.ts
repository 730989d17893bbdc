/** `rotor status [--json] [--data-dir DIR]`: what the running daemon knows, over its admin socket. */
import path from 'node:path';
import type { LeadershipView, StatusReading } from '../serve/status.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse } from '../util/args.js';
import { AdminError, adminSocket, callAdmin } from './admin-client.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import { DEFAULT_DATA_DIR } from './rotate.js';

export const STATUS_FLAGS = {
  json: { type: 'boolean', description: "the daemon's status as JSON (for scripts)" },
  'data-dir': { type: 'string', arg: 'DIR', default: DEFAULT_DATA_DIR, description: "the daemon's data directory" },
  help: HELP_FLAG,
} as const satisfies Flags;

export const STATUS_HELP = `rotor status: what the running daemon knows about secrets, consumers, agents and config

Usage: rotor status [--json] [--data-dir DIR]

Asks the running daemon (DATA_DIR/admin.sock, for the daemon's user) what it knows: every secret with
its version, age, last and next rotation, whether it is overdue (older than the policy's maxAge, or
its rotation more than an hour late), its strategy and target, the consumers that may read it and the
version each last read (an asterisk marks one still on an older version), and the last error of a
failing rotation; the agents and when each last called; the config commit last applied and last
attempted; audit entries not yet pushed. With daemons sharing a PostgreSQL state store, first which
one leads: this daemon's role and the term, the leader and its lease, every daemon seen on the store
(a follower does not rotate: the leader does, on its schedule). Colours on a terminal, none when
piped (or with NO_COLOR).

Options:
${optionsHelp(STATUS_FLAGS)}
Exit status: 0 all well, 1 something is overdue or failing, the clone cannot follow the repository,
or the daemon cannot be reached, 2 usage.

Examples:
  sudo rotor status
  rotor status --data-dir /srv/rotor --json | jq '.secrets[] | select(.overdue)'
  rotor status > /dev/null || echo "rotor needs attention"     # in a health check
`;

/** The daemon's answer on GET /v1/status. */
type Status = StatusReading;

export async function statusCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parse(argv, STATUS_FLAGS, io.env, 0);
  if (flags.help) {
    io.stdout(STATUS_HELP);
    return EXIT.ok;
  }
  let status: Status;
  try {
    status = (await callAdmin(adminSocket(path.resolve(io.cwd, flags['data-dir']!)), 'GET', '/v1/status')) as Status;
  } catch (e) {
    if (e instanceof AdminError) {
      io.stderr(`rotor status: ${e.message} [${e.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }
  const trouble =
    status.secrets.some((s) => s.overdue || s.failing) ||
    Boolean(status.audit?.failing || status.store?.failing || status.config.held);
  if (flags.json) {
    io.stdout(`${JSON.stringify(status, null, 2)}\n`);
    return trouble ? EXIT.invalid : EXIT.ok;
  }
  io.stdout(render(status, io.isTTY && !io.env.NO_COLOR));
  return trouble ? EXIT.invalid : EXIT.ok;
}

const C = { red: '\x1b[31m', yellow: '\x1b[33m', green: '\x1b[32m', dim: '\x1b[2m', bold: '\x1b[1m', reset: '\x1b[0m' };

/** "3d 4h", "5m", "12s": a duration for people. */
export function human(ms: number): string {
  const s = Math.round(Math.abs(ms) / 1000);
  const units: [number, string][] = [
    [86400, 'd'],
    [3600, 'h'],
    [60, 'm'],
    [1, 's'],
  ];
  const parts: string[] = [];
  let rest = s;
  for (const [n, u] of units) {
    if (rest >= n && parts.length < 2) {
      parts.push(`${Math.floor(rest / n)}${u}`);
      rest %= n;
    }
  }
  return parts.length ? parts.join(' ') : '0s';
}

export function render(st: Status, color: boolean): string {
  const paint = (c: keyof typeof C, text: string) => (color ? C[c] + text + C.reset : text);
  const now = Date.parse(st.now);
  const rows: string[][] = [
    ['SECRET', 'VER', 'AGE', 'NEXT', 'STATE', 'STRATEGY', 'TARGET', 'CONSUMERS (version read)'],
  ];
  const states: (keyof typeof C | undefined)[] = [undefined];
  const out: string[] = st.leadership ? [...leadershipLines(st.leadership, paint), ''] : [];
  for (const s of [...st.secrets].sort((a, b) => a.name.localeCompare(b.name))) {
    const age = s.rotatedAt ? human(now - Date.parse(s.rotatedAt)) : '-';
    const next =
      s.nextRotationAt === undefined ? '-' : s.nextRotationAt <= now ? 'due' : `in ${human(s.nextRotationAt - now)}`;
    const state = s.failing
      ? `failing: ${s.failing.error} (${s.failing.attempts}x)`
      : s.overdue
        ? 'overdue'
        : s.pending
          ? 'rotating'
          : s.version === undefined
            ? 'no value yet'
            : 'ok';
    const consumers =
      s.consumers
        .map(
          (c) =>
            `${c.name}${c.host && c.host !== 'daemon' ? ` (${c.host})` : ''}${c.version !== undefined ? `@${c.version}` : ''}${c.behind ? '*' : ''}`,
        )
        .join(', ') || '-';
    rows.push([
      s.name,
      s.version === undefined ? '-' : String(s.version),
      age,
      next,
      state,
      s.strategy ?? s.source ?? '-',
      s.target ? `${s.target} (${s.engine})` : '-',
      consumers,
    ]);
    states.push(s.failing ? 'red' : s.overdue ? 'yellow' : s.version === undefined || s.pending ? 'dim' : 'green');
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = rows.map((r, ri) => {
    const text = r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ');
    if (ri === 0) return paint('bold', text);
    const c = states[ri];
    // Colour only the STATE column's meaning: the whole row for failing/overdue, else nothing.
    return c === 'red' || c === 'yellow' ? paint(c, text) : text;
  });
  out.push(...lines, '');
  const agents = st.agents?.agents ?? [];
  if (agents.length) {
    out.push(paint('bold', 'AGENTS') + (st.agents?.listen ? `  (listening on ${st.agents.listen})` : ''));
    for (const a of agents)
      out.push(
        `  ${a.name}: ${a.lastSeen ? `last seen ${human(now - Date.parse(a.lastSeen))} ago` : paint('yellow', 'never seen')}${a.queued ? `, ${a.queued} job(s) waiting` : ''}${a.consumers ? `, serves ${a.consumers} consumer(s)` : ''}`,
      );
    out.push('');
  }
  const applied = st.config.applied;
  const attempted = st.config.attempted;
  out.push(
    `${paint('bold', 'CONFIG')}  applied ${applied ? `${applied.commit.slice(0, 12)} at ${applied.at}` : 'none'}`,
  );
  if (attempted && attempted.commit !== applied?.commit)
    out.push(
      paint(
        'red',
        `  last attempted ${attempted.commit.slice(0, 12)} at ${attempted.at}: rejected (${attempted.problems ?? '?'} problems); the applied commit stays in force`,
      ),
    );
  const held = st.config.held;
  if (held)
    out.push(paint('red', `  the clone stays before ${held.commit.slice(0, 12)} (${held.code}): ${held.message}`));
  for (const [what, f] of [
    ['audit log', st.audit?.failing],
    ['state store', st.store?.failing],
  ] as const) {
    if (f)
      out.push(
        paint(
          'red',
          `  ${what}: cannot be written since ${f.since} (${f.code}${f.errno ? `, ${f.errno}` : ''}): rotations are paused; next try ${Date.parse(f.retryAt) <= now ? 'now' : `in ${human(Date.parse(f.retryAt) - now)}`} (${f.attempts} failed)`,
        ),
      );
  }
  if (st.audit)
    out.push(
      ...(st.notify?.endpoints ?? []).map(
        (e) =>
          `  webhook ${plain(e.name)}: ${e.failing ? paint('yellow', `failing (${e.queued} waiting${e.lastError ? `, last ${plain(e.lastError)}` : ''}; retried with backoff)`) : `${e.queued} waiting`}, ${e.outcomes.success} delivered${e.outcomes.dropped + e.outcomes.expired > 0 ? paint('red', `, ${e.outcomes.dropped + e.outcomes.expired} dropped`) : ''}`,
      ),
      `  audit: ${st.audit.pushFailures > 0 ? paint('yellow', `entries not yet pushed (${st.audit.pushFailures} failed pushes${st.audit.pushError ? `, last ${st.audit.pushError.code}` : ''}; they are kept and retried)`) : st.audit.commitPending ? 'entries being committed' : 'all entries pushed'}${st.audit.branch ? ` (to branch ${st.audit.branch})` : ''}`,
    );
  return `${out.join('\n')}\n`;
}

const ROLE_WORDS = {
  leader: 'leads',
  follower: 'follows',
  candidate: 'is a candidate (no daemon leads as far as it knows)',
};

/** A name or URL from the store, with no control character that could work on the terminal. */
const plain = (text: string) => text.replace(/\p{Cc}/gu, '?');

/** The LEADERSHIP block: this daemon's role and term, the leader and its lease, every daemon seen. */
function leadershipLines(l: LeadershipView, paint: (c: keyof typeof C, text: string) => string): string[] {
  const out = [
    `${paint('bold', 'LEADERSHIP')}  this daemon (${plain(l.self.name)}) ${ROLE_WORDS[l.role]}, term ${l.term}`,
  ];
  const lease = [
    l.leaseAgeMs !== undefined ? `lease renewed ${human(l.leaseAgeMs)} ago` : undefined,
    l.leaseExpiresInMs === undefined
      ? undefined
      : l.leaseExpiresInMs > 0
        ? `expires in ${human(l.leaseExpiresInMs)}`
        : `expired ${human(l.leaseExpiresInMs)} ago`,
  ].filter((x) => x !== undefined);
  if (l.leader)
    out.push(
      `  leader: ${plain(l.leader.name)}${l.leader.agentUrl ? ` (agents: ${plain(l.leader.agentUrl)})` : ''}${lease.length ? `, ${lease.join(', ')}` : ''}`,
    );
  if (l.role === 'follower')
    out.push(
      `  rotations are run by the leader${l.leader ? ` (${plain(l.leader.name)})` : ''}, not this daemon: NEXT is when the leader is due to rotate`,
    );
  if (l.role === 'candidate' && !l.leader)
    out.push(paint('yellow', '  no daemon holds the lease: nothing rotates until one takes it'));
  const rank = { leader: 0, follower: 1, candidate: 2 };
  const daemons = [...l.daemons].sort((a, b) => rank[a.role] - rank[b.role] || a.name.localeCompare(b.name));
  for (const d of daemons)
    out.push(
      `  ${plain(d.name)}${d.id === l.self.id ? ' (this daemon)' : ''}: ${d.role}${d.term !== undefined ? `, term ${d.term}` : ''}${d.agentUrl ? `, agents: ${plain(d.agentUrl)}` : ''}, seen ${human(d.seenAgoMs)} ago`,
    );
  return out;
}
