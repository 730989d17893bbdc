/**
 * 1,000 unauthenticated connections against the agent API of a real daemon process (its own process,
 * so that its memory is its own: VmRSS of /proc/PID/status), from 20 loopback addresses:
 *   - 250 send the head of a request claiming a 1 MiB body (an agent nobody declared, or a forged
 *     signature for the declared one) and never send the body: each gets 401, and the connection is
 *     closed, although no byte of the body was ever sent;
 *   - 250 send such a head and then push the 1 MiB body until an answer comes or the daemon closes;
 *   - 500 send half a head and stay (the daemon here is given a long header timeout, so that they are
 *     certainly open while the agent is served; test/agent-listener.test.ts cuts them with a short one).
 * While all of that is open, the real agent (the project's signing code and the agent's key) is
 * served. The daemon's RSS before and after is printed, and held to a generous bound only.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { generateKeys, loadKeys } from '../src/keys.js';
import { AGENT_JOBS_PATH } from '../src/protocol/jobs.js';
import { signRequest, verifyResponse } from '../src/protocol/sign.js';
import { ROOT, tempDir } from './helpers.js';
import { connect, forged, head, type Raw } from './raw-http.js';
import { world } from './world.js';

const FIXTURE = path.join(ROOT, 'test', 'fixtures', 'daemon-process.mjs');
const QUIET = 250;
const PUSHERS = 250;
const SILENT = 500;
const ADDRESSES = 20; // 50 connections each: under the 128 a daemon allows one address
const MiB = 1024 * 1024;
/** Generous: the daemon reads none of the bodies (the code before this bound took 80 MB to 237 MB with such a flood). */
const RSS_BOUND_MB = 100;

function rssMb(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
}

t.test(
  '1,000 unauthenticated connections: refused before their bodies, the agent still served, memory flat',
  async (t) => {
    const keysDir = tempDir(t, 'rotor-flood-keys-');
    await generateKeys(keysDir);
    const a = await loadKeys(keysDir);
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
      'agents.yaml': `kind: Agent\nname: agent-a\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n---\nkind: Target\nname: db-a\nengine: postgres\nagent: agent-a\n`,
      'secret.yaml':
        'kind: Secret\nname: app/db\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: db-a, usernames: [app_blue, app_green] }\n',
    });
    const options = {
      repo: w.remote,
      branch: 'main',
      dataDir: w.dataDir,
      socketDir: path.join(w.root, 'sockets'),
      breakGlass: [],
      agentListen: '127.0.0.1:0',
      agentApiLimits: { headersTimeoutMs: 600_000, requestTimeoutMs: 600_000 },
    };
    // env -u NODE_OPTIONS: tap puts its own loaders into NODE_OPTIONS, which the daemon does not need.
    const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, FIXTURE, JSON.stringify(options)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => void (stderr = (stderr + c.toString()).slice(-20_000)));
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    t.teardown(async () => {
      child.kill('SIGTERM');
      await exited;
    });
    const address = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('\n'))
          resolve((JSON.parse(out.slice(0, out.indexOf('\n'))) as { agentAddress: string }).agentAddress);
      });
      void exited.then(() => reject(new Error(`the daemon exited: ${stderr}`)));
    });
    const daemonKey = (await import('node:crypto')).createPublicKey((await loadKeys(w.dataDir)).signing);

    /** The real agent: a signed poll from 127.0.0.1, its answer checked to be the daemon's. */
    const poll = async () => {
      const body = JSON.stringify({ wait: 0 });
      const h = signRequest({ agent: 'agent-a', method: 'POST', path: AGENT_JOBS_PATH, body, privateKey: a.signing });
      const c = await connect(address);
      c.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, connection: 'close', ...h }) + body);
      const r = await c.answer;
      return {
        status: r.status,
        body: JSON.parse(r.body) as { jobs?: unknown[] },
        signed: verifyResponse({
          headers: r.headers,
          status: r.status,
          requestNonce: h['x-rotor-nonce'],
          body: r.body,
          publicKey: daemonKey,
        }).ok,
      };
    };
    const first = await poll();
    t.same([first.status, first.signed, first.body.jobs?.length], [200, true, 1], 'before: the agent gets its job');
    const before = rssMb(child.pid!);

    const from = (i: number) => `127.0.0.${2 + (i % ADDRESSES)}`;
    const intruderHead = (i: number) =>
      head(address, AGENT_JOBS_PATH, { 'content-length': MiB, ...forged(i % 2 ? 'agent-a' : `intruder-${i}`) });
    const quiet = Array.from({ length: QUIET }, async (_, i) => {
      const c = await connect(address, from(i));
      c.sock.write(intruderHead(i));
      const r = await c.answer;
      await c.closed;
      return `${r.status} ${/"code":"([A-Z_]+)"/.exec(r.body)?.[1] ?? '(no code)'}`;
    });
    const zeros = Buffer.alloc(64 * 1024);
    const pushers = Array.from({ length: PUSHERS }, async (_, i) => {
      const c = await connect(address, from(i));
      c.sock.write(intruderHead(i));
      let answered = false;
      void c.answer.then(
        () => (answered = true),
        () => {},
      );
      for (let sent = 0; sent < MiB && !answered && !c.isClosed(); sent += zeros.length) {
        if (!c.sock.write(zeros))
          await new Promise<void>((resolve) => {
            c.sock.once('drain', resolve);
            void c.closed.then(resolve);
          });
      }
      await c.closed;
      // A peer still sending when the daemon closes may see a reset instead of the answer.
      return c.answer.then(
        (r) => String(r.status),
        () => 'reset',
      );
    });
    const silent: Raw[] = await Promise.all(
      Array.from({ length: SILENT }, async (_, i) => {
        const c = await connect(address, from(i + QUIET));
        c.sock.write(`POST ${AGENT_JOBS_PATH} HTTP/1.1\r\nHost: ${address}\r\n`);
        return c;
      }),
    );
    t.teardown(() => {
      for (const c of silent) c.sock.destroy();
    });
    const quietOutcomes = await Promise.all(quiet);
    const pusherOutcomes = await Promise.all(pushers);

    const during = await poll();
    t.same(
      [during.status, during.signed],
      [200, true],
      'the agent is served while 500 connections hold half a head open',
    );
    t.equal(silent.filter((c) => c.isClosed()).length, 0, 'and those 500 are still open');
    const after = rssMb(child.pid!);

    const count = (xs: string[]) =>
      Object.entries(
        xs.reduce<Record<string, number>>((m, x) => {
          m[x] = (m[x] ?? 0) + 1;
          return m;
        }, {}),
      )
        .map(([k, n]) => `${k} x ${n}`)
        .join(', ');
    t.same(
      new Set(quietOutcomes),
      new Set(['401 AGENT_UNKNOWN', '401 AGENT_BAD_SIGNATURE']),
      `each head without its body got 401 and was closed: ${count(quietOutcomes)}`,
    );
    t.equal(quietOutcomes.length, QUIET);
    t.ok(
      pusherOutcomes.every((o) => o === '401' || o === 'reset'),
      `each that pushed its body was refused: ${count(pusherOutcomes)}`,
    );
    t.comment(
      `daemon RSS before ${before.toFixed(1)} MB, after ${after.toFixed(1)} MB (${QUIET + PUSHERS + SILENT} connections, ${SILENT} of them still open)`,
    );
    console.log(
      `agent-flood: daemon RSS before ${before.toFixed(1)} MB, after ${after.toFixed(1)} MB, growth ${(after - before).toFixed(1)} MB`,
    );
    t.ok(
      after - before < RSS_BOUND_MB,
      `the daemon's RSS grew by ${(after - before).toFixed(1)} MB, less than ${RSS_BOUND_MB} MB`,
    );
  },
);
