/**
 * Load: 200 concurrent readers on one consumer socket while the secret rotates 100 times. No request
 * fails, and every response's value (and its previous value) is the one of the version it names.
 */
import { Agent, request } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { world } from './world.js';

const READERS = 200;
const POLLERS = 20; // of the readers, these follow the secret with long-polls
const ROTATIONS = 100;

function get(
  agent: Agent,
  socketPath: string,
  p: string,
): Promise<{
  status: number;
  body: { version: number; value: string; previous?: { version: number; value: string } };
}> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: p, agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test(`${READERS} concurrent readers during ${ROTATIONS} rotations`, async (t) => {
  const uid = process.getuid!();
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\nretain: 3\n',
    'secret.yaml': 'kind: Secret\nname: load/token\npolicy: p\ngenerate: {}\n',
    'consumer.yaml': `kind: Consumer\nname: app\nuid: ${uid}\nsecrets: ["load/*"]\n`,
  });
  const d = await w.start({ socketDir: path.join(w.root, 'sockets') });
  t.teardown(() => d.stop());
  const socketPath = path.join(w.root, 'sockets', 'app.sock');
  const truth = new Map<number, string>([[1, String(d.served('load/token')!.value)]]);
  const agent = new Agent({ keepAlive: true, maxSockets: READERS });
  t.teardown(() => agent.destroy());

  let done = false;
  const seen: { version: number; value: string; previous?: { version: number; value: string } }[] = [];
  const failures: string[] = [];
  const reader = async () => {
    while (!done) {
      try {
        const r = await get(agent, socketPath, '/v1/secrets/load/token');
        if (r.status !== 200) failures.push(`status ${r.status}`);
        else seen.push(r.body);
      } catch (e) {
        failures.push((e as NodeJS.ErrnoException).code ?? String(e));
      }
    }
  };
  const followed: number[][] = [];
  const poller = async () => {
    const versions: number[] = [];
    followed.push(versions);
    let after = 1;
    while (!done) {
      const r = await get(agent, socketPath, `/v1/secrets/load/token?wait=30&after=${after}`).catch(
        (e: NodeJS.ErrnoException) => ({ status: -1, body: undefined, code: e.code }),
      );
      if (r.status !== 200 || !r.body) {
        failures.push(`poll ${r.status}`);
        continue;
      }
      seen.push(r.body);
      if (r.body.version > after) versions.push(r.body.version);
      after = Math.max(after, r.body.version);
    }
  };
  const readers = [...Array(READERS - POLLERS)].map(reader).concat([...Array(POLLERS)].map(poller));
  for (let i = 0; i < ROTATIONS; i++) {
    await d.rotateNow('load/token', `load ${i}`);
    const s = d.served('load/token')!;
    truth.set(s.version, String(s.value));
    // Let the readers through between rotations, as a real schedule would.
    await new Promise((r) => setImmediate(r));
  }
  t.equal(d.served('load/token')!.version, ROTATIONS + 1, `${ROTATIONS} rotations`);
  // The long-pollers end on the last version: one more rotation wakes them after `done`.
  done = true;
  await d.rotateNow('load/token', 'wake the pollers');
  const last = d.served('load/token')!;
  truth.set(last.version, String(last.value));
  await Promise.all(readers);

  t.same(failures, [], 'no request failed');
  t.ok(seen.length >= READERS, `${seen.length} responses checked`);
  let wrong = 0;
  for (const r of seen) {
    if (truth.get(r.version) !== r.value) wrong++;
    if (r.previous && truth.get(r.previous.version) !== r.previous.value) wrong++;
  }
  t.equal(wrong, 0, 'every value (and previous value) is the one of the version it names');
  t.equal(new Set(truth.values()).size, truth.size, 'every version has its own value');
  for (const versions of followed)
    t.same(
      versions,
      [...versions].sort((a, b) => a - b),
      'a long-poller sees versions in order',
    );
  t.ok(
    followed.every((v) => v.length > 0 && v.at(-1)! >= ROTATIONS + 1),
    'every long-poller reached the last versions',
  );
});
