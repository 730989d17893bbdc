/**
 * Overdue means past maxAge or more than the grace behind the schedule, never "a rotation is under
 * way": a database rotation waiting for a stopped rotor-agent (live Redis with a password, a real
 * agent) is shown as rotating, not overdue, in `rotor status`, the metrics and the status page, until
 * it is more than the grace late.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import { OVERDUE_GRACE_MS } from '../src/daemon/status.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { rotor, tempDir } from './helpers.js';
import { startRedis } from './services/redis.js';
import { world } from './world.js';

const DAY = 86_400_000;

function on(secret: string, step: string, version: number): Promise<void> {
  const ch = diagnostics_channel.channel('rotor:rotation');
  return new Promise((resolve) => {
    const f = (m: unknown) => {
      const e = m as { secret: string; step: string; version?: number };
      if (e.secret === secret && e.step === step && e.version === version) {
        ch.unsubscribe(f);
        resolve();
      }
    };
    ch.subscribe(f);
  });
}

function get(address: string, p: string): Promise<string> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const req = request(
      { host: address.slice(0, i), port: Number(address.slice(i + 1)), path: p, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(text));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const series = (text: string, s: string) =>
  text
    .split('\n')
    .find((l) => l.startsWith(`${s} `))
    ?.slice(s.length + 1);

t.test('a rotation waiting for a stopped agent is rotating, not overdue, until the grace is past', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  await server.createUser('app_user', 'Initial-app_user-9');
  const name = 'db/cache';
  const keysRoot = tempDir(t, 'rotor-overdue-keys-');
  await generateKeys(path.join(keysRoot, 'agent'));
  const agentKeys = await loadKeys(path.join(keysRoot, 'agent'));
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
    'agent.yaml': `kind: Agent\nname: db-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
    'target.yaml': 'kind: Target\nname: cache\nengine: redis\nagent: db-host\n',
    'secret.yaml': `kind: Secret\nname: ${name}\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: cache, strategy: single, username: app_user }\n`,
  });
  let offset = 0;
  const now = () => Date.now() + offset;
  const first = on(name, 'finished', 1);
  const d = await w.start({ agentListen: '127.0.0.1:0', metricsListen: '127.0.0.1:0', now });
  t.teardown(() => d.stop());
  const daemonKeys = await loadKeys(w.dataDir);
  const configFile = path.join(keysRoot, 'agent.yaml');
  writeFileSync(
    configFile,
    `daemon: http://${d.agentAddress}\nname: db-host\nkeyDir: ${path.join(keysRoot, 'agent')}\ndaemonSigningKey: "${daemonKeys.signingKey}"\ntargets:\n  cache:\n    url: ${server.url}\n    password: { env: DB_ADMIN_PASSWORD }\n`,
    { mode: 0o600 },
  );
  const agent = new Agent(await loadAgentConfig(configFile, { env: { DB_ADMIN_PASSWORD: server.adminPassword } }), {
    log: jsonLogger(() => {}),
    wait: 5,
    backoff: { baseMs: 50, capMs: 500 },
  });
  agent.start();
  await first;
  await agent.stop({ graceMs: 5000 });

  // A rotation asked for now: version 2 is created and waits for the stopped agent to set it.
  const created = on(name, 'created', 2);
  const rotation = d.rotateNow(name, 'waits for the agent');
  rotation.catch(() => {}); // it ends with the daemon
  await created;

  const look = async () => {
    const status = await rotor(['status', '--data-dir', w.dataDir, '--json']);
    const s = (
      JSON.parse(status.stdout) as {
        secrets: { name: string; overdue: boolean; pending: boolean; nextRotationAt?: number }[];
      }
    ).secrets.find((x) => x.name === name)!;
    const metrics = await get(d.metricsAddress!, '/metrics');
    const page = await get(d.metricsAddress!, '/');
    return { code: status.code, s, metric: series(metrics, `rotor_secret_overdue{secret="${name}"}`), page };
  };
  const during = await look();
  t.equal(during.s.pending, true, 'the rotation is under way');
  t.equal(during.s.overdue, false, 'not overdue');
  t.ok((during.s.nextRotationAt ?? 0) > 0, 'nextRotationAt is when it fell due, not 0');
  t.equal(during.code, 0, 'rotor status: all well (exit 0)');
  t.equal(during.metric, '0', 'rotor_secret_overdue is 0');
  t.match(during.page, /class="badge info">rotating/, 'the page shows it rotating');
  t.notMatch(during.page, /badge warn">overdue/, 'and not overdue');

  // Within the grace after its schedule slot (30 days on), still only rotating.
  offset = 30 * DAY + OVERDUE_GRACE_MS / 2;
  const within = await look();
  t.equal(within.s.overdue, false, 'within the grace after the slot: not overdue');
  t.equal(within.code, 0);

  // More than the grace behind its slot, it is late whatever is under way.
  offset = 30 * DAY + OVERDUE_GRACE_MS + 60_000;
  const late = await look();
  t.equal(late.s.overdue, true, 'past the grace: overdue');
  t.equal(late.code, 1, 'rotor status exits 1');
  t.equal(late.metric, '1');
  t.match(late.page, /badge warn">overdue/);
});
