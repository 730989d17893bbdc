/**
 * Prometheus metrics (prom-client) on the admin HTTP listener (--metrics-listen, loopback by default):
 * GET /metrics, and the read-only status page at GET / and /status (src/serve/status-page.ts).
 * Requests are answered only for a Host header that names this listener (the address the connection
 * came in on, with the listener's port; localhost too on loopback) or a name given with --metrics-host,
 * so that a web page that rebinds its own DNS name to this address cannot read it (421 HOST_NOT_ALLOWED).
 * Gauges (and rotor_socket_requests_total, a count the daemon keeps) are read from the daemon's status
 * at scrape time; the other counters and the duration histogram follow the rotation steps on the
 * `rotor:rotation` diagnostics channel and the audit log's pushes on `rotor:audit-push`. Names follow
 * Prometheus's conventions (`promtool check metrics` passes; test/alerts.test.ts checks a live scrape):
 * counters end in _total, durations are in seconds, the process's own series have their standard
 * names (process_*, nodejs_*). The leadership series (rotor_leader,
 * rotor_lease_*, rotor_daemon*) are scraped only while the status has a leadership section (daemons
 * sharing a PostgreSQL store). No label or value ever holds a secret value: secret, consumer, agent,
 * daemon and target names, codes and numbers only.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { Counter, collectDefaultMetrics, Gauge, Histogram, type Metric, Registry } from 'prom-client';
import { NEVER, RotorError, type Storage } from '../errors.js';
import type { Logger } from '../log.js';
import { boundedServer, type ListenerLimits, rateLimited } from './limits.js';
import { listenTcp } from './listen.js';
import type { SecretStatusView, StatusReading } from './status.js';
import { renderStatusPage, STATUS_PAGE_HEADERS } from './status-page.js';

/** What the metrics read from the daemon at scrape time: its status. */
export interface MetricsSource {
  status(): StatusReading;
}

/**
 * A registry with series that are in it only while the status holds what they read (the leadership,
 * absent with the file store): registered again or taken out at each scrape. Left registered, a gauge
 * without labels would be scraped as 0, and `rotor_leader 0` on the one daemon of a file store would
 * read as a daemon that does not lead.
 */
class StatusRegistry extends Registry {
  readonly #optional: { name: string; metric: Metric; present: () => boolean }[] = [];

  /** `metric` (registered nowhere) is scraped only while `present()` holds. */
  optional(name: string, metric: Metric, present: () => boolean): void {
    this.#optional.push({ name, metric, present });
  }

  override metrics(): Promise<string> {
    for (const o of this.#optional) {
      if (o.present()) this.registerMetric(o.metric);
      else this.removeSingleMetric(o.name);
    }
    return super.metrics();
  }
}

/**
 * prom-client's totals of the `nodejs_active_*{type}` gauges: gauges named like counters (promtool
 * check metrics refuses a gauge ending in _total). `sum(nodejs_active_handles)` gives the same.
 */
const COUNTER_NAMED_GAUGES = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
] as const;

/** The store label of rotor_storage_* for the storage an error names. */
const STORE_LABEL: Record<Storage, string> = { 'audit log': 'audit', 'state store': 'state' };

export function metricsRegistry(source: MetricsSource): {
  registry: Registry;
  newScrape: () => void;
  close: () => void;
} {
  const registry = new StatusRegistry();
  // The process's own series under their standard names (process_*, nodejs_*), as every exporter has them.
  collectDefaultMetrics({ register: registry });
  for (const name of COUNTER_NAMED_GAUGES) registry.removeSingleMetric(name);
  const rotations = new Counter({
    name: 'rotor_rotations_total',
    help: 'Rotation outcomes by result (success: a new version became current; failure: a failed attempt, retried with backoff).',
    labelNames: ['result'],
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'rotor_rotation_duration_seconds',
    help: 'Time from a new pending value to its promotion (database secrets: including the agent).',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  const storageFailures = new Counter({
    name: 'rotor_storage_write_failures_total',
    help: 'Rotation steps that could not write the audit log or the state store, by store (each secret that tried counts).',
    labelNames: ['store'],
    registers: [registry],
  });
  const pushes = new Counter({
    name: 'rotor_audit_pushes_total',
    help: 'Commits and pushes of the audit log by result (success: commits reached the remote; failure: a failed commit or push, retried with backoff).',
    labelNames: ['result'],
    registers: [registry],
  });
  const started = new Map<string, number>();
  const onStep = (m: unknown) => {
    const e = m as { secret: string; step: string; storage?: Storage };
    if (e.step === 'created') started.set(e.secret, performance.now());
    else if (e.step === 'finished') {
      rotations.inc({ result: 'success' });
      const t0 = started.get(e.secret);
      if (t0 !== undefined) duration.observe((performance.now() - t0) / 1000);
      started.delete(e.secret);
    } else if (e.step === 'failed') {
      rotations.inc({ result: 'failure' });
      if (e.storage) storageFailures.inc({ store: STORE_LABEL[e.storage] });
    }
  };
  const onPush = (m: unknown) => {
    const e = m as { ok: boolean; pushed?: number };
    if (!e.ok) pushes.inc({ result: 'failure' });
    else if ((e.pushed ?? 0) > 0) pushes.inc({ result: 'success' });
  };
  const channel = diagnostics_channel.channel('rotor:rotation');
  const pushChannel = diagnostics_channel.channel('rotor:audit-push');
  channel.subscribe(onStep);
  pushChannel.subscribe(onPush);
  for (const result of ['success', 'failure']) {
    rotations.inc({ result }, 0);
    pushes.inc({ result }, 0);
  }
  for (const store of Object.values(STORE_LABEL)) storageFailures.inc({ store }, 0);

  // One status per scrape: the collect callbacks of a scrape share it (newScrape() drops it).
  let snapshot: ReturnType<MetricsSource['status']> | undefined;
  const st = () => (snapshot ??= source.status());
  const perSecret = (name: string, help: string, value: (x: SecretStatusView, now: number) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ['secret'],
      registers: [registry],
      collect() {
        this.reset();
        const s = st();
        const now = Date.parse(s.now);
        for (const x of s.secrets) {
          const v = value(x, now);
          if (v !== undefined) this.set({ secret: x.name }, v);
        }
      },
    });
  perSecret('rotor_secret_age_seconds', "Age of each secret's current version.", (x, now) =>
    x.rotatedAt ? (now - Date.parse(x.rotatedAt)) / 1000 : undefined,
  );
  perSecret('rotor_secret_version', 'Current version of each secret.', (x) => x.version);
  perSecret(
    'rotor_secret_overdue',
    "1 while a secret is older than its policy's maxAge or more than an hour behind its schedule, else 0.",
    (x) => (x.overdue ? 1 : 0),
  );
  perSecret(
    'rotor_secret_failing',
    '1 while the rotation of a secret fails (retried with backoff, or waiting for a new commit), else 0.',
    (x) => (x.failing ? 1 : 0),
  );
  perSecret(
    'rotor_secret_overlap_remaining_seconds',
    'Seconds until the previous version of a secret stops being served (the end of its overlap); absent while none is.',
    (x, now) => (x.previous ? Math.max(0, (Date.parse(x.previous.validUntil) - now) / 1000) : undefined),
  );
  perSecret(
    'rotor_consumers_behind',
    'Consumers of a secret that last read an older version than the current one, or never read it.',
    (x) => x.consumers.filter((c) => c.behind).length,
  );
  perSecret(
    'rotor_secret_drift',
    '1 while the database refuses a served credential of a secret (drift, found by policy verify), else 0.',
    (x) => (x.drift ? 1 : 0),
  );
  new Counter({
    name: 'rotor_notify_deliveries_total',
    help: 'Webhook delivery attempts and losses by endpoint and outcome (success, failure: retried; dropped: the queue was full or the endpoint removed; expired: too old to retry). Since this daemon started.',
    labelNames: ['endpoint', 'outcome'],
    registers: [registry],
    collect() {
      this.reset();
      for (const e of st().notify?.endpoints ?? [])
        for (const [outcome, n] of Object.entries(e.outcomes)) this.inc({ endpoint: e.name, outcome }, n);
    },
  });
  new Gauge({
    name: 'rotor_notify_queue_depth',
    help: 'Webhook deliveries waiting (to be sent or retried), by endpoint.',
    labelNames: ['endpoint'],
    registers: [registry],
    collect() {
      this.reset();
      for (const e of st().notify?.endpoints ?? []) this.set({ endpoint: e.name }, e.queued);
    },
  });
  new Gauge({
    name: 'rotor_notify_failing',
    help: 'Whether an endpoint has a delivery that failed and waits to be retried (1) or not (0).',
    labelNames: ['endpoint'],
    registers: [registry],
    collect() {
      this.reset();
      for (const e of st().notify?.endpoints ?? []) this.set({ endpoint: e.name }, e.failing ? 1 : 0);
    },
  });
  new Gauge({
    name: 'rotor_secrets_overdue',
    help: 'How many secrets are overdue (rotor_secret_overdue).',
    registers: [registry],
    collect() {
      this.set(st().secrets.filter((x) => x.overdue).length);
    },
  });
  new Gauge({
    name: 'rotor_secrets_failing',
    help: 'How many secrets have a failing rotation (rotor_secret_failing).',
    registers: [registry],
    collect() {
      this.set(st().secrets.filter((x) => x.failing).length);
    },
  });
  new Gauge({
    name: 'rotor_consumer_version_read',
    help: 'The version of a secret a consumer last read as current (0: never), by consumer, secret and host (an agent, or "daemon").',
    labelNames: ['consumer', 'secret', 'host'],
    registers: [registry],
    collect() {
      this.reset();
      for (const x of st().secrets)
        for (const c of x.consumers)
          this.set({ consumer: c.name, secret: x.name, host: c.host ?? 'daemon' }, c.version ?? 0);
    },
  });
  new Gauge({
    name: 'rotor_audit_unpushed',
    help: '1 while audit entries wait to be committed or pushed, else 0.',
    registers: [registry],
    collect() {
      const a = st().audit;
      this.set(a && (a.commitPending || a.pushFailures > 0) ? 1 : 0);
    },
  });
  new Gauge({
    name: 'rotor_audit_push_consecutive_failures',
    help: 'Failed commits or pushes of the audit log since the last success (0 once one succeeds); the entries are kept and retried.',
    registers: [registry],
    collect() {
      this.set(st().audit?.pushFailures ?? 0);
    },
  });
  new Gauge({
    name: 'rotor_storage_failing',
    help: '1 while the audit log or the state store cannot be written (rotations are paused), else 0.',
    labelNames: ['store'],
    registers: [registry],
    collect() {
      const s = st();
      this.set({ store: 'audit' }, s.audit?.failing ? 1 : 0);
      this.set({ store: 'state' }, s.store?.failing ? 1 : 0);
    },
  });
  new Gauge({
    name: 'rotor_agent_last_contact_seconds',
    help: 'Seconds since each declared agent last called this daemon (absent: not since it started).',
    labelNames: ['agent'],
    registers: [registry],
    collect() {
      this.reset();
      const s = st();
      const now = Date.parse(s.now);
      for (const a of s.agents?.agents ?? [])
        if (a.lastSeen) this.set({ agent: a.name }, (now - Date.parse(a.lastSeen)) / 1000);
    },
  });
  new Gauge({
    name: 'rotor_agent_jobs_queued',
    help: 'Database jobs waiting for each declared agent to take them (one series per declared agent).',
    labelNames: ['agent'],
    registers: [registry],
    collect() {
      this.reset();
      for (const a of st().agents?.agents ?? []) this.set({ agent: a.name }, a.queued);
    },
  });
  new Gauge({
    name: 'rotor_config_info',
    help: 'The config commit applied (value 1), and the last attempted one if it differs (rejected).',
    labelNames: ['commit', 'state'],
    registers: [registry],
    collect() {
      this.reset();
      const c = st().config;
      if (c.applied) this.set({ commit: c.applied.commit, state: 'applied' }, 1);
      if (c.attempted && c.attempted.commit !== c.applied?.commit)
        this.set({ commit: c.attempted.commit, state: 'rejected' }, 1);
    },
  });
  new Gauge({
    name: 'rotor_repository_held',
    help: '1 while the clone does not take the remote head (its audit path is a link, a file or a submodule: GIT_AUDIT_PATH_UNSAFE), else 0.',
    registers: [registry],
    collect() {
      this.set(st().config.held ? 1 : 0);
    },
  });
  new Gauge({
    name: 'rotor_config_applied_timestamp_seconds',
    help: 'When the applied commit was applied (Unix time).',
    registers: [registry],
    collect() {
      const a = st().config.applied;
      if (a) this.set(Date.parse(a.at) / 1000);
    },
  });
  new Counter({
    name: 'rotor_socket_requests_total',
    help: 'Consumer socket requests by consumer and HTTP status, since the daemon started.',
    labelNames: ['consumer', 'status'],
    registers: [registry],
    collect() {
      this.reset();
      for (const r of st().sockets?.requests ?? [])
        this.inc({ consumer: r.consumer, status: String(r.status) }, r.count);
    },
  });
  leadershipMetrics(registry, st);
  return {
    registry,
    newScrape: () => (snapshot = undefined),
    close: () => {
      channel.unsubscribe(onStep);
      pushChannel.unsubscribe(onPush);
    },
  };
}

/** The leadership among daemons sharing the state store: scraped only while the status has it (not with the file store). */
function leadershipMetrics(registry: StatusRegistry, st: () => StatusReading): void {
  const gauge = (
    name: string,
    help: string,
    present: (l: NonNullable<StatusReading['leadership']>) => boolean,
    collect: (this: Gauge, l: NonNullable<StatusReading['leadership']>) => void,
    labelNames: readonly string[] = [],
  ) => {
    const metric = new Gauge({
      name,
      help,
      labelNames,
      registers: [],
      collect() {
        const l = st().leadership;
        if (l) collect.call(this, l);
      },
    });
    registry.optional(name, metric, () => {
      const l = st().leadership;
      return l !== undefined && present(l);
    });
  };
  const always = () => true;
  gauge(
    'rotor_leader',
    '1 while this daemon leads the daemons sharing the state store (it holds the lease and rotates), else 0.',
    always,
    function (l) {
      this.set(l.role === 'leader' ? 1 : 0);
    },
  );
  gauge(
    'rotor_lease_term',
    'The term of the lease as this daemon last read it (it only grows; 0 before any daemon led).',
    always,
    function (l) {
      this.set(l.term);
    },
  );
  gauge(
    'rotor_lease_age_seconds',
    'Seconds since the leader last renewed the lease (database clock); absent while no daemon holds it.',
    (l) => l.leaseAgeMs !== undefined,
    function (l) {
      if (l.leaseAgeMs !== undefined) this.set(l.leaseAgeMs / 1000);
    },
  );
  gauge(
    'rotor_daemons',
    'How many daemons were seen on the state store recently, this one included.',
    always,
    function (l) {
      this.set(l.daemons.length);
    },
  );
  gauge(
    'rotor_daemon_last_seen_seconds',
    'Seconds since each daemon seen on the state store last wrote its row (database clock), by name and role.',
    always,
    function (l) {
      this.reset();
      // Two daemons of one name and role make one series: the one seen last.
      const seen = new Map<string, number>();
      for (const d of l.daemons) {
        const key = JSON.stringify([d.name, d.role]);
        seen.set(key, Math.min(seen.get(key) ?? Infinity, d.seenAgoMs));
      }
      for (const [key, ms] of seen) {
        const [daemon, role] = JSON.parse(key) as [string, string];
        this.set({ daemon, role }, ms / 1000);
      }
    },
    ['daemon', 'role'],
  );
}

/** What the status page reads from the daemon (its status, with the recent rotations). */
export interface StatusPageSource {
  status(): StatusReading;
}

export const METRICS_LIMITS: ListenerLimits = {
  maxConnections: 64,
  maxConnectionsPerPeer: 16,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxHeaderSize: 8192,
};

export interface MetricsOptions {
  /** Host names (NAME, or NAME:PORT for one port only) that may be asked for besides the listener's own address (--metrics-host). */
  readonly hosts?: readonly string[];
  readonly limits?: Partial<ListenerLimits>;
  readonly log?: Logger;
}

/** A Host header (or a --metrics-host value): a name or an IP literal, and an optional port. */
const HOST_RE = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(\d{1,5}))?$/;

/** The host name and port of a Host value, normalised as a browser writes them (lower case, 127.1 is 127.0.0.1, IPv6 compressed); undefined if it is not one. */
export function parseHost(value: string): { host: string; port?: number } | undefined {
  const m = HOST_RE.exec(value);
  if (!m) return undefined;
  let host: string;
  try {
    host = new URL(`http://${m[1]}/`).hostname;
  } catch {
    return undefined;
  }
  const port = m[2] === undefined ? undefined : Number(m[2]);
  if (port !== undefined && port > 65535) return undefined;
  return port === undefined ? { host } : { host, port };
}

/** The listener's own address as a Host names it: a connection's local address, IPv4-mapped IPv6 unmapped. */
function ownHost(localAddress: string | undefined): string | undefined {
  if (!localAddress) return undefined;
  const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(localAddress)?.[1];
  return parseHost(v4 ?? (localAddress.includes(':') ? `[${localAddress}]` : localAddress))?.host;
}

function isLoopback(host: string): boolean {
  return host === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/**
 * Whether a request may be answered, by its Host header. Allowed: the address the connection came in
 * on with the listener's port (so on 0.0.0.0 or ::, any local address it is reached at), `localhost`
 * with that port when that address is loopback, and the configured names. No Host header at all is
 * allowed: only HTTP/1.0 may omit it (node:http refuses an HTTP/1.1 request without one), and a
 * browser always sends it, so a rebinding page cannot.
 */
export function hostAllowed(
  hostHeader: string | undefined,
  localAddress: string | undefined,
  port: number,
  names: HostNames,
): boolean {
  if (hostHeader === undefined) return true;
  const h = parseHost(hostHeader);
  if (!h) return false;
  const hPort = h.port ?? 80;
  const ports = names.get(h.host);
  if (ports === 'any' || ports?.has(hPort)) return true;
  if (hPort !== port) return false;
  const own = ownHost(localAddress);
  return own !== undefined && (h.host === own || (h.host === 'localhost' && isLoopback(own)));
}

/** The configured names: each with the ports it may be asked for on, or 'any'. */
export type HostNames = ReadonlyMap<string, ReadonlySet<number> | 'any'>;

/** Parses --metrics-host values (NAME for any port, NAME:PORT for one); throws (code METRICS_HOST_INVALID) on anything else. */
export function parseMetricsHosts(values: readonly string[]): HostNames {
  const names = new Map<string, Set<number> | 'any'>();
  for (const v of values) {
    const h = parseHost(v.trim());
    if (!h) {
      const what = 'is not a host name or IP address with an optional :PORT';
      throw new RotorError('METRICS_HOST_INVALID', `--metrics-host ${v.slice(0, 100)} ${what}`, { retry: NEVER });
    }
    const had = names.get(h.host);
    if (h.port === undefined || had === 'any') names.set(h.host, 'any');
    else names.set(h.host, new Set([...(had ?? []), h.port]));
  }
  return names;
}

/** Listens on HOST:PORT for GET /metrics and the status page (GET or HEAD / and /status). */
export async function listenMetrics(
  listen: string,
  source: MetricsSource & StatusPageSource,
  o: MetricsOptions = {},
): Promise<{ address: string; close: () => Promise<void> }> {
  const limits: ListenerLimits = { ...METRICS_LIMITS, ...o.limits };
  const names = parseMetricsHosts(o.hosts ?? []);
  const once = rateLimited(10_000);
  const { registry, newScrape, close } = metricsRegistry(source);
  const pages: StatusPageSource = source;
  let port = 0;
  const refuse = (res: ServerResponse, status: number, code: string, message: string) => {
    const text = JSON.stringify({ error: { code, message } });
    res.writeHead(status, {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'content-length': Buffer.byteLength(text),
      connection: 'close',
    });
    res.end(text);
  };
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const host = req.headers.host;
    if (!hostAllowed(host, req.socket.localAddress, port, names)) {
      const shown = JSON.stringify((host ?? '').slice(0, 100));
      once('HOST_NOT_ALLOWED', (suppressed) =>
        o.log?.('warn', 'metrics request refused: Host is not this listener', {
          code: 'HOST_NOT_ALLOWED',
          host: (host ?? '').slice(0, 100),
          ...(suppressed ? { suppressed } : {}),
        }),
      );
      refuse(
        res,
        421,
        'HOST_NOT_ALLOWED',
        `the Host header ${shown} names neither this listener (its address and port, or localhost on loopback) nor a name given with --metrics-host: to reach it through a proxy or by another name, start the daemon with --metrics-host NAME`,
      );
      return;
    }
    if (
      (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') ||
      req.headers['transfer-encoding'] !== undefined
    ) {
      refuse(res, 400, 'BODY_NOT_ALLOWED', 'the metrics listener takes GET and HEAD, without a body');
      return;
    }
    const urlPath = (req.url ?? '').split('?')[0];
    if (urlPath === '/' || urlPath === '/status') {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' });
        res.end('the status page is read-only: GET or HEAD\n');
        return;
      }
      let html: string;
      try {
        const status = pages.status();
        html = renderStatusPage(status, Date.parse(status.now));
      } catch {
        res.writeHead(500, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
        res.end('status page failed\n');
        return;
      }
      res.writeHead(200, { ...STATUS_PAGE_HEADERS, 'content-length': Buffer.byteLength(html) });
      res.end(req.method === 'HEAD' ? undefined : html);
      return;
    }
    if (req.method === 'GET' && req.url === '/metrics') {
      newScrape();
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
          res.end(text);
        },
        () => {
          res.writeHead(500, { 'content-type': 'text/plain' });
          res.end('metrics failed\n');
        },
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('GET /metrics (Prometheus), GET / (the status page)\n');
  };
  const server: Server = boundedServer(limits, handler, (why, peer) =>
    once(`connection-${why}`, (suppressed) => {
      o.log?.(
        'warn',
        why === 'peer'
          ? 'metrics connection refused: too many from one address'
          : 'metrics connection refused: too many open',
        { code: why === 'peer' ? 'METRICS_PEER_CONNECTIONS' : 'METRICS_CONNECTIONS', peer, suppressed },
      );
    }),
  );
  const bound = await listenTcp(server, listen, '--metrics-listen', 'METRICS_LISTEN');
  port = Number(bound.address.slice(bound.address.lastIndexOf(':') + 1));
  return {
    address: bound.address,
    close: () => {
      close();
      return bound.close();
    },
  };
}
