/** GET /metrics of a running daemon: the rotation and overdue series move when they should; the leadership series from a hand-made status. */
import { request } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { getSecret } from '../src/client/index.js';
import { metricsRegistry } from '../src/serve/metrics.js';
import type { StatusReading } from '../src/serve/status.js';
import { candidateView, followerView, leaderView } from './lib/leadership.js';
import { world } from './world.js';

function scrape(address: string): Promise<{ status: number; type: string; text: string }> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = request(
      { host: address.slice(0, i), port: Number(address.slice(i + 1)), path: '/metrics', agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), text }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

/** The value of one series, e.g. value(text, 'rotor_rotations_total{result="success"}'). */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

t.test('metrics: rotations, duration, age, overdue, consumers, config, socket requests', async (t) => {
  let clock = Date.parse('2026-11-26T00:00:00Z');
  const uid = process.getuid!();
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nmaxAge: 45d\n',
    'secrets.yaml': 'kind: Secret\nname: app/token\npolicy: p\ngenerate: {}\n',
    'consumer.yaml': `kind: Consumer\nname: web\nuid: ${uid}\nsecrets: ["app/*"]\n`,
  });
  const d = await w.start({ socketDir: path.join(w.root, 'sockets'), metricsListen: '127.0.0.1:0', now: () => clock });
  t.teardown(() => d.stop());
  const m0 = await scrape(d.metricsAddress!);
  t.equal(m0.status, 200);
  t.match(m0.type, /^text\/plain; version=0\.0\.4/);
  const success0 = value(m0.text, 'rotor_rotations_total{result="success"}')!;
  t.ok(success0 >= 1, 'version 1 counted');
  t.equal(value(m0.text, 'rotor_secret_overdue{secret="app/token"}'), 0);
  t.equal(value(m0.text, 'rotor_secrets_overdue'), 0);
  t.equal(value(m0.text, 'rotor_secret_version{secret="app/token"}'), 1);
  t.match(m0.text, /rotor_config_info\{commit="[0-9a-f]{40}",state="applied"\} 1/);

  // 46 days later, nothing rotated (the timer has not fired): overdue.
  clock += 46 * 86400_000;
  const m1 = await scrape(d.metricsAddress!);
  t.equal(value(m1.text, 'rotor_secret_overdue{secret="app/token"}'), 1, 'older than maxAge: overdue');
  t.equal(value(m1.text, 'rotor_secrets_overdue'), 1);
  t.equal(value(m1.text, 'rotor_secret_age_seconds{secret="app/token"}'), 46 * 86400);

  await d.rotateNow('app/token', 'metrics test');
  await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'web.sock') });
  const m2 = await scrape(d.metricsAddress!);
  t.equal(value(m2.text, 'rotor_rotations_total{result="success"}'), success0 + 1, 'the rotation is counted');
  t.equal(value(m2.text, 'rotor_secret_overdue{secret="app/token"}'), 0, 'rotated: no longer overdue');
  t.equal(value(m2.text, 'rotor_secret_age_seconds{secret="app/token"}'), 0);
  t.equal(value(m2.text, 'rotor_secret_version{secret="app/token"}'), 2);
  t.ok(value(m2.text, 'rotor_rotation_duration_seconds_count')! >= 2, 'durations observed');
  t.equal(value(m2.text, 'rotor_socket_requests_total{consumer="web",status="200"}'), 1);
  t.match(m2.text, /^# TYPE rotor_socket_requests_total counter$/m, 'a counter, named as one');
  t.equal(value(m2.text, 'rotor_consumers_behind{secret="app/token"}'), 0);
  t.equal(
    value(m2.text, 'rotor_secret_overlap_remaining_seconds{secret="app/token"}'),
    86400,
    'version 1 is served for the 1d overlap',
  );
  t.notMatch(m0.text, /rotor_secret_overlap_remaining_seconds\{/, 'no overlap before the first rotation');
  t.equal(value(m2.text, 'rotor_secret_failing{secret="app/token"}'), 0);
  t.equal(value(m2.text, 'rotor_secrets_failing'), 0);
  t.equal(value(m2.text, 'rotor_storage_write_failures_total{store="state"}'), 0);
  t.match(m2.text, /^# TYPE process_cpu_seconds_total counter$/m, "the process's own series, by their standard names");
  t.match(m2.text, /^# TYPE nodejs_heap_size_used_bytes gauge$/m);
  t.notMatch(m2.text, /^# TYPE \S+_total gauge$/m, 'no gauge named like a counter');
  t.notMatch(m2.text, /rotor_process_/, 'nor under the old prefix');
  t.notOk(m2.text.includes(String(d.served('app/token')!.value)), 'no value in the metrics');
});

t.test('metrics: the leadership of daemons sharing the store, only when the status has it', async (t) => {
  const base: StatusReading = { now: '2026-11-26T00:00:00.000Z', config: {}, secrets: [] };
  let status: StatusReading = { ...base, leadership: leaderView() };
  const m = metricsRegistry({ status: () => status });
  t.teardown(() => m.close());
  const scrape = () => {
    m.newScrape();
    return m.registry.metrics();
  };

  const leader = await scrape();
  t.equal(value(leader, 'rotor_leader'), 1, 'this daemon leads');
  t.equal(value(leader, 'rotor_lease_term'), 7);
  t.equal(value(leader, 'rotor_lease_age_seconds'), 2.4, 'the lease was renewed 2.4 s ago');
  t.equal(value(leader, 'rotor_daemons'), 3, 'three daemons seen');
  t.equal(value(leader, 'rotor_daemon_last_seen_seconds{daemon="rotor-a",role="leader"}'), 2.4);
  t.equal(value(leader, 'rotor_daemon_last_seen_seconds{daemon="rotor-b",role="follower"}'), 1.2);
  t.equal(
    value(leader, 'rotor_daemon_last_seen_seconds{daemon="<img src=x onerror=\\"alert(1)\\">",role="follower"}'),
    95,
    'a quote in a name is escaped in its label value',
  );
  t.match(leader, /^# HELP rotor_leader 1 while this daemon leads/m);
  t.match(leader, /^# TYPE rotor_daemon_last_seen_seconds gauge$/m);

  status = { ...base, leadership: followerView() };
  const follower = await scrape();
  t.equal(value(follower, 'rotor_leader'), 0, 'a follower does not lead');
  t.equal(value(follower, 'rotor_lease_term'), 7);

  status = { ...base, leadership: candidateView() };
  const candidate = await scrape();
  t.equal(value(candidate, 'rotor_leader'), 0);
  t.notMatch(candidate, /rotor_lease_age_seconds/, 'no lease age while nobody holds the lease');
  t.equal(value(candidate, 'rotor_daemon_last_seen_seconds{daemon="rotor-a",role="candidate"}'), 2.4);

  status = {
    ...base,
    leadership: {
      ...leaderView(),
      daemons: [
        { id: '1', name: 'twin', role: 'follower', seenAgoMs: 9000 },
        { id: '2', name: 'twin', role: 'follower', seenAgoMs: 3000 },
        { id: '3', name: 'back\\slash\nline', role: 'follower', seenAgoMs: 0 },
      ],
    },
  };
  const twins = await scrape();
  t.equal(
    value(twins, 'rotor_daemon_last_seen_seconds{daemon="twin",role="follower"}'),
    3,
    'one name: the one seen last',
  );
  t.equal(value(twins, 'rotor_daemon_last_seen_seconds{daemon="back\\\\slash\\nline",role="follower"}'), 0);
  t.equal(value(twins, 'rotor_daemons'), 3, 'but each daemon counted');

  status = base;
  const single = await scrape();
  t.notMatch(single, /rotor_leader|rotor_lease_|rotor_daemon/, 'nothing of it with one daemon (the file store)');
  t.match(single, /^rotor_secrets_overdue 0$/m, 'the other series as ever');
  status = { ...base, leadership: followerView() };
  t.equal(value(await scrape(), 'rotor_leader'), 0, 'and back when the status has it again');
});
