/** Bodies read into memory stop at their limit: the shared collector, and rotor/client against a socket that answers too much. */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { getSecret, MAX_ANSWER_BYTES, RotorClientError } from '../src/client/index.js';
import { boundedBody, declaredOver } from '../src/util/bounded.js';

t.test('the collector keeps a body up to its limit and nothing past it', async (t) => {
  const b = boundedBody(10);
  t.equal(b.add(Buffer.from('hello')), true);
  t.equal(b.add(Buffer.from('world')), true, 'exactly the limit is kept');
  t.equal(b.body().toString(), 'helloworld');
  t.equal(b.add(Buffer.from('!')), false, 'one byte over is refused');
  t.equal(b.size, 11, 'the size counts what arrived');
  t.equal(b.body().length, 0, 'and nothing is kept once over');
  t.equal(declaredOver('11', 10), true);
  t.equal(declaredOver('10', 10), false);
  t.equal(declaredOver(undefined, 10), false);
  t.equal(declaredOver('not a number', 10), false, 'a malformed length is left to the reader');
});

t.test('rotor/client stops reading an answer past its limit', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-bounded-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'app.sock');
  let written = 0;
  const chunk = Buffer.alloc(1024 * 1024, 'a');
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{"value":"');
    const more = () => {
      // Up to twice the limit, unless the client hung up first.
      while (written < 2 * MAX_ANSWER_BYTES && !res.destroyed) {
        written += chunk.length;
        if (!res.write(chunk)) {
          res.once('drain', more);
          return;
        }
      }
      if (!res.destroyed) res.end('"}');
    };
    more();
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const err = await getSecret('app/key', { socket, timeoutMs: 60_000 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof RotorClientError, 'the read fails');
  t.equal((err as RotorClientError).code, 'BAD_RESPONSE');
  t.match((err as Error).message, `more than ${MAX_ANSWER_BYTES} bytes`);
  server.closeAllConnections();
});

t.test(
  'the admin client opens a connection for each call (no kept-alive socket the daemon may close under it)',
  async (t) => {
    const { callAdmin } = await import('../src/cli/admin-client.js');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-admin-conn-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const socket = path.join(dir, 'admin.sock');
    let connections = 0;
    const server = createServer({ keepAliveTimeout: 60_000 }, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
    server.on('connection', () => connections++);
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
    for (let i = 0; i < 3; i++) t.same(await callAdmin(socket, 'GET', '/v1/status'), { ok: true });
    t.equal(connections, 3, 'three calls, three connections');
    server.closeAllConnections();
  },
);
