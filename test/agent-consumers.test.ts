/**
 * Consumers on an agent's host: a daemon (in-process) and a rotor-agent (in-process) that serves the
 * sockets of the Consumers declared with `agent:` its name, from values the daemon pushes through the
 * signed, sealed long-poll. The consumer reads through the agent's socket exactly as through the
 * daemon's; a rotation arrives by the long-poll; read receipts from the agent let `retireAfter:
 * consumers` retire; the daemon stopped, the agent keeps serving and says stale; restarted without the
 * daemon, the agent serves its sealed cache; moved off the agent, the consumer loses its socket there.
 */
import diagnostics_channel from 'node:diagnostics_channel';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import type { AgentReceiptsMessage } from '../agent/src/host.js';
import { CACHE_FILE } from '../agent/src/host.js';
import { getSecret, watchSecret } from '../src/client/index.js';
import type { Daemon } from '../src/daemon/daemon.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { readAgentTls } from '../src/serve/tls.js';
import { rotor, tempDir } from './helpers.js';
import { makeTls } from './services/tls.js';
import { applied, step, world } from './world.js';

const UID = process.getuid!();

/** Resolves once the daemon accepted the agent's receipt for consumer/secret at `version` (or newer). */
function receipted(consumer: string, secret: string, version: number): Promise<void> {
  const ch = diagnostics_channel.channel('rotor-agent:receipts');
  return new Promise((resolve) => {
    const f = (m: unknown) => {
      const e = m as AgentReceiptsMessage;
      if (e.receipts.some((r) => r.consumer === consumer && r.secret === secret && r.version >= version)) {
        ch.unsubscribe(f);
        resolve();
      }
    };
    ch.subscribe(f);
  });
}

/** The fields of the consumer API's answers these tests look at. */
interface Body {
  version?: number;
  previous?: { version: number };
  error?: { code: string };
  status?: string;
  since?: string;
  consumer?: string;
  secrets?: unknown;
}

/** GET on a Unix socket: status and parsed JSON. */
function get(socketPath: string, p: string): Promise<{ status: number; body: Body }> {
  return new Promise((resolve, reject) => {
    http
      .get({ socketPath, path: p }, (res) => {
        let text = '';
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
      })
      .on('error', reject);
  });
}

/** A logger whose lines can be awaited. */
function awaitableLog() {
  let text = '';
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  const log = jsonLogger((l) => {
    text += l;
    for (const w of [...waiters])
      if (w.re.test(l)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
  });
  return {
    log,
    text: () => text,
    next: (re: RegExp) => new Promise<void>((resolve) => waiters.push({ re, resolve })),
  };
}

t.test(
  'a consumer on an agent host reads through the agent, with the daemon, without it, and after a restart',
  async (t) => {
    const keysRoot = tempDir(t, 'rotor-host-keys-');
    const agentDir = path.join(keysRoot, 'web-1');
    await generateKeys(agentDir);
    const agentKeys = await loadKeys(agentDir);
    const consumerOn = (agent: string | undefined) =>
      `kind: Consumer\nname: web\n${agent ? `agent: ${agent}\n` : ''}uid: ${UID}\nsecrets: ["app/*"]\n`;
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nretireAfter: consumers\n',
      'agent.yaml': `kind: Agent\nname: web-1\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
      'secrets.yaml': [
        'kind: Secret\nname: app/key\npolicy: p\ngenerate: { length: 32 }',
        'kind: Secret\nname: other/key\npolicy: p\ngenerate: { length: 32 }',
        '',
      ].join('\n---\n'),
      'consumer.yaml': consumerOn('web-1'),
      'local.yaml': `kind: Consumer\nname: local\nuid: ${UID}\nsecrets: ["app/*", "other/*"]\n`,
    });
    const daemonSockets = path.join(w.root, 'sockets');
    let d: Daemon = await w.start({ socketDir: daemonSockets, agentListen: '127.0.0.1:0' });
    const port = d.agentAddress!.split(':').pop()!;
    t.teardown(() => d.stop());
    t.ok(existsSync(path.join(daemonSockets, 'local.sock')), 'the daemon serves the consumer without agent:');
    t.notOk(existsSync(path.join(daemonSockets, 'web.sock')), 'the daemon does not serve the consumer on web-1');

    const daemonKeys = await loadKeys(w.dataDir);
    const socketDir = path.join(keysRoot, 'run');
    const configFile = path.join(keysRoot, 'agent.yaml');
    writeFileSync(
      configFile,
      [
        `daemon: http://127.0.0.1:${port}`,
        'name: web-1',
        `keyDir: ${agentDir}`,
        `daemonSigningKey: "${daemonKeys.signingKey}"`,
        `socketDir: ${socketDir}`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const config = await loadAgentConfig(configFile);
    const alog = awaitableLog();
    const startAgent = () => {
      const a = new Agent(config, {
        log: alog.log,
        wait: 5,
        backoff: { baseMs: 20, capMs: 200 },
        hostConsumers: { wait: 5 },
      });
      a.start();
      return a;
    };
    const firstValues = applied((m) => m.full && m.secrets.some((s) => s.name === 'app/key' && s.version === 1));
    let agent = startAgent();
    t.teardown(() => agent.stop({ graceMs: 2000 }));
    const first = await firstValues;
    t.same(
      first.secrets.map((s) => s.name),
      ['app/key'],
      'the agent is sent only the secrets its consumers may read (not other/key)',
    );
    const sock = path.join(socketDir, 'web.sock');
    t.equal(statSync(sock).mode & 0o777, 0o600, "the agent's socket is 0600");
    t.equal(statSync(socketDir).mode & 0o777, 0o711, 'its directory is 0711');

    const v1 = await getSecret('app/key', { socket: sock });
    t.equal(v1.version, 1);
    t.equal(v1.value, d.served('app/key')!.value, 'the agent serves the value the daemon serves');
    const denied = await get(sock, '/v1/secrets/other/key');
    t.equal(denied.status, 403, 'a secret the consumer is not granted: 403 through the agent too');
    t.equal(denied.body.error.code, 'ACCESS_DENIED');
    t.equal(
      (await get(sock, '/v1/secrets/app/nothing')).body.error.code,
      'SECRET_UNKNOWN',
      'granted but undeclared: 404',
    );
    t.same((await get(sock, '/v1/secrets')).body, { consumer: 'web', secrets: [{ name: 'app/key', version: 1 }] });
    t.equal((await get(sock, '/v1/health')).body.status, 'ok');

    // A rotation reaches the agent by the long-poll: a consumer waiting on the agent's socket wakes with it.
    const waiting = get(sock, '/v1/secrets/app/key?wait=60&after=1');
    const arrived = applied((m) => !m.full && m.secrets.some((s) => s.name === 'app/key' && s.version === 2));
    await d.rotateNow('app/key', 'test');
    await arrived;
    const woke = await waiting;
    t.equal(woke.body.version, 2, 'the long-poll on the agent socket answers with the new version');
    t.equal(woke.body.previous.version, 1, 'with the previous one during the overlap');
    t.equal((await getSecret('app/key', { socket: sock, version: 1 })).version, 1, '?version= of the previous one');

    // retireAfter: consumers: `web` (on web-1) has read v2; `local` (on the daemon) has not: no retirement yet.
    // Once `local` reads too, the previous version retires at once.
    const status = () => d.status().secrets.find((s) => s.name === 'app/key')!;
    const retired = step('app/key', 'retired');
    // The agent's receipt for `web` (sent when the long-poll above answered) is taken by the daemon.
    if (status().consumers.find((c) => c.name === 'web')?.version !== 2) await receipted('web', 'app/key', 2);
    const web = status().consumers.find((c) => c.name === 'web')!;
    t.equal(web.host, 'web-1', 'status names the host that serves the consumer');
    t.equal(status().consumers.find((c) => c.name === 'local')!.host, 'daemon');
    t.ok(d.served('app/key')!.previous, 'the previous version stays while a consumer on another host has not read');
    await getSecret('app/key', { socket: path.join(daemonSockets, 'local.sock') });
    await retired;
    t.notOk(d.served('app/key')!.previous, 'every consumer on every host read v2: the previous version retired');

    // The daemon stops: the agent keeps serving, and says stale.
    const lost = alog.next(/lost the daemon/);
    await d.stop();
    await lost;
    const stale = await get(sock, '/v1/health');
    t.equal(stale.body.status, 'stale', 'health: stale while the daemon is away');
    t.ok(Date.parse(stale.body.since) > 0, 'since the last answer');
    t.equal((await getSecret('app/key', { socket: sock })).version, 2, 'the last value is still served');

    // The agent restarts while the daemon is down: it serves from its sealed cache.
    await agent.stop({ graceMs: 2000 });
    const cache = readFileSync(path.join(agentDir, CACHE_FILE), 'utf8');
    t.equal(statSync(path.join(agentDir, CACHE_FILE)).mode & 0o777, 0o600, 'the cache is 0600');
    t.match(cache, /^-----BEGIN AGE ENCRYPTED FILE-----/, 'the cache is an age file');
    const cacheServed = alog.next(/serving the sealed cache/);
    agent = startAgent();
    await cacheServed;
    const fromCache = await getSecret('app/key', { socket: sock });
    t.equal(fromCache.version, 2, 'a restarted agent serves its cache while the daemon is down');
    t.equal((await get(sock, '/v1/health')).body.status, 'stale');

    // The daemon comes back: the agent catches up (a full answer, since the daemon's epoch changed).
    const caughtUp = applied((m) => m.full);
    d = await w.start({ socketDir: daemonSockets, agentListen: `127.0.0.1:${port}` });
    await caughtUp;
    t.equal((await get(sock, '/v1/health')).body.status, 'ok', 'health ok again');
    // rotor/client's watchSecret and `rotor get` work unchanged against the agent's socket.
    const watch = new AbortController();
    const watcher = watchSecret('app/key', { socket: sock, signal: watch.signal });
    t.equal((await watcher.next()).value?.version, 2, 'watchSecret yields the current version');
    const next = watcher.next();
    await d.rotateNow('app/key', 'after restart');
    t.equal((await next).value?.version, 3, 'then the new one, pushed through the agent');
    watch.abort();
    const cli = await rotor(['get', 'app/key', '--socket', sock]);
    t.equal(cli.code, 0, cli.stderr);
    t.equal(cli.stdout, `${d.served('app/key')!.value}\n`, 'rotor get prints the value through the agent');

    // The consumer moves to the daemon's host: its socket on web-1 goes at the next applied commit.
    const moved = applied((m) => m.full && m.secrets.length === 0);
    w.push('consumer.yaml', consumerOn(undefined), 'web moves to the daemon host');
    await d.syncNow();
    await moved;
    t.notOk(existsSync(sock), "the moved consumer's socket is gone from the agent's host");
    t.ok(existsSync(path.join(daemonSockets, 'web.sock')), 'and the daemon serves it now');

    const values = [v1.value, fromCache.value, d.served('app/key')!.value].map(String);
    const logs = w.logs() + alog.text();
    t.notOk(
      values.some((v) => logs.includes(v) || cache.includes(v)),
      'no value in any log or in the cache in clear',
    );
  },
);

t.test(
  'over TLS: the values and the receipts of a consumer on an agent host travel on an https:// listener the agent checks',
  async (t) => {
    const f = makeTls(t);
    const keysRoot = tempDir(t, 'rotor-host-tls-');
    const agentDir = path.join(keysRoot, 'web-1');
    await generateKeys(agentDir);
    const agentKeys = await loadKeys(agentDir);
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nretireAfter: consumers\n',
      'agent.yaml': `kind: Agent\nname: web-1\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
      'secret.yaml': 'kind: Secret\nname: app/key\npolicy: p\ngenerate: { length: 32 }\n',
      'consumer.yaml': `kind: Consumer\nname: web\nagent: web-1\nuid: ${UID}\nsecrets: ["app/*"]\n`,
    });
    const d = await w.start({
      socketDir: path.join(w.root, 'sockets'),
      agentListen: '127.0.0.1:0',
      agentTls: await readAgentTls(f.server.cert, f.server.key),
    });
    t.teardown(() => d.stop());
    const configFile = path.join(keysRoot, 'agent.yaml');
    writeFileSync(
      configFile,
      [
        `daemon: https://127.0.0.1:${d.agentAddress!.split(':').pop()}`,
        'name: web-1',
        `keyDir: ${agentDir}`,
        `daemonSigningKey: "${(await loadKeys(w.dataDir)).signingKey}"`,
        `socketDir: ${path.join(keysRoot, 'run')}`,
        `tls: { ca: ${f.ca.cert} }`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const first = applied((m) => m.full && m.secrets.some((s) => s.name === 'app/key' && s.version === 1));
    const agent = new Agent(await loadAgentConfig(configFile), {
      log: awaitableLog().log,
      wait: 5,
      backoff: { baseMs: 20, capMs: 200 },
      hostConsumers: { wait: 5 },
    });
    agent.start();
    t.teardown(() => agent.stop({ graceMs: 2000 }));
    await first;
    const sock = path.join(keysRoot, 'run', 'web.sock');
    const read = receipted('web', 'app/key', 1);
    t.equal((await getSecret('app/key', { socket: sock })).value, d.served('app/key')!.value, 'the value, over TLS');
    await read;
    t.equal(d.status().secrets[0]!.consumers[0]!.version, 1, 'the receipt came back over TLS');
  },
);
