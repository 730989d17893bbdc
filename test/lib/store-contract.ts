/**
 * The state store's contract (src/state/types.ts) as tests that run against any backend: a backend passes
 * them or is not a StateStore. test/state-store.test.ts runs them against the file backend and keeps the
 * tests that only the file backend has (its formats, tampering with its files, fsync faults, kills).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type { Test } from 'tap';
import type { Json, Op, StateStore, StoreAnchor } from '../../src/state/index.js';

/** Somewhere a store is kept (a directory, a database schema), empty at first. */
export interface StorePlace {
  /** Opens the store kept here; the first time (nothing stored yet), creates it. */
  open(options?: { anchor?: StoreAnchor }): Promise<StateStore>;
  /** Removes whatever is stored here. */
  cleanup(): Promise<void>;
}

function all(store: StateStore): Record<string, Json> {
  return Object.fromEntries(store.entries());
}

function secret(): string {
  return randomBytes(30).toString('base64url');
}

/** Runs the contract as subtests of `t`, each on a fresh place from `newPlace`. */
export async function storeContract(t: Test, name: string, newPlace: () => Promise<StorePlace>): Promise<void> {
  const place = async (t: Test): Promise<StorePlace> => {
    const p = await newPlace();
    t.teardown(() => p.cleanup());
    return p;
  };

  await t.test(`the state store contract: ${name}`, async (t) => {
    t.test('put, delete and batches survive close and reopen; seq increases; entries are in key order', async (t) => {
      const p = await place(t);
      let store = await p.open();
      t.equal(store.seq, 0);
      t.match(store.storeId, /^[0-9a-f-]{36}$/);
      const storeId = store.storeId;

      const mutable = { user: 'app', password: secret() };
      t.equal(await store.write([{ op: 'put', key: 'db/b', value: mutable }]), 1);
      const copy = { ...mutable };
      mutable.password = 'changed by the caller';
      t.same(store.get('db/b'), copy, 'the store keeps its own copy');
      t.equal(
        await store.write([
          { op: 'put', key: 'db/a', value: [1, 'two', null, true] },
          { op: 'put', key: 'db/c', value: 3 },
          { op: 'put', key: 'dbx', value: 'x' },
        ]),
        2,
      );
      t.equal(
        await store.write([
          { op: 'delete', key: 'db/c' },
          { op: 'put', key: 'api/k', value: { n: { deep: [1] } } },
          { op: 'delete', key: 'missing' },
        ]),
        3,
      );
      const tmp: Op[] = [
        { op: 'put', key: 'tmp', value: 1 },
        { op: 'delete', key: 'tmp' },
      ];
      t.equal(await store.write(tmp), 4, 'ops apply in order');
      t.equal(store.seq, 4);

      const value = store.get('api/k') as { n: { deep: number[] } };
      t.ok(Object.isFrozen(value) && Object.isFrozen(value.n) && Object.isFrozen(value.n.deep), 'values are frozen');
      t.throws(() => {
        (value.n.deep as number[]).push(2);
      });
      t.same(
        [...store.entries()].map(([k]) => k),
        ['api/k', 'db/a', 'db/b', 'dbx'],
      );
      t.same(
        [...store.entries('db/')].map(([k]) => k),
        ['db/a', 'db/b'],
      );
      t.same(
        [...store.entries('db')].map(([k]) => k),
        ['db/a', 'db/b', 'dbx'],
      );
      t.same([...store.entries('zz')], []);
      const expected = all(store);
      await store.close();
      await t.rejects(store.write([{ op: 'put', key: 'x', value: 1 }]), /closed/);

      store = await p.open();
      t.equal(store.storeId, storeId);
      t.equal(store.seq, 4);
      t.same(all(store), expected);
      t.equal(await store.write([{ op: 'put', key: 'after', value: 'reopen' }]), 5);
      await store.compact();
      t.equal(await store.write([{ op: 'delete', key: 'db/a' }]), 6);
      await store.close();

      store = await p.open();
      t.equal(store.seq, 6);
      delete expected['db/a'];
      t.same(all(store), { ...expected, after: 'reopen' });
      await store.close();
    });

    t.test('bad keys and values are refused, and no message shows a value', async (t) => {
      const store = await (await place(t)).open();
      const s = secret();
      await t.rejects(store.write([{ op: 'put', key: 'k'.repeat(1025), value: 1 }]), { message: /at most 1024 bytes/ });
      const wide = store.write([{ op: 'put', key: 'é'.repeat(513), value: 1 }]);
      await t.rejects(wide, { message: /at most 1024 bytes/ }, 'bytes, not characters');
      t.equal(await store.write([{ op: 'put', key: 'k'.repeat(1024), value: 1 }]), 1);
      await t.rejects(store.write([{ op: 'put', key: '', value: 1 }]), { message: /non-empty/ });
      const bad: unknown[] = [{ s, n: NaN }, { s, d: new Date() }, [s, undefined], { s, f: () => s }, { s, b: 1n }];
      const circular: Record<string, unknown> = { s };
      circular.self = circular;
      bad.push(circular);
      for (const value of bad) {
        const err = await store.write([{ op: 'put', key: 'v', value: value as Json }]).catch((e: Error) => e);
        t.ok(err instanceof Error, 'refused');
        t.notMatch((err as Error).message, s, 'the message does not show the value');
      }
      await t.rejects(store.write([{ op: 'put', key: 'v' } as unknown as Op]), { message: /has no value/ });
      await t.rejects(store.write([{ op: 'rename', key: 'v' } as unknown as Op]), { message: /an operation is/ });
      t.equal(store.seq, 1, 'nothing refused was written');
      await store.close();
    });

    t.test('a batch is atomic: a refused one applies none of its operations and takes no generation', async (t) => {
      const p = await place(t);
      const store = await p.open();
      t.equal(await store.write([{ op: 'put', key: 'a', value: 1 }]), 1);
      await t.rejects(
        store.write([
          { op: 'put', key: 'a', value: 2 },
          { op: 'put', key: 'b', value: NaN },
        ]),
        Error,
      );
      t.equal(store.get('a'), 1, 'the valid first operation of the refused batch is not applied');
      t.equal(store.get('b'), undefined);
      const results = await Promise.allSettled([
        store.write([{ op: 'put', key: 'c', value: 1 }]),
        store.write([
          { op: 'put', key: 'd', value: 1 },
          { op: 'delete', key: '' },
        ]),
        store.write([{ op: 'put', key: 'e', value: 1 }]),
      ]);
      t.same(
        results.map((r) => r.status),
        ['fulfilled', 'rejected', 'fulfilled'],
      );
      const seqs = results.map((r) => (r.status === 'fulfilled' ? r.value : null));
      t.same(seqs, [2, null, 3], 'the batches around it get consecutive generations');
      t.same(all(store), { a: 1, c: 1, e: 1 });
      await store.close();
      const again = await p.open();
      t.equal(again.seq, 3);
      t.same(all(again), { a: 1, c: 1, e: 1 }, 'and nothing of it comes back on reopen');
      await again.close();
    });

    t.test('a write is visible only once it is acknowledged; seq moves with it', async (t) => {
      const store = await (await place(t)).open();
      const pending = store.write([{ op: 'put', key: 'k', value: 'v' }]);
      t.equal(store.get('k'), undefined, 'not visible while it is written');
      t.same([...store.entries()], []);
      t.equal(store.seq, 0);
      t.equal(await pending, 1);
      t.equal(store.get('k'), 'v');
      t.equal(store.seq, 1);
      await store.close();
    });

    t.test('group commit: 200 concurrent writes get consecutive seqs in submission order, all survive', async (t) => {
      const p = await place(t);
      const store = await p.open();
      const key = (i: number): string => `k/${String(i).padStart(3, '0')}`;
      const writes200 = Array.from({ length: 200 }, (_, i) => store.write([{ op: 'put', key: key(i), value: i }]));
      const seqs = await Promise.all(writes200);
      t.same(
        seqs,
        Array.from({ length: 200 }, (_, i) => i + 1),
        'one seq per batch, in submission order',
      );
      t.equal(store.seq, 200);
      // Writes still waiting when close() is called are written before it resolves.
      const writes = [1, 2, 3].map((i) => store.write([{ op: 'put', key: `late/${i}`, value: i }]));
      await store.close();
      t.same(await Promise.all(writes), [201, 202, 203], 'close waited for every write submitted before it');
      const again = await p.open();
      t.equal(again.seq, 203);
      t.same(
        [...again.entries('k/')].map(([, v]) => v),
        Array.from({ length: 200 }, (_, i) => i),
      );
      t.same(all(again)['late/3'], 3);
      await again.close();
    });

    t.test('entries: key order, prefixes, frozen values, deletes', async (t) => {
      const store = await (await place(t)).open();
      const keys = ['b', 'a/2', 'a/10', 'a', 'a/1', 'ab', 'B', 'é', 'z'];
      await store.write(keys.map((key, i) => ({ op: 'put', key, value: { i } })));
      t.same(
        [...store.entries()].map(([k]) => k),
        [...keys].sort(),
        'code unit order',
      );
      t.same(
        [...store.entries('a/')].map(([k]) => k),
        ['a/1', 'a/10', 'a/2'],
      );
      t.same(
        [...store.entries('a')].map(([k]) => k),
        ['a', 'a/1', 'a/10', 'a/2', 'ab'],
      );
      t.ok(
        [...store.entries()].every(([, v]) => Object.isFrozen(v)),
        'every value from entries() is frozen',
      );
      await store.write([
        { op: 'delete', key: 'a/10' },
        { op: 'put', key: 'a/0', value: null },
      ]);
      t.same(
        [...store.entries('a/')],
        [
          ['a/0', null],
          ['a/1', { i: 4 }],
          ['a/2', { i: 1 }],
        ],
      );
      t.equal(store.get('a/10'), undefined);
      await store.close();
    });

    t.test('compact keeps the content and the generation', async (t) => {
      const p = await place(t);
      const store = await p.open();
      for (let i = 0; i < 5; i++) {
        await store.write([
          { op: 'put', key: `k${i}`, value: secret() },
          { op: 'delete', key: `k${i - 2}` },
        ]);
      }
      const expected = all(store);
      await store.compact();
      t.equal(store.seq, 5);
      t.same(all(store), expected);
      await store.compact();
      await store.close();
      const again = await p.open();
      t.equal(again.seq, 5);
      t.same(all(again), expected);
      t.equal(await again.write([{ op: 'put', key: 'next', value: 1 }]), 6);
      await again.close();
    });

    t.test('after close: write and compact reject, close again resolves, a reopen has everything', async (t) => {
      const p = await place(t);
      const store = await p.open();
      await store.write([{ op: 'put', key: 'k', value: 'v' }]);
      await store.close();
      await t.rejects(store.write([{ op: 'put', key: 'x', value: 1 }]), /closed/);
      await t.rejects(store.compact(), /closed/);
      await t.resolves(store.close(), 'close is idempotent');
      const again = await p.open();
      t.equal(again.get('k'), 'v');
      t.equal(again.seq, 1);
      await again.close();
    });

    t.test('the anchor: a store behind it or another store is refused and left as it was', async (t) => {
      const p = await place(t);
      const store = await p.open();
      for (let i = 0; i < 3; i++) await store.write([{ op: 'put', key: `k${i}`, value: i }]);
      const { storeId } = store;
      const expected = all(store);
      await store.close();

      for (const anchor of [{ seq: 3, storeId }, { seq: 2, storeId }, { seq: 3 }, { seq: 0 }]) {
        const s = await p.open({ anchor });
        t.equal(s.seq, 3, `opens against ${JSON.stringify({ ...anchor, storeId: anchor.storeId && 'its own' })}`);
        await s.close();
      }
      const rollback = { name: 'StateError', code: 'STATE_ROLLBACK' };
      await t.rejects(p.open({ anchor: { seq: 4, storeId } }), rollback, 'behind the anchor');
      await t.rejects(p.open({ anchor: { seq: 4 } }), rollback, 'behind an unnamed anchor');
      const foreign = { name: 'StateError', code: 'STATE_FOREIGN' };
      await t.rejects(p.open({ anchor: { seq: 0, storeId: randomUUID() } }), foreign, 'another store');
      const s = await p.open();
      t.equal(s.storeId, storeId);
      t.equal(s.seq, 3);
      t.same(all(s), expected, 'the refusals changed nothing');
      await s.close();

      const empty = await place(t);
      const named = { seq: 0, storeId };
      await t.rejects(empty.open({ anchor: named }), rollback, 'nothing stored where the anchor names a store');
      await t.rejects(empty.open({ anchor: named }), rollback, 'and the refusal made no store there');
      await t.rejects(empty.open({ anchor: { seq: 2 } }), rollback, 'nor for an unnamed anchor');
      const fresh = await empty.open({ anchor: { seq: 0 } });
      t.equal(fresh.seq, 0, 'an anchor at generation 0 naming no store lets a new store be made');
      t.not(fresh.storeId, storeId, 'every store has its own id');
      await fresh.close();
    });
  });
}
