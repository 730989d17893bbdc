/**
 * TLS on the daemon's agent listener (--agent-tls-cert, --agent-tls-key): the flags and their files
 * (stable codes, never a byte of the key), the listener's limits over TLS (per address before any
 * handshake, the handshake and the headers in time), the AGENT_LISTEN_CLEAR warning, and the pins of
 * the openssl helper (test/services/tls.ts) against rotor's spkiPin. What the agent does with the
 * certificate: test/agent-tls.test.ts.
 *
 * No sleeps: every wait is for an event (a close, an answer); timeouts are small and configured.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import { generateKeys, loadKeys } from '../src/keys.js';
import { AGENT_JOBS_PATH } from '../src/protocol/jobs.js';
import { signRequest } from '../src/protocol/sign.js';
import { spkiPin } from '../src/protocol/tls.js';
import { isLoopback } from '../src/serve/listen.js';
import { rotor, tempDir } from './helpers.js';
import { makeTls, type TlsFile } from './services/tls.js';
import { countingListener, openTcp, openTls, untilClosed } from './tls-listener.js';

const f = makeTls(t);
const base = tempDir(t, 'rotor-agent-listener-tls-');
await generateKeys(path.join(base, 'agent-keys'));
await generateKeys(path.join(base, 'daemon-keys'));
const agentKeys = await loadKeys(path.join(base, 'agent-keys'));
const daemonKeys = await loadKeys(path.join(base, 'daemon-keys'));
const AGENT = 'db-host';
const ca = f.read(f.ca.cert);

/** The real listener, declaring this file's agent; with `cert`, over TLS. */
const listener = (
  tt: Test,
  o: { cert?: TlsFile; listen?: string; limits?: Parameters<typeof countingListener>[1]['limits'] } = {},
) =>
  countingListener(tt, {
    agent: { name: AGENT, signingKey: agentKeys.signingKey, recipient: agentKeys.recipient },
    signing: daemonKeys.signing,
    ...(o.cert ? { tls: { cert: f.read(o.cert.cert), key: f.read(o.cert.key) } } : {}),
    ...(o.listen ? { listen: o.listen } : {}),
    ...(o.limits ? { limits: o.limits } : {}),
  });

t.test('the openssl helper: its pins are what rotor computes, its certificates what they claim', async (t) => {
  for (const k of ['ca', 'server', 'otherCa', 'otherServer', 'otherName', 'selfSigned'] as const) {
    const x = new X509Certificate(f.read(f[k].cert));
    t.equal(spkiPin(x), f[k].pin, `${k}: spkiPin agrees with the openssl pipeline of the docs`);
  }
  t.ok(new X509Certificate(f.read(f.server.cert)).checkIssued(new X509Certificate(f.read(f.ca.cert))));
  t.notOk(new X509Certificate(f.read(f.otherServer.cert)).checkIssued(new X509Certificate(f.read(f.ca.cert))));
  t.match(new X509Certificate(f.read(f.server.cert)).subjectAltName, /IP Address:127\.0\.0\.1.*DNS:localhost/);
});

t.test('the limits hold for TLS connections: per address, then their places are given back', async (t) => {
  const l = await listener(t, { cert: f.server, limits: { maxConnectionsPerPeer: 2 } });
  // Two TLS connections from 127.0.0.2 (each through its handshake, so known to be accepted)...
  const held = [await openTls(l.port, '127.0.0.2', ca), await openTls(l.port, '127.0.0.2', ca)];
  const heldClosed = held.map(untilClosed);
  // ...a third from the same address is closed before any handshake.
  const third = openTcp(l.port, '127.0.0.2');
  third.write(Buffer.from([0x16, 0x03, 0x01])); // the start of a ClientHello
  t.equal(await untilClosed(third), '', 'a third connection from the same address is closed without a handshake');
  t.match(l.logs(), /too many from one address.*AGENT_PEER_CONNECTIONS/, 'and logged');
  t.notOk(
    held.some((s) => s.destroyed),
    'the first two stay open',
  );
  // Closed, they give their places back (the listener notices on its own time: try until it has).
  for (const s of held) s.destroy();
  await Promise.all(heldClosed);
  let served = false;
  for (let attempt = 0; attempt < 200 && !served; attempt++) {
    const s = await openTls(l.port, '127.0.0.2', ca).catch(() => undefined);
    if (!s) continue;
    const body = JSON.stringify({ wait: 0 });
    const h = signRequest({ agent: AGENT, method: 'POST', path: AGENT_JOBS_PATH, body, privateKey: agentKeys.signing });
    const headers = Object.entries({ ...h, 'content-type': 'application/json', 'content-length': body.length })
      .map(([k, v]) => `${k}: ${v}\r\n`)
      .join('');
    const answer = untilClosed(s);
    s.write(
      `POST ${AGENT_JOBS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:${l.port}\r\nConnection: close\r\n${headers}\r\n${body}`,
    );
    served = /^HTTP\/1\.1 200/.test(await answer);
  }
  t.ok(served, 'once they closed, the same address is served over TLS again');
});

t.test('the limits hold for TLS connections: the handshake and the headers in time', async (t) => {
  const l = await listener(t, { cert: f.server, limits: { headersTimeoutMs: 1000, requestTimeoutMs: 60_000 } });
  // A TLS connection that sends no request is cut at the header timeout, with a 408...
  const quiet = await openTls(l.port, '127.0.0.2', ca);
  t.match(await untilClosed(quiet), /^HTTP\/1\.1 408/, 'a TLS connection without a request is cut with 408');
  // ...and one that never starts its handshake is cut too: the handshake has the same bound.
  const silent = openTcp(l.port, '127.0.0.3');
  t.equal(await untilClosed(silent), '', 'a connection that never starts a handshake is closed');
  t.match(
    l.logs(),
    /TLS handshake failed.*AGENT_TLS_HANDSHAKE.*ERR_TLS_HANDSHAKE_TIMEOUT/,
    'the handshake timeout is logged',
  );
  t.equal(l.requests(), 0, 'no request reached the handler');
});

t.test('AGENT_LISTEN_CLEAR: plain HTTP on an address other hosts reach, and only there', async (t) => {
  const probe = net.createServer();
  const ipv6 = await new Promise<boolean>((resolve) => {
    probe.once('error', () => resolve(false));
    probe.listen(0, '::1', () => probe.close(() => resolve(true)));
  });
  if (!ipv6) t.comment('no IPv6 loopback here: the IPv6 addresses are not tried');
  const cases: [string, boolean][] = [
    ['127.0.0.1:0', false],
    ['127.0.0.2:0', false],
    ['[::1]:0', false],
    ['localhost:0', false],
    ['0.0.0.0:0', true],
    ['[::]:0', true],
  ];
  for (const [listen, warned] of cases.filter(([l]) => ipv6 || !l.startsWith('['))) {
    const l = await listener(t, { listen });
    t.equal(/AGENT_LISTEN_CLEAR/.test(l.logs()), warned, `${listen}: ${warned ? 'warned' : 'quiet'}`);
    await l.api.close();
  }
  const secure = await listener(t, { listen: '0.0.0.0:0', cert: f.server });
  t.notMatch(secure.logs(), /AGENT_LISTEN_CLEAR/, '0.0.0.0 with TLS: quiet');
  t.equal(secure.api.pin, f.server.pin, 'the listener reports its pin');
  for (const h of ['127.0.0.1', '127.255.0.9', '::1', '[::1]', '::ffff:127.0.0.1', 'localhost', 'LOCALHOST'])
    t.ok(isLoopback(h), `${h} is loopback`);
  for (const h of ['0.0.0.0', '::', '[::]', '10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1', 'example.com'])
    t.notOk(isLoopback(h), `${h} is not`);
});

t.test('the flags: both or neither, files that cannot be read or used, never a byte of the key', async (t) => {
  const dir = tempDir(t, 'rotor-agent-tls-flags-');
  const encrypted = path.join(dir, 'encrypted.key');
  execFileSync('openssl', ['pkey', '-in', f.server.key, '-aes256', '-passout', 'pass:test', '-out', encrypted], {
    env: { ...process.env, OPENSSL_CONF: '/dev/null' },
  });
  const garbage = path.join(dir, 'garbage.pem');
  writeFileSync(garbage, 'not a certificate\n');
  const run = (...flags: string[]) =>
    rotor(['daemon', '--repo', path.join(dir, 'no-repo'), '--data-dir', dir, ...flags]);
  const keyLines = f
    .read(f.server.key)
    .split('\n')
    .filter((x) => x.length > 20 && !x.startsWith('-----'));
  const cases: [string, string[], number, string, RegExp][] = [
    [
      'a certificate without a key',
      ['--agent-tls-cert', f.server.cert],
      2,
      'AGENT_TLS_INCOMPLETE',
      /--agent-tls-cert needs --agent-tls-key/,
    ],
    [
      'a key without a certificate',
      ['--agent-tls-key', f.server.key],
      2,
      'AGENT_TLS_INCOMPLETE',
      /--agent-tls-key needs --agent-tls-cert/,
    ],
    [
      'a certificate that does not exist',
      ['--agent-tls-cert', path.join(dir, 'missing.crt'), '--agent-tls-key', f.server.key],
      1,
      'AGENT_TLS_UNREADABLE',
      /--agent-tls-cert .*missing\.crt cannot be read \(ENOENT\)/,
    ],
    [
      'a key that cannot be read (a directory)',
      ['--agent-tls-cert', f.server.cert, '--agent-tls-key', dir],
      1,
      'AGENT_TLS_UNREADABLE',
      /--agent-tls-key .* cannot be read \(EISDIR\)/,
    ],
    [
      'a key given as the certificate',
      ['--agent-tls-cert', f.server.key, '--agent-tls-key', f.server.key],
      1,
      'AGENT_TLS_INVALID',
      /holds no PEM certificate/,
    ],
    [
      'a certificate given as the key',
      ['--agent-tls-cert', f.server.cert, '--agent-tls-key', f.server.cert],
      1,
      'AGENT_TLS_INVALID',
      /--agent-tls-key .*server\.crt holds no PEM private key/,
    ],
    [
      'not PEM at all',
      ['--agent-tls-cert', garbage, '--agent-tls-key', f.server.key],
      1,
      'AGENT_TLS_INVALID',
      /garbage\.pem holds no PEM certificate/,
    ],
    [
      'the key of another certificate',
      ['--agent-tls-cert', f.server.cert, '--agent-tls-key', f.otherServer.key],
      1,
      'AGENT_TLS_INVALID',
      /other-server\.key is not the key of the certificate in --agent-tls-cert .*server\.crt/,
    ],
    [
      'an encrypted key',
      ['--agent-tls-cert', f.server.cert, '--agent-tls-key', encrypted],
      1,
      'AGENT_TLS_INVALID',
      /encrypted\.key is encrypted/,
    ],
  ];
  for (const [what, flags, exit, code, message] of cases) {
    const r = await run(...flags);
    t.equal(r.code, exit, `${what}: exit ${exit}`);
    t.match(r.stderr, new RegExp(`\\[${code}\\]`), `${what}: ${code}`);
    t.match(r.stderr, message, `${what}: the message`);
    t.notMatch(r.stderr, /-----BEGIN [A-Z ]*PRIVATE KEY-----\s*\n|Proc-Type/, `${what}: no key text`);
    t.ok(
      keyLines.every((x) => !r.stderr.includes(x)),
      `${what}: no line of the key`,
    );
  }
  const env = await rotor(['daemon', '--repo', path.join(dir, 'no-repo'), '--data-dir', dir], {
    env: { ROTOR_AGENT_TLS_CERT: f.server.cert },
  });
  t.equal(env.code, 2, 'the environment variables count as the flags');
  t.match(env.stderr, /AGENT_TLS_INCOMPLETE/);
  const help = await rotor(['daemon', '--help']);
  t.match(help.stdout, /--agent-tls-cert FILE --agent-tls-key FILE/, 'the usage line names them');
  t.match(help.stdout, /AGENT_LISTEN_CLEAR/, 'the help says what happens without them');
});
