/**
 * Prometheus metrics (prom-client) on the admin HTTP listener (--metrics-listen, loopback by default):
 * GET /metrics, and the read-only status page at GET / and /status (src/serve/status-page.ts).
 * Gauges are read from the daemon's status at scrape time; counters and the duration histogram follow
 * the rotation steps on the `rotor:rotation` diagnostics channel. No label or value ever holds a secret
 * value: secret, consumer, agent and target names, codes and numbers only.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { listenTcp } from './listen.js';
import { renderStatusPage, STATUS_PAGE_HEADERS } from './status-page.js';
import type { StatusView } from './status-page.js';

/** What the metrics read from the daemon at scrape time (a subset of Daemon.status()). */
export interface MetricsSource {
  status(): {
    now: string;
    config: { applied?: { commit: string; at: string }; attempted?: { commit: string; at: string; problems?: number } };
    secrets: readonly { name: string; version?: number; rotatedAt?: string; overdue: boolean; failing?: unknown; consumers: readonly { name: string; behind: boolean }[] }[];
    agents?: { agents: readonly { name: string; lastSeen?: string }[] };
    sockets?: { requests: readonly { consumer: string; status: number; count: number }[] };
    audit?: { commitPending: boolean; pushFailures: number; failing?: unknown };
    store?: { failing?: unknown };
  };
}

export function metricsRegistry(source: MetricsSource): { registry: Registry; newScrape: () => void; close: () => void } {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'rotor_process_' });
  const rotations = new Counter({ name: 'rotor_rotations_total', help: 'Rotations by result (success: a new version became current; failure: a failed attempt, retried with backoff).', labelNames: ['result'], registers: [registry] });
  const duration = new Histogram({ name: 'rotor_rotation_duration_seconds', help: 'Time from a new pending value to its promotion (database secrets: including the agent).', buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers: [registry] });
  const started = new Map<string, number>();
  const onStep = (m: unknown) => {
    const e = m as { secret: string; step: string };
    if (e.step === 'created') started.set(e.secret, performance.now());
    else if (e.step === 'finished') {
      rotations.inc({ result: 'success' });
      const t0 = started.get(e.secret);
      if (t0 !== undefined) duration.observe((performance.now() - t0) / 1000);
      started.delete(e.secret);
    } else if (e.step === 'failed') rotations.inc({ result: 'failure' });
  };
  const channel = diagnostics_channel.channel('rotor:rotation');
  channel.subscribe(onStep);
  rotations.inc({ result: 'success' }, 0);
  rotations.inc({ result: 'failure' }, 0);

  // One status per scrape: the collect callbacks of a scrape share it (newScrape() drops it).
  let snapshot: ReturnType<MetricsSource['status']> | undefined;
  const st = () => (snapshot ??= source.status());
  new Gauge({
    name: 'rotor_secret_age_seconds', help: 'Age of each secret\'s current version.', labelNames: ['secret'], registers: [registry],
    collect() {
      this.reset();
      const s = st();
      const now = Date.parse(s.now);
      for (const x of s.secrets) if (x.rotatedAt) this.set({ secret: x.name }, (now - Date.parse(x.rotatedAt)) / 1000);
    },
  });
  new Gauge({
    name: 'rotor_secret_version', help: 'Current version of each secret.', labelNames: ['secret'], registers: [registry],
    collect() {
      this.reset();
      for (const x of st().secrets) if (x.version !== undefined) this.set({ secret: x.name }, x.version);
    },
  });
  new Gauge({
    name: 'rotor_secret_overdue', help: '1 for a secret older than its policy\'s maxAge or more than an hour late.', labelNames: ['secret'], registers: [registry],
    collect() {
      this.reset();
      for (const x of st().secrets) this.set({ secret: x.name }, x.overdue ? 1 : 0);
    },
  });
  new Gauge({ name: 'rotor_secrets_overdue', help: 'How many secrets are overdue.', registers: [registry], collect() { this.set(st().secrets.filter((x) => x.overdue).length); } });
  new Gauge({ name: 'rotor_rotations_failing', help: 'How many secrets have a failing rotation (retried with backoff).', registers: [registry], collect() { this.set(st().secrets.filter((x) => x.failing).length); } });
  new Gauge({ name: 'rotor_consumers_behind', help: 'Consumers that last read an older version than the current one, per secret.', labelNames: ['secret'], registers: [registry], collect() {
    this.reset();
    for (const x of st().secrets) this.set({ secret: x.name }, x.consumers.filter((c) => c.behind).length);
  } });
  new Gauge({ name: 'rotor_audit_unpushed', help: '1 while audit entries wait to be committed or pushed.', registers: [registry], collect() { const a = st().audit; this.set(a && (a.commitPending || a.pushFailures > 0) ? 1 : 0); } });
  new Gauge({
    name: 'rotor_storage_failing', help: '1 while the audit log or the state store cannot be written (rotations are paused).', labelNames: ['store'], registers: [registry],
    collect() {
      const s = st();
      this.set({ store: 'audit' }, s.audit?.failing ? 1 : 0);
      this.set({ store: 'state' }, s.store?.failing ? 1 : 0);
    },
  });
  new Gauge({ name: 'rotor_audit_push_failures', help: 'Failed pushes of the audit log since the last success.', registers: [registry], collect() { this.set(st().audit?.pushFailures ?? 0); } });
  new Gauge({ name: 'rotor_agent_last_contact_seconds', help: 'Seconds since each declared agent last called (absent: never).', labelNames: ['agent'], registers: [registry], collect() {
    this.reset();
    const s = st();
    const now = Date.parse(s.now);
    for (const a of s.agents?.agents ?? []) if (a.lastSeen) this.set({ agent: a.name }, (now - Date.parse(a.lastSeen)) / 1000);
  } });
  new Gauge({ name: 'rotor_config_info', help: 'The config commit applied (value 1), and the last attempted one if it differs (rejected).', labelNames: ['commit', 'state'], registers: [registry], collect() {
    this.reset();
    const c = st().config;
    if (c.applied) this.set({ commit: c.applied.commit, state: 'applied' }, 1);
    if (c.attempted && c.attempted.commit !== c.applied?.commit) this.set({ commit: c.attempted.commit, state: 'rejected' }, 1);
  } });
  new Gauge({ name: 'rotor_config_applied_timestamp_seconds', help: 'When the applied commit was applied.', registers: [registry], collect() { const a = st().config.applied; if (a) this.set(Date.parse(a.at) / 1000); } });
  new Gauge({ name: 'rotor_socket_requests', help: 'Consumer socket requests by consumer and HTTP status (a counter kept by the daemon).', labelNames: ['consumer', 'status'], registers: [registry], collect() {
    this.reset();
    for (const r of st().sockets?.requests ?? []) this.set({ consumer: r.consumer, status: String(r.status) }, r.count);
  } });
  return { registry, newScrape: () => (snapshot = undefined), close: () => channel.unsubscribe(onStep) };
}

/** What the status page reads from the daemon (its status, with the recent rotations). */
export interface StatusPageSource {
  status(): StatusView;
}

/** Listens on HOST:PORT for GET /metrics and the status page (GET or HEAD / and /status). */
export async function listenMetrics(listen: string, source: MetricsSource & StatusPageSource): Promise<{ address: string; close: () => Promise<void> }> {
  const { registry, newScrape, close } = metricsRegistry(source);
  const pages: StatusPageSource = source;
  const server: Server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000 }, (req, res) => {
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
      registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
        res.end(text);
      }, () => {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('metrics failed\n');
      });
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('GET /metrics (Prometheus), GET / (the status page)\n');
  });
  const bound = await listenTcp(server, listen, '--metrics-listen', 'METRICS_LISTEN');
  return {
    address: bound.address,
    close: () => {
      close();
      return bound.close();
    },
  };
}
