/**
 * The agent API's listener against peers that are not agents, or that misbehave: the real listener
 * (listenAgentApi) with the real agent hub, over raw TCP so that each test decides exactly which bytes
 * are sent. A request is authenticated before its body is read (a refusal arrives although no byte of
 * the body was ever sent), bodies are bounded per route and in time, connections per address, in
 * all and in time. Also the admin socket's bounded body. Timeouts are small here and configured, not
 * waited for with sleeps: every wait is for an event (an answer, a close).
 */
import { generateKeyPairSync } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import { AgentHub } from '../src/daemon/agents.js';
import { generateKeys, type Keys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import type { Desired } from '../src/model/model.js';
import { AGENT_JOBS_PATH, AGENT_RESULTS_PATH } from '../src/protocol/jobs.js';
import { signRequest, verifyResponse } from '../src/protocol/sign.js';
import { listenAdmin } from '../src/serve/admin.js';
import { type AgentApiLimits, listenAgentApi } from '../src/serve/agent-api.js';
import { tempDir } from './helpers.js';
import { connect, forged, head, type Raw } from './raw-http.js';

const daemonKeys = generateKeyPairSync('ed25519');

async function setup(t: Test, limits: Partial<AgentApiLimits> = {}) {
  const dir = tempDir(t, 'rotor-agent-listener-');
  await generateKeys(path.join(dir, 'a'));
  const a: Keys = await loadKeys(path.join(dir, 'a'));
  let logs = '';
  const log = jsonLogger((l) => void (logs += l));
  const hub = new AgentHub({ log, now: Date.now });
  hub.setModel({
    agents: new Map([['agent-a', { decl: { signingKey: a.signingKey, recipient: a.recipient } }]]),
    targets: new Map(),
  } as unknown as Desired);
  const api = await listenAgentApi('127.0.0.1:0', { hub, signing: daemonKeys.privateKey, log, now: Date.now, limits });
  t.teardown(() => api.close());
  const address = api.address;
  const sign = (p: string, body: string) =>
    signRequest({ agent: 'agent-a', method: 'POST', path: p, body, privateKey: a.signing });
  /** A signed poll over a fresh connection (from 127.0.0.1 unless said otherwise), checked to be answered and signed by the daemon. */
  const poll = async (localAddress?: string, raw?: Raw) => {
    const body = JSON.stringify({ wait: 0 });
    const h = sign(AGENT_JOBS_PATH, body);
    const c = raw ?? (await connect(address, localAddress));
    c.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h }) + body);
    const r = await c.answer;
    const verdict = verifyResponse({
      headers: r.headers,
      status: r.status,
      requestNonce: h['x-rotor-nonce'],
      body: r.body,
      publicKey: daemonKeys.publicKey,
    });
    return { ...r, signed: verdict.ok, raw: c };
  };
  return { address, sign, poll, logs: () => logs };
}

t.test('a peer that is not an agent is refused before any of its body is read', async (t) => {
  const { address, sign, poll, logs } = await setup(t);
  const MiB = 1024 * 1024;
  const cases: [string, Record<string, string>, string][] = [
    ['an agent nobody declared', forged('intruder'), 'AGENT_UNKNOWN'],
    ['a forged signature for the declared agent', forged('agent-a'), 'AGENT_BAD_SIGNATURE'],
    ['no signature at all', {}, 'AGENT_UNSIGNED'],
  ];
  for (const [name, headers, code] of cases) {
    const c = await connect(address);
    // The head claims a 1 MiB body, and not one byte of it is ever sent.
    c.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': MiB, ...headers }));
    const r = await c.answer;
    t.equal(r.status, 401, `${name}: 401 without the body`);
    t.equal(JSON.parse(r.body).error.code, code, name);
    t.equal(r.headers.connection, 'close', `${name}: the connection is closed`);
    await c.closed;
  }
  // A replay of a served request: refused from its headers too.
  const body = JSON.stringify({ wait: 0 });
  const h = sign(AGENT_JOBS_PATH, body);
  const first = await connect(address);
  first.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h }) + body);
  t.equal((await first.answer).status, 200);
  const replay = await connect(address);
  replay.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': MiB, ...h }));
  const rr = await replay.answer;
  t.same(
    [rr.status, JSON.parse(rr.body).error.code],
    [401, 'AGENT_REPLAY'],
    'a replayed head is refused without its body',
  );
  await replay.closed;
  // The agent is served throughout.
  const ok = await poll();
  t.same([ok.status, ok.signed], [200, true], 'the real agent is served, its answer signed');
  t.match(logs(), /agent request refused.*AGENT_UNKNOWN/, 'refusals are logged');
});

t.test('one copy of a signed request at a time, and a copy that is not served gives its nonce back', async (t) => {
  const { address, sign } = await setup(t, { bodyTimeoutMs: 200 });
  const body = JSON.stringify({ wait: 0 });
  const h = sign(AGENT_JOBS_PATH, body);
  const withHead = head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h });
  // Two copies of the same signed head, neither with its body yet: exactly one is let through to its
  // body; the other is refused at once as a replay.
  const [x, y] = [await connect(address), await connect(address)];
  x.sock.write(withHead);
  y.sock.write(withHead);
  const refused = await Promise.race([x.answer.then(() => x), y.answer.then(() => y)]);
  const admitted = refused === x ? y : x;
  const rr = await refused.answer;
  t.same(
    [rr.status, JSON.parse(rr.body).error.code],
    [401, 'AGENT_REPLAY'],
    'the second copy is refused while the first one is read',
  );
  t.notOk(admitted.isClosed(), 'the first copy waits for its body');
  admitted.sock.write(body);
  t.equal((await admitted.answer).status, 200, 'and is served once its body arrives');

  // A copy that trickles its body is cut at the body timeout; that copy was not served, so the same
  // signed request sent again in full is.
  const h2 = sign(AGENT_JOBS_PATH, body);
  const slow = await connect(address);
  slow.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h2 }) + body.slice(0, 3));
  const cut = await slow.answer;
  t.same([cut.status, JSON.parse(cut.body).error.code], [408, 'BODY_TIMEOUT'], 'a trickled body is cut');
  await slow.closed;
  const full = await connect(address);
  full.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h2 }) + body);
  t.equal((await full.answer).status, 200, 'the nonce of the cut copy was given back');
  // A copy with an altered body is refused and does not use up the genuine request's nonce.
  const h3 = sign(AGENT_JOBS_PATH, body);
  const altered = await connect(address);
  altered.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h3 }) + body.replace('0', '1'));
  t.equal(JSON.parse((await altered.answer).body).error.code, 'AGENT_BODY_ALTERED');
  const genuine = await connect(address);
  genuine.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': body.length, ...h3 }) + body);
  t.equal((await genuine.answer).status, 200, 'the genuine request is served after the altered copy');
});

t.test('bodies are bounded per route: Content-Length up front, chunked bodies as they arrive', async (t) => {
  const { address, sign } = await setup(t, { jobsBody: 64, resultsBody: 4096 });
  // Content-Length over the route's limit: 413 before reading, although the agent is genuine.
  const big = await connect(address);
  const bh = sign(AGENT_JOBS_PATH, 'x'.repeat(65));
  big.sock.write(head(address, AGENT_JOBS_PATH, { 'content-length': 65, ...bh }));
  const r = await big.answer;
  t.same(
    [r.status, JSON.parse(r.body).error.code],
    [413, 'BODY_TOO_LARGE'],
    'Content-Length over the limit: refused before the body',
  );
  t.match(JSON.parse(r.body).error.message, /64-byte limit/);
  t.ok(
    verifyResponse({
      headers: r.headers,
      status: r.status,
      requestNonce: bh['x-rotor-nonce'],
      body: r.body,
      publicKey: daemonKeys.publicKey,
    }).ok,
    'the refusal is signed for the agent',
  );
  await big.closed;
  // Chunked: counted while read, and refused once past the limit without waiting for the end of the
  // body (which never comes here: no terminating chunk is sent). All in one write, so that nothing is
  // left unread when the daemon closes (a peer still sending then may see a reset instead of the answer).
  const chunked = await connect(address);
  const chunk = `400\r\n${'x'.repeat(1024)}\r\n`;
  chunked.sock.write(
    head(address, AGENT_RESULTS_PATH, { 'transfer-encoding': 'chunked', ...sign(AGENT_RESULTS_PATH, 'whatever') }) +
      chunk.repeat(5),
  );
  const cr = await chunked.answer;
  t.same(
    [cr.status, JSON.parse(cr.body).error.code],
    [413, 'BODY_TOO_LARGE'],
    'a chunked body is refused once past 4096 bytes, before it ends',
  );
  await chunked.closed;
});

t.test('Expect: 100-continue: the agent is authenticated before it is asked for the body', async (t) => {
  const { address, sign } = await setup(t);
  const intruder = await connect(address);
  intruder.sock.write(
    head(address, AGENT_JOBS_PATH, { 'content-length': 1024 * 1024, expect: '100-continue', ...forged('intruder') }),
  );
  const r = await intruder.answer;
  t.equal(r.status, 401);
  t.notMatch(intruder.received(), /100 Continue/, 'no 100 Continue for a peer that is not an agent');
  const body = JSON.stringify({ wait: 0 });
  const agent = await connect(address);
  agent.sock.write(
    head(address, AGENT_JOBS_PATH, {
      'content-length': body.length,
      expect: '100-continue',
      ...sign(AGENT_JOBS_PATH, body),
    }),
  );
  await new Promise<void>((resolve) => agent.sock.on('data', () => /100 Continue/.test(agent.received()) && resolve()));
  agent.sock.write(body);
  t.equal((await agent.answer).status, 200, 'the agent gets 100 Continue, sends its body, and is served');
});

t.test('connections: per address, in all, and a head that never ends', async (t) => {
  const { address, poll, logs } = await setup(t, {
    maxConnectionsPerPeer: 3,
    maxConnections: 8,
    headersTimeoutMs: 60_000,
    requestTimeoutMs: 60_000,
  });
  // Three kept-alive connections from 127.0.0.2 (each served once, so each is known to be accepted).
  const held: Raw[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await poll('127.0.0.2');
    t.equal(r.status, 200);
    held.push(r.raw);
  }
  const fourth = await connect(address, '127.0.0.2');
  await fourth.closed;
  t.equal(fourth.received(), '', 'a fourth connection from the same address is closed at once');
  t.ok(
    held.every((c) => !c.isClosed()),
    'the first three stay open',
  );
  const other = await poll('127.0.0.1');
  t.equal(other.status, 200, 'another address is served meanwhile');
  held.push(other.raw);
  // Up to 8 in all: 3 from .2, 1 from .1, 3 from .3, 1 from .4; a ninth is dropped, whichever its address.
  for (const a of ['127.0.0.3', '127.0.0.3', '127.0.0.3', '127.0.0.4']) held.push((await poll(a)).raw);
  const ninth = await connect(address, '127.0.0.5');
  await ninth.closed;
  t.equal(ninth.received(), '', 'over the total, a connection is dropped');
  t.match(logs(), /too many from one address.*AGENT_PEER_CONNECTIONS/);
  // One closes: room again (the daemon notices the close on its own time: retry until it has).
  held.shift()!.sock.destroy();
  let served = false;
  for (let attempt = 0; attempt < 200 && !served; attempt++) {
    const c = await connect(address, '127.0.0.5');
    const r = await Promise.race([c.closed.then(() => undefined), poll(undefined, c).catch(() => undefined)]);
    served = r?.status === 200;
    if (served) held.push(c);
  }
  t.ok(served, 'once a connection closes, a new one is served');
  for (const c of held) c.sock.destroy();
});

t.test('a head that never ends is cut at the header timeout', async (t) => {
  const { address, poll } = await setup(t, { headersTimeoutMs: 200 });
  const silent = await connect(address, '127.0.0.2');
  silent.sock.write(`POST ${AGENT_JOBS_PATH} HTTP/1.1\r\nHost: ${address}\r\n`);
  const idle = await connect(address, '127.0.0.3');
  await Promise.all([silent.closed, idle.closed]);
  t.match(silent.received(), /^HTTP\/1\.1 408/, 'a trickled head is cut with 408');
  t.match(idle.received(), /^HTTP\/1\.1 408/, 'a connection that sends nothing is cut too');
  t.equal((await poll()).status, 200);
});

t.test('the admin socket reads a bounded body', async (t) => {
  const dir = tempDir(t, 'rotor-admin-');
  const sock = path.join(dir, 'admin.sock');
  const rotated: string[] = [];
  const server = await listenAdmin(sock, {
    rotate: async (name) => {
      rotated.push(name);
      return { name, version: 2 };
    },
    status: () => ({}),
  });
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  );
  const ask = (text: string) =>
    new Promise<{ text: string }>((resolve) => {
      const s = net.connect(sock);
      let got = '';
      s.on('data', (c) => (got += c));
      s.on('error', () => {});
      s.on('close', () => resolve({ text: got }));
      s.write(text);
    });
  const big = await ask(
    'POST /v1/rotate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n',
  );
  t.match(big.text, /^HTTP\/1\.1 413/, 'Content-Length over the limit: 413 before the body');
  t.match(big.text, /BODY_TOO_LARGE/);
  // Chunked, past the limit and never ended (no terminating chunk), in one write (see above).
  const chunks = await ask(
    `POST /v1/rotate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n${`1000\r\n${' '.repeat(4096)}\r\n`.repeat(5)}`,
  );
  t.match(chunks.text, /^HTTP\/1\.1 413/, 'a chunked body is cut once past the limit, before it ends');
  const body = JSON.stringify({ name: 'app/x', reason: 'test' });
  const ok = await ask(
    `POST /v1/rotate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
  t.match(ok.text, /^HTTP\/1\.1 200/);
  t.same(rotated, ['app/x']);
});
