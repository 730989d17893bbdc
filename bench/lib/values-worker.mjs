// A process of bench/agent-propagation: runs many agents' consumer hosts (the real ConsumerHost of
// rotor-agent, without sockets or cache), each with its own keys and its own keep-alive connection to
// the daemon from one of several loopback addresses (the daemon takes at most 128 connections from one
// address). Records when each version arrives (process.hrtime, CLOCK_MONOTONIC, comparable across
// processes on one machine) and reports to the parent over IPC:
//   { type: 'arrived', version, times: [ns as string...] }  once every agent here has `version`
//   { type: 'failures', count }                              on request
import diagnostics_channel from 'node:diagnostics_channel';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const root = new URL('../../', import.meta.url).pathname;
const { ConsumerHost } = await import(path.join(root, 'agent/dist/host.js'));
const { DaemonClient } = await import(path.join(root, 'agent/dist/transport.js'));
const { loadKeys, parseSigningKey } = await import(path.join(root, 'dist/src/keys.js'));

const { agents, daemon, daemonSigningKey, addresses } = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const signing = parseSigningKey(daemonSigningKey);
let failures = 0;
const log = (level, msg, fields) => {
  if (level === 'warn' || level === 'error') {
    failures++;
    if (process.env.BENCH_DEBUG) process.stderr.write(`${level} ${msg} ${JSON.stringify(fields)}\n`);
  }
};

/** The transport seam of rotor-agent, bound to one local address, one keep-alive connection. */
function transportFrom(localAddress) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 2, localAddress });
  return (x) =>
    new Promise((resolve, reject) => {
      const req = http.request(x.url, {
        method: 'POST',
        agent,
        headers: { ...x.headers, 'content-type': 'application/json', 'content-length': String(x.body.length) },
        signal: x.signal,
      });
      const timer = setTimeout(() => req.destroy(new Error('timeout')), x.timeoutMs);
      req.on('response', (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) });
        });
        res.on('error', reject);
      });
      req.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      req.end(x.body);
    });
}

const arrivals = new Map(); // version -> ns[]
const seen = new Map(); // agent -> highest version
diagnostics_channel.channel('rotor-agent:values').subscribe((m) => {
  const now = process.hrtime.bigint();
  for (const s of m.secrets) {
    if (s.version === undefined || (seen.get(m.agent) ?? 0) >= s.version) continue;
    seen.set(m.agent, s.version);
    let list = arrivals.get(s.version);
    if (!list) arrivals.set(s.version, (list = []));
    list.push(now);
    if (list.length === agents.length) {
      process.send({ type: 'arrived', version: s.version, times: list.map(String) });
      arrivals.delete(s.version);
    }
  }
});

const retry = {
  backoff: { baseMs: 100, capMs: 2000, random: Math.random },
  sleep: (ms, signal) =>
    new Promise((r) => {
      const t = setTimeout(r, ms);
      signal.addEventListener(
        'abort',
        () => {
          clearTimeout(t);
          r();
        },
        { once: true },
      );
    }),
};
const hosts = [];
for (const [i, a] of agents.entries()) {
  const keys = await loadKeys(a.keyDir);
  const config = {
    name: a.name,
    keys,
    keyDir: a.keyDir,
    socketDir: '/nonexistent',
    daemons: [new URL(daemon)],
    daemonSigningKey: signing,
  };
  const client = new DaemonClient({
    config,
    transport: transportFrom(addresses[i % addresses.length]),
    log,
    now: Date.now,
    maxAnswerBytes: 1 << 20,
  });
  const host = new ConsumerHost({ config, client, log, retry, cache: false, sockets: false, wait: 55 });
  hosts.push(host);
  await host.start();
}
process.on('message', async (m) => {
  if (m.type === 'failures') process.send({ type: 'failures', count: failures });
  if (m.type === 'stop') {
    await Promise.all(hosts.map((h) => h.stop()));
    process.exit(0);
  }
});
process.send({ type: 'started' });
