/**
 * The daemon's status: what Daemon.status() builds, the admin socket answers (GET /v1/status),
 * `rotor status` prints, and the metrics and the status page read. Names, versions, times and codes
 * only: never a secret value.
 */

import type { NotifyStatus } from '../notify/notifier.js';

/** The daemon's status, one shape for the daemon that builds it and every reader. */
export interface DaemonStatus {
  /** When the status was taken (ISO 8601). */
  readonly now: string;
  readonly config: ConfigStatus;
  readonly secrets: readonly SecretStatusView[];
  readonly sockets: SocketsStatus;
  readonly agents: AgentsStatus;
  readonly store: { readonly seq: number; readonly storeId: string; readonly failing?: StorageFailingView };
  readonly audit: AuditStatus;
  /** Recent rotation outcomes, oldest first. */
  readonly recent: readonly RecentView[];
  /** Which daemon leads, when several share the state store (PostgreSQL); absent with the file store (one daemon). */
  readonly leadership?: LeadershipView;
  /** The webhooks (Config.notify): present while endpoints are declared or deliveries wait. */
  readonly notify?: NotifyStatus;
}

/** The sections a reader does without: a status made by hand (a test, a tool) may leave them out. */
type Sections = 'sockets' | 'agents' | 'store' | 'audit' | 'recent' | 'leadership' | 'notify';
/** What the readers (rotor status, the metrics, the status page) take: DaemonStatus, its sections optional. */
export type StatusReading = Omit<DaemonStatus, Sections> & Partial<Pick<DaemonStatus, Sections>>;

export interface ConfigStatus {
  readonly applied?: { readonly commit: string; readonly at: string };
  /** The last commit looked at; `problems` counts its errors when it was rejected. */
  readonly attempted?: { readonly commit: string; readonly at: string; readonly problems?: number };
  /** The clone does not take the remote head (its audit path is a link, a file or a submodule). */
  readonly held?: { readonly commit: string; readonly code: string; readonly message: string };
}

export interface SecretStatusView {
  readonly name: string;
  readonly version?: number;
  readonly rotatedAt?: string;
  /** When the next rotation is due (ms since the epoch); for one due or under way, when it fell due. */
  readonly nextRotationAt?: number;
  /** The schedule slot the current version is due by: overdue is measured from it. */
  readonly scheduledAt?: number;
  readonly pending: boolean;
  readonly overdue: boolean;
  /** `retryAt` is absent when only a new commit can mend it (an unreadable SOPS file). */
  readonly failing?: {
    readonly since: number;
    readonly attempts: number;
    readonly error: string;
    readonly retryAt?: number;
  };
  /** The previous version while it is still served (the overlap): it stops being valid at `validUntil` (ISO 8601). */
  readonly previous?: { readonly version: number; readonly validUntil: string };
  /**
   * A drift incident going on (policy `verify`): the served credentials the database refuses, since the
   * first refused check. It also shows as `failing` with DRIFT_DETECTED unless a rotation is failing.
   */
  readonly drift?: {
    readonly since: string;
    readonly onDrift: 'rotate' | 'alert';
    readonly credentials: readonly {
      readonly version: number;
      readonly username: string;
      readonly credential: 'current' | 'previous';
    }[];
  };
  readonly policy?: string;
  /** database, sops, fields or generate. */
  readonly source?: string;
  readonly strategy?: string;
  readonly target?: string;
  readonly engine?: string;
  readonly consumers: readonly ConsumerReadView[];
}

/** A consumer of a secret: where it runs, the version it last read, and whether that is older than the current one. */
export interface ConsumerReadView {
  readonly name: string;
  /** The agent whose host serves the consumer's socket, or "daemon" for the daemon's own host. */
  readonly host: string;
  readonly version?: number;
  readonly readAt?: string;
  readonly behind: boolean;
}

export interface SocketsStatus {
  readonly dir: string;
  readonly consumers: readonly string[];
  /** Consumer API requests by consumer and HTTP status. */
  readonly requests: readonly { readonly consumer: string; readonly status: number; readonly count: number }[];
}

export interface AgentsStatus {
  readonly listen?: string;
  readonly agents: readonly {
    readonly name: string;
    readonly lastSeen?: string;
    readonly queued: number;
    /** The consumers declared on the agent, whose sockets it serves on its host. */
    readonly consumers?: number;
  }[];
}

export interface AuditStatus {
  /** The branch the log is committed to when it is not the declarations' one (audit.branch). */
  readonly branch?: string;
  readonly commitPending: boolean;
  readonly pushFailures: number;
  /** The code and message of the last failed commit or push, while pushes fail. */
  readonly pushError?: { readonly code: string; readonly message: string };
  readonly failing?: StorageFailingView;
}

/** The audit log or the state store cannot be written: rotations wait. */
export interface StorageFailingView {
  readonly code: string;
  readonly errno?: string;
  readonly message: string;
  readonly since: string;
  readonly attempts: number;
  readonly retryAt: string;
}

/** A rotation outcome for the timeline (the daemon keeps the last ones): taken from an audit event, which holds no value. */
export interface RecentView {
  readonly time: string;
  readonly secret: string;
  readonly event: 'created' | 'rotated' | 'retired' | 'rotation-failed';
  readonly from?: number;
  readonly to?: number;
  readonly trigger?: string;
  readonly reason?: string;
  /** The error code of a failed rotation (the start of its audit detail). */
  readonly error?: string;
}

/**
 * The leadership among the daemons that share one state store: one leads by a lease whose term only
 * grows, and only the leader rotates; the others follow. Durations are measured on the database's
 * clock, so that the daemons' own clocks do not matter.
 */
export interface LeadershipView {
  /** This daemon: leading, following (another daemon leads) or candidate (nobody leads as far as it knows). */
  readonly role: 'leader' | 'follower' | 'candidate';
  readonly self: { readonly id: string; readonly name: string };
  /** The current term, as last read from the lease (0 before any daemon led). */
  readonly term: number;
  /** The daemon holding the lease, when one does. */
  readonly leader?: { readonly id: string; readonly name: string; readonly agentUrl?: string };
  /** Since the leader last renewed the lease, and until it expires (database clock), in ms. */
  readonly leaseAgeMs?: number;
  readonly leaseExpiresInMs?: number;
  /** Every daemon seen on the store recently, this one included. */
  readonly daemons: readonly {
    readonly id: string;
    readonly name: string;
    readonly role: 'leader' | 'follower' | 'candidate';
    readonly agentUrl?: string;
    /** Since it last wrote its row (database clock), ms. */
    readonly seenAgoMs: number;
    /** The term it leads or last led. */
    readonly term?: number;
  }[];
}
