/**
 * The alerting rules shipped in deploy/prometheus/rotor-alerts.yml, against series scraped from running
 * daemons (in-process, real git repositories, a real rotor-agent): each daemon is driven into a
 * condition (healthy; an agent gone silent while its consumer still holds the previous version, then
 * past the end of the overlap, then the secret overdue; the daemon stopped; a database rotation failing
 * for an agent that never called, with the remote refusing the audit pushes; the state store full and
 * a commit rejected; a Redis password changed by hand under `verify: 1s`, found by a real rotor-agent's
 * check: drift), its /metrics scraped and turned into `input_series`, and `promtool test rules`
 * checks that exactly the expected alerts fire, with their labels and annotations, and none on a
 * single scrape. The leadership alert is checked on the metrics of hand-made statuses (a daemon with
 * no leader cannot be arranged without a second daemon on PostgreSQL); a file-store daemon, without
 * rotor_leader, must not raise it. Also `promtool check rules` on the file and `promtool check metrics`
 * on every live scrape. No value of a secret is in a scrape or in the generated test.
 *
 * Needs promtool (Debian: `apt-get install prometheus`): skipped without it, failed under
 * ROTOR_REQUIRE_SERVICES=1.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import type { AgentReceiptsMessage, AgentValuesMessage } from '../agent/src/host.js';
import { getSecret } from '../src/client/index.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { metricsRegistry } from '../src/serve/metrics.js';
import type { StatusReading } from '../src/serve/status.js';
import type { StoreFs } from '../src/state/fs.js';
import { nodeFs } from '../src/state/fs.js';
import { ROOT, tempDir } from './helpers.js';
import { candidateView, followerView, leaderView } from './lib/leadership.js';
import {
  alertRules,
  type Expected,
  parseExposition,
  promtool,
  promtoolPath,
  ruleTests,
  type Scenario,
  type Scrape,
} from './lib/promtool.js';
import { needService } from './services/common.js';
import { startRedis } from './services/redis.js';
import { step, world } from './world.js';

const RULES = path.join(ROOT, 'deploy', 'prometheus', 'rotor-alerts.yml');
const JOB = 'rotor';
const UID = process.getuid!();
const HOUR = 3600_000;
const DAY = 24 * HOUR;

/** GET /metrics; undefined when the daemon does not answer (a failed scrape). */
function scrapeText(address: string): Promise<string | undefined> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const req = request(
      { host: address.slice(0, i), port: Number(address.slice(i + 1)), path: '/metrics', agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(res.statusCode === 200 ? text : undefined));
      },
    );
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

/** The value of one sample of a scrape (labels in any order), or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  return parseExposition(text).find(
    (s) =>
      s.name === name &&
      Object.keys(s.labels).length === Object.keys(labels).length &&
      Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  )?.value;
}

/** Resolves with the first message on `channel` that `match` accepts. */
function next<M>(channel: string, match: (m: M) => boolean): Promise<M> {
  const ch = diagnostics_channel.channel(channel);
  return new Promise((resolve) => {
    const f = (m: unknown) => {
      if (match(m as M)) {
        ch.unsubscribe(f);
        resolve(m as M);
      }
    };
    ch.subscribe(f);
  });
}

const bin = promtoolPath();
if (
  needService(
    t,
    'promtool',
    bin !== undefined,
    'apt-get install prometheus (Debian: it brings /usr/bin/promtool; `--no-install-recommends`, and a policy-rc.d that denies starting services keeps its server from starting), or put promtool from https://prometheus.io/download/ on PATH',
  )
) {
  const promtoolBin = bin!;
  const rulesText = readFileSync(RULES, 'utf8');
  const rules = alertRules(rulesText);
  const scenarios: Scenario[] = [];
  /** Every value a secret had: none may be in a scrape or in the generated test. */
  const values = new Set<string>();
  /** Every live scrape, for `promtool check metrics`. */
  const live: { name: string; text: string }[] = [];

  const scrape = async (name: string, address: string): Promise<Scrape> => {
    const text = await scrapeText(address);
    if (text !== undefined) live.push({ name, text });
    return { instance: address, job: JOB, text };
  };

  t.test('promtool check rules: the rules file is valid', async (t) => {
    const r = await promtool(promtoolBin, ['check', 'rules', RULES]);
    t.equal(r.code, 0, `promtool check rules\n${r.stdout}${r.stderr}`);
    t.match(r.stdout, new RegExp(`SUCCESS: ${rules.length} rules found`));
    t.ok(rules.length >= 10, 'the alerts are there');
    for (const rule of rules) {
      t.match(rule.labels, { severity: /^(warning|critical)$/ }, `${rule.alert} has a severity`);
      t.match(rule.annotations, { summary: String, description: /deploy\/prometheus\/README\.md#/ });
      t.ok(rule.for, `${rule.alert} waits before it fires`);
    }
    const readme = readFileSync(path.join(ROOT, 'deploy', 'prometheus', 'README.md'), 'utf8');
    for (const rule of rules)
      t.match(readme, new RegExp(`^### ${rule.alert}$`, 'm'), `the README explains ${rule.alert}`);
  });

  t.test('an agent goes silent, its consumer stays on the previous version, the secret grows overdue', async (t) => {
    const keysRoot = tempDir(t, 'rotor-alerts-keys-');
    const agentDir = path.join(keysRoot, 'web-1');
    await generateKeys(agentDir);
    const agentKeys = await loadKeys(agentDir);
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nmaxAge: 45d\n',
      'secrets.yaml': 'kind: Secret\nname: app/token\npolicy: p\ngenerate: { length: 32 }\n',
      'agent.yaml': `kind: Agent\nname: web-1\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
      'consumers.yaml': `kind: Consumer\nname: web\nagent: web-1\nuid: ${UID}\nsecrets: ["app/*"]\n---\nkind: Consumer\nname: local\nuid: ${UID}\nsecrets: ["app/*"]\n`,
    });
    // The daemon's clock runs with the real one (the agent's signed requests must be within its skew)
    // until the agent is stopped; then it jumps ahead. The daemon's timers do not fire on a jump.
    let offset = 0;
    const sockets = path.join(w.root, 'sockets');
    const pushed = next<{ ok: boolean; pushed?: number }>('rotor:audit-push', (m) => m.ok && (m.pushed ?? 0) > 0);
    const d = await w.start({
      socketDir: sockets,
      agentListen: '127.0.0.1:0',
      metricsListen: '127.0.0.1:0',
      now: () => Date.now() + offset,
    });
    t.teardown(() => d.stop());
    const daemonKeys = await loadKeys(w.dataDir);
    const agentSockets = path.join(keysRoot, 'run');
    const configFile = path.join(keysRoot, 'agent.yaml');
    writeFileSync(
      configFile,
      `daemon: http://${d.agentAddress}\nname: web-1\nkeyDir: ${agentDir}\ndaemonSigningKey: "${daemonKeys.signingKey}"\nsocketDir: ${agentSockets}\n`,
      { mode: 0o600 },
    );
    const agent = new Agent(await loadAgentConfig(configFile), {
      log: jsonLogger(() => {}),
      wait: 5,
      backoff: { baseMs: 20, capMs: 200 },
      hostConsumers: { wait: 5 },
    });
    const valuesArrived = next<AgentValuesMessage>('rotor-agent:values', (m) =>
      m.secrets.some((s) => s.name === 'app/token' && s.version === 1),
    );
    agent.start();
    t.teardown(() => agent.stop({ graceMs: 2000 }));
    await valuesArrived;
    const receipted = next<AgentReceiptsMessage>('rotor-agent:receipts', (m) =>
      m.receipts.some((r) => r.consumer === 'web' && r.secret === 'app/token' && r.version === 1),
    );
    const v1 = await getSecret('app/token', { socket: path.join(agentSockets, 'web.sock') });
    t.equal(v1.version, 1, 'web reads version 1 through the agent');
    await receipted;
    await getSecret('app/token', { socket: path.join(sockets, 'local.sock') });
    values.add(String(v1.value));

    await pushed;
    const healthy = await scrape('healthy', d.metricsAddress!);
    t.ok(sample(healthy.text!, 'rotor_audit_pushes_total', { result: 'success' })! >= 1, 'the audit log was pushed');
    t.equal(sample(healthy.text!, 'rotor_audit_push_consecutive_failures'), 0);
    t.equal(
      sample(healthy.text!, 'rotor_consumer_version_read', { consumer: 'web', secret: 'app/token', host: 'web-1' }),
      1,
    );
    t.ok(sample(healthy.text!, 'rotor_agent_last_contact_seconds', { agent: 'web-1' })! < 300, 'the agent called');
    t.equal(sample(healthy.text!, 'rotor_leader'), undefined, 'the file store: no rotor_leader series');
    scenarios.push({
      name: 'healthy: an agent calling, every consumer on the current version',
      scrapes: [healthy],
      firing: [],
    });

    // The agent stops; the secret rotates; the daemon's consumer reads version 2, web (behind the agent) cannot.
    await agent.stop({ graceMs: 2000 });
    await d.rotateNow('app/token', 'alerts test');
    const v2 = await getSecret('app/token', { socket: path.join(sockets, 'local.sock') });
    t.equal(v2.version, 2);
    values.add(String(v2.value));
    const at = { instance: d.metricsAddress!, job: JOB };
    const web = { ...at, consumer: 'web', secret: 'app/token', host: 'web-1' };
    const silent: Expected = { alert: 'RotorAgentSilent', labels: { job: JOB, agent: 'web-1' } };

    offset = 23.5 * HOUR;
    const ending = await scrape('overlap ending', d.metricsAddress!);
    t.equal(sample(ending.text!, 'rotor_secret_overlap_remaining_seconds', { secret: 'app/token' })! <= 1800, true);
    scenarios.push({
      name: 'the overlap ends within the hour: web still on version 1, its agent silent',
      scrapes: [ending],
      firing: [silent, { alert: 'RotorConsumerBehindOverlapEnding', labels: web }],
    });

    offset = 25 * HOUR;
    const ended = await scrape('overlap ended', d.metricsAddress!);
    t.equal(sample(ended.text!, 'rotor_secret_overlap_remaining_seconds', { secret: 'app/token' }), undefined);
    scenarios.push({
      name: 'the overlap is over: web holds a version no longer served',
      scrapes: [ended],
      firing: [silent, { alert: 'RotorConsumerStale', labels: web }],
    });

    offset = 46 * DAY;
    const overdue = await scrape('overdue', d.metricsAddress!);
    t.equal(sample(overdue.text!, 'rotor_secret_overdue', { secret: 'app/token' }), 1, 'past maxAge');
    scenarios.push({
      name: 'the secret is past its maxAge',
      scrapes: [overdue],
      firing: [
        silent,
        { alert: 'RotorConsumerStale', labels: web },
        { alert: 'RotorSecretOverdue', labels: { ...at, secret: 'app/token' } },
      ],
    });

    await d.stop();
    const down = await scrape('down', d.metricsAddress!);
    t.equal(down.text, undefined, 'a stopped daemon is not scraped');
    scenarios.push({ name: 'the daemon is down', scrapes: [down], firing: [{ alert: 'RotorDown', labels: at }] });
  });

  t.test('a rotation failing for an agent that never called; the remote refuses the audit pushes', async (t) => {
    const keys = tempDir(t, 'rotor-alerts-db-');
    await generateKeys(keys);
    const a = await loadKeys(keys);
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
      'secrets.yaml':
        'kind: Secret\nname: app/token\npolicy: p\ngenerate: {}\n---\nkind: Secret\nname: app/db\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [blue, green] }\n',
      'db.yaml': `kind: Agent\nname: db-host\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host\n`,
    });
    writeFileSync(path.join(w.remote, 'hooks', 'pre-receive'), '#!/bin/sh\necho "pushes are frozen" >&2\nexit 1\n', {
      mode: 0o755,
    });
    const failed = step('app/db', 'failed');
    const refused = next<{ ok: boolean }>('rotor:audit-push', (m) => !m.ok);
    const d = await w.start({ agentListen: '127.0.0.1:0', agentJobTimeoutMs: 100, metricsListen: '127.0.0.1:0' });
    t.teardown(() => d.stop());
    await failed;
    await refused;
    values.add(String(d.served('app/token')!.value));
    const s = await scrape('failing', d.metricsAddress!);
    t.ok(sample(s.text!, 'rotor_audit_push_consecutive_failures')! >= 1, 'the pushes fail');
    t.ok(sample(s.text!, 'rotor_audit_pushes_total', { result: 'failure' })! >= 1, 'and are counted');
    t.equal(sample(s.text!, 'rotor_agent_jobs_queued', { agent: 'db-host' }) !== undefined, true);
    t.equal(sample(s.text!, 'rotor_agent_last_contact_seconds', { agent: 'db-host' }), undefined, 'never called');
    const at = { instance: d.metricsAddress!, job: JOB };
    scenarios.push({
      name: 'a database rotation failing, its agent never seen, the audit pushes refused',
      scrapes: [s],
      firing: [
        { alert: 'RotorRotationFailing', labels: { ...at, secret: 'app/db' } },
        { alert: 'RotorAgentNeverSeen', labels: { job: JOB, agent: 'db-host' } },
        { alert: 'RotorAuditPushFailing', labels: at },
      ],
    });
  });

  t.test('the state store is full; a commit is rejected', async (t) => {
    const SECRET = 'kind: Secret\nname: app/key\npolicy: p\ngenerate: {}\n';
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
      'secrets.yaml': SECRET,
    });
    let full = false;
    const storeFs: StoreFs = {
      ...nodeFs,
      open: async (file, mode) => {
        const f = await nodeFs.open(file, mode);
        return {
          ...f,
          read: (b, p) => f.read(b, p),
          write: async (data, position) => {
            if (full) throw Object.assign(new Error(`ENOSPC: injected, write '${file}'`), { code: 'ENOSPC' });
            return f.write(data, position);
          },
          sync: () => f.sync(),
          truncate: (n) => f.truncate(n),
          size: () => f.size(),
          close: () => f.close(),
        };
      },
    };
    const d = await w.start({ storeFs, metricsListen: '127.0.0.1:0' });
    t.teardown(() => d.stop());
    values.add(String(d.served('app/key')!.value));
    full = true;
    // A rotate request in the repository makes the secret due: it is retried until it can be stored.
    w.push('secrets.yaml', `${SECRET}rotate: { request: "r1", reason: "the store is full" }\n`, 'rotate app/key');
    await d.syncNow();
    t.match(d.status().store, { failing: { code: 'STATE_IO', errno: 'ENOSPC' } });
    w.push('policy.yaml', 'kind: Policy\nname: p\nevery: soon\n', 'a policy that does not validate');
    await d.syncNow();
    const { applied, attempted } = d.status().config;
    t.ok(attempted?.problems, 'the commit was rejected');
    const rejected = attempted!.commit;
    t.not(rejected, applied?.commit, 'and another one stays applied');
    const s = await scrape('storage', d.metricsAddress!);
    t.ok(
      sample(s.text!, 'rotor_storage_write_failures_total', { store: 'state' })! >= 1,
      'the failed writes are counted',
    );
    const at = { instance: d.metricsAddress!, job: JOB };
    scenarios.push({
      name: 'the state store cannot be written, a commit rejected',
      scrapes: [s],
      firing: [
        { alert: 'RotorStorageFailing', labels: { ...at, store: 'state' } },
        { alert: 'RotorRotationFailing', labels: { ...at, secret: 'app/key' } },
        { alert: 'RotorConfigRejected', labels: { ...at, commit: rejected, state: 'rejected' } },
      ],
    });
  });

  let drifted = false;
  t.test('drift: a Redis password changed by hand (verify: 1s, onDrift: alert, a real rotor-agent)', async (t) => {
    const server = await startRedis(t);
    if (!server) return;
    const user = 'r_drift';
    await server.createUser(user, 'Initial-r_drift-9');
    const name = 'app/cache';
    const keysRoot = tempDir(t, 'rotor-alerts-drift-');
    const agentDir = path.join(keysRoot, 'agent');
    await generateKeys(agentDir);
    const a = await loadKeys(agentDir);
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nverify: 1s\nonDrift: alert\n',
      'db.yaml': `kind: Agent\nname: cache-host\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n---\nkind: Target\nname: cache\nengine: redis\nagent: cache-host\n`,
      'secrets.yaml': `kind: Secret\nname: ${name}\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: cache, strategy: dual, username: ${user} }\n`,
    });
    type Check = { secret: string; ok?: number; refused?: number; errors?: number };
    const clean = next<Check>(
      'rotor:drift',
      (m) => m.secret === name && m.ok === 1 && m.refused === 0 && m.errors === 0,
    );
    const d = await w.start({ agentListen: '127.0.0.1:0', metricsListen: '127.0.0.1:0' });
    t.teardown(() => d.stop());
    const daemonKeys = await loadKeys(w.dataDir);
    const configFile = path.join(keysRoot, 'agent.yaml');
    writeFileSync(
      configFile,
      `daemon: http://${d.agentAddress}\nname: cache-host\nkeyDir: ${agentDir}\ndaemonSigningKey: "${daemonKeys.signingKey}"\ntargets:\n  cache:\n    url: ${server.url}\n    password: { env: REDIS_ADMIN_PASSWORD }\n    timeout: 3s\n`,
      { mode: 0o600 },
    );
    const agent = new Agent(
      await loadAgentConfig(configFile, { env: { REDIS_ADMIN_PASSWORD: server.adminPassword } }),
      { log: jsonLogger(() => {}), wait: 5, backoff: { baseMs: 20, capMs: 200 } },
    );
    agent.start();
    t.teardown(() => agent.stop({ graceMs: 2000 }));
    await clean;
    const served = d.served(name)!;
    values.add(String(served.value));
    const at = { instance: d.metricsAddress!, job: JOB };
    const healthy = await scrape('drift: healthy', d.metricsAddress!);
    t.equal(sample(healthy.text!, 'rotor_secret_drift', { secret: name }), 0, 'every served credential logs in');
    scenarios.push({ name: 'verify checks passing: no drift', scrapes: [healthy], firing: [] });

    // Someone resets the user's password by hand: the next check is refused.
    const hand = `ByHand-${Math.random().toString(36).slice(2)}Q7`;
    values.add(hand);
    const refused = next<Check>('rotor:drift', (m) => m.secret === name && (m.refused ?? 0) > 0);
    await server.root('ACL', 'SETUSER', user, 'resetpass', `>${hand}`);
    await refused;
    t.equal(d.status().secrets.find((x) => x.name === name)?.failing?.error, 'DRIFT_DETECTED');
    const s = await scrape('drift', d.metricsAddress!);
    t.equal(sample(s.text!, 'rotor_secret_drift', { secret: name }), 1, 'rotor_secret_drift 1');
    t.equal(sample(s.text!, 'rotor_secret_failing', { secret: name }), 1, 'and failing (DRIFT_DETECTED)');
    scenarios.push({
      name: 'the database refuses the served credential (drift, onDrift: alert)',
      scrapes: [s],
      // RotorRotationFailing leaves a drifting secret out: one alert for the drift.
      firing: [{ alert: 'RotorDriftDetected', labels: { ...at, secret: name } }],
    });
    drifted = true;
  });

  t.test('leadership (hand-made statuses of daemons sharing a PostgreSQL store)', async (t) => {
    const base: StatusReading = { now: '2026-11-26T00:00:00.000Z', config: {}, secrets: [] };
    const metricsOf = async (status: StatusReading) => {
      const m = metricsRegistry({ status: () => status });
      try {
        m.newScrape();
        return await m.registry.metrics();
      } finally {
        m.close();
      }
    };
    const two = async (a: StatusReading['leadership'], b: StatusReading['leadership']): Promise<Scrape[]> => [
      { instance: '10.0.0.1:9464', job: JOB, text: await metricsOf({ ...base, leadership: a }) },
      { instance: '10.0.0.2:9464', job: JOB, text: await metricsOf({ ...base, leadership: b }) },
    ];
    scenarios.push({
      name: 'one daemon leads, one follows',
      scrapes: await two(leaderView(), followerView()),
      firing: [],
    });
    scenarios.push({
      name: 'the lease expired and nobody took it',
      scrapes: await two(candidateView(), candidateView()),
      firing: [{ alert: 'RotorNoLeader', labels: { job: JOB } }],
    });
    t.pass('statuses made');
  });

  t.test('promtool check metrics: every live scrape', async (t) => {
    t.ok(live.length >= 6, 'scrapes were taken');
    for (const { name, text } of live) {
      const r = await promtool(promtoolBin, ['check', 'metrics'], text);
      t.equal(r.code, 0, `${name}: promtool check metrics\n${r.stdout}${r.stderr}`);
      t.equal(`${r.stdout}${r.stderr}`.trim(), '', `${name}: no complaint`);
    }
  });

  t.test('promtool test rules: exactly the expected alerts fire in each scenario', async (t) => {
    // Without redis-server the drift scenarios are skipped (failed under ROTOR_REQUIRE_SERVICES=1).
    t.equal(scenarios.length, drifted ? 11 : 9, 'every scenario was made');
    const fired = new Set(scenarios.flatMap((s) => s.firing.map((e) => e.alert)));
    for (const rule of rules)
      if (drifted || rule.alert !== 'RotorDriftDetected')
        t.ok(fired.has(rule.alert), `${rule.alert} fires in some scenario`);
    const dir = tempDir(t, 'rotor-alerts-');
    const file = path.join(dir, 'rotor-alerts.test.yml');
    const text = ruleTests(RULES, rules, scenarios);
    writeFileSync(file, text);
    for (const v of values) {
      t.notOk(text.includes(v), 'no value of a secret in the series');
      for (const s of live) t.notOk(s.text.includes(v), `${s.name}: no value of a secret in the scrape`);
    }
    const r = await promtool(promtoolBin, ['test', 'rules', file]);
    t.equal(r.code, 0, `promtool test rules\n${r.stdout}${r.stderr}`);
    t.match(r.stdout, /SUCCESS/);

    // And the check can fail: the same test with one expected alert left out does.
    const missing = scenarios.map((s) => (s.firing.length ? { ...s, firing: s.firing.slice(1) } : s));
    writeFileSync(file, ruleTests(RULES, rules, missing));
    const wrong = await promtool(promtoolBin, ['test', 'rules', file]);
    t.equal(wrong.code, 1, 'an alert that fires but is not expected fails the test');
  });
}
