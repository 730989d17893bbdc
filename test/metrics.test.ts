/** GET /metrics of a running daemon: the rotation and overdue series move when they should. */
import { request } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { getSecret } from '../src/client/index.js';
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
  t.equal(value(m2.text, 'rotor_socket_requests{consumer="web",status="200"}'), 1);
  t.equal(value(m2.text, 'rotor_consumers_behind{secret="app/token"}'), 0);
  t.notOk(m2.text.includes(String(d.served('app/token')!.value)), 'no value in the metrics');
});
