#!/usr/bin/env node
// bench/agent-propagation: how fast a new version reaches the consumers on agents' hosts. The real
// daemon (this process, the Daemon of dist/) with N agents declared, a consumer on each, all granted
// one secret; N real rotor-agent consumer hosts (agent/dist/host.js: the values long-poll, opening,
// applying; no sockets) spread over W worker processes. R rotations one after the other; for each,
// the time from the version becoming current on the daemon (the engine's `finished` step) to its
// arrival at each agent. Prints p50/p99/max propagation, failed deliveries (any warning or error an
// agent logged), and the daemon's CPU time per rotation per agent. Then, in the same run, the cost of
// sealing one answer per agent both ways: age (a file key and an X25519 stanza per message) against
// the key agreed once per agent and an AES-256-GCM seal per message (src/protocol/values.ts).
// Targets: 1,000 agents x 100 rotations, p99 < 1 s, no failed delivery.
// Usage: npm run bench:agent-propagation [-- --agents 1000 --rotations 100 --workers 4]
import { fork } from 'node:child_process';
import diagnostics_channel from 'node:diagnostics_channel';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { benchRemote } from './lib/remote.mjs';

const { values: opts } = parseArgs({
  options: {
    agents: { type: 'string', default: '1000' },
    rotations: { type: 'string', default: '100' },
    workers: { type: 'string', default: '4' },
  },
});
const N = Number(opts.agents);
const R = Number(opts.rotations);
const W = Number(opts.workers);
const dist = new URL('../dist/src/', import.meta.url).pathname;
const { Daemon } = await import(path.join(dist, 'daemon/daemon.js'));
const { generateKeys } = await import(path.join(dist, 'keys.js'));
const { ValuesSealer } = await import(path.join(dist, 'protocol/values.js'));
const { sealForAgent } = await import(path.join(dist, 'protocol/seal.js'));

const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-prop-'));
const children = [];
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

process.stderr.write(`making keys for ${N} agents...\n`);
const agents = [];
for (let i = 0; i < N; i++) {
  const keyDir = path.join(root, 'agents', `a${i}`);
  mkdirSync(path.dirname(keyDir), { recursive: true });
  const pub = await generateKeys(keyDir);
  agents.push({ name: `a${i}`, keyDir, ...pub });
}
const uid = process.getuid();
const remote = benchRemote(root, {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1h\n',
  'secret.yaml': 'kind: Secret\nname: bench/key\npolicy: p\ngenerate: { length: 40 }\n',
  'agents.yaml': agents
    .map((a) => `kind: Agent\nname: ${a.name}\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n`)
    .join('---\n'),
  'consumers.yaml': agents
    .map((a) => `kind: Consumer\nname: c-${a.name}\nagent: ${a.name}\nuid: ${uid}\nsecrets: [bench/key]\n`)
    .join('---\n'),
});
const dataDir = path.join(root, 'data');
await generateKeys(dataDir);
const daemonKeys = (await import(path.join(dist, 'keys.js'))).loadKeys;
const { signingKey } = await daemonKeys(dataDir);

const current = new Map(); // version -> hrtime ns when it became current
diagnostics_channel.channel('rotor:rotation').subscribe((m) => {
  if (m.secret === 'bench/key' && m.step === 'finished') current.set(m.version, process.hrtime.bigint());
});
let daemonLog = 0;
const d = new Daemon({
  repo: remote,
  branch: 'main',
  dataDir,
  breakGlass: [],
  socketDir: path.join(root, 'sockets'),
  agentListen: '127.0.0.1:0',
  log: (level, msg, fields) => {
    if (level === 'warn' || level === 'error') {
      daemonLog++;
      if (process.env.BENCH_DEBUG) process.stderr.write(`daemon ${level} ${msg} ${JSON.stringify(fields)}\n`);
    }
  },
});
await d.start();
process.stderr.write(`daemon on ${d.agentAddress}; starting ${W} worker processes...\n`);

// At most 100 agents per loopback address (the listener takes 128 connections from one address).
const addresses = Array.from(
  { length: Math.ceil(N / 100) },
  (_, i) => `127.0.${1 + Math.floor(i / 250)}.${(i % 250) + 2}`,
);
const waiters = new Map(); // version -> { left, times, resolve }
const expect = (version) => {
  let w = waiters.get(version);
  if (!w) {
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    w = { left: W, times: [], resolve, promise };
    waiters.set(version, w);
  }
  return w;
};
const workers = [];
for (let k = 0; k < W; k++) {
  const mine = agents.filter((_, i) => i % W === k).map(({ name, keyDir }) => ({ name, keyDir }));
  const spec = path.join(root, `worker-${k}.json`);
  writeFileSync(
    spec,
    JSON.stringify({ agents: mine, daemon: `http://${d.agentAddress}`, daemonSigningKey: signingKey, addresses }),
  );
  const child = fork(new URL('./lib/values-worker.mjs', import.meta.url).pathname, [spec], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.push(child);
  const started = new Promise((resolve) => {
    child.on('message', (m) => {
      if (m.type === 'started') resolve();
      if (m.type === 'arrived') {
        const w = expect(m.version);
        w.times.push(...m.times.map(BigInt));
        if (--w.left === 0) w.resolve();
      }
    });
  });
  workers.push({ child, started });
}
await Promise.all(workers.map((w) => w.started));
await expect(1).promise;
process.stderr.write(`all ${N} agents hold version 1; rotating ${R} times...\n`);

const latencies = [];
const cpu0 = process.cpuUsage();
const t0 = performance.now();
for (let v = 2; v <= R + 1; v++) {
  const arrived = expect(v).promise;
  await d.rotateNow('bench/key', 'bench');
  await arrived;
  const at = current.get(v);
  for (const t of waiters.get(v).times) latencies.push(Number(t - at) / 1e6);
  waiters.delete(v);
}
const wallMs = performance.now() - t0;
const cpu = process.cpuUsage(cpu0);
const failures = await Promise.all(
  workers.map(
    ({ child }) =>
      new Promise((resolve) => {
        child.once('message', (m) => resolve(m.count));
        child.send({ type: 'failures' });
      }),
  ),
);
latencies.sort((a, b) => a - b);
const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))];
const cpuMs = (cpu.user + cpu.system) / 1000;

// Sealing one answer per agent: age against the agreed key + AES-GCM, on the same payload.
const payload = {
  full: false,
  secrets: [
    {
      name: 'bench/key',
      current: { version: 2, value: 'x'.repeat(40), rotatedAt: new Date().toISOString() },
      nextRotationAt: null,
    },
  ],
};
const sealer = new ValuesSealer();
const SEALS = Math.min(N, 1000);
for (let i = 0; i < SEALS; i++) sealer.seal(agents[i].name, agents[i].recipient, 'e', i, payload); // keys agreed once
let s0 = performance.now();
for (let i = 0; i < SEALS; i++) sealer.seal(agents[i].name, agents[i].recipient, 'e', i, payload);
const gcmUs = ((performance.now() - s0) * 1000) / SEALS;
const AGE = Math.min(N, 200);
s0 = performance.now();
for (let i = 0; i < AGE; i++) await sealForAgent(agents[i].recipient, payload);
const ageUs = ((performance.now() - s0) * 1000) / AGE;

console.log(
  `bench/agent-propagation: ${N} agents in ${W} processes, ${R} rotations of one secret granted to a consumer on each, Node ${process.version}, ${os.cpus().length} cores`,
);
console.log(
  `propagation (version current on the daemon -> applied by the agent), ${latencies.length} deliveries: p50 ${q(0.5).toFixed(1)} ms, p99 ${q(0.99).toFixed(1)} ms, max ${latencies[latencies.length - 1].toFixed(1)} ms (target p99 < 1000 ms)`,
);
console.log(
  `failed deliveries: ${failures.reduce((a, b) => a + b, 0)} agent warnings/errors, ${daemonLog} daemon warnings/errors (target 0); ${(wallMs / R).toFixed(0)} ms per rotation round trip`,
);
console.log(
  `daemon CPU: ${cpuMs.toFixed(0)} ms for ${R} rotations x ${N} agents = ${((cpuMs * 1000) / (R * N)).toFixed(1)} us per rotation per agent (this process: the daemon and the bench's bookkeeping)`,
);
console.log(
  `sealing one answer per agent: age ${ageUs.toFixed(0)} us, agreed key + AES-256-GCM ${gcmUs.toFixed(1)} us (ratio ${(ageUs / gcmUs).toFixed(0)}x)`,
);
for (const { child } of workers) child.send({ type: 'stop' });
await Promise.all(workers.map(({ child }) => new Promise((r) => child.once('exit', r))));
await d.stop();
process.exit(0);
