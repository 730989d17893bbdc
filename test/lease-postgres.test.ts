/**
 * The lease of several daemons on one PostgreSQL store (src/state/pg-lease.ts), against a throwaway
 * server with password auth: who may take it and why (first, resigned, expired, gone), the term that
 * only grows with one holder per term, and the fence that refuses a deposed leader's writes.
 */
import t from 'tap';
import { PgLease } from '../src/state/pg-lease.js';
import type { PgStore } from '../src/state/pg-store.js';
import { pgPlace } from './lib/pg-store.js';

const p = await pgPlace(t);

if (p) {
  /** Two daemons on one store: each its own store object (pool) and lease. */
  const two = async (ttlMs = 60_000) => {
    const schema = p.schema();
    const stores: PgStore[] = [await p.open(schema), await p.open(schema)];
    t.teardown(async () => {
      for (const s of stores) await s.close().catch(() => undefined);
    });
    const leases = stores.map(
      (s, i) => new PgLease(s.context, { id: `daemon-${i}-${schema}`, name: `host-${i}`, ttlMs }),
    );
    t.teardown(() => {
      for (const l of leases) l.close();
    });
    return { schema, stores, leases };
  };

  t.test('the first daemon takes the lease at term 1; while it holds it, nobody else can', async (t) => {
    const { schema, leases } = await two();
    const [a, b] = leases as [PgLease, PgLease];
    t.same(await a.acquire(), { term: 1, reason: 'first' }, 'the first taker gets term 1');
    t.equal(await b.acquire(), undefined, 'the other cannot take a lease that is held');
    t.equal(await a.renew(1), true, 'the holder renews');
    t.equal(await b.renew(1), false, 'another daemon cannot renew a term it does not hold');
    const { lease } = await b.read();
    t.match(lease, { term: 1, holder: a.me.id, holderName: 'host-0' }, 'the lease names the holder');
    t.equal(lease.free, undefined, 'and is not free');
    t.ok(lease.expiresAt! > lease.now, 'it expires in the future, on the database clock');
    const terms = await p.sql(`SELECT term::int AS term, holder, how FROM ${schema}.terms ORDER BY term`);
    t.same(terms, [{ term: 1, holder: a.me.id, how: 'first' }], 'the term is recorded with its holder');
  });

  t.test('a holder whose connections ended is gone: the lease is taken before it expires', async (t) => {
    const { schema, leases } = await two();
    const [a, b] = leases as [PgLease, PgLease];
    await a.acquire();
    await a.renew(1); // the hint lock is held since the acquire; renewing keeps it
    // The server ends the holder's lease session, as when its process is killed.
    const [row] = await p.sql<{ pid: number }>(`SELECT holder_pid AS pid FROM ${schema}.lease`);
    t.ok(row?.pid, 'the holder wrote the server process of its lease connection');
    await p.sql('SELECT pg_terminate_backend($1)', [row!.pid]);
    let seen = await b.read();
    for (let i = 0; i < 50 && seen.lease.free === undefined; i++) seen = await b.read(); // the server frees the lock as the session ends
    t.equal(seen.lease.free, 'gone', 'the others see the holder gone although its lease has not expired');
    t.same(await b.acquire(), { term: 2, reason: 'gone' }, 'and one takes it at the next term');
    t.equal(await a.renew(1).catch(() => false), false, 'the old holder cannot renew its term');
    t.equal(await a.renew(1), false, 'not even on a new connection');
    const terms = await p.sql(`SELECT term::int AS term, holder FROM ${schema}.terms ORDER BY term`);
    t.same(
      terms,
      [
        { term: 1, holder: a.me.id },
        { term: 2, holder: b.me.id },
      ],
      'one holder per term',
    );
  });

  t.test('an expired lease is free; a resigned one is free at once', async (t) => {
    const { leases } = await two(1); // a lease of 1 ms has expired by the next statement
    const [a, b] = leases as [PgLease, PgLease];
    await a.acquire();
    t.same(await b.acquire(), { term: 2, reason: 'expired' }, 'an expired lease is taken even while its holder lives');
    const fresh = await two();
    const [c, d] = fresh.leases as [PgLease, PgLease];
    await c.acquire();
    await c.resign(1);
    const { lease } = await d.read();
    t.equal(lease.holder, undefined, 'a resigned lease names nobody');
    t.same(await d.acquire(), { term: 2, reason: 'resigned' }, 'and is taken at once');
  });

  t.test("the fence refuses a deposed leader's write, and the store writes nothing more", async (t) => {
    const { schema, stores, leases } = await two();
    const [sa, sb] = stores as [PgStore, PgStore];
    const [a, b] = leases as [PgLease, PgLease];
    let termA: number | undefined = (await a.acquire())!.term;
    sa.share(a.fence(() => termA));
    await sa.write([{ op: 'put', key: 'k', value: 'from a' }]);
    // b takes over (a is deposed without knowing it: its term variable still says 1).
    await p.sql(`UPDATE ${schema}.lease SET expires_at = now()`);
    const got = await b.acquire();
    t.equal(got?.term, 2, 'b leads at term 2');
    await t.rejects(
      sa.write([{ op: 'put', key: 'k', value: 'late' }]),
      { code: 'STATE_FENCED' },
      'the late write is refused',
    );
    await t.rejects(
      sa.write([{ op: 'put', key: 'k', value: 'later' }]),
      { code: 'STATE_FENCED' },
      'and so is every later one',
    );
    // b catches up and writes under its own term.
    sb.share(b.fence(() => got!.term));
    await sb.catchUp();
    t.equal(sb.get('k'), 'from a', "b's copy has a's committed write");
    await sb.write([{ op: 'put', key: 'k', value: 'from b' }]);
    const [rows] = await p.sql<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.records`);
    t.equal(rows?.n, '2', "the store holds a's write and b's, not the late one");
    // a, told it follows, catches up and may lead again later.
    await sa.catchUp();
    t.equal(sa.get('k'), 'from b', "a's copy follows b's write");
    termA = undefined;
    await t.rejects(
      sa.write([{ op: 'put', key: 'k', value: 'x' }]),
      { code: 'STATE_FENCED' },
      'a follower holding no term writes nothing',
    );
  });

  t.test(
    'a takeover that waited for the lease row sees the lease as it is then: a holder just in is not "gone"',
    async (t) => {
      // Two takeovers at once (a resignation wakes every follower): one locks the row, takes the hint
      // lock and writes itself as holder; the other waits for the row. The hint must be read once the
      // row is locked: read before, it says that nobody holds the hint (the resigner let it go, the new
      // holder has not taken it yet), and the new holder would look gone at once.
      const { schema, leases } = await two();
      const [, b] = leases as [PgLease, PgLease];
      const pg = (await import('pg')).default;
      const first = new pg.Client({
        host: p.srv.host,
        port: p.srv.port,
        user: 'rotor_state',
        password: p.password,
        database: 'rotor',
      });
      await first.connect();
      t.teardown(() => first.end());
      await first.query('BEGIN');
      await first.query(`SELECT term FROM ${schema}.lease FOR UPDATE`);
      const taking = b.acquire();
      let waiting = 0;
      for (let i = 0; i < 200 && waiting === 0; i++) {
        const [r] = await p.sql<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'`,
        );
        waiting = r?.n ?? 0; // bounded: until b's takeover waits for the row
      }
      t.equal(waiting, 1, "the second takeover waits for the first's row lock");
      await first.query('SELECT pg_advisory_lock($1, hashtext($2))', [0x726f746c, schema]);
      await first.query(
        `UPDATE ${schema}.lease SET term = term + 1, holder = 'first', holder_name = 'first', holder_pid = pg_backend_pid(),
         acquired_at = now(), renewed_at = now(), expires_at = now() + interval '60 seconds'`,
      );
      await first.query('COMMIT');
      t.equal(await taking, undefined, 'the second finds the lease held, not its holder gone');
      const { lease } = await b.read();
      t.match(lease, { term: 1, holder: 'first' }, 'the first holds term 1');
      t.equal(lease.free, undefined, 'and its lease is not free');
    },
  );

  t.test(
    'a leader cut off inside a write holds the lease row only until the server ends its idle transaction',
    async (t) => {
      const schema = p.schema();
      const defaults = await p.open(schema);
      const [shown] = (await defaults.context.pool.query('SHOW idle_in_transaction_session_timeout')).rows;
      t.equal(shown?.idle_in_transaction_session_timeout, '10s', 'by default 10 s, well within the 15 s lease');
      await defaults.close();
      const cut = await p.open(schema, {}, { idleInTransactionTimeoutMs: 500 });
      const other = await p.open(schema);
      t.teardown(async () => {
        await cut.close().catch(() => undefined);
        await other.close();
      });
      const a = new PgLease(cut.context, { id: `a-${schema}`, name: 'a', ttlMs: 200 });
      const b = new PgLease(other.context, { id: `b-${schema}`, name: 'b', ttlMs: 60_000 });
      t.teardown(() => {
        a.close();
        b.close();
      });
      t.same(await a.acquire(), { term: 1, reason: 'first' });
      // A's write began (its fence holds the row FOR SHARE), and then nothing more came: a partition.
      const c = await cut.context.pool.connect();
      c.on('error', () => undefined);
      await c.query('BEGIN');
      await c.query(`SELECT term FROM ${schema}.lease FOR SHARE`);
      let seen = await b.read();
      for (let i = 0; i < 2000 && seen.lease.free !== 'expired'; i++) seen = await b.read(); // bounded: A's 200 ms lease runs out
      t.equal(seen.lease.free, 'expired', "A's lease expired");
      const t0 = performance.now();
      const got = await b.acquire();
      t.match(got, { term: 2 }, 'another takes the lease once the server ended the idle transaction');
      t.ok(performance.now() - t0 < 5_000, 'within the timeout, not the statement timeout');
      c.release(true);
    },
  );

  t.test('a follower catches up across a compaction', async (t) => {
    const schema = p.schema();
    const leader = await p.open(schema, {}, { compactAfter: { records: 5 } });
    const follower = await p.open(schema);
    t.teardown(async () => {
      await leader.close();
      await follower.close();
    });
    for (let i = 0; i < 12; i++) await leader.write([{ op: 'put', key: `k${i}`, value: i }]);
    const changed = await follower.catchUp();
    t.equal(follower.seq, leader.seq, 'the follower is at the leader generation');
    t.same([...follower.entries()], [...leader.entries()], 'with the same entries');
    t.ok(changed.includes('k11') && changed.includes('k0'), 'and reports the keys that changed');
    t.same(await follower.catchUp(), [], 'nothing more to read');
  });
}
