/**
 * The planner and the backoff helper, on plain data: no store, no clock, no I/O. Each case builds the
 * planner's input by hand and checks what it decides.
 */
import t from 'tap';
import type { Desired } from '../src/model/model.js';
import type { Policy, Secret } from '../src/model/schema-types.js';
import type { Failure, ManualValue, PlanInput } from '../src/rotation/planner.js';
import {
  dueAt,
  failed,
  failureBackoff,
  nextWakeup,
  plan,
  retireAt,
  rotatable,
  rotationOf,
  storageBackoff,
} from '../src/rotation/planner.js';
import type { SecretRecord, Version } from '../src/rotation/record.js';
import { compileSchedule, intoWindow, jitterOf, nextBase } from '../src/schedule/schedule.js';
import { backoffDelay } from '../src/util/backoff.js';

const T0 = Date.parse('2026-11-26T00:00:00Z');
const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const iso = (ms: number) => new Date(ms).toISOString();

const where = { file: 'all.yaml', line: 1, col: 1 };
const policy = (p: Partial<Policy> = {}): Policy => ({ kind: 'Policy', name: 'p', every: '30d', overlap: '1h', ...p });
const secret = (name: string, s: Partial<Secret> = {}): Secret => ({
  kind: 'Secret',
  name,
  policy: 'p',
  generate: {},
  ...s,
});

function model(secrets: Secret[], pol: Policy = policy()): Desired {
  return {
    config: undefined,
    policies: new Map([[pol.name, { decl: pol, source: where }]]),
    secrets: new Map(secrets.map((s) => [s.name, { decl: s, source: where }])),
    targets: new Map(),
    agents: new Map(),
    consumers: new Map(),
  };
}

/** A record whose current version 1 became current at `at` (and, with `previousUntil`, a previous one). */
function record(
  name: string,
  at: number,
  o: { previousUntil?: number; lastRequest?: string; value?: string; purgeAfter?: number } = {},
): SecretRecord {
  const versions: Version[] = [
    { version: o.previousUntil !== undefined ? 2 : 1, value: o.value ?? 'v-current', createdAt: iso(at) },
  ];
  if (o.previousUntil !== undefined) {
    versions.push({ version: 1, value: 'v-old', createdAt: iso(at - DAY), validUntil: iso(o.previousUntil) });
  }
  return {
    name,
    versions,
    rotatedAt: iso(at),
    scheduledBase: at,
    ...(o.lastRequest !== undefined ? { lastRequest: o.lastRequest } : {}),
    ...(o.purgeAfter !== undefined ? { purgeAfter: iso(o.purgeAfter) } : {}),
  };
}

function input(
  desired: Desired,
  o: Partial<Omit<PlanInput, 'desired' | 'records'>> & { records?: SecretRecord[] } = {},
): PlanInput {
  return {
    desired,
    records: new Map((o.records ?? []).map((r) => [r.name, r])),
    failures: o.failures ?? new Map<string, Failure>(),
    running: o.running ?? new Set<string>(),
    manual: o.manual ?? new Map<string, ManualValue>(),
    readByAll: o.readByAll,
    database: o.database ?? false,
  };
}

t.test('a new secret is due now, as a rotation triggered by "new"', async (t) => {
  const i = input(model([secret('app/key', { rotate: { request: 'r1', reason: 'first' } })]));
  t.equal(dueAt('app/key', i), 0);
  t.same(plan(T0, i).actions, [
    { kind: 'rotate', secret: 'app/key', trigger: 'new', extra: { request: 'r1' }, detached: false },
  ]);
  t.equal(nextWakeup(T0, i), 0);
});

t.test('a secret rotates at its next schedule slot plus its jitter, and keeps the slot as its base', async (t) => {
  const pol = policy({ every: '30d', jitter: '6h' });
  const i = input(model([secret('app/key')], pol), { records: [record('app/key', T0)] });
  const base = T0 + 30 * DAY;
  const jitter = jitterOf(compileSchedule(pol), 'app/key', base);
  t.ok(jitter >= 0 && jitter < 6 * HOUR);
  t.equal(dueAt('app/key', i), base + jitter);
  t.same(plan(base + jitter - 1, i), { actions: [], wakeAt: base + jitter });
  t.same(plan(base + jitter, i).actions, [
    { kind: 'rotate', secret: 'app/key', trigger: 'schedule', extra: { scheduledBase: base }, detached: false },
  ]);
  // Jitter is the secret's own: another name on the same policy lands elsewhere in the 6 hours.
  const other = input(model([secret('db/other')], pol), { records: [record('db/other', T0)] });
  t.equal(dueAt('db/other', other), base + jitterOf(compileSchedule(pol), 'db/other', base));
});

t.test('a changed rotate.request is due now, with its reason and request', async (t) => {
  const s = secret('app/key', { rotate: { request: 'r2', reason: 'leaked' } });
  const i = input(model([s]), { records: [record('app/key', T0, { lastRequest: 'r1' })] });
  t.equal(dueAt('app/key', i), 0);
  t.same(rotationOf(T0 + HOUR, 'app/key', i), { trigger: 'request', extra: { reason: 'leaked', request: 'r2' } });
  // The request answered already: back to the schedule.
  const answered = input(model([s]), { records: [record('app/key', T0, { lastRequest: 'r2' })] });
  t.equal(dueAt('app/key', answered), T0 + 30 * DAY);
});

t.test('an unfinished rotation is due now and keeps its trigger', async (t) => {
  const r: SecretRecord = {
    ...record('app/key', T0),
    pending: { version: 2, value: 'v2', createdAt: iso(T0 + DAY), trigger: 'cli', reason: 'x' },
  };
  const i = input(model([secret('app/key')]), { records: [r] });
  t.equal(dueAt('app/key', i), 0);
  t.same(rotationOf(T0 + DAY, 'app/key', i), { trigger: 'cli', extra: {} });
});

t.test('a failure backs off: it delays dueAt, the plan and the wake-up', async (t) => {
  const failures = new Map<string, Failure>([
    ['app/key', { since: T0, attempts: 3, error: 'EIO', retryAt: T0 + 4000 }],
  ]);
  const i = input(model([secret('app/key')]), { failures });
  t.equal(dueAt('app/key', i), T0 + 4000);
  t.same(plan(T0 + 3999, i), { actions: [], wakeAt: T0 + 4000 });
  t.equal(plan(T0 + 4000, i).actions.length, 1);
  // The backoff: 1 s doubling to 5 minutes; the next failure counts on from the last.
  t.same([1, 2, 3, 9, 10, 50].map(failureBackoff), [1000, 2000, 4000, 256_000, 300_000, 300_000]);
  const f1 = failed(undefined, 'EIO', T0);
  t.same(f1, { since: T0, attempts: 1, error: 'EIO', retryAt: T0 + 1000 });
  t.same(failed(f1, 'DB_DOWN', T0 + 5000), { since: T0, attempts: 2, error: 'DB_DOWN', retryAt: T0 + 7000 });
  t.equal(failed(f1, 'EIO', T0 + 5000, { afterMs: 50 }).retryAt, T0 + 5050);
  t.equal(failed(f1, 'STATE_IO', T0 + 5000, { sharedRetryAt: T0 + 9000 }).retryAt, T0 + 9000);
  // An error that says when (retryAfter): never sooner, whichever delay applies; a later one stays.
  t.equal(failed(f1, 'X', T0 + 5000, { notBefore: T0 + 60_000 }).retryAt, T0 + 60_000, 'not before');
  t.equal(failed(f1, 'X', T0 + 5000, { afterMs: 50, notBefore: T0 + 6000 }).retryAt, T0 + 6000);
  t.equal(failed(f1, 'X', T0 + 5000, { notBefore: T0 + 5500 }).retryAt, T0 + 7000, 'the backoff is later');
  t.equal(failed(f1, 'STATE_IO', T0 + 5000, { sharedRetryAt: T0 + 9000, notBefore: T0 + 8000 }).retryAt, T0 + 9000);
  // Storage: 1 s doubling to 10 s.
  t.same([1, 2, 3, 4, 5, 20].map(storageBackoff), [1000, 2000, 4000, 8000, 10_000, 10_000]);
});

t.test('a secret whose step is running wakes no one (its end does), but its rotation is still planned', async (t) => {
  const r = record('app/key', T0, { previousUntil: T0 + HOUR });
  const i = input(model([secret('app/new'), secret('app/key')]), {
    records: [r],
    running: new Set(['app/new', 'app/key']),
  });
  t.equal(nextWakeup(T0, i), undefined);
  t.same(
    plan(T0 + HOUR, i).actions.map((a) => a.kind),
    ['rotate', 'retire'],
  );
  t.equal(nextWakeup(T0, { ...i, running: new Set(['app/new']) }), T0 + HOUR);
});

t.test('the previous version retires when its overlap ends', async (t) => {
  const r = record('app/key', T0, { previousUntil: T0 + HOUR });
  const i = input(model([secret('app/key')]), { records: [r] });
  t.same(retireAt(T0, r, i), { at: T0 + HOUR, early: false });
  t.same(plan(T0 + HOUR - 1, i), { actions: [], wakeAt: T0 + HOUR });
  t.same(plan(T0 + HOUR, i).actions, [{ kind: 'retire', secret: 'app/key', early: false, detached: false }]);
  // Retired already: nothing left to retire.
  const done: SecretRecord = { ...r, versions: [r.versions[0]!, { ...r.versions[1]!, retired: true }] };
  t.equal(retireAt(T0, done, i), undefined);
  // A failing secret's retirement waits for its retry.
  const failures = new Map<string, Failure>([
    ['app/key', { since: T0, attempts: 1, error: 'X', retryAt: T0 + 2 * HOUR }],
  ]);
  t.same(plan(T0 + HOUR, { ...i, failures }).actions, []);
  t.equal(nextWakeup(T0, { ...i, failures }), T0 + 2 * HOUR);
});

t.test('retireAfter: consumers retires early once every consumer read the current version', async (t) => {
  const r = record('app/key', T0, { previousUntil: T0 + HOUR });
  const desired = model([secret('app/key')], policy({ retireAfter: 'consumers' }));
  const seen: Array<[string, number]> = [];
  const all = (read: boolean | undefined) => (name: string, version: number) => {
    seen.push([name, version]);
    return read;
  };
  t.same(retireAt(T0 + 60_000, r, input(desired, { readByAll: all(true) })), { at: T0 + 60_000, early: true });
  t.same(seen[0], ['app/key', 2]);
  t.same(plan(T0 + 60_000, input(desired, { records: [r], readByAll: all(true) })).actions, [
    { kind: 'retire', secret: 'app/key', early: true, detached: false },
  ]);
  t.same(retireAt(T0 + 60_000, r, input(desired, { readByAll: all(false) })), { at: T0 + HOUR, early: false });
  t.same(retireAt(T0 + 60_000, r, input(desired, { readByAll: all(undefined) })), { at: T0 + HOUR, early: false });
  // Without the policy's consent, consumers' reads change nothing.
  t.same(retireAt(T0 + 60_000, r, input(model([secret('app/key')]), { readByAll: all(true) })), {
    at: T0 + HOUR,
    early: false,
  });
});

t.test('a removed secret is purged after purgeAfter', async (t) => {
  const r = record('old/key', T0, { purgeAfter: T0 + HOUR });
  const i = input(model([]), { records: [r] });
  t.same(plan(T0 + HOUR - 1, i), { actions: [], wakeAt: T0 + HOUR });
  t.same(plan(T0 + HOUR, i).actions, [{ kind: 'purge', secret: 'old/key' }]);
  t.equal(dueAt('old/key', i), undefined);
});

t.test('a sops secret is due only when its value changed or a rotation is pending', async (t) => {
  const s = secret('app/sops', { generate: undefined, sops: { file: 's.yaml', key: 'k' } });
  const desired = model([s]);
  const r = record('app/sops', T0, { value: 'same' });
  const manual = (m: ManualValue) => new Map([['app/sops', m]]);
  t.equal(dueAt('app/sops', input(desired, { records: [r], manual: manual({ value: 'same' }) })), undefined);
  t.equal(
    dueAt(
      'app/sops',
      input(desired, { records: [r], manual: manual({ error: { code: 'SOPS_DECRYPT', message: 'no key' } }) }),
    ),
    undefined,
  );
  t.equal(dueAt('app/sops', input(desired, { records: [r] })), undefined);
  const changed = input(desired, { records: [r], manual: manual({ value: 'new' }) });
  t.equal(dueAt('app/sops', changed), 0);
  t.same(plan(T0 + 100 * DAY, input(desired, { records: [r], manual: manual({ value: 'same' }) })).actions, []);
  t.same(plan(T0, changed).actions, [
    { kind: 'rotate', secret: 'app/sops', trigger: 'commit', extra: {}, detached: false },
  ]);
  t.same(rotationOf(T0, 'app/sops', input(desired, { manual: manual({ value: 'first' }) })), {
    trigger: 'new',
    extra: {},
  });
  const pending: SecretRecord = { ...r, pending: { version: 2, value: 'new', createdAt: iso(T0), trigger: 'commit' } };
  t.equal(dueAt('app/sops', input(desired, { records: [pending], manual: manual({ value: 'same' }) })), 0);
  const failures = new Map<string, Failure>([['app/sops', { since: T0, attempts: 1, error: 'X', retryAt: T0 + 1000 }]]);
  t.equal(dueAt('app/sops', { ...changed, failures }), T0 + 1000);
  t.notOk(rotatable(s, true), 'a person rotates it');
});

t.test('a database secret is not rotated without database steps, and runs detached with them', async (t) => {
  const s = secret('db/app', { generate: undefined, database: { target: 'pg', username: 'app' } });
  const desired = model([s]);
  t.notOk(rotatable(s, false));
  t.ok(rotatable(s, true));
  t.equal(dueAt('db/app', input(desired)), undefined);
  t.same(plan(T0, input(desired)), { actions: [] });
  t.equal(dueAt('db/app', input(desired, { database: true })), 0);
  t.same(plan(T0, input(desired, { database: true })).actions, [
    { kind: 'rotate', secret: 'db/app', trigger: 'new', extra: {}, detached: true },
  ]);
  const r = record('db/app', T0, { previousUntil: T0 + HOUR });
  t.same(plan(T0 + HOUR, input(desired, { database: true, records: [r] })).actions, [
    { kind: 'retire', secret: 'db/app', early: false, detached: true },
  ]);
});

t.test('overdue after downtime rotates once, from now, into the window; on time it keeps the slot', async (t) => {
  const pol = policy({ every: '1d', window: { start: '02:00', end: '04:00' } });
  const base0 = Date.parse('2026-11-26T02:30:00Z');
  const i = input(model([secret('app/key')], pol), { records: [record('app/key', base0)] });
  const slot = nextBase(compileSchedule(pol), base0);
  t.equal(slot, base0 + DAY);
  // On time (less than an interval late): the slot itself.
  t.same(rotationOf(slot + HOUR, 'app/key', i), { trigger: 'schedule', extra: { scheduledBase: slot } });
  // Three days down, back at 10:00: the next window opening after now, not the missed slot.
  const now = Date.parse('2026-11-30T10:00:00Z');
  const opening = intoWindow(compileSchedule(pol), now);
  t.equal(opening, Date.parse('2026-12-01T02:00:00Z'));
  t.same(rotationOf(now, 'app/key', i), { trigger: 'schedule', extra: { scheduledBase: opening } });
  // Inside the window after downtime: now itself.
  const inside = Date.parse('2026-11-30T03:00:00Z');
  t.same(rotationOf(inside, 'app/key', i), { trigger: 'schedule', extra: { scheduledBase: inside } });
});

t.test('nextWakeup is the earliest of all the due times', async (t) => {
  const desired = model([secret('a/sched'), secret('b/retire'), secret('c/failing')]);
  const records = [
    record('a/sched', T0), // due T0 + 30d
    record('b/retire', T0, { previousUntil: T0 + 5 * HOUR }),
    record('c/failing', T0),
    record('d/removed', T0, { purgeAfter: T0 + 3 * HOUR }),
  ];
  const failures = new Map<string, Failure>([
    ['c/failing', { since: T0, attempts: 1, error: 'X', retryAt: T0 + 40 * DAY }],
  ]);
  const i = input(desired, { records, failures });
  t.equal(nextWakeup(T0, i), T0 + 3 * HOUR, 'the purge');
  t.equal(plan(T0, i).wakeAt, T0 + 3 * HOUR);
  const noPurge = input(desired, { records: records.slice(0, 3), failures });
  t.equal(nextWakeup(T0, noPurge), T0 + 5 * HOUR, 'the retirement');
  const noRetire = input(model([secret('a/sched'), secret('c/failing')]), {
    records: [records[0]!, records[2]!],
    failures,
  });
  t.equal(nextWakeup(T0, noRetire), T0 + 30 * DAY, 'the schedule');
  const failing = new Map<string, Failure>([
    ['a/sched', { since: T0, attempts: 1, error: 'X', retryAt: T0 + 31 * DAY }],
    ...failures,
  ]);
  t.equal(nextWakeup(T0, { ...noRetire, failures: failing }), T0 + 31 * DAY, 'a backoff postpones the slot');
  t.equal(nextWakeup(T0, input(model([]))), undefined, 'nothing to do');
});

t.test("the plan lists rotations first, then each record's retirement and purge, in the store's order", async (t) => {
  const desired = model([secret('z/new'), secret('b/retire')]);
  const records = [record('old/purge', T0, { purgeAfter: T0 }), record('b/retire', T0, { previousUntil: T0 })];
  t.same(
    plan(T0, input(desired, { records })).actions.map((a) => `${a.kind} ${a.secret}`),
    ['rotate z/new', 'purge old/purge', 'retire b/retire'],
  );
});

t.test('backoffDelay: capped doubling, or a full-jitter draw from an injectable source', async (t) => {
  const o = { baseMs: 100, maxMs: 1000 };
  t.same(
    [0, 1, 2, 3, 4, 5, 100].map((n) => backoffDelay(n, o)),
    [100, 100, 200, 400, 800, 1000, 1000],
  );
  t.equal(backoffDelay(3, { ...o, jitter: 'none' }), 400);
  const bounds: number[] = [];
  const random = (bound: number) => {
    bounds.push(bound);
    return bound - 1;
  };
  t.equal(backoffDelay(3, { ...o, jitter: 'full', random }), 400, 'the draw may reach the cap');
  t.equal(backoffDelay(9, { ...o, jitter: 'full', random: () => 0 }), 0);
  t.same(bounds, [401]);
  const draws = Array.from({ length: 50 }, () => backoffDelay(4, { ...o, jitter: 'full' }));
  t.ok(
    draws.every((d) => Number.isInteger(d) && d >= 0 && d <= 800),
    'the default source draws within [0, 800]',
  );
  t.equal(backoffDelay(1, { baseMs: 0, maxMs: 1000, jitter: 'full' }), 0);
});

t.test("backoffDelay with equal jitter: a draw from the cap's upper half", async (t) => {
  const o = { baseMs: 100, maxMs: 1000, jitter: 'equal' as const };
  const bounds: number[] = [];
  const low = (bound: number) => {
    bounds.push(bound);
    return 0;
  };
  const high = (bound: number) => bound - 1;
  const attempts = [1, 2, 3, 5, 60];
  t.same(
    attempts.map((n) => backoffDelay(n, { ...o, random: low })),
    [50, 100, 200, 500, 500],
    'at least half',
  );
  t.same(
    attempts.map((n) => backoffDelay(n, { ...o, random: high })),
    [100, 200, 400, 1000, 1000],
    'the cap',
  );
  t.same(bounds, [51, 101, 201, 501, 501], 'one draw over the upper half, both ends included');
  t.equal(backoffDelay(1, { baseMs: 101, maxMs: 1000, jitter: 'equal', random: () => 0 }), 50, 'an odd cap');
  t.equal(backoffDelay(1, { baseMs: 101, maxMs: 1000, jitter: 'equal', random: high }), 101);
  const draws = Array.from({ length: 50 }, () => backoffDelay(4, o));
  t.ok(
    draws.every((d) => Number.isInteger(d) && d >= 400 && d <= 800),
    'the default source draws within [400, 800]',
  );
  t.equal(backoffDelay(1, { baseMs: 0, maxMs: 1000, jitter: 'equal' }), 0);
  t.equal(backoffDelay(1, { baseMs: 1, maxMs: 1000, jitter: 'equal', random: high }), 1, 'a cap of 1 ms');
});
