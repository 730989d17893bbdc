/** The agent protocol's security layer: request and answer signatures, the replay cache, sealed payloads. */
import { execFileSync } from 'node:child_process';
import type { KeyObject } from 'node:crypto';
import { generateKeyPairSync, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { armor, Encrypter, generateX25519Identity, identityToRecipient } from 'age-encryption';
import t from 'tap';
import { formatSigningKey, parseSigningKey } from '../src/keys.js';
import { MAX_SEALED_PAYLOAD, openSealed, SealError, sealForAgent } from '../src/protocol/seal.js';
import type { AgentAuthCode, HeaderSource, RequestHeaders } from '../src/protocol/sign.js';
import {
  AGENT_AUTH_STATUS,
  abandonRequest,
  canonicalRequest,
  NonceCache,
  sha256Hex,
  signRequest,
  signResponse,
  verifyRequest,
  verifyRequestBody,
  verifyRequestHeaders,
  verifyResponse,
} from '../src/protocol/sign.js';
import { prng } from './lib/prng.js';

const T0 = Date.parse('2026-11-26T03:00:00Z');
const AGENT = 'db-host-1';

function keyPair(): { privateKey: KeyObject; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  // As the daemon gets it: through the `ed25519:<base64>` text of the Agent declaration.
  return { privateKey, publicKey: parseSigningKey(formatSigningKey(publicKey)) };
}

const agentKeys = keyPair();
const otherKeys = keyPair();
const daemonKeys = keyPair();
const keys = new Map<string, KeyObject>([
  [AGENT, agentKeys.publicKey],
  ['db-host-2', otherKeys.publicKey],
]);
const keyOf = (name: string): KeyObject | undefined => keys.get(name);

interface Req {
  headers: Record<string, string | string[] | undefined>;
  method: string;
  path: string;
  body: string | Uint8Array;
}

function signed(
  over: Partial<{
    agent: string;
    method: string;
    path: string;
    body: string | Uint8Array;
    now: number;
    nonce: string;
    privateKey: KeyObject;
  }> = {},
): Req {
  const r = {
    agent: AGENT,
    method: 'POST',
    path: '/v1/jobs/42/result',
    body: '{"ok":true}',
    now: T0,
    privateKey: agentKeys.privateKey,
    ...over,
  };
  const headers = signRequest(r);
  return { headers: { ...headers }, method: r.method, path: r.path, body: r.body };
}

function check(req: Req, now = T0, nonces = new NonceCache()) {
  return verifyRequest({ ...req, now, keyOf, nonces });
}

function codeOf(v: ReturnType<typeof verifyRequest>): AgentAuthCode | 'ok' {
  return v.ok ? 'ok' : v.code;
}

t.test('a signed request verifies, once, and names its agent', async (t) => {
  const nonces = new NonceCache();
  const req = signed();
  const h = req.headers as unknown as RequestHeaders;
  t.equal(h['x-rotor-agent'], AGENT);
  t.equal(h['x-rotor-timestamp'], String(T0));
  t.match(h['x-rotor-nonce'], /^[A-Za-z0-9_-]{22}$/);
  t.equal(Buffer.from(h['x-rotor-nonce'], 'base64url').length, 16);
  t.equal(h['x-rotor-content-sha256'], sha256Hex('{"ok":true}'));
  t.equal(Buffer.from(h['x-rotor-signature'], 'base64').length, 64);

  const v = check(req, T0 + 1500, nonces);
  t.same(v, { ok: true, agent: AGENT, nonce: h['x-rotor-nonce'], timestamp: T0 });
  t.equal(nonces.size(AGENT), 1);
  // Two requests never share a nonce.
  t.not(signed().headers['x-rotor-nonce'], h['x-rotor-nonce']);
});

t.test('the signature is over the documented canonical string', async (t) => {
  const nonce = 'AAECAwQFBgcICQoLDA0ODw';
  const req = signed({ method: 'GET', path: '/v1/jobs?wait=25&agent=db-host-1', body: '', nonce });
  const expected =
    'rotor-agent-request-v1\nGET\n/v1/jobs?wait=25&agent=db-host-1\n' +
    `${T0}\nAAECAwQFBgcICQoLDA0ODw\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\ndb-host-1`;
  t.equal(
    canonicalRequest({
      method: 'GET',
      path: '/v1/jobs?wait=25&agent=db-host-1',
      timestamp: String(T0),
      nonce,
      contentSha256: sha256Hex(''),
      agent: AGENT,
    }),
    expected,
  );
  t.ok(
    verify(
      null,
      Buffer.from(expected),
      agentKeys.publicKey,
      Buffer.from(req.headers['x-rotor-signature'] as string, 'base64'),
    ),
  );
  t.equal(
    req.headers['x-rotor-content-sha256'],
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    "an empty body is signed as SHA-256('')",
  );
  t.same(check(req), { ok: true, agent: AGENT, nonce, timestamp: T0 });
});

t.test('each rejection has its stable code', async (t) => {
  const base = signed();
  const cases: [string, Req, AgentAuthCode, number?][] = [
    ['no headers at all', { ...base, headers: {} }, 'AGENT_UNSIGNED'],
    ['unknown agent', signed({ agent: 'db-host-9' }), 'AGENT_UNKNOWN'],
    ['61 s in the past', signed({ now: T0 - 61_000 }), 'AGENT_SKEW'],
    ['61 s in the future', signed({ now: T0 + 61_000 }), 'AGENT_SKEW'],
    ['altered body', { ...base, body: '{"ok":false}' }, 'AGENT_BODY_ALTERED'],
    [
      'body and its hash altered',
      {
        ...base,
        body: '{"ok":false}',
        headers: { ...base.headers, 'x-rotor-content-sha256': sha256Hex('{"ok":false}') },
      },
      'AGENT_BAD_SIGNATURE',
    ],
    ['altered path', { ...base, path: '/v1/jobs/43/result' }, 'AGENT_BAD_SIGNATURE'],
    ['altered query', { ...signed({ path: '/v1/jobs?wait=25' }), path: '/v1/jobs?wait=26' }, 'AGENT_BAD_SIGNATURE'],
    ['altered method', { ...base, method: 'PUT' }, 'AGENT_BAD_SIGNATURE'],
    [
      'altered timestamp (within the window)',
      { ...base, headers: { ...base.headers, 'x-rotor-timestamp': String(T0 + 1) } },
      'AGENT_BAD_SIGNATURE',
    ],
    [
      'altered timestamp (out of the window)',
      { ...base, headers: { ...base.headers, 'x-rotor-timestamp': String(T0 + 3_600_000) } },
      'AGENT_SKEW',
    ],
    [
      'altered nonce',
      { ...base, headers: { ...base.headers, 'x-rotor-nonce': 'AAECAwQFBgcICQoLDA0ODw' } },
      'AGENT_BAD_SIGNATURE',
    ],
    [
      "signed with db-host-2's key under db-host-1's name",
      signed({ privateKey: otherKeys.privateKey }),
      'AGENT_BAD_SIGNATURE',
    ],
    [
      "db-host-1's request renamed to db-host-2",
      { ...base, headers: { ...base.headers, 'x-rotor-agent': 'db-host-2' } },
      'AGENT_BAD_SIGNATURE',
    ],
  ];
  for (const [name, req, code] of cases) {
    const nonces = new NonceCache();
    const v = check(req, T0, nonces);
    t.equal(codeOf(v), code, name);
    if (!v.ok) t.equal(typeof AGENT_AUTH_STATUS[v.code], 'number');
    t.equal(nonces.size(), 0, `${name}: no nonce recorded`);
  }
  // The window is 60 s either way, inclusive.
  t.equal(codeOf(check(signed({ now: T0 - 60_000 }))), 'ok');
  t.equal(codeOf(check(signed({ now: T0 + 60_000 }))), 'ok');
  // Each missing header alone.
  for (const name of Object.keys(base.headers)) {
    const headers = { ...base.headers };
    delete headers[name];
    t.equal(codeOf(check({ ...base, headers })), 'AGENT_UNSIGNED', `without ${name}`);
  }
  const skew = check(signed({ now: T0 - 61_000 }));
  t.match(!skew.ok && skew.message, /61 s behind/);
});

t.test('the exact request, replayed, is refused', async (t) => {
  const nonces = new NonceCache();
  const req = signed();
  t.equal(codeOf(check(req, T0, nonces)), 'ok');
  t.equal(codeOf(check(req, T0 + 1, nonces)), 'AGENT_REPLAY');
  t.equal(codeOf(check(req, T0 + 59_999, nonces)), 'AGENT_REPLAY');
  // The worst case for the cache: stamped 60 s ahead, first seen at once, replayed 120 s later, when the
  // timestamp is still within the window: the nonce must still be remembered.
  const early = signed({ now: T0 + 60_000 });
  t.equal(codeOf(check(early, T0, nonces)), 'ok');
  t.equal(codeOf(check(early, T0 + 120_000, nonces)), 'AGENT_REPLAY');
  t.equal(codeOf(check(early, T0 + 120_001, nonces)), 'AGENT_SKEW');
  // A nonce is per agent: another agent using the same nonce value is not a replay of this one.
  const nonce = req.headers['x-rotor-nonce'] as string;
  t.equal(codeOf(check(signed({ agent: 'db-host-2', privateKey: otherKeys.privateKey, nonce }), T0, nonces)), 'ok');
});

t.test('truncated, garbage and oversized headers are AGENT_UNSIGNED and touch nothing', async (t) => {
  const base = signed();
  const sig = base.headers['x-rotor-signature'] as string;
  const nonce = base.headers['x-rotor-nonce'] as string;
  const hash = base.headers['x-rotor-content-sha256'] as string;
  const bad: [string, string, string | string[]][] = [
    ['truncated signature', 'x-rotor-signature', sig.slice(0, 40)],
    ['signature missing its padding', 'x-rotor-signature', sig.slice(0, 86)],
    ['signature with an extra character', 'x-rotor-signature', `A${sig}`],
    ['signature not base64', 'x-rotor-signature', `${'!'.repeat(86)}==`],
    ['empty signature', 'x-rotor-signature', ''],
    ['huge signature', 'x-rotor-signature', 'A'.repeat(100_000)],
    ['truncated nonce', 'x-rotor-nonce', nonce.slice(0, 21)],
    ['nonce in base64 with padding', 'x-rotor-nonce', `${Buffer.from(nonce, 'base64url').toString('base64')}`],
    ['non-canonical nonce (stray low bits)', 'x-rotor-nonce', `${'A'.repeat(21)}B`],
    ['upper-case hash', 'x-rotor-content-sha256', hash.toUpperCase()],
    ['truncated hash', 'x-rotor-content-sha256', hash.slice(0, 63)],
    ['negative timestamp', 'x-rotor-timestamp', `-${T0}`],
    ['fractional timestamp', 'x-rotor-timestamp', `${T0}.5`],
    ['timestamp with a leading zero', 'x-rotor-timestamp', `0${T0}`],
    ['timestamp in ISO form', 'x-rotor-timestamp', new Date(T0).toISOString()],
    ['huge timestamp', 'x-rotor-timestamp', '9'.repeat(40)],
    ['agent name with a newline', 'x-rotor-agent', `${AGENT}\nGET`],
    ['upper-case agent name', 'x-rotor-agent', AGENT.toUpperCase()],
    ['huge agent name', 'x-rotor-agent', 'a'.repeat(10_000)],
    ['repeated header (an array)', 'x-rotor-nonce', [nonce, nonce]],
    ['repeated header (joined by node)', 'x-rotor-nonce', `${nonce}, ${nonce}`],
  ];
  const nonces = new NonceCache();
  for (const [name, h, value] of bad) {
    const v = check({ ...base, headers: { ...base.headers, [h]: value } }, T0, nonces);
    t.equal(codeOf(v), 'AGENT_UNSIGNED', name);
    t.ok(!v.ok && v.message.length < 300, `${name}: a short message`);
    t.notOk(!v.ok && v.message.includes('AAAAAAAAAA'), `${name}: the value is not echoed`);
  }
  for (const [name, method, p] of [
    ['lower-case method', 'post', base.path],
    ['path with a newline', 'POST', '/v1/jobs\nx'],
    ['path with a space', 'POST', '/v1/jobs x'],
    ['path not starting with /', 'POST', 'http://daemon/v1/jobs'],
    ['path with non-ASCII', 'POST', '/v1/jöbs'],
    ['huge path', 'POST', `/${'a'.repeat(5000)}`],
  ] as const) {
    t.equal(codeOf(check({ ...base, method, path: p }, T0, nonces)), 'AGENT_UNSIGNED', name);
    t.throws(
      () => signRequest({ agent: AGENT, method, path: p, body: '', privateKey: agentKeys.privateKey }),
      { code: 'PROTOCOL_INVALID' },
      `${name}: not signed either`,
    );
  }
  t.equal(nonces.size(), 0);
  t.throws(
    () => signRequest({ agent: 'Bad Name', method: 'GET', path: '/', body: '', privateKey: agentKeys.privateKey }),
    { code: 'PROTOCOL_INVALID' },
  );
  t.throws(() => signRequest({ agent: AGENT, method: 'GET', path: '/', body: '', privateKey: agentKeys.publicKey }), {
    code: 'PROTOCOL_KEY',
  });
  t.throws(
    () =>
      signRequest({
        agent: AGENT,
        method: 'GET',
        path: '/',
        body: '',
        privateKey: agentKeys.privateKey,
        nonce: 'short',
      }),
    { code: 'PROTOCOL_INVALID' },
  );
  // Still fine with the untouched headers.
  t.equal(codeOf(check(base, T0, nonces)), 'ok');
});

t.test('a forged request neither burns the nonce nor fills the cache', async (t) => {
  const nonces = new NonceCache({ maxPerAgent: 10 });
  const genuine = signed();
  const nonce = genuine.headers['x-rotor-nonce'] as string;
  // An attacker who saw the nonce go by (or guessed it) sends it first with a bad signature, an altered
  // body, or under an unknown name.
  t.equal(codeOf(check(signed({ nonce, privateKey: otherKeys.privateKey }), T0, nonces)), 'AGENT_BAD_SIGNATURE');
  t.equal(codeOf(check({ ...genuine, body: 'x' }, T0, nonces)), 'AGENT_BODY_ALTERED');
  t.equal(codeOf(check(signed({ nonce, agent: 'nobody' }), T0, nonces)), 'AGENT_UNKNOWN');
  t.notOk(nonces.has(AGENT, nonce, T0));
  // ... and floods the agent's name with forgeries.
  for (let i = 0; i < 500; i++)
    t.equal(codeOf(check(signed({ privateKey: otherKeys.privateKey }), T0, nonces)), 'AGENT_BAD_SIGNATURE');
  t.equal(nonces.size(), 0);
  // The real agent is unaffected.
  t.equal(codeOf(check(genuine, T0, nonces)), 'ok');
  t.ok(nonces.has(AGENT, nonce, T0));
});

t.test(
  'two phases: the headers are checked without the body, and the nonce is held until the body checks out',
  async (t) => {
    const nonces = new NonceCache();
    const req = signed();
    const nonce = req.headers['x-rotor-nonce'] as string;
    const headersOf = (r: Req, now = T0) =>
      verifyRequestHeaders({ headers: r.headers, method: r.method, path: r.path, now, keyOf, nonces });

    // Everything but the body is decided from the headers: who, when, which request, signed by whom.
    const first = headersOf(req);
    t.match(first, { ok: true, agent: AGENT, nonce, timestamp: T0, contentSha256: sha256Hex(req.body) });
    if (!first.ok) return;
    t.ok(nonces.has(AGENT, nonce, T0), 'the nonce is held while the body is read');
    t.equal(
      codeOf(headersOf(req, T0 + 1)),
      'AGENT_REPLAY',
      'a second copy is refused before its body, while the first one is still being read',
    );
    t.equal(codeOf(headersOf(signed({ agent: 'db-host-9' }))), 'AGENT_UNKNOWN');
    t.equal(codeOf(headersOf(signed({ privateKey: otherKeys.privateKey }))), 'AGENT_BAD_SIGNATURE');
    t.equal(codeOf(headersOf(signed({ now: T0 - 61_000 }))), 'AGENT_SKEW');
    t.equal(nonces.size(), 1, 'refused headers hold no nonce');

    // A body that is not the signed one: refused, and the nonce is given back (the request was not served).
    t.equal(codeOf(verifyRequestBody(first, '{"ok":false}', nonces)), 'AGENT_BODY_ALTERED');
    t.notOk(nonces.has(AGENT, nonce, T0), 'an altered copy does not use up the nonce');
    // The genuine request still goes through, once.
    const again = headersOf(req, T0 + 2);
    t.ok(again.ok);
    if (!again.ok) return;
    t.same(verifyRequestBody(again, req.body, nonces), { ok: true, agent: AGENT, nonce, timestamp: T0 });
    abandonRequest(again, nonces);
    t.ok(nonces.has(AGENT, nonce, T0 + 3), 'a served nonce is never given back');
    t.equal(codeOf(headersOf(req, T0 + 3)), 'AGENT_REPLAY', 'served: its headers are refused from now on');

    // A body that never comes (too large, too slow, cut off): abandonRequest gives the nonce back.
    const slow = signed();
    const held = headersOf(slow);
    t.ok(held.ok);
    if (!held.ok) return;
    abandonRequest(held, nonces);
    t.equal(codeOf(verifyRequest({ ...slow, now: T0, keyOf, nonces })), 'ok', 'sent again in full, it is served');

    // Held nonces count against the agent's cap: one key cannot hold more than maxPerAgent bodies open.
    const capped = new NonceCache({ maxPerAgent: 2 });
    const hold = (r: Req) =>
      verifyRequestHeaders({ headers: r.headers, method: r.method, path: r.path, now: T0, keyOf, nonces: capped });
    t.ok(hold(signed()).ok);
    t.ok(hold(signed()).ok);
    t.equal(codeOf(hold(signed())), 'AGENT_RATE');
  },
);

t.test(
  'the nonce cache forgets after 2 x maxSkew, evicts cheaply, and refuses rather than forgets at its cap',
  async (t) => {
    const c = new NonceCache({ ttlMs: 120_000, maxPerAgent: 3 });
    t.equal(c.remember('a', 'n1', T0), 'fresh');
    t.equal(c.remember('a', 'n1', T0 + 120_000), 'replay', 'remembered up to and including ttl');
    t.equal(c.remember('a', 'n2', T0 + 10_000), 'fresh');
    t.equal(c.remember('a', 'n3', T0 + 20_000), 'fresh');
    t.equal(c.remember('a', 'n4', T0 + 30_000), 'full', 'at the cap: refused, n1 is not forgotten early');
    t.ok(c.has('a', 'n1', T0 + 30_000));
    t.notOk(c.has('a', 'n4', T0 + 30_000), 'a refused nonce is not recorded');
    t.equal(c.remember('b', 'n4', T0 + 30_000), 'fresh', 'the cap is per agent');
    // n1 expires at T0+120000; the next remember drops it from the front and n4 fits.
    t.equal(c.remember('a', 'n4', T0 + 120_001), 'fresh');
    t.equal(c.size('a'), 3);
    t.notOk(c.has('a', 'n1', T0 + 120_001));
    t.equal(c.remember('a', 'n1', T0 + 120_001), 'full', 'n2, n3 and n4 are live');
    t.equal(c.remember('a', 'n5', T0 + 300_000), 'fresh', 'all expired: dropped on the next remember');
    t.equal(c.size('a'), 1);
    c.sweep(T0 + 1_000_000);
    t.equal(c.size(), 0);

    // A clock that steps back: an expired entry behind a live one is swept once the cap is reached.
    const d = new NonceCache({ ttlMs: 100, maxPerAgent: 2 });
    t.equal(d.remember('a', 'x', 1000), 'fresh'); // expires 1100
    t.equal(d.remember('a', 'y', 500), 'fresh'); // expires 600
    t.equal(d.remember('a', 'z', 700), 'fresh', 'y (expired, behind the live x) is swept at the cap');
    t.notOk(d.has('a', 'y', 700));
    t.equal(d.remember('a', 'x', 700), 'replay');

    // Many nonces over a long time stay bounded by what is live.
    const e = new NonceCache({ ttlMs: 120_000, maxPerAgent: 4096 });
    let refused = 0;
    for (let i = 0; i < 100_000; i++) if (e.remember('a', `n${i}`, T0 + i * 100) !== 'fresh') refused++;
    t.equal(refused, 0);
    t.ok(e.size('a') <= 1201, `about ttl/interval entries held (${e.size('a')})`);

    t.throws(() => new NonceCache({ ttlMs: 0 }), RangeError);
    t.throws(
      () => verifyRequest({ ...signed(), now: T0, keyOf, nonces: new NonceCache({ ttlMs: 60_000 }) }),
      RangeError,
      'a cache shorter than the window is a wiring bug',
    );
  },
);

t.test('AGENT_RATE through verifyRequest, and recovery once nonces expire', async (t) => {
  const nonces = new NonceCache({ maxPerAgent: 2 });
  t.equal(codeOf(check(signed(), T0, nonces)), 'ok');
  t.equal(codeOf(check(signed(), T0, nonces)), 'ok');
  const third = signed();
  t.equal(codeOf(check(third, T0, nonces)), 'AGENT_RATE');
  t.equal(AGENT_AUTH_STATUS.AGENT_RATE, 429);
  t.equal(
    codeOf(check(signed({ agent: 'db-host-2', privateKey: otherKeys.privateKey }), T0, nonces)),
    'ok',
    'other agents are not slowed down',
  );
  // Retried once the window has passed, a refused request is accepted (with a fresh timestamp).
  t.equal(codeOf(check(signed({ now: T0 + 120_001 }), T0 + 120_001, nonces)), 'ok');
});

t.test('headers from a fetch Headers object work too', async (t) => {
  const req = signed();
  const headers: HeaderSource = new Headers(req.headers as Record<string, string>);
  t.equal(codeOf(check({ ...req, headers: headers as unknown as Req['headers'] })), 'ok');
  const res = signResponse({
    status: 200,
    requestNonce: req.headers['x-rotor-nonce'] as string,
    body: 'x',
    privateKey: daemonKeys.privateKey,
  });
  t.same(
    verifyResponse({
      headers: new Headers({ ...res }),
      status: 200,
      requestNonce: req.headers['x-rotor-nonce'] as string,
      body: 'x',
      publicKey: daemonKeys.publicKey,
    }),
    { ok: true },
  );
});

t.test("the daemon's answers are bound to the request they answer", async (t) => {
  const nonceA = signed().headers['x-rotor-nonce'] as string;
  const nonceB = signed().headers['x-rotor-nonce'] as string;
  const body = JSON.stringify({ job: { id: 7, secret: 'payments/db-app' } });
  const headers = signResponse({ status: 200, requestNonce: nonceA, body, privateKey: daemonKeys.privateKey });
  t.equal(headers['x-rotor-content-sha256'], sha256Hex(body));
  const vr = (over: Partial<Parameters<typeof verifyResponse>[0]> = {}) =>
    verifyResponse({ headers, status: 200, requestNonce: nonceA, body, publicKey: daemonKeys.publicKey, ...over });
  t.same(vr(), { ok: true });
  t.same(vr({ body: Buffer.from(body) }), { ok: true }, 'bytes or string');
  t.equal((vr({ body: body.replace('7', '8') }) as { code?: string }).code, 'DAEMON_BODY_ALTERED');
  t.equal(
    (vr({ requestNonce: nonceB }) as { code?: string }).code,
    'DAEMON_BAD_SIGNATURE',
    'an old answer replayed to a new request',
  );
  t.equal((vr({ status: 500 }) as { code?: string }).code, 'DAEMON_BAD_SIGNATURE');
  t.equal((vr({ publicKey: agentKeys.publicKey }) as { code?: string }).code, 'DAEMON_BAD_SIGNATURE', 'another key');
  t.equal(
    (vr({ headers: { ...headers, 'x-rotor-content-sha256': sha256Hex('{}') }, body: '{}' }) as { code?: string }).code,
    'DAEMON_BAD_SIGNATURE',
  );
  t.equal((vr({ headers: {} }) as { code?: string }).code, 'DAEMON_UNSIGNED');
  t.equal(
    (vr({ headers: { 'x-rotor-signature': headers['x-rotor-signature'] } }) as { code?: string }).code,
    'DAEMON_UNSIGNED',
  );
  t.equal(
    (vr({ headers: { ...headers, 'x-rotor-signature': headers['x-rotor-signature'].slice(1) } }) as { code?: string })
      .code,
    'DAEMON_UNSIGNED',
  );
  // The agent's own request signature is no answer signature, even with the same key (domain labels).
  const req = signed({ privateKey: daemonKeys.privateKey });
  t.equal(
    (
      verifyResponse({
        headers: req.headers,
        status: 200,
        requestNonce: req.headers['x-rotor-nonce'] as string,
        body: req.body,
        publicKey: daemonKeys.publicKey,
      }) as { code?: string }
    ).code,
    'DAEMON_BAD_SIGNATURE',
  );
  t.throws(() => signResponse({ status: 200, requestNonce: 'nope', body, privateKey: daemonKeys.privateKey }), {
    code: 'PROTOCOL_INVALID',
  });
  t.throws(() => signResponse({ status: 99, requestNonce: nonceA, body, privateKey: daemonKeys.privateKey }), {
    code: 'PROTOCOL_INVALID',
  });
});

t.test('property: random bodies, paths and methods round-trip, and any change is caught', async (t) => {
  const seed = Number(process.env.ROTOR_PROPERTY_SEED ?? 20261126);
  const rand = prng(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const nonces = new NonceCache({ maxPerAgent: 10_000 });
  const methods = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'];
  let failures = 0;
  for (let i = 0; i < 400; i++) {
    let p = '/';
    for (let n = int(60); n > 0; n--) p += String.fromCharCode(0x21 + int(0x7e - 0x21 + 1));
    const bytes = Buffer.alloc(int(3) === 0 ? 0 : int(2000));
    for (let j = 0; j < bytes.length; j++) bytes[j] = int(256);
    const body: string | Uint8Array =
      int(2) === 0 ? bytes : `{"s":${JSON.stringify(bytes.toString('latin1'))},"u":"\u00e9\u{1f511}"}`;
    const method = methods[int(methods.length)]!;
    const now = T0 + int(1_000_000);
    const skew = int(120_001) - 60_000;
    const req = signed({ method, path: p, body, now: now + skew });

    const expect = (got: string, want: string, what: string) => {
      if (got !== want) {
        failures++;
        t.fail(`seed ${seed}, case ${i}: ${what}: ${got}, expected ${want}`, { path: p, method });
      }
    };
    // Changes first (they must not consume the nonce), then the genuine request, then its replay.
    const bodyBytes = Buffer.from(typeof body === 'string' ? Buffer.from(body, 'utf8') : body);
    if (bodyBytes.length > 0) {
      const k = int(bodyBytes.length);
      bodyBytes[k] = bodyBytes[k]! ^ (1 << int(8));
      expect(codeOf(check({ ...req, body: bodyBytes }, now, nonces)), 'AGENT_BODY_ALTERED', 'flipped body bit');
    } else {
      expect(codeOf(check({ ...req, body: 'x' }, now, nonces)), 'AGENT_BODY_ALTERED', 'added body');
    }
    const k = 1 + int(p.length);
    const altered = p.slice(0, k) + (p[k] === 'a' ? 'b' : 'a') + p.slice(k + 1);
    expect(codeOf(check({ ...req, path: altered }, now, nonces)), 'AGENT_BAD_SIGNATURE', 'altered path');
    expect(codeOf(check(req, now, nonces)), 'ok', 'round trip');
    const later = now + int(130_000);
    expect(
      codeOf(check(req, later, nonces)),
      Math.abs(later - (now + skew)) <= 60_000 ? 'AGENT_REPLAY' : 'AGENT_SKEW',
      'replay later',
    );
    expect(codeOf(check(req, now, nonces)), 'AGENT_REPLAY', 'replay at once');

    const status = 100 + int(500);
    const rh = signResponse({
      status,
      requestNonce: req.headers['x-rotor-nonce'] as string,
      body,
      privateKey: daemonKeys.privateKey,
    });
    const rv = verifyResponse({
      headers: rh,
      status,
      requestNonce: req.headers['x-rotor-nonce'] as string,
      body,
      publicKey: daemonKeys.publicKey,
    });
    expect(rv.ok ? 'ok' : rv.code, 'ok', 'answer round trip');
    if (failures > 5) break;
  }
  t.equal(failures, 0, `seed ${seed}`);
});

t.test('property: whatever the clock and the order, each request is accepted at most once', async (t) => {
  const rand = prng(7);
  const int = (n: number) => Math.floor(rand() * n);
  const nonces = new NonceCache({ maxPerAgent: 100_000 });
  const sent: Req[] = [];
  const accepted = new Map<string, number>();
  let clock = T0;
  for (let i = 0; i < 3000; i++) {
    clock += int(5_000);
    let req: Req;
    if (sent.length === 0 || int(3) === 0) {
      // A new request, stamped by an agent whose clock is up to 70 s off.
      req = signed({ now: clock + int(140_001) - 70_000, body: String(i) });
      sent.push(req);
    } else {
      req = sent[int(sent.length)]!; // an attacker replays something it recorded
    }
    const v = check(req, clock, nonces);
    if (v.ok) accepted.set(v.nonce, (accepted.get(v.nonce) ?? 0) + 1);
  }
  t.ok(accepted.size > 100, `${accepted.size} requests accepted`);
  t.equal([...accepted.values()].filter((n) => n > 1).length, 0, 'no nonce accepted twice');
  nonces.sweep(clock);
  t.ok(nonces.size() < 200, `only live nonces are held after a sweep (${nonces.size()})`);
});

// --- sealed payloads -----------------------------------------------------------------------------------

async function ageKeys(): Promise<{ identity: string; recipient: string }> {
  const identity = await generateX25519Identity();
  return { identity, recipient: await identityToRecipient(identity) };
}

async function sealError(p: Promise<unknown>): Promise<SealError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof SealError) return e;
    throw e;
  }
  throw new Error('expected a SealError');
}

const SECRET = 'S3cr3t-Pa55w0rd-dkq93kf';

t.test('sealed payloads open with the agent identity and only with it', async (t) => {
  const agent = await ageKeys();
  const other = await ageKeys();
  const payload = { job: 7, username: 'app_green', password: SECRET, note: 'é🔑', n: [1, null, true] };
  const sealed = await sealForAgent(agent.recipient, payload);
  t.match(sealed, /^-----BEGIN AGE ENCRYPTED FILE-----\n[\s\S]+\n-----END AGE ENCRYPTED FILE-----\n$/);
  t.notOk(sealed.includes(SECRET), 'no plaintext');
  t.notOk(sealed.includes(Buffer.from(SECRET).toString('base64').slice(0, 12)), 'not even its base64');
  t.notOk(sealed.includes('app_green'));
  t.same(await openSealed(agent.identity, sealed), payload);
  // JSON transport: the sealed text survives a JSON round trip.
  t.same(await openSealed(agent.identity, JSON.parse(JSON.stringify({ s: sealed })).s as string), payload);
  // Two seals of the same payload differ.
  t.not(await sealForAgent(agent.recipient, payload), sealed);

  const wrong = await sealError(openSealed(other.identity, sealed));
  t.equal(wrong.code, 'SEAL_WRONG_KEY');
  for (const e of [wrong, wrong.cause]) t.notOk(String(e).includes(SECRET));

  // The standard age tool opens it.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-seal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(path.join(dir, 'id.age'), `${agent.identity}\n`, { mode: 0o600 });
  t.same(
    JSON.parse(execFileSync('age', ['-d', '-i', path.join(dir, 'id.age')], { input: sealed, encoding: 'utf8' })),
    payload,
  );
});

t.test('tampered, malformed and oversized sealed text fails with a code and no plaintext', async (t) => {
  const agent = await ageKeys();
  const sealed = await sealForAgent(agent.recipient, { password: SECRET });
  const file = armor.decode(sealed);

  // A bit flipped in the payload, in the header's MAC, or the file cut short.
  const flip = (i: number) => {
    const f = Uint8Array.from(file);
    f[i] = f[i]! ^ 0x01;
    return armor.encode(f);
  };
  t.equal((await sealError(openSealed(agent.identity, flip(file.length - 5)))).code, 'SEAL_CORRUPT');
  const macAt = Buffer.from(file).indexOf('\n--- ') + 6;
  t.equal((await sealError(openSealed(agent.identity, flip(macAt)))).code, 'SEAL_CORRUPT');
  t.equal(
    (await sealError(openSealed(agent.identity, armor.encode(file.subarray(0, file.length - 1))))).code,
    'SEAL_CORRUPT',
  );
  // Every single-byte change fails, whatever the code.
  const codes = new Set<string>();
  for (let i = 0; i < file.length; i++) {
    const e = await sealError(openSealed(agent.identity, flip(i)));
    codes.add(e.code);
    if (String(e).includes(SECRET) || String(e.cause).includes(SECRET))
      t.fail(`byte ${i}: the error shows the plaintext`);
  }
  t.same(
    [...codes].sort().filter((c) => !['SEAL_CORRUPT', 'SEAL_MALFORMED', 'SEAL_WRONG_KEY'].includes(c)),
    [],
    [...codes].join(' '),
  );

  t.equal(
    (await sealError(openSealed(agent.identity, sealed.replace('AGE ENCRYPTED FILE', 'PGP MESSAGE')))).code,
    'SEAL_MALFORMED',
  );
  t.equal((await sealError(openSealed(agent.identity, Buffer.from(file).toString('base64')))).code, 'SEAL_MALFORMED');
  t.equal((await sealError(openSealed(agent.identity, ''))).code, 'SEAL_MALFORMED');
  t.equal((await sealError(openSealed(agent.identity, 42 as unknown as string))).code, 'SEAL_MALFORMED');
  t.equal((await sealError(openSealed(agent.identity, 'x'.repeat(600 * 1024)))).code, 'SEAL_TOO_LARGE');

  // An age file to the agent that is not JSON: the error does not quote it.
  const e = new Encrypter();
  e.addRecipient(agent.recipient);
  const notJson = await sealError(openSealed(agent.identity, armor.encode(await e.encrypt(`password=${SECRET}`))));
  t.equal(notJson.code, 'SEAL_NOT_JSON');
  t.notOk(String(notJson).includes(SECRET));
  t.equal(notJson.cause, undefined);
  const notUtf8 = await sealError(
    openSealed(agent.identity, armor.encode(await e.encrypt(Uint8Array.of(0x22, 0xff, 0x22)))),
  );
  t.equal(notUtf8.code, 'SEAL_NOT_JSON');
});

t.test('sealing refuses what it cannot seal, with a code', async (t) => {
  const agent = await ageKeys();
  t.equal((await sealError(sealForAgent('age1notarecipient', {}))).code, 'SEAL_RECIPIENT');
  t.equal((await sealError(sealForAgent(agent.identity, {}))).code, 'SEAL_RECIPIENT');
  t.equal((await sealError(sealForAgent(agent.recipient, undefined))).code, 'SEAL_UNSERIALIZABLE');
  t.equal((await sealError(sealForAgent(agent.recipient, { n: 1n }))).code, 'SEAL_UNSERIALIZABLE');
  const cyclic: Record<string, unknown> = { password: SECRET };
  cyclic.self = cyclic;
  const cyc = await sealError(sealForAgent(agent.recipient, cyclic));
  t.equal(cyc.code, 'SEAL_UNSERIALIZABLE');
  t.equal(cyc.cause, undefined);
  const big = await sealError(
    sealForAgent(agent.recipient, { blob: SECRET.repeat(MAX_SEALED_PAYLOAD / SECRET.length + 1) }),
  );
  t.equal(big.code, 'SEAL_TOO_LARGE');
  t.notOk(big.message.includes(SECRET));
  // The largest payload allowed seals and opens (the sealed-text bound leaves room for it).
  const max = { b: 'x'.repeat(MAX_SEALED_PAYLOAD - 8) };
  t.equal(Buffer.byteLength(JSON.stringify(max)), MAX_SEALED_PAYLOAD);
  t.same(await openSealed(agent.identity, await sealForAgent(agent.recipient, max)), max);

  const badId = await sealError(
    openSealed(`${agent.identity.slice(0, -3)}QQQ`, await sealForAgent(agent.recipient, {})),
  );
  t.equal(badId.code, 'SEAL_IDENTITY');
  t.notOk(badId.message.includes(agent.identity.slice(20, 40)), 'the identity is not quoted');
  t.equal(badId.cause, undefined);
  t.equal((await sealError(openSealed(agent.recipient, ''))).code, 'SEAL_IDENTITY');
});
