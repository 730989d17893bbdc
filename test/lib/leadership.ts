/** Hand-made leadership sections of a status (daemons sharing a PostgreSQL store), for the readers' tests. */
import type { LeadershipView } from '../../src/serve/status.js';

/** A daemon name from the store that is markup, to check that the page escapes it. */
export const HOSTILE_DAEMON = '<img src=x onerror="alert(1)">';

const daemons: LeadershipView['daemons'] = [
  { id: 'id-b', name: 'rotor-b', role: 'follower', agentUrl: 'https://10.0.0.2:7700', seenAgoMs: 1_200, term: 5 },
  { id: 'id-a', name: 'rotor-a', role: 'leader', agentUrl: 'https://10.0.0.1:7700', seenAgoMs: 2_400, term: 7 },
  { id: 'id-x', name: HOSTILE_DAEMON, role: 'follower', seenAgoMs: 95_000 },
];

/** rotor-a's view: it leads, in term 7. */
export function leaderView(): LeadershipView {
  return {
    role: 'leader',
    self: { id: 'id-a', name: 'rotor-a' },
    term: 7,
    leader: { id: 'id-a', name: 'rotor-a', agentUrl: 'https://10.0.0.1:7700' },
    leaseAgeMs: 2_400,
    leaseExpiresInMs: 12_600,
    daemons,
  };
}

/** rotor-b's view: rotor-a leads, rotor-b follows. */
export function followerView(): LeadershipView {
  return { ...leaderView(), role: 'follower', self: { id: 'id-b', name: 'rotor-b' } };
}

/** rotor-b's view when the lease has expired and nobody has taken it yet. */
export function candidateView(): LeadershipView {
  const { leader: _, leaseAgeMs: __, ...rest } = leaderView();
  return {
    ...rest,
    role: 'candidate',
    self: { id: 'id-b', name: 'rotor-b' },
    leaseExpiresInMs: -3_000,
    daemons: daemons.map((d) => (d.role === 'leader' ? { ...d, role: 'candidate' as const } : d)),
  };
}
