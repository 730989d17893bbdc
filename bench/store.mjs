#!/usr/bin/env node
import { randomBytes } from 'node:crypto';
// bench/store: the cost of one durable write (one put of a ~200-byte value, written and fsynced, or
// committed) in a state store holding 100 keys and in one holding 10,000 keys, measured in the same run
// (interleaved, so that a noisy machine hurts both alike), and their ratio (target: <= 1.5: a write must
// not grow with the store). Then the throughput of 32 concurrent writers (group commit), the time of one
// compaction and of one open at 10,000 keys.
// Usage: npm run build && node bench/store.mjs [--backend file|postgres|shared|both] [--writes N] [--dir DIR]
// (file, the default: the stores are made in DIR, default the system's temp directory, and fsync cost
// depends on it; postgres: a throwaway durable PostgreSQL, bench/lib/pg-server.mjs, its data in the temp
// directory; shared: the same, written as a daemon on PostgreSQL writes it, holding the lease, every
// write in a transaction with the fence and a NOTIFY; both: the three, one after the other, in one run.)
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import { nodeFs, openStore } from '../dist/src/state/store.js';

const { values } = parseArgs({
  options: {
    writes: { type: 'string', default: '1000' },
    dir: { type: 'string', default: os.tmpdir() },
    backend: { type: 'string', default: 'file' },
  },
});
const WRITES = Number(values.writes);
const BACKENDS = values.backend === 'both' ? ['file', 'postgres', 'shared'] : [values.backend];
if (!BACKENDS.every((b) => b === 'file' || b === 'postgres' || b === 'shared'))
  throw new Error('--backend file, postgres, shared or both');
const identity = await generateX25519Identity();
const recipients = [await identityToRecipient(identity)];
const never = { records: 2 ** 40, bytes: 2 ** 50 };
const value = () => ({ current: randomBytes(150).toString('base64'), version: 1 }); // ~220 bytes as JSON
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const ms = (x) => `${x.toFixed(3)} ms`;

/** A StoreFs that counts fsyncs of files, to show how many writes share one. */
let fsyncs = 0;
const counting = {
  ...nodeFs,
  async open(p, mode) {
    const f = await nodeFs.open(p, mode);
    return {
      read: (b, pos) => f.read(b, pos),
      write: (d, pos) => f.write(d, pos),
      sync: () => {
        fsyncs++;
        return f.sync();
      },
      truncate: (l) => f.truncate(l),
      size: () => f.size(),
      close: () => f.close(),
    };
  },
};

/** The file backend: a directory per store. */
function fileBackend() {
  const dirs = [];
  return {
    name: 'file store',
    unit: 'fsync',
    count: () => fsyncs,
    async make() {
      const dir = mkdtempSync(path.join(values.dir, 'rotor-bench-'));
      dirs.push(dir);
      return {
        store: await openStore({ dir, identity, recipients, fs: counting, compactAfter: never }),
        reopen: () => openStore({ dir, identity, recipients }),
      };
    },
    async stop() {
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
  };
}

/** The PostgreSQL backend: a schema per store on one durable throwaway server. Counts the INSERTs of records. */
async function postgresBackend(shared) {
  const { benchPostgres } = await import('./lib/pg-server.mjs');
  const { openPostgresStore } = await import('../dist/src/state/postgres.js');
  const { PgLease } = await import('../dist/src/state/pg-lease.js');
  const server = await benchPostgres();
  const pg = (await import('pg')).default;
  let commits = 0;
  const query = pg.Client.prototype.query;
  pg.Client.prototype.query = function (q, ...rest) {
    if (typeof q === 'string' && /^INSERT INTO "[a-z0-9_]+"\.records/.test(q)) commits++;
    return query.call(this, q, ...rest);
  };
  let n = 0;
  return {
    name: `PostgreSQL ${server.version} store${shared ? ', shared (the lease fence and NOTIFY in every write)' : ''}`,
    unit: 'commit',
    count: () => commits,
    async make() {
      const config = { url: server.url(`bench_${n++}`), env: server.env, compactAfter: never };
      const open = () => openPostgresStore(config, { identity, recipients });
      const store = await open();
      if (shared) {
        const lease = new PgLease(store.context, { id: `bench-${n}`, name: 'bench', ttlMs: 3_600_000 });
        const { term } = await lease.acquire();
        store.share(lease.fence(() => term));
        const close = store.close.bind(store);
        store.close = async () => {
          lease.close();
          await close();
        };
      }
      return { store, reopen: open };
    },
    stop: () => server.stop(),
  };
}

async function makeStore(backend, keys) {
  const { store, reopen } = await backend.make();
  for (let i = 0; i < keys; i += 500) {
    const ops = [];
    for (let j = i; j < Math.min(keys, i + 500); j++)
      ops.push({ op: 'put', key: `secrets/team-${j % 100}/db-${j}`, value: value() });
    await store.write(ops);
  }
  await store.compact(); // the keys are in the snapshot, the log starts empty
  return { store, reopen, keys };
}

async function measure(backend) {
  const small = await makeStore(backend, 100);
  const large = await makeStore(backend, 10_000);
  const lat = new Map([
    [small, []],
    [large, []],
  ]);
  const oneWrite = async (s, i) => {
    const key = `secrets/team-${i % 100}/db-${i % s.keys}`; // an existing key: what a rotation does
    const v = value();
    const t0 = process.hrtime.bigint();
    await s.store.write([{ op: 'put', key, value: v }]);
    return Number(process.hrtime.bigint() - t0) / 1e6;
  };
  for (const s of [small, large]) for (let i = 0; i < 50; i++) await oneWrite(s, i); // warm up
  for (let r = 0; r < WRITES / 50; r++) {
    for (const s of [small, large]) for (let i = 0; i < 50; i++) lat.get(s).push(await oneWrite(s, r * 50 + i));
  }
  const m100 = median(lat.get(small));
  const m10k = median(lat.get(large));
  console.log(`${backend.name}: one write (put of a ~200-byte value, durable), median of ${WRITES}:`);
  console.log(`  store of    100 keys: ${ms(m100)}`);
  console.log(`  store of 10,000 keys: ${ms(m10k)}`);
  console.log(`  ratio 10,000 / 100:   ${(m10k / m100).toFixed(2)} (target <= 1.5)`);

  const WRITERS = 32;
  const EACH = 100;
  const before = backend.count();
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: WRITERS }, async (_, w) => {
      for (let i = 0; i < EACH; i++)
        await large.store.write([{ op: 'put', key: `secrets/team-${w}/db-${w * EACH + i}`, value: value() }]);
    }),
  );
  const secs = (performance.now() - t0) / 1000;
  const n = WRITERS * EACH;
  const shared = backend.count() - before;
  const u = backend.unit;
  console.log(
    `  ${WRITERS} concurrent writers, ${n} writes into 10,000 keys: ${(n / secs).toFixed(0)} writes/s, ${shared} ${u}s (${(n / shared).toFixed(1)} writes per ${u})`,
  );

  const compactions = [];
  for (let i = 0; i < 5; i++) {
    const c0 = performance.now();
    await large.store.compact();
    compactions.push(performance.now() - c0);
  }
  console.log(`  one compaction at 10,000 keys: ${ms(median(compactions))} (median of 5)`);
  await large.store.close();
  const opens = [];
  for (let i = 0; i < 3; i++) {
    const o0 = performance.now();
    const s = await large.reopen();
    opens.push(performance.now() - o0);
    await s.close();
  }
  console.log(`  one open at 10,000 keys: ${ms(median(opens))} (median of 3)`);
  await small.store.close();
  return { m100, m10k };
}

console.log(
  `bench/store (node ${process.version}, ${os.cpus().length} cpus, load ${os.loadavg()[0].toFixed(1)}, ${new Date().toISOString().slice(0, 10)})`,
);
for (const name of BACKENDS) {
  const backend = name === 'file' ? fileBackend() : await postgresBackend(name === 'shared');
  try {
    await measure(backend);
  } finally {
    await backend.stop();
  }
}
