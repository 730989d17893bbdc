/**
 * rotor-agent's `tls:` (ca, pin) against a daemon with --agent-tls-cert and --agent-tls-key.
 * Certificates come from test/services/tls.ts (openssl, in a temporary directory).
 *
 * - A daemon (in-process, its real listener) rotates a database secret through an agent that trusts
 *   its CA; an agent trusting another CA is refused (AGENT_DAEMON_CERT) and runs nothing, and the
 *   daemon never sees a request of it.
 * - Each way of checking the certificate against the real listener, whose agent hub counts the
 *   requests that reach it: a refused certificate costs the daemon no request.
 * - Against a bare TLS server that records every byte of application data: a refused certificate
 *   means not one byte of a request was sent (the check runs before the socket is handed to node:https).
 * - A refused certificate is retried with backoff, and logged each time.
 * - The real commands end to end: rotor daemon with the flags, rotor-agent --once.
 * The daemon's side alone (the flags, the limits over TLS, AGENT_LISTEN_CLEAR): test/agent-listener-tls.test.ts.
 *
 * No sleeps: every wait is for an event (a rotation step, a close, a log line, a process exit).
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import type net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type { Test } from 'tap';
import t from 'tap';
import { Agent, AgentError } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import type { Credential, DbEngine, RetireJob, SetJob, SetOutcome } from '../agent/src/engines/types.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { AGENT_JOBS_PATH } from '../src/protocol/jobs.js';
import { readAgentTls } from '../src/serve/tls.js';
import { ROOT, tempDir } from './helpers.js';
import { makeTls, type TlsFile } from './services/tls.js';
import { countingListener } from './tls-listener.js';
import { daemonProcess, finishes, world } from './world.js';

const f = makeTls(t);
const base = tempDir(t, 'rotor-agent-tls-');
await generateKeys(path.join(base, 'agent-keys'));
await generateKeys(path.join(base, 'daemon-keys'));
const agentKeys = await loadKeys(path.join(base, 'agent-keys'));
const daemonKeys = await loadKeys(path.join(base, 'daemon-keys'));
const AGENT = 'db-host';

/** Every log line of the agents of this file. */
const agentLines: string[] = [];
const agentLog = jsonLogger((l) => void agentLines.push(l), Date.now, 'debug');
const agentLogged = (code: string) =>
  agentLines.map((l) => JSON.parse(l) as { code?: string; level: string; msg: string }).filter((l) => l.code === code);

let configSeq = 0;
/** An agent configuration for `daemon`, with `tls` lines (YAML, indented by two) when given. */
function agentConfig(daemon: string, tlsLines: string[] = [], o: { signingKey?: string; keyDir?: string } = {}) {
  const file = path.join(base, `agent-${++configSeq}.yaml`);
  const text = [
    `daemon: ${daemon}`,
    ...(tlsLines.length ? ['tls:', ...tlsLines.map((l) => `  ${l}`)] : []),
    `name: ${AGENT}`,
    `keyDir: ${o.keyDir ?? path.join(base, 'agent-keys')}`,
    `daemonSigningKey: "${o.signingKey ?? daemonKeys.signingKey}"`,
    'targets:',
    '  cache:',
    '    url: redis://rotor_admin@127.0.0.1:1',
    '',
  ].join('\n');
  writeFileSync(file, text, { mode: 0o600 });
  return file;
}

/** One poll (runOnce, no wait) by a new agent: 'ok', or the code of its AgentError. */
async function pollOnce(file: string): Promise<string> {
  const agent = new Agent(await loadAgentConfig(file, { env: {} }), { log: agentLog });
  try {
    await agent.runOnce();
    return 'ok';
  } catch (e) {
    if (!(e instanceof AgentError)) throw e;
    return e.code;
  } finally {
    await agent.stop();
  }
}

/** An engine that records the steps it is asked for (no database). */
class RecordingEngine implements DbEngine {
  readonly engine = 'redis' as const;
  readonly sets: string[] = [];
  async set(job: SetJob): Promise<SetOutcome> {
    this.sets.push(job.username);
    return 'applied';
  }
  async test(_c: Credential): Promise<boolean> {
    return true;
  }
  async retire(_job: RetireJob): Promise<void> {}
  async close(): Promise<void> {}
}

const pem = (file: TlsFile) => ({ cert: f.read(file.cert), key: f.read(file.key) });

/** The real listener, declaring this file's agent, over TLS with `cert`. */
const listener = (tt: Test, o: { cert: TlsFile }) =>
  countingListener(tt, {
    agent: { name: AGENT, signingKey: agentKeys.signingKey, recipient: agentKeys.recipient },
    signing: daemonKeys.signing,
    tls: pem(o.cert),
  });

// -------------------------------------------------------------------------------------------------

t.test('a daemon with TLS rotates through an agent that trusts its CA, and not one that trusts another', async (t) => {
  const name = 'db/cache';
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
    'agent.yaml': `kind: Agent\nname: ${AGENT}\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
    'target.yaml': `kind: Target\nname: cache\nengine: redis\nagent: ${AGENT}\n`,
    'secret.yaml': `kind: Secret\nname: ${name}\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: cache, strategy: single, username: app_user }\n`,
  });
  const first = finishes(name, 1);
  const d = await w.start({
    agentListen: '127.0.0.1:0',
    agentTls: await readAgentTls(f.server.cert, f.server.key),
  });
  let stopped = false;
  t.teardown(() => (stopped ? undefined : d.stop()));
  const daemonSigningKey = (await loadKeys(w.dataDir)).signingKey;
  const url = `https://${d.agentAddress}`;
  const lastSeen = () => d.status().agents.agents.find((a) => a.name === AGENT)?.lastSeen;

  // Another CA: refused before a request is sent; the job waits.
  const engine = new RecordingEngine();
  const wrong = new Agent(
    await loadAgentConfig(agentConfig(url, [`ca: ${f.otherCa.cert}`], { signingKey: daemonSigningKey }), { env: {} }),
    { log: agentLog, engines: { redis: () => engine } },
  );
  const refused = await wrong.runOnce().then(
    () => undefined,
    (e: unknown) => e,
  );
  await wrong.stop();
  t.ok(refused instanceof AgentError, 'the poll fails');
  t.match(refused, {
    code: 'AGENT_DAEMON_CERT',
    message: /not accepted by tls\.ca .*other-ca\.crt.*not signed by them/,
  });
  t.ok(agentLogged('AGENT_DAEMON_CERT').length > 0, 'the agent logs AGENT_DAEMON_CERT');
  t.same(engine.sets, [], 'no job ran');
  t.equal(lastSeen(), undefined, 'the daemon never saw an authenticated request from the agent');

  // Its own CA: the job runs and the rotation finishes.
  const good = new Agent(
    await loadAgentConfig(agentConfig(url, [`ca: ${f.ca.cert}`], { signingKey: daemonSigningKey }), { env: {} }),
    { log: agentLog, engines: { redis: () => engine }, wait: 5, backoff: { baseMs: 50, capMs: 500 } },
  );
  good.start();
  await first;
  await good.stop({ graceMs: 5000 });
  t.same(engine.sets, ['app_user'], 'the agent set the new password over HTTPS');
  t.ok(lastSeen() !== undefined, 'the daemon saw the agent');
  t.equal(d.served(name)?.version, 1, 'version 1 is served');
  const lines = w
    .logs()
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const listening = lines.find((l) => l.msg === 'listening for agents');
  t.match(listening, { tls: true, pin: f.server.pin }, 'the daemon logs that it listens with TLS, and the pin');
  t.notOk(
    lines.some((l) => l.code === 'AGENT_LISTEN_CLEAR'),
    'no clear-listen warning',
  );
  const started = agentLines
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === 'agent started');
  t.match(started.at(-1), { daemon: url, tls: 'ca' }, 'the agent logs how it checks the certificate');

  // Restarted in clear on every address: warned, and started all the same.
  await d.stop();
  stopped = true;
  const before = w.logs().length;
  const clear = await w.start({ agentListen: '0.0.0.0:0' });
  t.teardown(() => clear.stop());
  const after = w
    .logs()
    .slice(before)
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  const warning = after.find((l) => l.code === 'AGENT_LISTEN_CLEAR');
  t.match(warning, { level: 'warn', address: clear.agentAddress, msg: /without TLS.*--agent-tls-cert/ }, 'warned');
  t.match(clear.agentAddress, /^0\.0\.0\.0:\d+$/, 'and listening');
});

t.test('each way of checking the certificate, against the real listener', async (t) => {
  const main = await listener(t, { cert: f.server });
  const elsewhere = await listener(t, { cert: f.otherName });
  const self = await listener(t, { cert: f.selfSigned });
  const at = (l: { port: string }, host = '127.0.0.1') => `https://${host}:${l.port}`;
  const cases: [string, string, string[], string, typeof main][] = [
    ['its CA', at(main), [`ca: ${f.ca.cert}`], 'ok', main],
    ['its CA, by name (localhost)', at(main, 'localhost'), [`ca: ${f.ca.cert}`], 'ok', main],
    ['another CA', at(main), [`ca: ${f.otherCa.cert}`], 'AGENT_DAEMON_CERT', main],
    ['its pin, no CA', at(main), [`pin: "${f.server.pin}"`], 'ok', main],
    ['its pin among others', at(main), [`pin: ["${f.otherServer.pin}", "${f.server.pin}"]`], 'ok', main],
    ['another pin', at(main), [`pin: "${f.otherServer.pin}"`], 'AGENT_DAEMON_CERT', main],
    ['its CA and its pin', at(main), [`ca: ${f.ca.cert}`, `pin: "${f.server.pin}"`], 'ok', main],
    ['its CA, another pin', at(main), [`ca: ${f.ca.cert}`, `pin: "${f.ca.pin}"`], 'AGENT_DAEMON_CERT', main],
    ['another CA, its pin', at(main), [`ca: ${f.otherCa.cert}`, `pin: "${f.server.pin}"`], 'AGENT_DAEMON_CERT', main],
    ["the system's CAs", at(main), [], 'AGENT_DAEMON_CERT', main],
    ['its CA, a certificate for another name', at(elsewhere), [`ca: ${f.ca.cert}`], 'AGENT_DAEMON_CERT', elsewhere],
    ['its pin, a certificate for another name', at(elsewhere), [`pin: "${f.otherName.pin}"`], 'ok', elsewhere],
    ['a self-signed certificate as the CA', at(self), [`ca: ${f.selfSigned.cert}`], 'ok', self],
    ['a self-signed certificate, another CA', at(self), [`ca: ${f.ca.cert}`], 'AGENT_DAEMON_CERT', self],
  ];
  for (const [what, url, lines, expected, l] of cases) {
    const seen = l.requests();
    const got = await pollOnce(agentConfig(url, lines));
    t.equal(got, expected, `${what}: ${expected}`);
    if (expected === 'ok') t.ok(l.requests() > seen, `${what}: the poll reached the daemon`);
    else t.equal(l.requests(), seen, `${what}: the daemon received no request`);
  }
  const messages = agentLogged('AGENT_DAEMON_CERT').map((l) => l.msg);
  t.ok(
    messages.some((m) => /does not match tls\.pin: its public key's pin is sha256\//.test(m)),
    'a wrong pin is named',
  );
  t.ok(
    messages.some((m) => /does not name 127\.0\.0\.1.*ERR_TLS_CERT_ALTNAME_INVALID/.test(m)),
    'a wrong name is named',
  );
  t.ok(
    messages.some((m) => /not accepted by the system's certificate authorities/.test(m)),
    'so are the system CAs',
  );
  t.ok(
    agentLogged('AGENT_DAEMON_CERT').every((l) => l.level === 'error'),
    'logged as errors',
  );
});

t.test('a refused certificate: not one byte of a request is sent', async (t) => {
  // A bare TLS server with the daemon's certificate, recording the application data it receives.
  const server = tls.createServer({ ...pem(f.server), minVersion: 'TLSv1.2' });
  const received: Buffer[] = [];
  server.on('secureConnection', (s) => {
    s.on('error', () => {});
    s.on('data', (c: Buffer) => {
      received.push(c);
      s.destroy(); // no answer: the agent's poll fails once the request has arrived
    });
  });
  server.on('tlsClientError', () => {});
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const url = `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  /** One poll; resolves once the server side of its connection has closed. */
  const attempt = async (lines: string[]) => {
    received.length = 0;
    const closed = new Promise<void>((resolve) =>
      server.once('connection', (raw: net.Socket) => raw.once('close', () => resolve())),
    );
    const code = await pollOnce(agentConfig(url, lines));
    await closed;
    return { code, bytes: Buffer.concat(received) };
  };
  for (const [what, lines] of [
    ['a wrong pin', [`pin: "${f.otherServer.pin}"`]],
    ['a wrong CA', [`ca: ${f.otherCa.cert}`]],
    ["its CA but a pin that is not the certificate's", [`ca: ${f.ca.cert}`, `pin: "${f.ca.pin}"`]],
    ["the system's CAs", []],
  ] as const) {
    const r = await attempt([...lines]);
    t.equal(r.code, 'AGENT_DAEMON_CERT', `${what}: refused`);
    t.equal(r.bytes.length, 0, `${what}: the server received no application data`);
  }
  // The control: with the right pin the request does arrive (and the recorder sees it).
  const ok = await attempt([`pin: "${f.server.pin}"`]);
  t.equal(ok.code, 'AGENT_DAEMON_UNREACHABLE', 'the right pin: the request is sent (the server cuts it)');
  t.match(ok.bytes.toString('latin1'), new RegExp(`^POST ${AGENT_JOBS_PATH} HTTP/1\\.1\\r\\n`), 'the POST arrived');
});

t.test('a refused certificate is retried with backoff, and logged each time', async (t) => {
  const l = await listener(t, { cert: f.server });
  const config = await loadAgentConfig(agentConfig(`https://127.0.0.1:${l.port}`, [`ca: ${f.otherCa.cert}`]), {
    env: {},
  });
  const lines: string[] = [];
  const delays: number[] = [];
  let enough!: () => void;
  const third = new Promise<void>((resolve) => (enough = resolve));
  const agent = new Agent(config, {
    log: jsonLogger((line) => void lines.push(line)),
    backoff: { baseMs: 100, capMs: 1000 },
    sleep: (ms, signal) => {
      delays.push(ms);
      if (delays.length < 3) return Promise.resolve();
      enough();
      return new Promise((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    },
  });
  agent.start();
  await third;
  await agent.stop();
  const failures = lines
    .map((x) => JSON.parse(x) as { code?: string; level: string; msg: string; delayMs?: number })
    .filter((x) => x.code === 'AGENT_DAEMON_CERT');
  t.equal(failures.length, 3, 'three failed polls, each logged');
  t.ok(
    failures.every((x) => x.level === 'error' && /^poll: the daemon's certificate .*; retrying$/.test(x.msg)),
    'as errors that say the poll is retried',
  );
  t.same(
    failures.map((x) => x.delayMs),
    delays,
    'with the backoff delays',
  );
  t.ok(delays[2]! > delays[0]!, 'which grow');
  t.equal(l.requests(), 0, 'the daemon received no request');
});

t.test('the commands end to end: rotor daemon with the flags, rotor-agent --once with tls', async (t) => {
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'agent.yaml': `kind: Agent\nname: ${AGENT}\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
  });
  const bin = (p: string) => path.join(ROOT, p);
  const daemon = daemonProcess(t, [
    '--repo',
    w.remote,
    '--data-dir',
    w.dataDir,
    '--socket-dir',
    path.join(w.root, 'sockets'),
    '--agent-listen',
    '127.0.0.1:0',
    '--agent-tls-cert',
    f.server.cert,
    '--agent-tls-key',
    f.server.key,
    '--metrics-listen',
    'off',
    '--log-format',
    'json',
  ]);
  const line = /^\{.*"msg":"listening for agents".*\}\n/m; // a whole line
  await daemon.waitFor(line);
  const listening = JSON.parse(line.exec(daemon.stderr())![0]) as Record<string, unknown>;
  t.match(listening, { tls: true, pin: f.server.pin }, 'the daemon listens with TLS and logs its pin');
  // The agent pins what the daemon logged, and trusts the CA.
  const config = agentConfig(
    `https://localhost:${String(listening.address).split(':').at(-1)}`,
    [`ca: ${path.relative(base, f.ca.cert)}`, `pin: "${String(listening.pin)}"`],
    { signingKey: (await loadKeys(w.dataDir)).signingKey },
  );
  // env -u NODE_OPTIONS: tap's loaders would double the agent's start-up; it runs the built code.
  const agent = spawn(
    '/usr/bin/env',
    [
      '-u',
      'NODE_OPTIONS',
      process.execPath,
      bin('agent/dist/main.js'),
      '--config',
      config,
      '--once',
      '--log-format',
      'json',
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let agentErr = '';
  agent.stderr.on('data', (c: Buffer) => (agentErr += c.toString()));
  const [code] = await once(agent, 'exit');
  t.equal(code, 0, `rotor-agent --once completes a verified poll over HTTPS${code ? `: ${agentErr}` : ''}`);
  t.equal(await daemon.stop(), 0, 'the daemon stops cleanly');
  t.notMatch(daemon.stderr(), /AGENT_LISTEN_CLEAR/, 'no clear-listen warning on loopback with TLS');
});
