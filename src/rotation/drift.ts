/**
 * Drift detection and repair. A database password changed by hand, or a backup restored with old
 * credentials, breaks every application at its next reconnect, and nothing in a rotation notices. For a
 * database secret whose policy has `verify: DURATION`, this often the target's agent logs in with the
 * credentials served now (current, and previous while it is still valid: the overlap before retire,
 * except under `single`, whose previous value was replaced in place) through a sealed `verify` job
 * (src/protocol/jobs.ts), and reports each login as ok, refused or error. No value leaves the agent.
 *
 * - refused: drift. The first refused check opens an incident: ONE `drift-detected` audit entry names
 *   the credentials (version and username) and when the first refused check was; the secret shows as
 *   failing with DRIFT_DETECTED (rotor status, the status page, `rotor_secret_drift`). With `onDrift:
 *   rotate` (the default) the secret is rotated at once (trigger `drift`), which makes a new value log
 *   in; with `alert` it stays failing.
 * - the incident ends when the secret rotates (its current version is no longer the one it was found
 *   on) or a later check has no refused login. A version refused in an incident that a rotation ended
 *   (now the previous one, still served during the overlap) is not drift again. (An incident read back
 *   unaudited that a rotation ended before its next check is over without its entry: that takes a crash
 *   in the moment between the record and the entry, and a rotation of another cause right after.)
 * - error (the server or the agent could not be reached, a timeout, a permission): not drift. Logged.
 *
 * Only the daemon that acts (the leader of several) checks; a check never runs beside a rotation, a
 * retirement or a purge of the same secret (it holds the secret's lock, and is skipped while a
 * rotation is pending).
 *
 * Kept in the state store under `drift/<name>` (through the store the engine writes, so on PostgreSQL
 * fenced like every other write, with the audit head as the engine's writes have it), read when the
 * daemon starts acting (at start, or when it takes the lead), so that after a restart, or when another
 * daemon takes the lead, an incident still going on is the same incident (no second `drift-detected`):
 * - an open incident, written BEFORE its audit entry (`audited: false`) and again after it. A record
 *   read back unaudited is looked up in the audit log (the last `drift-detected` entry of the secret,
 *   the index the daemon keeps of its log): if that entry is this incident's (its version and the time
 *   of its first refused check), the crash came after the entry and it is not written again; if not,
 *   the entry is written at the next check, whatever that check finds. So a crash at any point leaves
 *   exactly one entry per incident.
 * - once a rotation ended it, the versions it found refused (`repaired`), for as long as they are
 *   served (the overlap): a restart then does not take the previous version, refused, for new drift.
 * Deleted when nothing is left to keep. Only the daemon that acts writes.
 */

import diagnostics_channel from 'node:diagnostics_channel';
import { BACKOFF, RotorError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Desired } from '../model/model.js';
import type { Secret } from '../model/schema-types.js';
import type { Check, CheckedCredential, Credential, Result, Strategy } from '../protocol/jobs.js';
import type { Json, Op } from '../state/types.js';
import { parseDuration } from '../util/duration.js';
import type { AuditEvent, Served } from './engine.js';

/**
 * Each check ends with a message on `rotor:drift`: { secret, ok, refused, errors } (how many logins of
 * each kind; refused counts only drift, not a version already repaired), or { secret, failed: code } when
 * the verify job itself failed. How tests await checks.
 */
export const driftChannel = diagnostics_channel.channel('rotor:drift');

/** The status code of a secret with a drift incident. */
export const DRIFT_DETECTED = 'DRIFT_DETECTED';
/** How long a verify job may wait for its agent's report; past it the check is an error, not drift. */
export const VERIFY_TIMEOUT_MS = 60_000;

/** A credential a check found refused. */
export interface DriftedCredential {
  readonly credential: CheckedCredential;
  readonly version: number;
  readonly username: string;
}

/** An incident going on, as the status shows it. */
export interface DriftView {
  /** The first refused check (ms). */
  readonly since: number;
  /** Refused checks so far in this incident. */
  readonly checks: number;
  readonly credentials: readonly DriftedCredential[];
  readonly onDrift: 'rotate' | 'alert';
  /** The next check (ms). */
  readonly nextCheckAt?: number;
}

export interface DriftOptions {
  readonly now: () => number;
  readonly log: Logger;
  /** Whether this daemon acts (leads): only then it checks. */
  readonly acting: () => boolean;
  readonly audit: (events: AuditEvent[]) => Promise<unknown>;
  /** What is served now (current, and previous during the overlap). */
  readonly served: (name: string) => Served | undefined;
  /** Runs fn holding the secret's lock, or resolves undefined when a rotation of it is pending. */
  readonly whenIdle: <T>(name: string, fn: () => Promise<T>) => Promise<T | undefined>;
  /** The agent's verify job (AgentHub.verify). */
  readonly verify: (
    secret: Secret,
    version: number,
    current: Credential,
    previous: Credential | undefined,
    timeoutMs: number,
  ) => Promise<Result>;
  /** The strategy the agent applies to a database secret. */
  readonly strategyOf: (secret: Secret) => Strategy;
  /** Rotates the secret now with trigger `drift` (its failure is the engine's to retry). */
  readonly rotate: (name: string, reason: string) => Promise<unknown>;
  /** The state store the engine writes (open incidents are kept under `drift/<name>`). */
  readonly store: {
    get(key: string): Json | undefined;
    entries(prefix?: string): IterableIterator<[string, Json]>;
    write(ops: readonly Op[]): Promise<number>;
  };
  /** Adds the audit log's current head to a store write, as the engine's writes have it. */
  readonly withHead: (ops: Op[]) => Op[];
  /** The last `drift-detected` entry of a secret in the audit log as the daemon read and followed it. */
  readonly auditedDrift?: (name: string) => { readonly from?: number; readonly detail?: string } | undefined;
}

/** Where the incident of a secret (open, or the versions it found refused) is kept in the state store. */
export const DRIFT_KEY = (name: string): string => `drift/${name}`;

interface Watched {
  secret: Secret;
  intervalMs: number;
  onDrift: 'rotate' | 'alert';
  nextAt: number;
  running: boolean;
}

interface Incident {
  /** The current version when it was found. */
  readonly version: number;
  readonly since: number;
  credentials: DriftedCredential[];
  checks: number;
  audited: boolean;
  /** Written to the state store (DRIFT_KEY) as it is now. */
  stored: boolean;
}

const int = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;

/** The versions a rotation repaired, as the state store keeps them ({repaired: [...]}); else undefined. */
function parseRepaired(v: Json | undefined): Set<number> | undefined {
  const o = v as Record<string, unknown> | null | undefined;
  if (!o || typeof o !== 'object' || Array.isArray(o) || !Array.isArray(o.repaired)) return undefined;
  if (o.repaired.length > 16 || !o.repaired.every(int)) return undefined;
  return new Set(o.repaired as number[]);
}

/** An open incident as the state store keeps it; anything else there is not one (logged, deleted). */
function parseIncident(v: Json | undefined): Incident | undefined {
  const o = v as Record<string, unknown> | null | undefined;
  if (!o || typeof o !== 'object' || Array.isArray(o)) return undefined;
  if (!int(o.version) || !int(o.since) || !int(o.checks) || !Array.isArray(o.credentials)) return undefined;
  const credentials: DriftedCredential[] = [];
  for (const c of o.credentials as unknown[]) {
    const x = c as Record<string, unknown> | null;
    if (!x || typeof x !== 'object') return undefined;
    if ((x.credential !== 'current' && x.credential !== 'previous') || !int(x.version)) return undefined;
    if (typeof x.username !== 'string') return undefined;
    credentials.push({ credential: x.credential, version: x.version as number, username: x.username });
  }
  const { version, since, checks } = o as { version: number; since: number; checks: number };
  // A record without `audited` was written once the entry was (by a daemon that wrote it only then).
  return { version, since, checks, credentials, audited: o.audited !== false, stored: true };
}

/** The `detail` of an incident's drift-detected entry names the time of its first refused check so. */
const sinceText = (since: number) => `since ${new Date(since).toISOString()}`;

export class DriftMonitor {
  private readonly watched = new Map<string, Watched>();
  private readonly incidents = new Map<string, Incident>();
  /** Versions refused in an incident that a rotation ended: not drift again while they are still served. */
  private readonly repaired = new Map<string, Set<number>>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** The incidents kept in the state store were read (since this daemon began acting). */
  private loaded = false;
  /** setModel ran: which secrets are watched is known (a kept incident of another secret is over). */
  private modelled = false;

  constructor(private readonly o: DriftOptions) {}

  /** Takes the database secrets whose policy has `verify` (a changed interval starts over from now). */
  setModel(desired: Desired): void {
    const now = this.o.now();
    const keep = new Set<string>();
    for (const [name, { decl }] of desired.secrets) {
      const policy = desired.policies.get(decl.policy)?.decl;
      const intervalMs = policy?.verify !== undefined ? parseDuration(policy.verify) : undefined;
      if (!decl.database || !intervalMs) continue;
      keep.add(name);
      const onDrift = policy!.onDrift ?? 'rotate';
      const prev = this.watched.get(name);
      if (prev && prev.intervalMs === intervalMs) Object.assign(prev, { secret: decl, onDrift });
      else this.watched.set(name, { secret: decl, intervalMs, onDrift, nextAt: now + intervalMs, running: false });
    }
    for (const name of [...this.watched.keys()]) if (!keep.has(name)) this.forget(name);
    this.modelled = true;
    this.arm();
  }

  /** This daemon stopped leading: what it knew of incidents may be stale when it leads again. */
  reset(): void {
    this.incidents.clear();
    this.repaired.clear();
    this.loaded = false;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** The incident going on for a secret, if any (one the secret's rotation ended is over). */
  drift(name: string): DriftView | undefined {
    this.load();
    const i = this.incidents.get(name);
    const w = this.watched.get(name);
    if (!i || !w || !this.current(name, i)) return undefined;
    return { since: i.since, checks: i.checks, credentials: i.credentials, onDrift: w.onDrift, nextCheckAt: w.nextAt };
  }

  /** Checks a secret now (whatever its schedule); resolves when the check and what it started are done. */
  async checkNow(name: string): Promise<void> {
    const w = this.watched.get(name);
    if (w && !w.running) await this.check(name, w);
  }

  private forget(name: string): void {
    this.watched.delete(name);
    this.incidents.delete(name);
    this.repaired.delete(name);
    void this.unstore(name);
  }

  /**
   * Once acting: the incidents the state store keeps (written by this daemon before a restart, or by
   * the daemon that led before) are taken up as they were, audited already.
   */
  private load(): void {
    if (this.loaded || !this.modelled || !this.o.acting()) return;
    this.loaded = true;
    for (const [key, value] of [...this.o.store.entries('drift/')]) {
      const name = key.slice('drift/'.length);
      const repaired = parseRepaired(value);
      const incident = repaired ? undefined : parseIncident(value);
      if (!incident && !repaired)
        this.o.log('warn', 'a drift incident in the state store is not one; deleted', { secret: name });
      if ((!incident && !repaired) || !this.watched.has(name)) {
        void this.unstore(name);
        continue;
      }
      if (repaired) {
        if (!this.repaired.has(name)) this.repaired.set(name, repaired);
        continue;
      }
      if (!incident!.audited) {
        // Written before its audit entry: the crash came after the entry if the log's last one is it.
        const last = this.o.auditedDrift?.(name);
        if (last?.from === incident!.version && last.detail?.includes(sinceText(incident!.since))) {
          incident!.audited = true;
          incident!.stored = false;
        }
      }
      if (!this.incidents.has(name)) this.incidents.set(name, incident!);
    }
  }

  /** Deletes a secret's incident from the state store (only the daemon that acts writes). */
  private async unstore(name: string): Promise<void> {
    if (!this.o.acting() || this.o.store.get(DRIFT_KEY(name)) === undefined) return;
    try {
      await this.o.store.write([{ op: 'delete', key: DRIFT_KEY(name) }]);
    } catch (e) {
      // Kept: read again it is found over (another version served, or a passing check) and deleted then.
      this.o.log('warn', 'a drift incident that ended cannot be deleted from the state store; retried later', {
        secret: name,
        code: (e as { code?: string }).code ?? 'ERROR',
      });
    }
  }

  /** Keeps an incident in the state store as it is now, unless it is already (a failure is the check's). */
  private async persist(name: string, i: Incident): Promise<void> {
    if (i.stored || !this.o.acting()) return;
    const value = {
      version: i.version,
      since: i.since,
      checks: i.checks,
      audited: i.audited,
      credentials: i.credentials.map((c) => ({ credential: c.credential, version: c.version, username: c.username })),
    };
    await this.o.store.write(this.o.withHead([{ op: 'put', key: DRIFT_KEY(name), value }]));
    i.stored = true;
  }

  /** Keeps the versions a rotation repaired (or deletes the record when none is served any more). */
  private async keepRepaired(name: string): Promise<void> {
    const r = this.repaired.get(name);
    if (!r || r.size === 0) return this.unstore(name);
    if (!this.o.acting()) return;
    try {
      await this.o.store.write(this.o.withHead([{ op: 'put', key: DRIFT_KEY(name), value: { repaired: [...r] } }]));
    } catch (e) {
      // Not kept: a restart during the overlap may then take the previous version for new drift.
      this.o.log('warn', 'the versions a drift rotation repaired cannot be kept in the state store', {
        secret: name,
        code: (e as { code?: string }).code ?? 'ERROR',
      });
    }
  }

  /** Whether the incident is still about the version served now; if not, it is over (the secret rotated). */
  private current(name: string, i: Incident): boolean {
    const served = this.o.served(name);
    if (served && served.version === i.version) return true;
    this.incidents.delete(name);
    const r = this.repaired.get(name) ?? new Set<number>();
    for (const c of i.credentials) r.add(c.version);
    this.repaired.set(name, r);
    void this.keepRepaired(name);
    this.o.log('info', 'drift over: the secret was rotated', { secret: name, version: served?.version });
    return false;
  }

  private arm(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const next = Math.min(...[...this.watched.values()].filter((w) => !w.running).map((w) => w.nextAt));
    if (!Number.isFinite(next)) return;
    const delay = Math.min(Math.max(0, next - this.o.now()), 2 ** 31 - 1);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = this.o.now();
      for (const [name, w] of this.watched) if (!w.running && w.nextAt <= now) void this.check(name, w);
      this.arm();
    }, delay);
  }

  private async check(name: string, w: Watched): Promise<void> {
    w.running = true;
    try {
      if (this.o.acting()) await this.checkOnce(name, w);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      driftChannel.publish({ secret: name, failed: typeof code === 'string' ? code : 'ERROR' });
      this.o.log('warn', 'drift check failed; not drift, checked again at the next interval', {
        secret: name,
        code: typeof code === 'string' ? code : 'ERROR',
      });
    } finally {
      w.running = false;
      w.nextAt = this.o.now() + w.intervalMs;
      this.arm();
    }
  }

  private async checkOnce(name: string, w: Watched): Promise<void> {
    // Under the secret's lock: no rotation, retirement or purge of it meanwhile, so what is checked is what is served.
    const seen = await this.o.whenIdle(name, async () => {
      const served = this.o.served(name);
      if (!served || served.username === undefined) return undefined;
      const current = { username: served.username, password: String(served.value) };
      const p = served.previous;
      const previous =
        p && p.username !== undefined && this.o.strategyOf(w.secret) !== 'single'
          ? { username: p.username, password: String(p.value) }
          : undefined;
      const result = await this.o.verify(w.secret, served.version, current, previous, VERIFY_TIMEOUT_MS);
      const checks = result.checks ?? [];
      const asked: CheckedCredential[] = previous ? ['current', 'previous'] : ['current'];
      // A result that does not answer for each credential asked about says nothing (it must not end an incident).
      if (checks.length !== asked.length || !asked.every((a) => checks.some((c) => c.credential === a)))
        throw new RotorError('AGENT_RESULT_INVALID', 'the agent did not report a check for each credential', {
          retry: BACKOFF,
        });
      return { served, checks };
    });
    if (!seen) return; // a rotation is pending: it is what makes the value log in
    const { served, checks } = seen;
    if (this.o.served(name)?.version !== served.version) return; // rotated since: what was checked is no longer served
    this.load();
    // First: an incident the secret's rotation ended is over, and its refused versions are repaired.
    const open = this.incidents.get(name);
    const ongoing = open && this.current(name, open) ? open : undefined;
    const repaired = this.repaired.get(name);
    if (repaired) {
      const still = new Set([served.version, ...(served.previous ? [served.previous.version] : [])]);
      const before = repaired.size;
      for (const v of repaired) if (!still.has(v)) repaired.delete(v);
      if (repaired.size !== before) await this.keepRepaired(name);
      if (repaired.size === 0) this.repaired.delete(name);
    }
    const refused: DriftedCredential[] = [];
    for (const c of checks) {
      const version = c.credential === 'current' ? served.version : served.previous?.version;
      const username = c.credential === 'current' ? served.username : served.previous?.username;
      if (version === undefined || username === undefined) continue;
      if (c.outcome === 'error') this.logError(name, c, version);
      if (c.outcome === 'refused' && !repaired?.has(version))
        refused.push({ credential: c.credential, version, username });
    }
    const count = (o: Check['outcome']) => checks.filter((c) => c.outcome === o).length;
    const tally = { secret: name, ok: count('ok'), refused: refused.length, errors: count('error') };
    if (refused.length === 0) {
      // An incident read back unaudited (a crash before its entry) gets its entry even if it is over now.
      if (ongoing && !ongoing.audited) await this.auditIncident(name, ongoing, w);
      // Only a check without an error ends an incident: an error says nothing about the credential.
      if (ongoing && tally.errors === 0) {
        this.incidents.delete(name);
        await this.unstore(name);
        this.o.log('info', 'drift over: every served credential logs in again', { secret: name });
      }
      driftChannel.publish(tally);
      return;
    }
    const incident = ongoing ?? {
      version: served.version,
      since: this.o.now(),
      credentials: [],
      checks: 0,
      audited: false,
      stored: false,
    };
    incident.checks++;
    for (const c of refused)
      if (!incident.credentials.some((x) => x.version === c.version)) incident.credentials.push(c);
    this.incidents.set(name, incident);
    if (!incident.audited) await this.auditIncident(name, incident, w);
    await this.persist(name, incident);
    driftChannel.publish(tally);
    if (w.onDrift === 'rotate') await this.o.rotate(name, 'the database refused a served credential (drift)');
  }

  /** The incident's one drift-detected entry: kept unaudited in the store first, then audited, then kept so. */
  private async auditIncident(name: string, incident: Incident, w: Watched): Promise<void> {
    // Logged as soon as the status shows it (before any await), then kept, then audited.
    this.o.log('error', 'drift detected: the database refuses a served credential', {
      secret: name,
      versions: incident.credentials.map((c) => c.version).join(','),
      since: new Date(incident.since).toISOString(),
      onDrift: w.onDrift,
    });
    incident.stored = false;
    await this.persist(name, incident);
    const which = incident.credentials.map((c) => `version ${c.version} (${c.credential}, user ${c.username})`);
    await this.o.audit([
      {
        time: new Date(this.o.now()).toISOString(),
        event: 'drift-detected',
        secret: name,
        from: incident.version,
        detail: `${DRIFT_DETECTED}: the database refuses ${which.join(' and ')} ${sinceText(incident.since)}; ${w.onDrift === 'rotate' ? 'rotating now' : 'onDrift: alert, not rotated'}`,
      },
    ]);
    incident.audited = true;
    incident.stored = false;
  }

  private logError(name: string, c: Check, version: number): void {
    this.o.log(
      'warn',
      'drift check could not log in (not drift: the server could not be reached or said something else)',
      {
        secret: name,
        credential: c.credential,
        version,
        code: c.code ?? 'ERROR',
      },
    );
  }
}
