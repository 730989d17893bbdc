#!/usr/bin/env node
// bench/agent-flood: unauthenticated peers against the agent API of a running `rotor daemon` (its own
// process, as a user runs it). CONNECTIONS connections at once, spread over ADDRESSES loopback source
// addresses (127.0.0.2, 127.0.0.3, ...; the real agent calls from 127.0.0.1). Each sends the headers of
// POST /v1/agent/jobs claiming a BODY-byte body, half of them for an agent nobody declared and half
// with a forged signature for the declared one, then pushes the body (64 KiB writes, waiting for
// 'drain') until an answer arrives or the daemon closes the connection. While they are open, the real
// agent (the project's signing code, the agent's own key) polls for jobs.
//
// Prints the daemon's resident memory (VmRSS of /proc/PID/status) before the flood, its peak
// (VmHWM, and the highest VmRSS sampled every 20 ms) and after, the answers the intruders got, and
// the real agent's answer during the flood.
// With --rounds N the flood is repeated N times, one after the other (the RSS after each is printed).
// Usage: npm run bench:agent-flood [-- --connections 1000 --body 1048576 --addresses 20 --rounds 1]
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { benchRemote } from './lib/remote.mjs';

const { values: opts } = parseArgs({
  options: {
    connections: { type: 'string', default: '1000' },
    body: { type: 'string', default: String(1024 * 1024) },
    addresses: { type: 'string', default: '20' },
    rounds: { type: 'string', default: '1' },
  },
});
const ROUNDS = Number(opts.rounds);
const CONNECTIONS = Number(opts.connections);
const BODY = Number(opts.body);
const ADDRESSES = Number(opts.addresses);
const DIST = new URL('../dist/', import.meta.url).pathname;
const BIN = path.join(DIST, 'src/cli/main.js');
const { signRequest, newNonce } = await import(path.join(DIST, 'src/protocol/sign.js'));
const { loadKeys } = await import(path.join(DIST, 'src/keys.js'));

const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-flood-'));
let daemon;
process.on('exit', () => {
  daemon?.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

// The repository: one agent, its target, one database secret (a job waits for the agent).
const agentDir = path.join(root, 'agent-keys');
execFileSync(process.execPath, [BIN, 'keygen', agentDir], { stdio: 'ignore' });
const agentKeys = await loadKeys(agentDir);
const remote = benchRemote(root, {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  'policy.yaml': 'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1d\n',
  'agent.yaml': `kind: Agent\nname: db-host-1\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host-1\n`,
  'secret.yaml':
    'kind: Secret\nname: app/db\npolicy: monthly\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [app_blue, app_green] }\n',
});
const dataDir = path.join(root, 'data');
execFileSync(process.execPath, [BIN, 'keygen', dataDir], { stdio: 'ignore' });

daemon = spawn(
  process.execPath,
  [
    BIN,
    'daemon',
    '--repo',
    remote,
    '--data-dir',
    dataDir,
    '--socket-dir',
    path.join(root, 'sockets'),
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    'off',
    '--log-level',
    'warn',
  ],
  { stdio: ['ignore', 'ignore', 'pipe'] },
);
// Nothing at info is logged with --log-level warn, so the address comes from the admin status.
let stderrTail = '';
daemon.stderr.on('data', (c) => (stderrTail = (stderrTail + c).slice(-4000)));
const address = await new Promise((resolve, reject) => {
  const sock = path.join(dataDir, 'admin.sock');
  const tryOnce = (left) => {
    const req = request({ socketPath: sock, path: '/v1/status', agent: false }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve(JSON.parse(text).agents.listen));
    });
    req.on('error', () =>
      left > 0 ? setTimeout(() => tryOnce(left - 1), 50) : reject(new Error(`the daemon did not start: ${stderrTail}`)),
    );
    req.end();
  };
  tryOnce(400);
});
const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];

const rss = () => {
  const s = readFileSync(`/proc/${daemon.pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)[1]);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
};

/** One signed poll of the real agent: its status and how long the answer took. */
function poll() {
  const body = JSON.stringify({ wait: 0 });
  const headers = signRequest({
    agent: 'db-host-1',
    method: 'POST',
    path: '/v1/agent/jobs',
    body,
    privateKey: agentKeys.signing,
  });
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host,
        port,
        path: '/v1/agent/jobs',
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode, ms: performance.now() - t0 }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const zeros = Buffer.alloc(64 * 1024);
/** One intruder: the headers of an unauthenticated request claiming BODY bytes, then the body until answered. */
function intruder(i) {
  return new Promise((resolve) => {
    const known = i % 2 === 1;
    const head = [
      'POST /v1/agent/jobs HTTP/1.1',
      `Host: ${address}`,
      'Content-Type: application/json',
      `Content-Length: ${BODY}`,
      `x-rotor-agent: ${known ? 'db-host-1' : `intruder-${i}`}`,
      `x-rotor-timestamp: ${Date.now()}`,
      `x-rotor-nonce: ${newNonce()}`,
      `x-rotor-content-sha256: ${randomBytes(32).toString('hex')}`,
      `x-rotor-signature: ${randomBytes(64).toString('base64')}`,
      '',
      '',
    ].join('\r\n');
    const sock = net.connect({ host, port, localAddress: `127.0.0.${2 + (i % ADDRESSES)}` });
    let answer = '';
    let sent = 0;
    sock.on('data', (c) => {
      if (answer.length < 64) answer += c.toString('latin1');
    });
    sock.on('error', () => {});
    sock.on('close', () =>
      resolve({ status: /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1] ?? 'closed without an answer', sent }),
    );
    sock.on('connect', async () => {
      sock.write(head);
      while (sent < BODY && answer === '' && !sock.destroyed) {
        const n = Math.min(zeros.length, BODY - sent);
        sent += n;
        if (!sock.write(n === zeros.length ? zeros : zeros.subarray(0, n)))
          await new Promise((r) => {
            sock.once('drain', r);
            sock.once('close', r);
          });
      }
    });
  });
}

if ((await poll()).status !== 200) throw new Error('the real agent is not served before the flood');
await new Promise((r) => setTimeout(r, 1000));
const before = rss();
const mb = (x) => `${x.toFixed(1)} MB`;
console.log(
  `bench/agent-flood: ${CONNECTIONS} unauthenticated connections from ${ADDRESSES} loopback addresses, each claiming a ${BODY}-byte body; Node ${process.version}, ${os.cpus().length} cores`,
);
for (let round = 1; round <= ROUNDS; round++) {
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, rss().rss)), 20);
  const t0 = performance.now();
  const flood = Array.from({ length: CONNECTIONS }, (_, i) => intruder(i));
  const during = await poll();
  const outcomes = await Promise.all(flood);
  const floodMs = performance.now() - t0;
  clearInterval(sampler);
  await new Promise((r) => setTimeout(r, 1000));
  const after = rss();
  const byStatus = {};
  for (const o of outcomes) byStatus[o.status] = (byStatus[o.status] ?? 0) + 1;
  if (ROUNDS > 1) console.log(`round ${round}:`);
  console.log(
    `daemon RSS before ${mb(before.rss)}, peak ${mb(Math.max(peak, after.rss))} (VmHWM ${mb(after.hwm)}), after ${mb(after.rss)}`,
  );
  console.log(
    `intruders' answers: ${Object.entries(byStatus)
      .map(([s, n]) => `${s} x ${n}`)
      .join(', ')}; all done in ${(floodMs / 1000).toFixed(2)} s`,
  );
  console.log(`the real agent during the flood: ${during.status} in ${during.ms.toFixed(1)} ms`);
}
daemon.kill('SIGTERM');
await new Promise((r) => daemon.once('exit', r));
process.exit(0);
