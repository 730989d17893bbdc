/**
 * The daemon: the composition root that wires the parts by hand. It follows the GitOps repository
 * (fetch on the Config's interval and on SIGHUP), applies each new valid commit (an invalid one is
 * recorded and the last good model stays in force, as Flux keeps the last applied revision apart from
 * the last attempted one), runs the rotation engine on a timer, commits the audit log back in batches
 * and pushes it, and answers the admin socket.
 *
 * The parts: sync.ts follows the repository and applies commits, audit-publisher.ts commits and
 * pushes the audit log, serve/consumer-service.ts answers the consumer sockets, status.ts builds the
 * status snapshot; this file opens them in order and wires them together.
 */
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import type { Server } from 'node:http';
import path from 'node:path';
import type { AuditEntry } from '../audit/entry.js';
import { AuditError } from '../audit/entry.js';
import type { AuditFs } from '../audit/log.js';
import { AuditLog, verifyAuditDir } from '../audit/log.js';
import { PgAuditLog } from '../audit/pg-log.js';
import { NEVER, RotorError } from '../errors.js';
import type { GitRepo as Repo } from '../git/repo.js';
import { loadKeys } from '../keys.js';
import type { Logger } from '../log.js';
import type { Desired } from '../model/model.js';
import { Notify } from '../notify/index.js';
import { DriftMonitor } from '../rotation/drift.js';
import type { AuditEvent } from '../rotation/engine.js';
import { AUDIT_HEAD_KEY, Engine } from '../rotation/engine.js';
import { listenAdmin } from '../serve/admin.js';
import { type AgentApiLimits, type AgentApiListener, listenAgentApi } from '../serve/agent-api.js';
import { consumerHandler } from '../serve/consumer-api.js';
import { ConsumerService } from '../serve/consumer-service.js';
import { ConsumerSockets } from '../serve/consumer-sockets.js';
import { accessOf } from '../serve/grants.js';
import type { ListenerLimits, ListenerTls } from '../serve/limits.js';
import { listenMetrics } from '../serve/metrics.js';
import type { DaemonStatus, RecentView } from '../serve/status.js';
import type { StateStore, StoreBackend, StoreFs } from '../state/index.js';
import { fileStoreBackend } from '../state/index.js';
import { PgStore } from '../state/pg-store.js';
import { StateError } from '../state/types.js';
import { SerialQueue } from '../util/serial.js';
import { AgentValues } from './agent-values.js';
import { AgentHub } from './agents.js';
import type { AuditIndex } from './audit-clone.js';
import { openClones } from './audit-clone.js';
import { mirrorAudit, seedAudit } from './audit-mirror.js';
import { AuditPublisher } from './audit-publisher.js';
import { AuditSigning } from './audit-signing.js';
import type { LeaseTimings } from './cluster.js';
import { Cluster } from './cluster.js';
import { defaultDaemonName } from './leadership.js';
import { checkDataDir, lockDataDir } from './lock.js';
import { Receipts } from './receipts.js';
import { readSopsValues } from './sops-values.js';
import { daemonStatus, keepRecent } from './status.js';
import { RepoSync } from './sync.js';
import { Timers } from './timers.js';

export { auditPushChannel } from './audit-publisher.js';

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
  /** The agent API's certificate and key, PEM (--agent-tls-cert, --agent-tls-key, read by readAgentTls): HTTPS; plain HTTP without. */
  readonly agentTls?: ListenerTls;
  /** How long a database step waits for its agent before it fails (AGENT_TIMEOUT) and is retried. */
  readonly agentJobTimeoutMs?: number;
  /** Where the consumer sockets go (SOCKET_DIR/<consumer>.sock); default DATA_DIR/sockets. */
  readonly socketDir?: string;
  /** The file-system layer under the state store (default node:fs); fault-injection runs plug in a failing one. */
  readonly storeFs?: StoreFs;
  /** Where the state store lives (rotor daemon --state: PostgreSQL); default the file store in DATA_DIR/state. */
  readonly stateBackend?: StoreBackend;
  /** The file-system layer under the audit log (default node:fs/promises); likewise. */
  readonly auditFs?: AuditFs;
  /** Several daemons on a PostgreSQL store: this daemon's name as the others show it (default: the host name). */
  readonly name?: string;
  /** The agent API's URL as agents reach it (--agent-url), shown to the other daemons and to agents. */
  readonly agentUrl?: string;
  /** The lease's timings (tests shorten them). */
  readonly leaseTimings?: Partial<LeaseTimings>;
  /** The author and committer of the audit commits (--committer); default rotor <rotor@localhost>. */
  readonly committer?: { readonly name: string; readonly email: string };
}

const FINGERPRINT_KEY = 'meta/fingerprint-key';

export class Daemon {
  private repo!: Repo;
  private sockets: ConsumerSockets | undefined;
  private hub!: AgentHub;
  private agentValues!: AgentValues;
  private agentApi: AgentApiListener | undefined;
  private metrics: Awaited<ReturnType<typeof listenMetrics>> | undefined;
  private receipts!: Receipts;
  private consumers!: ConsumerService;
  private store!: StateStore;
  private audit!: AuditLog;
  /** Several daemons on a PostgreSQL store: the election and following, and the audit chain in the database. */
  private cluster: Cluster | undefined;
  private dbAudit: PgAuditLog | undefined;
  /** The clone the audit log is committed in, the log's directory there, and its confined file system. */
  private auditRepo!: Repo;
  private auditPath = '';
  private auditFsConfined!: AuditFs;
  /** The files must be put back at the remote's before the next mirror (this daemon just started leading). */
  private mirrorStale = true;
  /** What the last applied commit put in force (a daemon that starts leading applies it as leader). */
  private applied: { desired: Desired; commit: string; at: string } | undefined;
  private auditIndex!: AuditIndex;
  /** Webhooks (Config.notify): fed the audit entries as they are appended; sends off the rotation path. */
  private notify: Notify | undefined;
  private publisher!: AuditPublisher;
  private engine!: Engine;
  private drift!: DriftMonitor;
  private admin: Server | undefined;
  private auditDir = 'audit';
  /** The Config's audit.branch at start: the log is committed and pushed there, not beside the declarations. */
  private auditBranch: string | undefined;
  private auditSigning: AuditSigning | undefined;
  private desired: Desired | undefined;
  private readonly sync: RepoSync;
  /** Git operations (sync, audit commit and push) run one at a time. */
  private readonly gitQueue = new SerialQueue();
  private readonly timers = new Timers();
  private wakeTimer: NodeJS.Timeout | undefined;
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
    this.sync = new RepoSync({
      repo: () => this.repo,
      auditDir: () => this.auditDir,
      queue: this.gitQueue,
      timers: this.timers,
      log: o.log,
      now: this.now,
      beforeFetch: () => this.publisher.commit(),
      // Recorded by the daemon that acts (a follower's leader records the same rejection).
      rejected: (commit, at, problems) =>
        this.acting()
          ? this.appendAudit([{ time: at, event: 'config-rejected', commit, problems }])
          : Promise.resolve(),
      apply: (desired, commit, at) => this.apply(desired, commit, at),
      afterSync: () => this.rearm(), // the schedule is looked at again after every sync
    });
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
      await this.notify?.close().catch(() => undefined);
      await this.store?.close().catch(() => undefined);
      await this.unlock();
      throw e;
    }
  }

  private async open(keys: Awaited<ReturnType<typeof loadKeys>>): Promise<void> {
    const { dataDir, log } = this.o;
    this.identity = keys.identity;
    if (!this.o.stateBackend) await mkdir(path.join(dataDir, 'state'), { recursive: true, mode: 0o700 });
    this.auditSigning = new AuditSigning(keys.signing, log);
    const opened = await openClones({
      repo: this.o.repo,
      branch: this.o.branch,
      dataDir,
      log,
      ...(this.o.auditFs ? { auditFs: this.o.auditFs } : {}),
      sync: this.sync,
      onRepo: (repo) => (this.repo = repo),
      ...(this.o.stateBackend?.shared ? { shared: true } : {}),
      signing: this.auditSigning,
      ...(this.o.committer ? { author: this.o.committer } : {}),
    });
    const { auditRepo, head, first, auditPath, auditFs, index } = opened;
    this.repo = opened.repo;
    this.auditDir = opened.auditDir;
    this.auditBranch = opened.auditBranch;
    this.audit = opened.audit;
    this.auditRepo = auditRepo;
    this.auditPath = auditPath;
    this.auditFsConfined = auditFs;
    const stateDir = path.join(dataDir, 'state');
    const stateBackend =
      this.o.stateBackend ?? fileStoreBackend({ dir: stateDir, ...(this.o.storeFs ? { fs: this.o.storeFs } : {}) });
    this.store = await stateBackend.open({
      identity: keys.identity,
      recipients: [keys.recipient, ...this.o.breakGlass],
      ...(index.stateSeq !== undefined
        ? { anchor: { seq: index.stateSeq, ...(index.storeId ? { storeId: index.storeId } : {}) } }
        : {}),
      onWarning: (m: string) => log('warn', m),
    });
    this.auditIndex = index;
    if (this.store instanceof PgStore) await this.openCluster(this.store, index);
    // ...and the store anchors the audit log: a log cut back behind what the store saw is refused.
    const auditHead = this.store.get(AUDIT_HEAD_KEY) as { seq: number; hash: string } | undefined;
    if (auditHead && !this.cluster) {
      const v = await verifyAuditDir(auditPath, { anchor: auditHead, fs: auditFs });
      if (!v.result.ok) {
        const behind = `it ends before entry ${auditHead.seq}, or differs there`;
        const message = `the audit log ${auditPath} is behind the state store (${behind}): ${v.result.message}`;
        throw new AuditError(v.result.code, message);
      }
    }
    if (!this.cluster) await this.ensureFingerprintKey();
    const store = this.store;
    const fingerprintKey = () => Buffer.from(store.get(FINGERPRINT_KEY) as string, 'base64');
    const audit = this.dbAudit ?? this.audit;
    const dbAudit = this.dbAudit;
    this.publisher = new AuditPublisher({
      audit,
      ...(dbAudit
        ? {
            mirror: () => this.mirrorAudit(),
            active: () => this.acting(),
            // A push that met another leader's commits (or any failure): the files are put back at the
            // remote's and written again from the database, which holds every entry.
            onFailure: () => {
              this.mirrorStale = true;
            },
          }
        : {}),
      repo: auditRepo,
      auditDir: this.auditDir,
      ...(this.auditBranch !== undefined ? { branch: this.auditBranch } : {}),
      queue: this.gitQueue,
      timers: this.timers,
      log,
      commitDelayMs: this.o.commitDelayMs ?? 1000,
      onAppended: (events) => {
        for (const e of events) keepRecent(this.recent, e);
        this.notify?.audited(events);
      },
    });
    this.hub = new AgentHub({
      log,
      now: this.now,
      ...(this.o.agentJobTimeoutMs !== undefined ? { jobTimeoutMs: this.o.agentJobTimeoutMs } : {}),
      leading: () => this.acting(),
    });
    const hub = this.hub;
    const cluster = this.cluster;
    this.receipts = new Receipts(this.store, log, this.now, {
      ...(cluster
        ? {
            persist: (ops) =>
              cluster.isLeader()
                ? this.store.write(ops).then(() => undefined)
                : cluster.putReceipts(
                    ops.flatMap((op) => {
                      if (op.op !== 'put') return []; // the leader prunes
                      const [consumer, secret] = [op.key.split('/')[1]!, op.key.split('/').slice(2).join('/')];
                      const r = op.value as unknown as { version: number; at: string };
                      return [{ consumer, secret, version: r.version, at: r.at }];
                    }),
                  ),
          }
        : {}),
    });
    this.engine = new Engine({
      database: { set: (s, v, p, c) => hub.set(s, v, p, c), retire: (s, v, r, c) => hub.retire(s, v, r, c) },
      store: this.store,
      audit: {
        append: (events) => this.appendAudit(events),
        get head() {
          return audit.head;
        },
      },
      audited: index.audited,
      fingerprintKey,
      now: this.now,
      log: (level, message, fields) => log(level, message, fields),
      onChange: (name) => {
        this.consumers.notify(name);
        this.agentValues.changed(name);
        this.rearmSoon();
      },
      readByAll: (name, version) => this.consumers.readByAll(name, version),
    });
    const engine = this.engine;
    this.drift = new DriftMonitor({
      now: this.now,
      log,
      acting: () => this.acting() && !this.stopped,
      audit: (events) => this.appendAudit(events),
      served: (name) => engine.served(name),
      whenIdle: (name, fn) => engine.whenIdle(name, fn),
      verify: (s, v, c, p, ms) => hub.verify(s, v, c, p, ms),
      strategyOf: (s) => hub.strategyOf(s),
      rotate: (name, reason) => engine.rotateOnDrift(name, reason).finally(() => this.rearm()),
      store: this.store,
      withHead: (ops) => [
        ...ops,
        { op: 'put', key: AUDIT_HEAD_KEY, value: { seq: audit.head.seq, hash: audit.head.hash } },
      ],
      auditedDrift: (name) => this.auditIndex.lastDrift.get(name),
    });
    this.notify = await Notify.open({
      dataDir,
      log,
      now: this.now,
      daemon: this.o.name ?? defaultDaemonName(),
      active: () => this.acting(),
      served: (s) => engine.served(s),
      commit: () => this.applied?.commit,
      status: () => this.status(),
      auditSeq: () => audit.head.seq,
      auditTail: index.notifyTail.splice(0),
    });
    this.consumers = new ConsumerService({
      source: this.engine,
      receipts: this.receipts,
      log,
      now: this.now,
      running: () => !this.stopped,
      onNewer: () => this.rearmSoon(),
    });
    const consumers = this.consumers;
    this.agentValues = new AgentValues({ engine: this.engine, consumers, log });
    this.sockets = new ConsumerSockets({
      dir: this.socketDir,
      log,
      handler: (consumer) => consumerHandler(consumer, consumers),
    });
    await this.sockets.open();
    this.sync.startAt(head);
    if (this.o.agentListen !== undefined) {
      this.agentApi = await listenAgentApi(this.o.agentListen, {
        hub: this.hub,
        values: this.agentValues,
        signing: keys.signing,
        log,
        now: this.now,
        ...(this.o.agentApiLimits ? { limits: this.o.agentApiLimits } : {}),
        ...(this.o.agentTls ? { tls: this.o.agentTls } : {}),
        // Several daemons: a follower sends agents asking for jobs to the leader.
        ...(this.cluster
          ? {
              leader: () => {
                const url = this.cluster?.leadership.leaderAgentUrl();
                return { leading: this.acting(), ...(url !== undefined ? { leader: url } : {}) };
              },
            }
          : {}),
      });
      // The pin is public (a hash of the public key): logged so that agents' tls.pin can be copied from here.
      const { address, pin } = this.agentApi;
      log('info', 'listening for agents', { address, ...(pin !== undefined ? { tls: true, pin } : {}) });
    }
    if (this.o.metricsListen !== undefined) {
      this.metrics = await listenMetrics(this.o.metricsListen, this, {
        hosts: this.o.metricsHosts ?? [],
        log,
        ...(this.o.metricsLimits ? { limits: this.o.metricsLimits } : {}),
      });
      log('info', 'serving metrics', { address: this.metrics.address });
    }
    // An invalid head after a restart: the last commit the audit log says was applied stays in force
    // (consumers keep their sockets, secrets keep rotating), and the head is recorded as rejected.
    if (!first.valid && index.lastApplied && index.lastApplied !== head) {
      const prior = await this.sync.load(index.lastApplied).catch(() => undefined);
      if (prior?.valid) await this.sync.consider(index.lastApplied, prior);
      else
        log(
          'warn',
          'the last applied commit cannot be read again; no declarations are in force until a valid commit arrives',
          { commit: index.lastApplied },
        );
    }
    // The first daemon on a store leads before it applies anything; the others follow from here.
    if (this.cluster) await this.cluster.first();
    await this.sync.consider(head, first);
    this.cluster?.start();
    this.admin = await listenAdmin(path.join(dataDir, 'admin.sock'), {
      rotate: (name, reason) => this.rotateNow(name, reason),
      status: () => this.status(),
    });
    this.sync.schedule();
    this.rearm();
    log('info', 'daemon started', {
      repo: this.o.repo,
      branch: this.o.branch,
      commit: head,
      secrets: this.desired?.secrets.size ?? 0,
    });
  }

  /** Fetches now (SIGHUP), applying a new commit if there is one. */
  syncNow(): Promise<void> {
    return this.sync.syncNow();
  }

  /** Puts a valid commit's declarations in force (RepoSync.consider calls it). */
  private async apply(desired: Desired, commit: string, at: string): Promise<void> {
    this.desired = desired;
    this.auditSigning?.follow(desired.config?.decl); // audit.sign from the next audit commit on
    this.applied = { desired, commit, at };
    this.notify?.setEndpoints(desired.config?.decl.notify);
    this.consumers.setModel(accessOf(desired));
    this.hub.setModel(desired);
    this.agentValues.setModel(desired);
    this.drift.setModel(desired);
    const manual = await readSopsValues(this.repo.dir, commit, desired, this.identity);
    if (this.acting()) await this.applyAsLeader(desired, commit, at, manual);
    else {
      // A follower: the leader writes what the commit changes; this daemon serves with it.
      this.engine.setModel(desired, commit, manual);
      this.o.log('info', 'commit applied (following: the leader rotates)', { commit, secrets: desired.secrets.size });
    }
    // A consumer that names an agent is served by that agent on its own host, not here.
    const specs = [...desired.consumers.values()]
      .filter(({ decl }) => decl.agent === undefined)
      .map(({ decl }) => ({ name: decl.name, uid: decl.uid, ...(decl.gid !== undefined ? { gid: decl.gid } : {}) }));
    await this.sockets?.sync(specs);
    this.consumers.notifyAll(); // grants may have changed
    this.rearm();
  }

  /** The writes a commit calls for: new secrets, removed ones, SOPS values; done by the one daemon that acts. */
  private async applyAsLeader(
    desired: Desired,
    commit: string,
    at: string,
    manual: Awaited<ReturnType<typeof readSopsValues>>,
  ): Promise<void> {
    await this.engine.apply(desired, commit, manual);
    await this.appendAudit([{ time: at, event: 'config-applied', commit }]);
    this.o.log('info', 'commit applied', { commit, secrets: desired.secrets.size });
    // New secrets get version 1 and rotate-now requests run before this returns.
    await this.engine.runDue();
    this.receipts.prune((consumer, secret) => desired.consumers.has(consumer) && desired.secrets.has(secret));
  }

  /** Whether this daemon acts (rotates, writes, hands out jobs, pushes): always, unless another daemon leads. */
  private acting(): boolean {
    return !this.cluster || (this.leadReady && this.cluster.isLeader());
  }

  /** It leads and has caught up (lead() done): before that its timers and requests wait. */
  private leadReady = false;

  private async ensureFingerprintKey(): Promise<void> {
    if (typeof this.store.get(FINGERPRINT_KEY) !== 'string')
      await this.store.write([{ op: 'put', key: FINGERPRINT_KEY, value: randomBytes(32).toString('base64') }]);
  }

  /** Several daemons on a PostgreSQL store: the election, LISTEN, and the audit chain in the database. */
  private async openCluster(store: PgStore, index: AuditIndex): Promise<void> {
    const { log } = this.o;
    const cluster = new Cluster({
      store,
      log,
      ...(this.o.name !== undefined ? { name: this.o.name } : {}),
      ...(this.o.leaseTimings ? { timings: this.o.leaseTimings } : {}),
      agentUrl: () => this.agentUrl(),
      onLead: (term) => this.lead(term),
      onFollow: () => {
        this.leadReady = false;
        if (this.wakeTimer) clearTimeout(this.wakeTimer);
        this.wakeTimer = undefined;
        this.hub?.depose();
        this.drift?.reset();
      },
      onState: (keys, entries) => this.followed(keys, entries),
      onReceipts: () => void this.foldReceipts(),
    });
    this.cluster = cluster;
    store.share(cluster.fence());
    // The store anchors the chain: the chain in the database must reach the head the store recorded.
    const auditHead = store.get(AUDIT_HEAD_KEY) as { seq: number; hash: string } | undefined;
    let hashThere: string | undefined;
    const ctx = store.context;
    this.dbAudit = await PgAuditLog.open(
      {
        pool: ctx.pool,
        t: ctx.t,
        place: ctx.place,
        fence: cluster.fence(),
        term: () => cluster.leadership.currentTerm(),
        warn: (m) => log('warn', m),
      },
      (e) => {
        index.add(e);
        if (e.seq === auditHead?.seq) hashThere = e.hash;
      },
    );
    cluster.setAudit(this.dbAudit);
    if (auditHead && hashThere !== undefined && hashThere !== auditHead.hash)
      throw new AuditError(
        'AUDIT_CHAIN_BROKEN',
        `the audit chain in ${store.context.place} differs at entry ${auditHead.seq} from what the state store recorded`,
      );
    if (auditHead && this.dbAudit.head.seq < auditHead.seq)
      throw new AuditError(
        'AUDIT_TRUNCATED',
        `the audit chain in ${store.context.place} ends at entry ${this.dbAudit.head.seq}, before entry ${auditHead.seq} which the state store recorded`,
      );
  }

  /**
   * The leader writes the database's chain into the clone's files before each commit. Once per
   * leadership it first puts the clone back at the remote's (what it may have committed before, while
   * leading earlier, is in the database, and another leader may have pushed since).
   */
  private async mirrorAudit(): Promise<void> {
    if (this.mirrorStale) {
      await this.auditRepo.resetToRemote();
      this.audit = await AuditLog.open(this.auditPath, { fs: this.auditFsConfined });
      this.mirrorStale = false;
    }
    await mirrorAudit(this.dbAudit!, this.audit);
  }

  /** The agent API's URL as agents reach it. */
  private agentUrl(): string | undefined {
    if (this.o.agentUrl !== undefined) return this.o.agentUrl;
    const a = this.agentApi;
    return a ? `${a.pin !== undefined ? 'https' : 'http'}://${a.address}` : undefined;
  }

  /** This daemon took the lease: it catches up with the database, then acts. */
  private async lead(term: number): Promise<void> {
    const cluster = this.cluster!;
    await cluster.catchUp();
    // The audit chain names the store's generation at each entry: a store read behind the last of them
    // would make this daemon rotate from an old view (a version made twice). Read again; refuse if still.
    if ((this.auditIndex.stateSeq ?? 0) > this.store.seq) await cluster.catchUp();
    const named = this.auditIndex.stateSeq ?? 0;
    if (named > this.store.seq)
      throw new StateError(
        'STATE_ROLLBACK',
        `the state store read at generation ${this.store.seq} is behind generation ${named}, which the audit chain in the database names: not leading from it`,
      );
    await (this.store as PgStore).resume();
    await this.dbAudit!.resume();
    // A daemon moving onto PostgreSQL: the chain goes on from the file log's entries.
    if (this.dbAudit!.head.seq === 0 && this.audit.head.seq > 0)
      await seedAudit(this.dbAudit!, this.auditPath, this.auditFsConfined);
    this.mirrorStale = true;
    await this.ensureFingerprintKey();
    this.engine?.forgetFailures();
    this.o.log('info', 'leading: rotations run here now', { term, seq: this.store.seq });
    this.leadReady = true;
    if (this.applied && this.engine) {
      const { desired, commit, at } = this.applied;
      await this.applyAsLeader(
        desired,
        commit,
        at,
        await readSopsValues(this.repo.dir, commit, desired, this.identity),
      );
      await this.foldReceipts();
      void this.publisher.publish();
    }
    this.rearm();
  }

  /** A follower caught up: consumers waiting for a newer version are answered, the index follows the chain. */
  private followed(keys: readonly string[], entries: readonly AuditEntry[]): void {
    for (const e of entries) {
      this.auditIndex.add(e);
      keepRecent(this.recent, e as unknown as AuditEvent);
    }
    for (const key of keys) {
      if (key.startsWith('secret/')) {
        const name = key.slice('secret/'.length);
        this.consumers?.notify(name);
        this.agentValues?.changed(name);
      } else if (key.startsWith('receipt/')) this.receipts?.reload(key);
    }
  }

  /** The leader folds the receipts followers stored into its own (and the store). */
  private async foldReceipts(): Promise<void> {
    if (!this.cluster?.isLeader()) return;
    try {
      let newer = false;
      for (const r of await this.cluster.readReceipts())
        if (this.receipts.record(r.consumer, r.secret, r.version, r.at)) newer = true;
      if (newer) this.rearmSoon();
    } catch (e) {
      this.o.log('warn', "the followers' read receipts cannot be read; retried at the next one", {
        code: (e as { code?: string }).code ?? 'ERROR',
      });
    }
  }

  /** Appends to the audit log (durable before it resolves) and schedules a commit of the batch. */
  private appendAudit(events: AuditEvent[]): Promise<void> {
    return this.publisher.append(events);
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
    if (this.stopped || !this.acting()) return;
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
    if (!this.acting()) {
      const leader = this.cluster?.view().leader;
      throw new RotorError(
        'NOT_LEADER',
        `this daemon follows${leader ? `; ${leader.name} leads` : ''}: rotations run on the leader, so run rotor rotate there`,
        { retry: NEVER },
      );
    }
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

  /** A version the store still retains (current, previous or retired), as `?version=N` serves it. */
  version(name: string, version: number) {
    return this.engine.version(name, version);
  }

  status(): DaemonStatus {
    const hosted = this.agentValues.hostedCounts();
    return daemonStatus({
      engine: this.engine,
      drift: (name) => this.drift.drift(name),
      desired: this.desired,
      consumersOf: (name) => this.consumers.consumersOf(name),
      receipt: (consumer, name) => this.receipts.get(consumer, name),
      config: this.sync.status(),
      sockets: {
        dir: this.socketDir,
        consumers: this.sockets?.names() ?? [],
        requests: this.consumers.requestCounts(),
      },
      agents: {
        listen: this.agentApi?.address,
        agents: this.hub.lastSeen().map((a) => ({
          name: a.name,
          queued: a.queued,
          consumers: hosted.get(a.name) ?? 0,
          ...(a.lastSeen !== undefined ? { lastSeen: new Date(a.lastSeen).toISOString() } : {}),
        })),
      },
      store: { seq: this.store.seq, storeId: this.store.storeId },
      audit: this.publisher.status(),
      recent: this.recent,
      ...(this.cluster ? { leadership: this.cluster.view() } : {}),
      notify: this.notify?.status(),
      now: this.now,
    });
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
    this.timers.stop();
    this.drift?.stop();
    this.consumers?.notifyAll();
    this.hub?.close();
    this.agentValues?.close();
    await this.agentApi?.close();
    await this.metrics?.close();
    await this.sockets?.close();
    await new Promise<void>((resolve) => (this.admin ? this.admin.close(() => resolve()) : resolve()));
    await this.receipts?.flush().catch(() => undefined);
    // The others take over at once: the lease is given up before the last push (whose entries the
    // database holds, so the next leader pushes them if this push does not).
    const wasLeading = this.acting();
    await this.cluster?.stop();
    if (!this.cluster) await this.publisher?.publish().catch(() => undefined);
    else if (wasLeading) await this.publisher?.publishFinal().catch(() => undefined);
    // A full snapshot on the way out: what an operator opens offline with age -d is then complete.
    if (!this.cluster && wasLeading)
      await this.store
        ?.compact()
        .catch((e: unknown) =>
          this.o.log('warn', 'state compaction on stop failed', { code: (e as { code?: string }).code ?? 'ERROR' }),
        );
    await this.notify?.close();
    await this.store?.close();
    await this.unlock?.();
  }
}
