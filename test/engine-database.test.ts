/**
 * The engine's database steps with a scripted stand-in for the agents (the agents and the databases
 * themselves are tested in agent.test.ts, db-rotation.test.ts and engine-*.test.ts): the order of the
 * steps, nothing promoted before set+test succeeded, a value the database keeps refusing discarded
 * after MAX_VALUE_REJECTIONS tries (audited) and a new one generated, usernames alternating, retire
 * through the agent with the previous credential.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { generateKeys, loadKeys } from '../src/keys.js';
import { loadModel } from '../src/model/load.js';
import { DirectorySource } from '../src/model/source.js';
import type { AuditEvent, DatabaseSteps, DbCredential } from '../src/rotation/engine.js';
import { Engine, MAX_VALUE_REJECTIONS } from '../src/rotation/engine.js';
import { openStore } from '../src/state/store.js';
import { tempDir } from './helpers.js';

async function setup(t: Parameters<Parameters<typeof t.test>[1]>[0], steps: DatabaseSteps) {
  const dir = tempDir(t, 'rotor-engine-db-');
  const repo = path.join(dir, 'repo');
  mkdirSync(repo);
  writeFileSync(path.join(repo, 'rotor.yaml'), 'kind: Config\n');
  writeFileSync(
    path.join(repo, 'all.yaml'),
    `kind: Policy
name: p
every: 30d
overlap: 1d
---
kind: Agent
name: a
signingKey: "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
recipient: age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
---
kind: Target
name: pg
engine: postgres
agent: a
---
kind: Secret
name: app/db
policy: p
generate: { length: 32 }
database: { target: pg, usernames: [blue, green] }
`,
  );
  const model = await loadModel(new DirectorySource(repo), { now: Date.parse('2026-11-26T00:00:00Z') });
  t.ok(model.valid, JSON.stringify(model.problems.slice(0, 3)));
  await generateKeys(path.join(dir, 'keys'));
  const keys = await loadKeys(path.join(dir, 'keys'));
  const store = await openStore({
    dir: path.join(dir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
  });
  t.teardown(() => store.close());
  const audit: AuditEvent[] = [];
  let clock = Date.parse('2026-11-26T00:00:00Z');
  const engine = new Engine({
    store,
    audit: {
      append: async (events) => void audit.push(...events),
      get head() {
        return { seq: audit.length, hash: '0'.repeat(64) };
      },
    },
    audited: new Map(),
    fingerprintKey: Buffer.alloc(32, 7),
    now: () => clock,
    log: () => undefined,
    database: steps,
  });
  await engine.apply(model.desired, 'c0');
  return { engine, audit, advance: (ms: number) => (clock += ms) };
}

t.test('set before promotion; usernames alternate; retire gets the previous credential', async (t) => {
  const calls: string[] = [];
  const seen: { pending: DbCredential; current?: DbCredential }[] = [];
  const retired: DbCredential[] = [];
  const { engine, audit, advance } = await setup(t, {
    set: async (_s, version, pending, current) => {
      calls.push(`set ${version}`);
      seen.push({ pending, ...(current ? { current } : {}) });
      t.equal(
        engine.served('app/db')?.version,
        version === 1 ? undefined : version - 1,
        'nothing promoted while the agent works',
      );
      t.notOk(
        audit.some((e) => e.to === version && e.event !== 'rotation-failed'),
        'nothing audited before set+test succeeded',
      );
    },
    retire: async (_s, version, r) => {
      calls.push(`retire ${version}`);
      retired.push(r);
    },
  });
  await engine.runDue();
  await engine.idle();
  t.same(engine.served('app/db')?.username, 'blue');
  await engine.rotateNow('app/db', 'test');
  const v2 = engine.served('app/db')!;
  t.equal(v2.username, 'green', 'alternate: the other user');
  t.same(
    seen[1]!.current,
    { username: 'blue', password: seen[0]!.pending.password },
    'set gets the current credential',
  );
  t.equal(v2.previous?.username, 'blue');
  advance(25 * 3600_000);
  await engine.runDue();
  await engine.idle();
  t.same(
    retired,
    [{ username: 'blue', password: seen[0]!.pending.password }],
    'retire revokes the previous credential',
  );
  t.same(calls, ['set 1', 'set 2', 'retire 1']);
  t.same(
    audit.map((e) => e.event),
    ['created', 'rotated', 'retired'],
  );
});

t.test(`a value the database refuses ${MAX_VALUE_REJECTIONS} times is discarded and a new one generated`, async (t) => {
  const passwords: string[] = [];
  const { engine, audit, advance } = await setup(t, {
    set: async (_s, _v, pending) => {
      passwords.push(pending.password);
      if (passwords.length <= MAX_VALUE_REJECTIONS)
        throw Object.assign(new Error('refused'), { code: 'DB_VALUE_REJECTED' });
    },
    retire: async () => undefined,
  });
  for (let i = 0; i < MAX_VALUE_REJECTIONS + 1; i++) {
    await engine.runDue();
    await engine.idle();
    advance(10 * 60_000); // past the backoff
  }
  t.equal(passwords.length, MAX_VALUE_REJECTIONS + 1);
  t.equal(
    new Set(passwords.slice(0, MAX_VALUE_REJECTIONS)).size,
    1,
    `the same value is tried ${MAX_VALUE_REJECTIONS} times (a crash or a retry never makes a second one)`,
  );
  t.not(passwords[MAX_VALUE_REJECTIONS], passwords[0], 'then a new value');
  t.equal(engine.served('app/db')?.value, passwords[MAX_VALUE_REJECTIONS], 'the accepted one is served');
  const failed = audit.filter((e) => e.event === 'rotation-failed');
  t.ok(failed.length >= 2, 'failures are audited');
  t.match(failed.at(-1)!.detail, /DB_VALUE_REJECTED: the database refused this value 3 times; it is discarded/);
  t.notOk(JSON.stringify(audit).includes(passwords[0]!), 'no value in the audit');
});

t.test('other failures keep the pending value and the current credential', async (t) => {
  let fail = true;
  const passwords: string[] = [];
  const { engine, audit, advance } = await setup(t, {
    set: async (_s, _v, pending) => {
      passwords.push(pending.password);
      if (fail) throw Object.assign(new Error('down'), { code: 'DB_UNREACHABLE' });
    },
    retire: async () => undefined,
  });
  for (let i = 0; i < 5; i++) {
    await engine.runDue();
    await engine.idle();
    advance(10 * 60_000);
  }
  t.equal(engine.served('app/db'), undefined, 'nothing served while set fails');
  t.equal(
    audit.filter((e) => e.event === 'rotation-failed').length,
    1,
    'the same failure is audited once, not on every retry',
  );
  fail = false;
  await engine.runDue();
  await engine.idle();
  t.equal(new Set(passwords).size, 1, 'the one pending value throughout');
  t.equal(engine.served('app/db')?.value, passwords[0]);
});
