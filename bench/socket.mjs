#!/usr/bin/env node
// bench/socket: GET /v1/secrets/NAME on a consumer socket of a running `rotor daemon` (its own
// process), on the socket of a consumer declared on a running `rotor-agent` (its own process, fed by
// that daemon), and on a bare node:http server on a Unix socket (also its own process) that answers a
// body of the same size with the same headers. All three are loaded in the same run by the same load
// generator (bench/lib/load.mjs: 32 keep-alive connections, closed loop, latencies to the microsecond),
// in turn, three times each. Prints requests per second and p50/p99 latency, and the ratios to bare.
// Targets: daemon/bare >= 0.7, p99 < 2 ms; agent/bare within 10% of daemon/bare.
// Usage: npm run bench:socket [-- --seconds 10]
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { load as generate } from './lib/load.mjs';
import { benchRemote } from './lib/remote.mjs';

const { values: opts } = parseArgs({
  options: { seconds: { type: 'string', default: '10' }, connections: { type: 'string', default: '32' } },
});
const SECONDS = Number(opts.seconds);
const CONNECTIONS = Number(opts.connections);
const BIN = new URL('../dist/src/cli/main.js', import.meta.url).pathname;
const AGENT_BIN = new URL('../agent/dist/main.js', import.meta.url).pathname;

const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-socket-'));
const children = [];
const cleanup = () => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
};
process.on('exit', cleanup);

async function waitFor(p) {
  for (let i = 0; i < 400 && !existsSync(p); i++) await new Promise((r) => setTimeout(r, 25));
  if (!existsSync(p)) throw new Error(`${p} did not appear`);
}

function getOnce(socketPath, p) {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: p, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

// The daemon, as a user runs it, and an agent serving a second consumer of the same secret.
const keysOf = (dir) => {
  const out = execFileSync(process.execPath, [BIN, 'keygen', dir], { encoding: 'utf8' });
  return { recipient: /recipient: "?([^"\s]+)/.exec(out)[1], signingKey: /signingKey: "?([^"\s]+)/.exec(out)[1] };
};
const agentDir = path.join(root, 'agent');
const agentKeys = keysOf(agentDir);
const remote = benchRemote(root, {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  'policy.yaml': 'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1d\n',
  'secret.yaml': 'kind: Secret\nname: payments/api-token\npolicy: monthly\ngenerate: { length: 40 }\n',
  'consumer.yaml': `kind: Consumer\nname: bench\nuid: ${process.getuid()}\nsecrets: ["payments/*"]\n`,
  'agent.yaml': `kind: Agent\nname: bench-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
  'remote-consumer.yaml': `kind: Consumer\nname: bench-remote\nagent: bench-host\nuid: ${process.getuid()}\nsecrets: ["payments/*"]\n`,
});
const dataDir = path.join(root, 'data');
const daemonKeys = keysOf(dataDir);
const socketDir = path.join(root, 'sockets');
const daemon = spawn(
  process.execPath,
  [
    ...(process.env.BENCH_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_PROF}`] : []),
    BIN,
    'daemon',
    '--repo',
    remote,
    '--data-dir',
    dataDir,
    '--socket-dir',
    socketDir,
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    'off',
    '--log-format',
    'json',
  ],
  { stdio: ['ignore', 'ignore', 'pipe'] },
);
children.push(daemon);
const agentAddress = await new Promise((resolve, reject) => {
  let text = '';
  daemon.stderr.on('data', (b) => {
    if (process.env.BENCH_DEBUG) process.stderr.write(b);
    text += b;
    const m = /"msg":"listening for agents"[^\n]*"address":"([^"]+)"/.exec(text);
    if (m) resolve(m[1]);
  });
  daemon.once('exit', () => reject(new Error(`the daemon exited: ${text.slice(-500)}`)));
});
const agentSockets = path.join(root, 'agent-sockets');
const agentConfig = path.join(root, 'agent.yaml');
writeFileSync(
  agentConfig,
  `daemon: http://${agentAddress}\nname: bench-host\nkeyDir: ${agentDir}\ndaemonSigningKey: "${daemonKeys.signingKey}"\nsocketDir: ${agentSockets}\n`,
  { mode: 0o600 },
);
const agent = spawn(process.execPath, [AGENT_BIN, '--config', agentConfig, '--log-format', 'json'], {
  stdio: ['ignore', 'ignore', process.env.BENCH_DEBUG ? 'inherit' : 'ignore'],
});
children.push(agent);
const rotorSocket = path.join(socketDir, 'bench.sock');
await waitFor(rotorSocket);
const urlPath = '/v1/secrets/payments/api-token';
const sample = await getOnce(rotorSocket, urlPath);
if (sample.status !== 200) throw new Error(`the daemon answered ${sample.status}`);
const agentSocket = path.join(agentSockets, 'bench-remote.sock');
await waitFor(agentSocket);
const agentSample = await getOnce(agentSocket, urlPath);
if (agentSample.status !== 200) throw new Error(`the agent answered ${agentSample.status}`);
if (agentSample.body.length !== sample.body.length)
  throw new Error('the agent and the daemon answer bodies of different sizes');

// The bare server: same body size, same headers, nothing else.
const bareSocket = path.join(root, 'bare.sock');
const bareBody = JSON.stringify({ pad: 'x'.repeat(sample.body.length - 10) });
if (Buffer.byteLength(bareBody) !== sample.body.length) throw new Error('body sizes differ');
const bareCode = `
const http = require('node:http');
const body = ${JSON.stringify(bareBody)};
http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}).listen(${JSON.stringify(bareSocket)});
`;
const bare = spawn(process.execPath, ['-e', bareCode], { stdio: 'ignore' });
children.push(bare);
await waitFor(bareSocket);

async function load(socketPath, p, seconds = SECONDS) {
  const r = await generate({ socketPath, path: p, connections: CONNECTIONS, seconds });
  if (r.errors) throw new Error(`${r.errors} requests failed`);
  return r;
}

// Warm both up, then alternate so that neither always runs on a hotter machine.
await load(rotorSocket, urlPath, 2);
await load(agentSocket, urlPath, 2);
await load(bareSocket, '/', 2);
const runs = { rotor: [], agent: [], bare: [] };
for (let i = 0; i < 3; i++) {
  runs.bare.push(await load(bareSocket, '/'));
  runs.rotor.push(await load(rotorSocket, urlPath));
  runs.agent.push(await load(agentSocket, urlPath));
}
const avg = (xs, k) => xs.reduce((s, x) => s + x[k], 0) / xs.length;
const max = (xs, k) => Math.max(...xs.map((x) => x[k]));
const row = (name, xs) =>
  `${name.padEnd(28)} ${avg(xs, 'rps').toFixed(0).padStart(8)} req/s   p50 ${avg(xs, 'p50').toFixed(3)} ms   p99 ${max(xs, 'p99').toFixed(3)} ms (worst run)`;
console.log(
  `bench/socket: GET ${urlPath} (${sample.body.length}-byte body), ${CONNECTIONS} connections, ${SECONDS} s x 3 runs each, Node ${process.version}, ${os.cpus().length} cores`,
);
console.log(row('bare node:http (baseline)', runs.bare));
console.log(row('rotor consumer socket', runs.rotor));
console.log(row('rotor-agent consumer socket', runs.agent));
const ratio = avg(runs.rotor, 'rps') / avg(runs.bare, 'rps');
const agentRatio = avg(runs.agent, 'rps') / avg(runs.bare, 'rps');
console.log(
  `ratio rotor/bare: ${ratio.toFixed(2)} (target >= 0.70); rotor p99 ${max(runs.rotor, 'p99').toFixed(3)} ms (target < 2 ms)`,
);
console.log(
  `ratio agent/bare: ${agentRatio.toFixed(2)}, ${((agentRatio / ratio - 1) * 100).toFixed(1)}% from rotor/bare (target within 10%); agent p99 ${max(runs.agent, 'p99').toFixed(3)} ms`,
);
agent.kill('SIGTERM');
daemon.kill('SIGTERM');
bare.kill('SIGTERM');
await new Promise((r) => daemon.once('exit', r));
process.exit(0);
