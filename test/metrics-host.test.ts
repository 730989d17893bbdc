/**
 * The metrics listener (/metrics and the status page) answers only for a Host header that names it:
 * its own address and port (localhost too on loopback), or a name given with --metrics-host. A web
 * page that rebinds its own DNS name to 127.0.0.1 sends its own name as Host and gets 421
 * HOST_NOT_ALLOWED, so it cannot read names, versions and codes. The real listener, over TCP.
 */
import { request } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import { hostAllowed, listenMetrics, parseHost, parseMetricsHosts } from '../src/serve/metrics.js';
import { rotor } from './helpers.js';
import { world } from './world.js';

/** What the listener reads: a daemon with nothing declared. */
const source = { status: () => ({ now: new Date().toISOString(), config: {}, secrets: [], recent: [] }) };

async function listener(t: Test, listen: string, hosts: string[] = []) {
  const m = await listenMetrics(listen, source, { hosts });
  t.teardown(() => m.close());
  return { address: m.address, port: Number(m.address.slice(m.address.lastIndexOf(':') + 1)) };
}

/** GET `p` from `connectTo` (an address without brackets) and `port`, with the given Host header. */
function get(
  connectTo: string,
  port: number,
  p: string,
  host: string,
): Promise<{ status: number; body: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: connectTo, port, path: p, headers: { host }, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, type: String(res.headers['content-type']) }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw request (for one without a Host header). */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = '';
    s.on('data', (c) => (got += c));
    s.on('end', () => resolve(got));
    s.on('error', reject);
    s.write(text);
  });
}

t.test("a DNS-rebinding page is refused; the listener's own address and configured names are served", async (t) => {
  const { port } = await listener(t, '127.0.0.1:0', ['rotor.internal', 'prom.example:9999']);
  for (const p of ['/metrics', '/', '/status']) {
    const evil = await get('127.0.0.1', port, p, `evil.example:${port}`);
    t.equal(evil.status, 421, `${p}: Host evil.example is refused`);
    t.equal(JSON.parse(evil.body).error.code, 'HOST_NOT_ALLOWED');
    t.match(JSON.parse(evil.body).error.message, /--metrics-host NAME/, 'the message says what to do');
    t.notMatch(evil.body, /rotor_|<html/i, 'nothing of the page or the metrics');
  }
  const served: string[] = [
    `127.0.0.1:${port}`,
    `localhost:${port}`,
    `LOCALHOST:${port}`,
    'rotor.internal',
    `rotor.internal:${port}`,
    'rotor.internal:8443',
    'ROTOR.Internal',
    'prom.example:9999',
  ];
  for (const host of served) {
    const r = await get('127.0.0.1', port, '/metrics', host);
    t.equal(r.status, 200, `Host ${host} is served`);
    t.match(r.body, /rotor_rotations_total/);
  }
  t.equal((await get('127.0.0.1', port, '/', `localhost:${port}`)).status, 200, 'the status page too');
  const refused: string[] = [
    `127.0.0.1:${port + 1 > 65535 ? port - 1 : port + 1}`, // the right address, another port
    '127.0.0.1', // port 80 implied
    `evil.example`,
    'prom.example:9998', // configured for 9999 only
    `evil@127.0.0.1:${port}`,
    `127.0.0.1:${port}.evil.example`,
    `127.0.0.2:${port}`, // another loopback address than the one the request came in on
    `[::1]:${port}`,
    `rotor.internal.:${port}`,
  ];
  for (const host of refused)
    t.equal((await get('127.0.0.1', port, '/metrics', host)).status, 421, `Host ${JSON.stringify(host)} is refused`);
  // No Host at all: only HTTP/1.0 may omit it, and a browser never does.
  t.match(
    await raw(port, 'GET /metrics HTTP/1.0\r\n\r\n'),
    /^HTTP\/1\.1 200/,
    'HTTP/1.0 without Host is served (old scrapers; a browser always sends Host)',
  );
  t.match(
    await raw(port, 'GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n'),
    /^HTTP\/1\.1 400/,
    'HTTP/1.1 without Host is a bad request',
  );
  t.match(await raw(port, 'GET /metrics HTTP/1.1\r\nHost: \r\n\r\n'), /^HTTP\/1\.1 421/, 'an empty Host is refused');
  t.match(
    await raw(port, `GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Length: 5\r\n\r\nhello`),
    /^HTTP\/1\.1 400[\s\S]*BODY_NOT_ALLOWED/,
    'a body is refused',
  );
});

t.test('bound to 0.0.0.0: the address each request came in on', async (t) => {
  const { port } = await listener(t, '0.0.0.0:0');
  t.equal((await get('127.0.0.1', port, '/metrics', `127.0.0.1:${port}`)).status, 200);
  t.equal(
    (await get('127.0.0.1', port, '/metrics', `localhost:${port}`)).status,
    200,
    'localhost, when it came in on loopback',
  );
  t.equal(
    (await get('127.0.0.2', port, '/metrics', `127.0.0.2:${port}`)).status,
    200,
    'another loopback address it was reached at',
  );
  t.equal(
    (await get('127.0.0.1', port, '/metrics', `127.0.0.2:${port}`)).status,
    421,
    'not an address other than the one it was reached at',
  );
  t.equal((await get('127.0.0.1', port, '/metrics', `evil.example:${port}`)).status, 421);
  const external = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal);
  if (external) {
    t.equal(
      (await get(external.address, port, '/metrics', `${external.address}:${port}`)).status,
      200,
      `reached at ${external.address}: that address`,
    );
    t.equal(
      (await get(external.address, port, '/metrics', `localhost:${port}`)).status,
      421,
      'localhost only on loopback',
    );
  } else {
    t.comment('no non-loopback IPv4 address on this machine: that case is not run');
  }
});

t.test('IPv6 loopback', async (t) => {
  const probe = net.createServer();
  const ok = await new Promise<boolean>((resolve) => {
    probe.once('error', () => resolve(false));
    probe.listen(0, '::1', () => probe.close(() => resolve(true)));
  });
  if (!ok) {
    t.comment('no IPv6 loopback here: skipped');
    return;
  }
  const { port } = await listener(t, '[::1]:0');
  t.equal((await get('::1', port, '/metrics', `[::1]:${port}`)).status, 200);
  t.equal(
    (await get('::1', port, '/metrics', `[0:0:0:0:0:0:0:1]:${port}`)).status,
    200,
    'the same address written out',
  );
  t.equal((await get('::1', port, '/metrics', `localhost:${port}`)).status, 200);
  t.equal((await get('::1', port, '/metrics', `127.0.0.1:${port}`)).status, 421);
});

t.test('parsing Host headers and --metrics-host values', async (t) => {
  t.same(parseHost('Example.COM:80'), { host: 'example.com', port: 80 });
  t.same(parseHost('127.1'), { host: '127.0.0.1' }, 'as a browser writes it');
  t.same(parseHost('[::1]:9464'), { host: '[::1]', port: 9464 });
  for (const bad of ['a b', 'a@b', 'a/b', 'x:99999', ':80', 'a:', '[::1', 'é.example'])
    t.equal(parseHost(bad), undefined, `${bad} is not a host`);
  const names = parseMetricsHosts(['rotor.internal', 'prom.example:9090', 'prom.example:9091']);
  t.ok(hostAllowed('prom.example:9091', '127.0.0.1', 9464, names));
  t.notOk(hostAllowed('prom.example:9092', '127.0.0.1', 9464, names));
  t.ok(hostAllowed('127.0.0.1:9464', '::ffff:127.0.0.1', 9464, names), 'an IPv4 connection to a dual-stack listener');
  t.throws(() => parseMetricsHosts(['bad/host']), { code: 'METRICS_HOST_INVALID' });
});

t.test('rotor daemon --metrics-host: the flag, its environment variable, its help', async (t) => {
  const bad = await rotor(['daemon', '--repo', '/nonexistent', '--metrics-host', 'rotor.internal,bad/host']);
  t.equal(bad.code, 2, 'a value that is not a host name is a usage error');
  t.match(bad.stderr, /--metrics-host bad\/host is not a host name/);
  const badEnv = await rotor(['daemon', '--repo', '/nonexistent'], {
    env: { ROTOR_METRICS_HOST: 'rotor.internal, bad/host' },
  });
  t.equal(badEnv.code, 2, 'ROTOR_METRICS_HOST is read (comma-separated)');
  const help = await rotor(['daemon', '--help']);
  t.match(help.stdout, /--metrics-host NAME\.\.\.[\s\S]*HOST_NOT_ALLOWED[\s\S]*\[env ROTOR_METRICS_HOST\]/);
});

t.test('the daemon passes --metrics-host to its listener', async (t) => {
  const w = await world(t, { 'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n' });
  const d = await w.start({
    socketDir: path.join(w.root, 'sockets'),
    metricsListen: '127.0.0.1:0',
    metricsHosts: ['rotor.internal'],
  });
  t.teardown(() => d.stop());
  const port = Number(d.metricsAddress!.split(':').pop());
  t.equal((await get('127.0.0.1', port, '/metrics', 'rotor.internal')).status, 200);
  t.equal((await get('127.0.0.1', port, '/', `evil.example:${port}`)).status, 421);
  t.match(w.logs(), /metrics request refused.*HOST_NOT_ALLOWED/, 'the refusal is logged');
});
