/**
 * The agent's parts on their own (agent/src/pump.ts, loops.ts, wire.ts) and the one list of engine
 * names (src/model/engines.ts) against the schema it comes from.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { backoffMs, ResultStore } from '../agent/src/loops.js';
import { Changes, Pump } from '../agent/src/pump.js';
import { jobOf, malformedJobStub, verifyPayloadOf } from '../agent/src/wire.js';
import { ENGINE_NAMES } from '../src/model/engines.js';
import type { Job, Result } from '../src/protocol/jobs.js';
import { isChecks } from '../src/protocol/jobs.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const job = (id: string, secret: string): Job => ({
  id,
  kind: 'set',
  secret,
  version: 1,
  target: 't',
  engine: 'postgres',
  strategy: 'single',
  sealed: 'x',
});

t.test('ENGINE_NAMES is the schema enum of Target.engine, in order', async (t) => {
  const schema = JSON.parse(readFileSync(path.join(ROOT, 'schemas/target.schema.json'), 'utf8'));
  t.same([...ENGINE_NAMES], schema.properties.engine.enum);
  for (const engine of ENGINE_NAMES)
    t.type(jobOf({ ...job('a', 's'), engine }), 'object', `${engine} is a job's engine`);
  t.equal(jobOf({ ...job('a', 's'), engine: 'oracle' }), 'engine is not one the agent drives');
});

t.test('a malformed job with an id gets a stand-in; one without an id does not', async (t) => {
  t.match(malformedJobStub({ id: 'j1', secret: 's1', kind: 'nope' }), { id: 'j1', secret: 's1', kind: 'set' });
  t.equal(malformedJobStub({ secret: 's1' }), undefined);
  t.equal(malformedJobStub('j1'), undefined);
});

t.test('the pump: at most `limit` at once, one secret in arrival order', async (t) => {
  const release = new Map<string, (r: Result) => void>();
  const started: string[] = [];
  const done: string[] = [];
  const changes = new Changes();
  const pump = new Pump({
    limit: 2,
    run: (j) => {
      started.push(j.id);
      return new Promise<Result>((resolve) => release.set(j.id, resolve));
    },
    done: (j) => {
      done.push(j.id);
      changes.notify();
    },
  });
  pump.push(job('a1', 'a'));
  pump.push(job('a2', 'a'));
  pump.push(job('b1', 'b'));
  pump.push(job('c1', 'c'));
  t.same(started, ['a1', 'b1'], 'a2 waits for a1, c1 for room');
  t.same([pump.active, pump.queued, pump.hasRoom], [2, 2, false]);
  let changed = changes.wait(new AbortController().signal);
  release.get('a1')!({ id: 'a1', outcome: 'done' });
  await changed;
  t.same(started, ['a1', 'b1', 'a2'], 'a1 done: the next of its secret starts first');
  changed = changes.wait(new AbortController().signal);
  release.get('b1')!({ id: 'b1', outcome: 'done' });
  await changed;
  t.same(started, ['a1', 'b1', 'a2', 'c1']);
  pump.halt();
  pump.push(job('d1', 'd'));
  t.same(started, ['a1', 'b1', 'a2', 'c1'], 'halted: nothing more starts');
  t.same(
    pump.dropQueued().map((j) => j.id),
    ['d1'],
  );
  t.equal(pump.queued, 0);
  release.get('a2')!({ id: 'a2', outcome: 'done' });
  release.get('c1')!({ id: 'c1', outcome: 'done' });
  await Promise.all(pump.running());
  t.same(done, ['a1', 'b1', 'a2', 'c1']);
  t.equal(pump.active, 0);
});

t.test('backoff doubles up to the cap, jittered over its upper half', async (t) => {
  const at = (attempt: number, random: number) =>
    backoffMs(attempt, { baseMs: 100, capMs: 1000, random: () => random });
  t.same([at(0, 0), at(1, 0), at(2, 0), at(5, 0), at(60, 0)], [50, 100, 200, 500, 500]);
  t.equal(at(0, 0.999999), 100);
  t.equal(at(60, 0.999999), 1000);
});

t.test('results kept until accepted; long messages shortened; batches bounded', async (t) => {
  const store = new ResultStore();
  store.claim('j1');
  t.ok(store.has('j1'));
  const kept = store.keep(job('j1', 's'), { id: 'j1', outcome: 'failed', code: 'X', message: 'm'.repeat(5000) });
  t.equal(kept.message!.length, 1000);
  t.ok(kept.message!.endsWith('...'));
  for (let i = 2; i <= 150; i++) store.keep(job(`j${i}`, 's'), { id: `j${i}`, outcome: 'done' });
  t.equal(store.size, 150);
  t.equal(store.nextBatch().length, 100, 'at most 100 results a request');
  store.forget('j1');
  t.notOk(store.has('j1'));
  t.equal(store.size, 149);
});

t.test('verify jobs: the kind, the payload, the checks of a result (hostile shapes refused)', async (t) => {
  t.match(jobOf({ ...job('v', 's'), kind: 'verify' }), { kind: 'verify' }, 'verify is a job kind');
  for (const kind of ['rotate', '', 7, null, ['verify']])
    t.equal(jobOf({ ...job('v', 's'), kind }), 'kind is not set, retire or verify', `kind ${JSON.stringify(kind)}`);
  const c = { username: 'app', password: 'pw' };
  t.same(verifyPayloadOf({ current: c }), { current: c });
  t.same(verifyPayloadOf({ current: c, previous: c }), { current: c, previous: c });
  for (const bad of [
    undefined,
    'x',
    [],
    {},
    { previous: c },
    { current: { username: 'app' } },
    { current: c, previous: 'x' },
    { current: { username: 'u'.repeat(257), password: 'pw' } },
    { current: { username: 'app', password: 'p'.repeat(4097) } },
    { current: { username: 1, password: 'pw' } },
  ])
    t.equal(verifyPayloadOf(bad), undefined, `refused: ${JSON.stringify(bad)?.slice(0, 60)}`);

  t.ok(isChecks([]));
  t.ok(isChecks([{ credential: 'current', outcome: 'ok' }]));
  t.ok(
    isChecks([
      { credential: 'current', outcome: 'refused' },
      { credential: 'previous', outcome: 'error', code: 'DB_UNREACHABLE' },
    ]),
  );
  for (const bad of [
    undefined,
    {},
    'ok',
    [
      { credential: 'current', outcome: 'ok' },
      { credential: 'current', outcome: 'ok' },
    ],
    [
      { credential: 'current', outcome: 'ok' },
      { credential: 'previous', outcome: 'ok' },
      { credential: 'previous', outcome: 'ok' },
    ],
    [{ credential: 'pending', outcome: 'ok' }],
    [{ credential: 'current', outcome: 'maybe' }],
    [{ credential: 'current', outcome: 'error', code: 'X'.repeat(65) }],
    [{ credential: 'current', outcome: 'error', code: '' }],
    [null],
    [['current', 'ok']],
  ])
    t.notOk(isChecks(bad), `refused: ${JSON.stringify(bad)?.slice(0, 60)}`);
});
