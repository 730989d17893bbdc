/**
 * The daemon: the composition root that wires the parts by hand. It follows the GitOps repository
 * (fetch on the Config's interval and on SIGHUP), applies each new valid commit (an invalid one is
 * recorded and the last good model stays in force, as Flux keeps the last applied revision apart from
 * the last attempted one), runs the rotation engine on a timer, commits the audit log back in batches
 * and pushes it, and answers the admin socket.
 */
import { randomBytes } from 'node:crypto';
import diagnostics_channel from 'node:diagnostics_channel';
import { lstat, mkdir } from 'node:fs/promises';
import type { Server } from 'node:http';
import path from 'node:path';
import { loadKeys } from '../keys.js';
import type { Logger } from '../log.js';
import { loadModel } from '../model/load.js';
import { auditDirShapeProblem } from '../model/audit-path.js';
import { DEFAULT_AUDIT_DIR } from '../model/model.js';
import type { Desired } from '../model/model.js';
import { parseDuration } from '../util/duration.js';
import { defaultStrategy } from '../model/engines.js';
import { GitTreeSource } from '../git/tree.js';
import { runGit } from '../git/run.js';
import { openRepo } from '../git/repo.js';
import type { GitRepo as Repo } from '../git/repo.js';
import { AuditLog, nodeAuditFs, verifyAuditDir } from '../audit/log.js';
import { confineAuditFs } from '../audit/confine.js';
import type { AuditFs } from '../audit/log.js';
import type { AuditEntry } from '../audit/entry.js';
import { AuditError } from '../audit/entry.js';
import { openStore } from '../state/store.js';
import type { StoreFs } from '../state/fs.js';
import type { StateStore } from '../state/types.js';
import { Engine } from '../rotation/engine.js';
import type { AuditEvent, StorageName } from '../rotation/engine.js';
import { AUDIT_HEAD_KEY } from '../rotation/engine.js';
import { listenAdmin } from '../serve/admin.js';
import { consumerHandler } from '../serve/consumer-api.js';
import type { ConsumerBackend, CurrentView } from '../serve/consumer-api.js';
import { ConsumerSockets } from '../serve/consumer-sockets.js';
import { Grants } from '../serve/grants.js';
import { committedAuditHead } from './audit-anchor.js';
import { checkDataDir, lockDataDir } from './lock.js';
import { Receipts } from './receipts.js';
import { AgentHub } from './agents.js';
import { listenAgentApi, type AgentApiLimits } from '../serve/agent-api.js';
import type { ListenerLimits } from '../serve/limits.js';
import { listenMetrics } from '../serve/metrics.js';
import type { DaemonStatus, RecentView } from '../serve/status.js';
import { readSopsValues } from './sops-values.js';

export interface DaemonOptions {
  readonly repo: string;
  readonly branch: string;
  readonly dataDir: string;
  readonly breakGlass: readonly string[];
  readonly log: Logger;
  readonly now?: () => number;
  /** Seconds between audit appends and their commit (batching). */
  readonly commitDelayMs?: number;
  /** HOST:PORT for GET /metrics (Prometheus); none when absent. */
  readonly metricsListen?: string;
  /** Host names the metrics listener also answers to (--metrics-host), besides its own address. */
  readonly metricsHosts?: readonly string[];
  /** Connection and time limits of the metrics listener (tests pass small ones; default METRICS_LIMITS). */
  readonly metricsLimits?: Partial<ListenerLimits>;
  /** Connection, time and body limits of the agent API (tests pass small ones; default AGENT_API_LIMITS). */
  readonly agentApiLimits?: Partial<AgentApiLimits>;
  /** HOST:PORT where agents poll for database jobs (port 0: any free port); none when absent. */
  readonly agentListen?: string;
  /** How long a database step waits for its agent before it fails (AGENT_TIMEOUT) and is retried. */
  readonly agentJobTimeoutMs?: number;
  /** Where the consumer sockets go (SOCKET_DIR/<consumer>.sock); default DATA_DIR/sockets. */
  readonly socketDir?: string;
  /** The file-system layer under the state store (default node:fs); fault-injection runs plug in a failing one. */
  readonly storeFs?: StoreFs;
  /** The file-system layer under the audit log (default node:fs/promises); likewise. */
  readonly auditFs?: AuditFs;
}

interface Revision {
  readonly commit: string;
  readonly at: string;
  readonly problems?: number;
}

const FINGERPRINT_KEY = 'meta/fingerprint-key';

/**
 * `rotor:audit-push`: after each commit-and-push of the audit log, `{ ok: true, pushed }` (commits
 * pushed) or `{ ok: false, code }`. Never a value.
 */
export const auditPushChannel = diagnostics_channel.channel('rotor:audit-push');

export class Daemon implements ConsumerBackend {
  private repo!: Repo;
  private sockets: ConsumerSockets | undefined;
  private hub!: AgentHub;
  private agentApi: Awaited<ReturnType<typeof listenAgentApi>> | undefined;
  private metrics: Awaited<ReturnType<typeof listenMetrics>> | undefined;
  private receipts!: Receipts;
  private grants = new Grants(undefined);
  private readonly waiters = new Map<string, Set<() => void>>();
  /** Consumer API requests by consumer and status. */
  private readonly requests = new Map<string, Map<number, number>>();
  private readonly answers = new Map<string, { version: number; json: string; until: number }>();
  private readonly denials = new Map<string, { lastLog: number; suppressed: number }>();
  private store!: StateStore;
  private audit!: AuditLog;
  private engine!: Engine;
  private admin: Server | undefined;
  private auditDir = 'audit';
  private applied: Revision | undefined;
  private attempted: Revision | undefined;
  /** The remote head last looked at. */
  private seenHead: string | undefined;
  private desired: Desired | undefined;
  private syncMs = 30_000;
  private timers = new Set<NodeJS.Timeout>();
  private wakeTimer: NodeJS.Timeout | undefined;
  private gitQueue: Promise<unknown> = Promise.resolve();
  private commitPending = false;
  /** The last audit commit failed: the next flush commits even when no new entry asked for one. */
  private commitFailed = false;
  private pushFailures = 0;
  /** The code and message of the last failed commit or push of the audit log, while pushes fail. */
  private pushError: { code: string; message: string } | undefined;
  /** Why the clone does not follow the remote head, while that lasts (GIT_AUDIT_PATH_UNSAFE). */
  private held: { commit: string; code: string; message: string } | undefined;
  /** The last rotation outcomes, oldest first (the status page's timeline); names, versions and codes only. */
  private readonly recent: RecentView[] = [];
  private stopped = false;
  private readonly now: () => number;
  private unlock: (() => Promise<void>) | undefined;

  private readonly socketDir: string;
  /** The daemon's age identity: it opens the state store and the SOPS files of `sops:` secrets. */
  private identity = '';

  constructor(private readonly o: DaemonOptions) {
    this.now = o.now ?? Date.now;
    this.socketDir = o.socketDir ?? path.join(o.dataDir, 'sockets');
  }

  /** Opens everything, applies the current commit, and starts the loops. Throws with a clear message when it cannot start. */
  async start(): Promise<void> {
    await checkDataDir(this.o.dataDir);
    const keys = await loadKeys(this.o.dataDir);
    this.unlock = await lockDataDir(this.o.dataDir);
    try {
      await this.open(keys);
    } catch (e) {
      // Close what was opened before the failure, or its listeners would keep the process alive.
      this.hub?.close();
      await this.sockets?.close().catch(() => undefined);
      await this.agentApi?.close().catch(() => undefined);
      await this.metrics?.close().catch(() => undefined);
      await this.store?.close().catch(() => undefined);
      await this.unlock();
      throw e;
    }
  }

  private async open(keys: Awaited<ReturnType<typeof loadKeys>>): Promise<void> {
    const { dataDir, log } = this.o;
    this.identity = keys.identity;
    await mkdir(path.join(dataDir, 'state'), { recursive: true, mode: 0o700 });
    const repoOptions = { url: this.o.repo, dir: path.join(dataDir, 'repo'), branch: this.o.branch, onWarning: (w: { code: string; message: string }) => log('warn', w.message, { code: w.code }) };
    this.repo = await openRepo(repoOptions);
    // Audit entries written just before a crash are durable in the clone but not yet committed:
    // commit them first (under the audit directory the clone's own commit declares).
    const local = await loadModel(new GitTreeSource(this.repo.dir, await this.repo.head(), ''), { now: this.now() });
    const localDir = usableAuditDir(local);
    if (localDir !== 'audit') this.repo = await openRepo({ ...repoOptions, auditDir: localDir });
    if ((await lstat(path.join(this.repo.dir, localDir)).catch(() => undefined))?.isDirectory()) await this.repo.commitAudit([localDir], 'rotor: audit entries written before a restart');
    const synced = await this.repo.sync(); // sync fetches
    const head = synced.remoteHead;
    this.noteHeld(synced);
    const first = await loadModel(new GitTreeSource(this.repo.dir, head, ''), { now: this.now() });
    this.auditDir = first.valid ? first.auditDir : localDir;
    if (this.auditDir !== localDir) this.repo = await openRepo({ ...repoOptions, auditDir: this.auditDir });

    // The audit log anchors the store: it must not be older than the last generation the log records.
    const auditPath = path.join(this.repo.dir, this.auditDir);
    // Every read and write of the log is confined to plain directories of the clone (no link followed).
    const auditFs = await confineAuditFs(this.repo.dir, this.o.auditFs ?? nodeAuditFs);
    const index = newAuditIndex();
    // The remote anchors the clone's log too: its last entry must be there, unchanged. Otherwise entries
    // were removed or changed in the clone (and the commit above took that for entries to push).
    const pushed = await committedAuditHead(this.repo.dir, head, this.auditDir);
    let pushedHash: string | undefined;
    this.audit = await AuditLog.open(auditPath, {
      onEntry: (e) => {
        index.add(e);
        if (e.seq === pushed?.seq) pushedHash = e.hash;
      },
      fs: auditFs,
    });
    if (pushed && pushedHash !== pushed.hash) {
      const where = pushedHash === undefined ? `ends at entry ${this.audit.head.seq}, before entry ${pushed.seq}` : `differs at entry ${pushed.seq}`;
      throw new AuditError(pushedHash === undefined ? 'AUDIT_TRUNCATED' : 'AUDIT_CHAIN_BROKEN', `the audit log ${auditPath} ${where}, which the remote holds (commit ${head}): entries were removed or changed in the clone. Nothing of it was pushed; compare with the remote (git -C ${this.repo.dir} diff ${head} -- ${this.auditDir}) and restore them`);
    }
    this.store = await openStore({
      dir: path.join(dataDir, 'state'),
      ...(this.o.storeFs ? { fs: this.o.storeFs } : {}),
      identity: keys.identity,
      recipients: [keys.recipient, ...this.o.breakGlass],
      ...(index.stateSeq !== undefined ? { anchor: { seq: index.stateSeq, ...(index.storeId ? { storeId: index.storeId } : {}) } } : {}),
      onWarning: (m: string) => log('warn', m),
    });
    // ...and the store anchors the audit log: a log cut back behind what the store saw is refused.
    const auditHead = this.store.get(AUDIT_HEAD_KEY) as { seq: number; hash: string } | undefined;
    if (auditHead) {
      const v = await verifyAuditDir(auditPath, { anchor: auditHead, fs: auditFs });
      if (!v.result.ok) throw Object.assign(new Error(`the audit log ${auditPath} is behind the state store (it ends before entry ${auditHead.seq}, or differs there): ${v.result.message}`), { code: v.result.code });
    }
    let fpKey = this.store.get(FINGERPRINT_KEY);
    if (typeof fpKey !== 'string') {
      fpKey = randomBytes(32).toString('base64');
      await this.store.write([{ op: 'put', key: FINGERPRINT_KEY, value: fpKey }]);
    }
    const audit = this.audit;
    this.hub = new AgentHub({ log, now: this.now, ...(this.o.agentJobTimeoutMs !== undefined ? { jobTimeoutMs: this.o.agentJobTimeoutMs } : {}) });
    const hub = this.hub;
    this.engine = new Engine({
      database: { set: (s, v, p, c) => hub.set(s, v, p, c), retire: (s, v, r, c) => hub.retire(s, v, r, c) },
      store: this.store,
      audit: { append: (events) => this.appendAudit(events), get head() { return audit.head; } },
      audited: index.audited,
      fingerprintKey: Buffer.from(fpKey, 'base64'),
      now: this.now,
      log: (level, message, fields) => log(level, message, fields),
      onChange: (name) => {
        this.notify(name);
        this.rearmSoon();
      },
      readByAll: (name, version) => this.readByAll(name, version),
    });
    this.receipts = new Receipts(this.store, log, this.now);
    this.sockets = new ConsumerSockets({ dir: this.socketDir, log, handler: (consumer) => consumerHandler(consumer, this) });
    await this.sockets.open();
    this.seenHead = head;
    if (this.o.agentListen !== undefined) {
      this.agentApi = await listenAgentApi(this.o.agentListen, { hub: this.hub, signing: keys.signing, log, now: this.now, ...(this.o.agentApiLimits ? { limits: this.o.agentApiLimits } : {}) });
      log('info', 'listening for agents', { address: this.agentApi.address });
    }
    if (this.o.metricsListen !== undefined) {
      this.metrics = await listenMetrics(this.o.metricsListen, this, { hosts: this.o.metricsHosts ?? [], log, ...(this.o.metricsLimits ? { limits: this.o.metricsLimits } : {}) });
      log('info', 'serving metrics', { address: this.metrics.address });
    }
    // An invalid head after a restart: the last commit the audit log says was applied stays in force
    // (consumers keep their sockets, secrets keep rotating), and the head is recorded as rejected.
    if (!first.valid && index.lastApplied && index.lastApplied !== head) {
      const prior = await loadModel(new GitTreeSource(this.repo.dir, index.lastApplied, ''), { now: this.now() }).catch(() => undefined);
      if (prior?.valid) await this.consider(index.lastApplied, prior);
      else log('warn', 'the last applied commit cannot be read again; no declarations are in force until a valid commit arrives', { commit: index.lastApplied });
    }
    await this.consider(head, first);
    this.admin = await listenAdmin(path.join(dataDir, 'admin.sock'), {
      rotate: (name, reason) => this.rotateNow(name, reason),
      status: () => this.status(),
    });
    this.scheduleSync();
    this.rearm();
    log('info', 'daemon started', { repo: this.o.repo, branch: this.o.branch, commit: head, secrets: this.desired?.secrets.size ?? 0 });
  }

  /** Fetches now (SIGHUP), applying a new commit if there is one. */
  syncNow(): Promise<void> {
    return this.serial(async () => {
      await this.commitAudit();
      const synced = await this.repo.sync(); // sync fetches
      this.noteHeld(synced);
      const head = synced.remoteHead;
      if (head === this.seenHead) return;
      const previous = this.seenHead;
      this.seenHead = head;
      // The daemon's own audit commits (and anyone else's that touch only the audit log) change no
      // declaration: the applied model stays as it is. Not so when the clone holds (the audit path
      // itself changed: a link, a file) or the last commit was rejected (this one may mend it).
      const lastWasApplied = this.attempted?.commit === this.applied?.commit;
      if (previous && !synced.held && lastWasApplied && (await this.declarationsUnchanged(previous, head))) return;
      await this.consider(head, await loadModel(new GitTreeSource(this.repo.dir, head, ''), { now: this.now() }));
    })
      .catch((e: unknown) => this.o.log('error', 'sync with the repository failed; will retry', { code: (e as { code?: string }).code ?? 'ERROR' }))
      .finally(() => this.rearm()); // the schedule is looked at again after every sync
  }

  /** Whether nothing but the audit directory differs between two commits. */
  private async declarationsUnchanged(a: string, b: string): Promise<boolean> {
    const r = await runGit(this.repo.dir, ['diff', '--quiet', '--no-ext-diff', '--no-renames', a, b, '--', '.', `:(exclude)${this.auditDir}`]);
    return r.exitCode === 0; // 1: differences; anything else: look at the commit
  }

  /** Notes (and logs, once per commit) that the clone did not take the remote head, or that it does again. */
  private noteHeld(synced: { remoteHead: string; held?: { code: string; message: string } }): void {
    if (!synced.held) {
      if (this.held) this.o.log('info', 'the clone follows the remote again', { commit: synced.remoteHead });
      this.held = undefined;
      return;
    }
    if (this.held?.commit !== synced.remoteHead) this.o.log('error', synced.held.message, { code: synced.held.code, commit: synced.remoteHead });
    this.held = { commit: synced.remoteHead, code: synced.held.code, message: synced.held.message };
  }

  private async consider(commit: string, result: Awaited<ReturnType<typeof loadModel>>): Promise<void> {
    const at = new Date(this.now()).toISOString();
    if (!result.valid) {
      const problems = result.problems.filter((p) => p.severity === 'error').length;
      this.attempted = { commit, at, problems };
      await this.appendAudit([{ time: at, event: 'config-rejected', commit, problems }]);
      this.o.log('error', 'commit rejected: its declarations are invalid; the last good commit stays in force', { commit, problems, applied: this.applied?.commit });
      for (const p of result.problems.slice(0, 20)) this.o.log('warn', 'declaration problem', { commit, file: p.file, line: p.line, col: p.col, code: p.code, problem: p.message });
      return;
    }
    this.attempted = { commit, at };
    this.applied = { commit, at };
    this.desired = result.desired;
    this.grants = new Grants(result.desired);
    this.answers.clear();
    this.hub.setModel(result.desired);
    this.syncMs = parseDuration(result.desired.config?.decl.sync?.interval ?? '30s') ?? 30_000;
    await this.engine.apply(result.desired, commit, await readSopsValues(this.repo.dir, commit, result.desired, this.identity));
    await this.appendAudit([{ time: at, event: 'config-applied', commit }]);
    this.o.log('info', 'commit applied', { commit, secrets: result.desired.secrets.size });
    // New secrets get version 1 and rotate-now requests run before this returns.
    await this.engine.runDue();
    this.receipts.prune((consumer, secret) => result.desired.consumers.has(consumer) && result.desired.secrets.has(secret));
    await this.sockets?.sync([...result.desired.consumers.values()].map(({ decl }) => ({ name: decl.name, uid: decl.uid, ...(decl.gid !== undefined ? { gid: decl.gid } : {}) })));
    for (const name of [...this.waiters.keys()]) this.notify(name); // grants may have changed
    this.rearm();
  }

  /** Appends to the audit log (durable before it resolves) and schedules a commit of the batch. */
  private async appendAudit(events: AuditEvent[]): Promise<void> {
    await this.audit.append(events);
    for (const e of events) keepRecent(this.recent, e);
    if (!this.commitPending) {
      this.commitPending = true;
      this.later(this.o.commitDelayMs ?? 1000, () => void this.serial(() => this.flush()));
    }
  }

  private async commitAudit(): Promise<void> {
    if (!this.commitPending && !this.commitFailed) return;
    this.commitPending = false;
    this.commitFailed = false;
    // A failed commit leaves the entries uncommitted: the retry (flush's backoff) must commit them.
    await this.repo.commitAudit([this.auditDir], 'rotor: audit entries').catch((e: unknown) => {
      this.commitFailed = true;
      throw e;
    });
  }

  /** Commits and pushes the audit entries written since the last flush; retries a failed push with backoff. */
  private async flush(): Promise<void> {
    try {
      await this.commitAudit();
      const pushed = (await this.repo.unpushed()) > 0 ? (await this.repo.push()).pushed.length : 0;
      this.pushFailures = 0;
      this.pushError = undefined;
      if (auditPushChannel.hasSubscribers) auditPushChannel.publish({ ok: true, pushed });
    } catch (e) {
      this.pushFailures++;
      this.pushError = { code: (e as { code?: string }).code ?? 'ERROR', message: e instanceof Error ? e.message : String(e) };
      if (auditPushChannel.hasSubscribers) auditPushChannel.publish({ ok: false, code: this.pushError.code });
      const delay = Math.min(300_000, 1000 * 2 ** this.pushFailures);
      this.o.log('warn', 'audit commit or push failed; the entries are kept and pushed later', { code: (e as { code?: string }).code ?? 'ERROR', retryInMs: delay });
      this.later(delay, () => void this.serial(() => this.flush()));
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.gitQueue.then(fn, fn);
    this.gitQueue = p.catch(() => undefined);
    return p;
  }

  private later(ms: number, fn: () => void): void {
    if (this.stopped) return;
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  private scheduleSync(): void {
    this.later(this.syncMs, () => void this.syncNow().finally(() => this.scheduleSync()));
  }

  private rearmQueued = false;
  /** Re-arms once for a burst of changes (10,000 rotations finishing together ask 10,000 times). */
  private rearmSoon(): void {
    if (this.rearmQueued) return;
    this.rearmQueued = true;
    setImmediate(() => {
      this.rearmQueued = false;
      this.rearm();
    });
  }

  /** Arms the engine's timer for its next due work. */
  private rearm(): void {
    if (this.stopped) return;
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    const next = this.engine.nextWakeup();
    if (next === undefined) return;
    const delay = Math.min(Math.max(0, next - this.now()), 2 ** 31 - 1);
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = undefined;
      void this.engine.runDue().finally(() => this.rearm());
    }, delay);
  }

  /** Rotates a secret now (rotor rotate); requests for a secret whose rotation is running join it. */
  async rotateNow(name: string, reason: string): Promise<{ name: string; version: number }> {
    try {
      await this.engine.rotateNow(name, reason);
    } finally {
      this.rearm(); // a failed rotation's retry (its backoff) needs the timer too
    }
    return { name, version: this.engine.served(name)!.version };
  }

  /** What a consumer may read of a secret now (current, and previous during the overlap). */
  served(name: string) {
    return this.engine.served(name);
  }

  // --- the consumer API's backend (ConsumerBackend) ---

  get running(): boolean {
    return !this.stopped;
  }

  granted(consumer: string, name: string): boolean {
    return this.grants.granted(consumer, name);
  }

  declared(name: string): boolean {
    return this.desired?.secrets.has(name) ?? false;
  }

  readable(consumer: string): { name: string; version?: number }[] {
    return this.grants.readable(consumer).map((name) => {
      const v = this.engine.served(name)?.version;
      return v === undefined ? { name } : { name, version: v };
    });
  }

  version(name: string, version: number) {
    return this.engine.version(name, version);
  }

  /**
   * The consumer API's answer for a secret's current version, serialized once and shared by every
   * reader until the secret changes (dropped in onChange, on a new model, when the previous version's
   * overlap ends, and after a second so that nextRotationAt follows retries).
   */
  current(name: string): { version: number; json: string } | undefined {
    const now = this.now();
    const hit = this.answers.get(name);
    if (hit && now < hit.until) return hit;
    const s = this.engine.served(name);
    if (!s) {
      this.answers.delete(name);
      return undefined;
    }
    const next = this.engine.dueAt(name);
    const view: CurrentView = {
      name, version: s.version, value: s.value, ...(s.username !== undefined ? { username: s.username } : {}), rotatedAt: s.rotatedAt,
      nextRotationAt: next === undefined ? null : new Date(next).toISOString(),
      ...(s.previous ? { previous: s.previous } : {}),
    };
    const until = Math.min(now + 1000, s.previous ? Date.parse(s.previous.validUntil) : Infinity);
    const answer = { version: s.version, json: JSON.stringify(view), until };
    if (this.answers.size > 100_000) this.answers.clear();
    this.answers.set(name, answer);
    return answer;
  }

  changed(name: string, ms: number): { promise: Promise<void>; cancel: () => void } {
    let set = this.waiters.get(name);
    if (!set) this.waiters.set(name, (set = new Set()));
    let wake!: () => void;
    const promise = new Promise<void>((resolve) => (wake = resolve));
    const timer = setTimeout(wake, ms);
    set.add(wake);
    const waiters = set;
    return {
      promise,
      cancel: () => {
        clearTimeout(timer);
        waiters.delete(wake);
        if (waiters.size === 0 && this.waiters.get(name) === waiters) this.waiters.delete(name);
      },
    };
  }

  private notify(name: string): void {
    this.answers.delete(name);
    for (const wake of this.waiters.get(name) ?? []) wake();
  }

  receipt(consumer: string, name: string, version: number): void {
    // A consumer now on a newer version may complete a retireAfter: consumers secret.
    if (this.receipts.record(consumer, name, version)) this.rearmSoon();
  }

  private readByAll(name: string, version: number): boolean | undefined {
    const consumers = this.grants.consumersOf(name);
    if (consumers.length === 0) return undefined;
    return consumers.every((c) => (this.receipts.get(c, name)?.version ?? 0) >= version);
  }

  observe(consumer: string, status: number, code?: string, name?: string): void {
    let counts = this.requests.get(consumer);
    if (!counts) this.requests.set(consumer, (counts = new Map()));
    counts.set(status, (counts.get(status) ?? 0) + 1);
    if (status !== 403) return;
    // Refusals are logged (never a value), at most one line per consumer every 10 s with a count of the rest.
    const now = this.now();
    const d = this.denials.get(consumer) ?? { lastLog: -Infinity, suppressed: 0 };
    if (now - d.lastLog >= 10_000) {
      this.o.log('warn', 'consumer asked for a secret it is not granted', { consumer, secret: name, code, alsoRefusedSinceLastLine: d.suppressed });
      this.denials.set(consumer, { lastLog: now, suppressed: 0 });
    } else {
      this.denials.set(consumer, { lastLog: d.lastLog, suppressed: d.suppressed + 1 });
    }
  }

  status(): DaemonStatus {
    const secrets = this.engine.status().map((s) => {
      const consumers = this.grants.consumersOf(s.name).map((c) => {
        const r = this.receipts.get(c, s.name);
        return { name: c, ...(r ? { version: r.version, readAt: r.at } : {}), behind: s.version !== undefined && (r?.version ?? 0) < s.version };
      });
      const decl = this.desired?.secrets.get(s.name)?.decl;
      const policy = decl ? this.desired?.policies.get(decl.policy)?.decl : undefined;
      const target = decl?.database ? this.desired?.targets.get(decl.database.target)?.decl : undefined;
      const maxAge = policy?.maxAge ? parseDuration(policy.maxAge) : undefined;
      const age = s.rotatedAt ? this.now() - Date.parse(s.rotatedAt) : undefined;
      const overdue = (maxAge !== undefined && age !== undefined && age > maxAge) || (s.nextRotationAt !== undefined && s.version !== undefined && this.now() - s.nextRotationAt > 3600_000);
      return {
        ...s,
        policy: decl?.policy,
        source: decl?.database ? 'database' : decl?.sops ? 'sops' : decl?.fields ? 'fields' : 'generate',
        ...(target ? { target: target.name, engine: target.engine, strategy: decl!.database!.strategy ?? defaultStrategy(target.engine) } : {}),
        overdue,
        consumers,
      };
    });
    const requests: { consumer: string; status: number; count: number }[] = [];
    for (const [consumer, counts] of this.requests) for (const [status, count] of counts) requests.push({ consumer, status, count });
    return {
      config: { applied: this.applied, attempted: this.attempted, ...(this.held ? { held: this.held } : {}) },
      secrets,
      sockets: { dir: this.socketDir, consumers: this.sockets?.names() ?? [], requests },
      agents: { listen: this.agentApi?.address, agents: this.hub.lastSeen().map((a) => ({ name: a.name, queued: a.queued, ...(a.lastSeen !== undefined ? { lastSeen: new Date(a.lastSeen).toISOString() } : {}) })) },
      store: { seq: this.store.seq, storeId: this.store.storeId, ...this.storageStatus('state store') },
      audit: { commitPending: this.commitPending, pushFailures: this.pushFailures, ...(this.pushError ? { pushError: this.pushError } : {}), ...this.storageStatus('audit log') },
      recent: [...this.recent],
      now: new Date(this.now()).toISOString(),
    };
  }

  /** `failing`: why the audit log or the state store cannot be written (rotations wait), while that lasts. */
  private storageStatus(what: StorageName): { failing?: { code: string; errno?: string; message: string; since: string; attempts: number; retryAt: string } } {
    const f = this.engine.storageFailure(what);
    if (!f) return {};
    return { failing: { code: f.code, ...(f.errno ? { errno: f.errno } : {}), message: f.message, since: new Date(f.since).toISOString(), attempts: f.attempts, retryAt: new Date(f.retryAt).toISOString() } };
  }

  /** The address of the metrics listener, when there is one. */
  get metricsAddress(): string | undefined {
    return this.metrics?.address;
  }

  /** The address agents reach the daemon on (HOST:PORT), when it listens for them. */
  get agentAddress(): string | undefined {
    return this.agentApi?.address;
  }

  /** Stops the loops, finishes running work, commits and pushes what is left (bounded), closes the store. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.wakeTimer) clearTimeout(this.wakeTimer);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const name of [...this.waiters.keys()]) this.notify(name);
    this.hub?.close();
    await this.agentApi?.close();
    await this.metrics?.close();
    await this.sockets?.close();
    await new Promise<void>((resolve) => (this.admin ? this.admin.close(() => resolve()) : resolve()));
    await this.receipts?.flush().catch(() => undefined);
    await this.serial(() => this.flush()).catch(() => undefined);
    // A full snapshot on the way out: what an operator opens offline with age -d is then complete.
    await this.store?.compact().catch((e: unknown) => this.o.log('warn', 'state compaction on stop failed', { code: (e as { code?: string }).code ?? 'ERROR' }));
    await this.store?.close();
    await this.unlock?.();
  }
}

/** The audit directory a model names, when it can be one; else the default (its commit is rejected anyway). */
function usableAuditDir(m: { valid: boolean; auditDir: string }): string {
  return m.valid || auditDirShapeProblem(m.auditDir) === undefined ? m.auditDir : DEFAULT_AUDIT_DIR;
}

/** What the audit log says at start: the last version made current per secret, and the store's anchor. */
function newAuditIndex() {
  const index = {
    audited: new Map<string, number>(),
    stateSeq: undefined as number | undefined,
    storeId: undefined as string | undefined,
    /** The commit of the last config-applied entry. */
    lastApplied: undefined as string | undefined,
    add(e: AuditEntry) {
      if (e.event === 'config-applied' && e.commit) index.lastApplied = e.commit;
      if ((e.event === 'created' || e.event === 'rotated') && e.secret && e.to !== undefined) index.audited.set(e.secret, e.to);
      if (e.event === 'purged' && e.secret) index.audited.delete(e.secret);
      if (e.stateSeq !== undefined) index.stateSeq = Math.max(index.stateSeq ?? 0, e.stateSeq);
      if (e.storeId !== undefined) index.storeId = e.storeId;
    },
  };
  return index;
}

const RECENT_MAX = 200;

/** Keeps the last RECENT_MAX rotation outcomes in `ring` (other audit events are not outcomes). */
function keepRecent(ring: RecentView[], e: AuditEvent): void {
  if (!e.secret || (e.event !== 'created' && e.event !== 'rotated' && e.event !== 'retired' && e.event !== 'rotation-failed')) return;
  const error = e.event === 'rotation-failed' ? /^([A-Z][A-Z0-9_]*):/.exec(e.detail ?? '')?.[1] : undefined;
  ring.push({
    time: e.time, secret: e.secret, event: e.event,
    ...(e.from !== undefined ? { from: e.from } : {}), ...(e.to !== undefined ? { to: e.to } : {}),
    ...(e.trigger !== undefined ? { trigger: e.trigger } : {}), ...(e.reason !== undefined ? { reason: e.reason } : {}),
    ...(error !== undefined ? { error } : {}),
  });
  if (ring.length > RECENT_MAX) ring.splice(0, ring.length - RECENT_MAX);
}
