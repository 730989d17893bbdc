/**
 * The daemon's status snapshot (DaemonStatus): every secret with its schedule, source and consumers,
 * the sockets, the agents, the store, the audit log, the recent rotation outcomes, and (daemons
 * sharing a PostgreSQL store) which one leads. Names, versions, times and codes: never a value.
 */

import { defaultStrategy } from '../model/engines.js';
import type { Desired } from '../model/model.js';
import type { NotifyStatus } from '../notify/notifier.js';
import type { DriftView } from '../rotation/drift.js';
import { DRIFT_DETECTED } from '../rotation/drift.js';
import type { AuditEvent, Engine, StorageName } from '../rotation/engine.js';
import type {
  AgentsStatus,
  AuditStatus,
  ConfigStatus,
  DaemonStatus,
  LeadershipView,
  RecentView,
  SecretStatusView,
  SocketsStatus,
  StorageFailingView,
} from '../serve/status.js';
import { parseDuration } from '../util/duration.js';

/** What the status is taken from: the parts of the daemon, each giving its own section. */
export interface StatusParts {
  readonly engine: Pick<Engine, 'status' | 'storageFailure'>;
  /** A secret's drift incident going on (drift.ts), if any. */
  readonly drift?: (secret: string) => DriftView | undefined;
  /** The model in force, if any. */
  readonly desired: Desired | undefined;
  readonly consumersOf: (secret: string) => readonly string[];
  readonly receipt: (consumer: string, secret: string) => { readonly version: number; readonly at: string } | undefined;
  readonly config: ConfigStatus;
  readonly sockets: SocketsStatus;
  readonly agents: AgentsStatus;
  readonly store: { readonly seq: number; readonly storeId: string };
  readonly audit: Omit<AuditStatus, 'failing'>;
  readonly recent: readonly RecentView[];
  /** Which daemon leads the ones sharing the state store; absent with the file store. */
  readonly leadership?: LeadershipView;
  readonly notify?: NotifyStatus | undefined;
  readonly now: () => number;
}

/** How late a scheduled rotation may be before the secret shows as overdue. */
export const OVERDUE_GRACE_MS = 3600_000;

export function daemonStatus(p: StatusParts): DaemonStatus {
  const { desired, now } = p;
  const secrets = p.engine.status().map((s) => {
    const consumers = p.consumersOf(s.name).map((c) => {
      const r = p.receipt(c, s.name);
      return {
        name: c,
        host: desired?.consumers.get(c)?.decl.agent ?? 'daemon',
        ...(r ? { version: r.version, readAt: r.at } : {}),
        behind: s.version !== undefined && (r?.version ?? 0) < s.version,
      };
    });
    const decl = desired?.secrets.get(s.name)?.decl;
    const policy = decl ? desired?.policies.get(decl.policy)?.decl : undefined;
    const target = decl?.database ? desired?.targets.get(decl.database.target)?.decl : undefined;
    const maxAge = policy?.maxAge ? parseDuration(policy.maxAge) : undefined;
    const age = s.rotatedAt ? now() - Date.parse(s.rotatedAt) : undefined;
    // Past maxAge, or more than the grace behind its schedule slot: never because a rotation is under
    // way (a database rotation waiting for its agent) or was asked for.
    const overdue =
      (maxAge !== undefined && age !== undefined && age > maxAge) ||
      (s.scheduledAt !== undefined && now() - s.scheduledAt > OVERDUE_GRACE_MS);
    const drift = p.drift?.(s.name);
    return {
      ...s,
      // A rotation failing says more (it is what should repair the drift); else the drift fails the secret.
      ...(drift && !s.failing ? { failing: driftFailing(drift) } : {}),
      ...(drift ? { drift: driftView(drift) } : {}),
      policy: decl?.policy,
      source: decl?.database ? 'database' : decl?.sops ? 'sops' : decl?.fields ? 'fields' : 'generate',
      ...(target
        ? {
            target: target.name,
            engine: target.engine,
            strategy: decl!.database!.strategy ?? defaultStrategy(target.engine),
          }
        : {}),
      overdue,
      consumers,
    };
  });
  return {
    config: p.config,
    secrets,
    sockets: p.sockets,
    agents: p.agents,
    store: { ...p.store, ...storageStatus(p.engine, 'state store') },
    audit: { ...p.audit, ...storageStatus(p.engine, 'audit log') },
    recent: [...p.recent],
    ...(p.leadership ? { leadership: p.leadership } : {}),
    ...(p.notify ? { notify: p.notify } : {}),
    now: new Date(now()).toISOString(),
  };
}

function driftFailing(d: DriftView): NonNullable<SecretStatusView['failing']> {
  return {
    since: d.since,
    attempts: d.checks,
    error: DRIFT_DETECTED,
    ...(d.nextCheckAt !== undefined ? { retryAt: d.nextCheckAt } : {}),
  };
}

function driftView(d: DriftView): NonNullable<SecretStatusView['drift']> {
  return {
    since: new Date(d.since).toISOString(),
    onDrift: d.onDrift,
    credentials: d.credentials.map((c) => ({ version: c.version, username: c.username, credential: c.credential })),
  };
}

/** `failing`: why the audit log or the state store cannot be written (rotations wait), while that lasts. */
function storageStatus(engine: Pick<Engine, 'storageFailure'>, what: StorageName): { failing?: StorageFailingView } {
  const f = engine.storageFailure(what);
  if (!f) return {};
  const since = new Date(f.since).toISOString();
  const retryAt = new Date(f.retryAt).toISOString();
  return {
    failing: {
      code: f.code,
      ...(f.errno ? { errno: f.errno } : {}),
      message: f.message,
      since,
      attempts: f.attempts,
      retryAt,
    },
  };
}

const RECENT_MAX = 200;

/** Keeps the last RECENT_MAX rotation outcomes in `ring` (other audit events are not outcomes). */
export function keepRecent(ring: RecentView[], e: AuditEvent): void {
  if (
    !e.secret ||
    (e.event !== 'created' && e.event !== 'rotated' && e.event !== 'retired' && e.event !== 'rotation-failed')
  )
    return;
  const error = e.event === 'rotation-failed' ? /^([A-Z][A-Z0-9_]*):/.exec(e.detail ?? '')?.[1] : undefined;
  ring.push({
    time: e.time,
    secret: e.secret,
    event: e.event,
    ...(e.from !== undefined ? { from: e.from } : {}),
    ...(e.to !== undefined ? { to: e.to } : {}),
    ...(e.trigger !== undefined ? { trigger: e.trigger } : {}),
    ...(e.reason !== undefined ? { reason: e.reason } : {}),
    ...(error !== undefined ? { error } : {}),
  });
  if (ring.length > RECENT_MAX) ring.splice(0, ring.length - RECENT_MAX);
}
