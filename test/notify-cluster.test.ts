/**
 * Webhooks with several daemons on one PostgreSQL store (a throwaway server): only the leader sends.
 * Two daemons in-process, a receiver (node:http) recording which daemon sent each delivery; the leader
 * stops (it resigns), the other leads and sends from then on.
 */
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t from 'tap';
import { Daemon } from '../src/daemon/daemon.js';
import { jsonLogger } from '../src/log.js';
import { pgPlace } from './lib/pg-store.js';
import { world } from './world.js';

const p = await pgPlace(t);

if (p) {
  t.test('only the leader sends; after failover the new leader does', async (t) => {
    const got: { daemon: string; to: number; at: number }[] = [];
    const waiters: { done: () => boolean; resolve: () => void }[] = [];
    let phase = 0;
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const data = JSON.parse(body);
        got.push({ daemon: data.daemon, to: data.to, at: phase });
        res.writeHead(200).end();
        for (const w of [...waiters])
          if (w.done()) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve();
          }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    const until = (done: () => boolean) =>
      done() ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ done, resolve }));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
    const w = await world(t, {
      'rotor.yaml': `kind: Config\nsync: { interval: 1d }\nnotify:\n  - name: rx\n    url: ${url}\n    events: [rotated]\n    secret: rotor/hook-key\n`,
      'policies.yaml':
        'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n---\nkind: Policy\nname: slow\nevery: 30d\noverlap: 1d\n',
      'secrets.yaml':
        'kind: Secret\nname: demo/ticker\npolicy: fast\ngenerate: { length: 24 }\n---\nkind: Secret\nname: rotor/hook-key\npolicy: slow\ngenerate: { length: 40 }\n',
    });
    const schema = p.schema();
    const daemons = ['d0', 'd1'].map((name) => {
      const dataDir = path.join(w.root, name);
      mkdirSync(dataDir, { mode: 0o700 });
      for (const f of readdirSync(w.dataDir)) copyFileSync(path.join(w.dataDir, f), path.join(dataDir, f));
      return new Daemon({
        repo: w.remote,
        branch: 'main',
        dataDir,
        breakGlass: [],
        log: jsonLogger(() => undefined),
        commitDelayMs: 50,
        stateBackend: p.backend(schema),
        name,
      });
    });
    const [d0, d1] = daemons as [Daemon, Daemon];
    await d0.start(); // the first leads
    let d0Stopped = false;
    t.teardown(async () => {
      if (!d0Stopped) await d0.stop();
      await d1.stop();
    });
    await d1.start();
    await until(() => got.filter((g) => g.at === 0).length >= 3);
    t.ok(
      got.every((g) => g.daemon === 'd0'),
      'while d0 leads, every delivery comes from it',
    );
    phase = 1;
    await d0.stop(); // resigns: d1 takes the lease
    d0Stopped = true;
    phase = 2;
    await until(() => got.some((g) => g.at === 2 && g.daemon === 'd1'));
    t.ok(
      got.filter((g) => g.at === 2).every((g) => g.daemon === 'd1'),
      'after d0 stopped, deliveries come from d1, the new leader',
    );
    t.ok(
      got.filter((g) => g.daemon === 'd1').every((g) => g.at >= 1), // it may lead while d0's stop() finishes
      'd1 sent nothing while it followed',
    );
    t.ok(d1.status().notify, "the new leader's status shows the endpoint");
  });
}
