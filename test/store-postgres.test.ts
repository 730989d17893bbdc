/**
 * The PostgreSQL backend of the state store (src/state/postgres.ts) against a throwaway server with
 * scram-sha-256 enforced: the contract every backend meets (test/lib/store-contract.ts), then what is
 * this backend's own: tampered, swapped, missing and foreign rows refused with the file backend's codes
 * and left as they were, the fence, a second writer, concurrent first opens, and what a dump shows.
 * Connections, passwords and grants: test/store-postgres-connect.test.ts.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import type { PoolClient } from 'pg';
import type { Test } from 'tap';
import t from 'tap';
import type { Json, StateStore } from '../src/state/types.js';
import { tempDir } from './helpers.js';
import type { PgPlace } from './lib/pg-store.js';
import { IDENTITY, pgPlace, RECIPIENT } from './lib/pg-store.js';
import { storeContract } from './lib/store-contract.js';

/** Every table of the store's schema (version 2). */
const TABLES = ['schema_version', 'store', 'segments', 'records', 'lease', 'terms', 'daemons', 'audit', 'receipts'];

const p = await pgPlace(t);
if (p) await suite(p);

/** A PostgreSQL client program of the installed server's version (pg_dump must not be older). */
function pgBinary(name: string): string {
  const root = '/usr/lib/postgresql';
  const major = readdirSync(root)
    .filter((d) => /^\d+$/.test(d))
    .sort((a, b) => Number(b) - Number(a))[0];
  return path.join(root, major ?? '', 'bin', name);
}

function all(store: StateStore): Record<string, Json> {
  return Object.fromEntries(store.entries());
}

function secret(): string {
  return randomBytes(30).toString('base64url');
}

async function suite(p: PgPlace): Promise<void> {
  await storeContract(t, 'PostgreSQL backend', async () => {
    const schema = p.schema();
    const backend = p.backend(schema);
    return {
      open: (options = {}) =>
        backend.open({ identity: IDENTITY, recipients: [RECIPIENT], onWarning: () => undefined, ...options }),
      cleanup: async () => void (await p.sql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)),
    };
  });

  /** A digest of every row of the store's tables: what "left as it was" compares. */
  const rowsOf = async (schema: string): Promise<string> => {
    const out: unknown[] = [];
    for (const table of TABLES)
      out.push(
        await p.sql(`SELECT md5(string_agg(md5(x::text), ',' ORDER BY x::text)) AS d FROM ${schema}.${table} x`),
      );
    return JSON.stringify(out);
  };

  /** A store at seq 6: three records in the segment's snapshot, then three records. */
  const sample = async (): Promise<{ schema: string; storeId: string; values: string[] }> => {
    const schema = p.schema();
    const store = await p.open(schema);
    const values: string[] = [];
    for (let i = 0; i < 6; i++) {
      values.push(secret());
      await store.write([{ op: 'put', key: `s/${i}`, value: { current: values[i]! } }]);
      if (i === 2) await store.compact();
    }
    const storeId = store.storeId;
    await store.close();
    return { schema, storeId, values };
  };

  /** Expects opening to refuse with `code`, and every row to be left as it was. */
  const refuses = async (
    t: Test,
    schema: string,
    code: string,
    options: Parameters<PgPlace['open']>[1] = {},
    what = code,
  ) => {
    const before = await rowsOf(schema);
    await t.rejects(p.open(schema, options), { name: 'StateError', code }, what);
    t.equal(await rowsOf(schema), before, `${what}: the rows are left as they were`);
  };

  /** A copy of a sample store's schema, to tamper with. */
  const copyOf = async (schema: string): Promise<string> => {
    const copy = p.schema();
    await p.sql(`CREATE SCHEMA ${copy}`);
    for (const table of TABLES) await p.sql(`CREATE TABLE ${copy}.${table} (LIKE ${schema}.${table} INCLUDING ALL)`);
    await p.sql(`ALTER TABLE ${copy}.records ADD FOREIGN KEY (segment) REFERENCES ${copy}.segments (id)`);
    await p.sql(`ALTER SCHEMA ${copy} OWNER TO rotor_state`);
    for (const table of TABLES) {
      await p.sql(`INSERT INTO ${copy}.${table} SELECT * FROM ${schema}.${table}`);
      await p.sql(`ALTER TABLE ${copy}.${table} OWNER TO rotor_state`);
    }
    return copy;
  };

  t.test('tampered, swapped, missing and foreign rows are refused with their codes, and nothing changes', async (t) => {
    const { schema, storeId, values } = await sample();
    const ok = await p.open(schema, { anchor: { seq: 6, storeId } });
    t.same(ok.get('s/5'), { current: values[5] }, 'the untouched store opens with its anchor');
    await ok.close();
    const rec = await p.sql<{ seq: string; segment: string }>(
      `SELECT seq, segment FROM ${schema}.records ORDER BY seq`,
    );
    t.same(
      rec.map((r) => Number(r.seq)),
      [4, 5, 6],
      'three records after the segment at generation 3',
    );

    const tampered = async (sql: string, code: string, what: string, options = {}) => {
      const copy = await copyOf(schema);
      await p.sql(sql.replaceAll('S.', `${copy}.`));
      await refuses(t, copy, code, options, what);
    };
    await tampered(
      `UPDATE S.records SET frame = set_byte(frame, 20, get_byte(frame, 20) # 1) WHERE seq = 5`,
      'STATE_CORRUPT',
      'a flipped byte in a middle record',
    );
    await tampered(
      `UPDATE S.records SET frame = substr(frame, 1, length(frame) - 1) WHERE seq = 6`,
      'STATE_CORRUPT',
      'the last record cut short',
    );
    await tampered(
      `UPDATE S.records SET frame = (SELECT frame FROM S.records WHERE seq = 6) WHERE seq = 5`,
      'STATE_CHAIN_BROKEN',
      "a record replaced by another record's bytes of the same store",
    );
    await tampered(
      `UPDATE S.records r SET frame = o.frame FROM S.records o WHERE (r.seq, o.seq) IN ((5, 6), (6, 5))`,
      'STATE_CHAIN_BROKEN',
      'two records swapped',
    );
    await tampered(`DELETE FROM S.records WHERE seq = 5`, 'STATE_CHAIN_BROKEN', 'a middle record deleted');
    await tampered(`DELETE FROM S.records WHERE seq = 4`, 'STATE_CHAIN_BROKEN', 'the first record deleted');
    await tampered(
      `UPDATE S.segments SET snapshot = set_byte(snapshot, length(snapshot) - 20, 0)`,
      'STATE_CORRUPT',
      "a damaged byte in the segment's snapshot",
    );
    await tampered(
      `UPDATE S.segments SET header = header || repeat('x', 1048577)::bytea`,
      'STATE_CORRUPT',
      'a header past its size limit (never fetched)',
    );
    await tampered(
      `UPDATE S.records SET frame = repeat('x', 64 * 1024 * 1024 + 1)::bytea WHERE seq = 6`,
      'STATE_CORRUPT',
      'a record past the 64 MiB limit (never fetched)',
    );
    await tampered(`UPDATE S.schema_version SET version = 3`, 'STATE_SCHEMA', 'tables of a newer rotor');
    await tampered(
      `INSERT INTO S.segments SELECT gen_random_uuid(), base_seq, header, snapshot FROM S.segments`,
      'STATE_CORRUPT',
      'two segments',
    );
    await tampered(`DELETE FROM S.store`, 'STATE_CORRUPT', 'the store row removed, segment and records left');

    // The last records removed: only the anchor can tell; without it the store opens where it ends.
    const cut = await copyOf(schema);
    await p.sql(`DELETE FROM ${cut}.records WHERE seq >= 5`);
    await refuses(
      t,
      cut,
      'STATE_ROLLBACK',
      { anchor: { seq: 6, storeId } },
      'the last records deleted below the anchor',
    );
    const short = await p.open(cut, { anchor: { seq: 4, storeId } });
    t.equal(short.seq, 4, 'the same rows open against the anchor they match');
    await short.close();
    const empty = await copyOf(schema);
    await p.sql(`TRUNCATE ${empty}.records, ${empty}.segments, ${empty}.store`);
    await refuses(t, empty, 'STATE_ROLLBACK', { anchor: { seq: 6, storeId } }, 'every row of the store removed');

    // Another store's rows: all of them, or mixed in.
    const other = await sample();
    await refuses(t, other.schema, 'STATE_FOREIGN', { anchor: { seq: 0, storeId } }, "another store's rows");
    await tampered(
      `UPDATE S.records SET frame = (SELECT frame FROM ${other.schema}.records WHERE seq = 5) WHERE seq = 5`,
      'STATE_CORRUPT',
      "a record replaced by another store's record",
    );
    await tampered(
      `UPDATE S.segments SET header = o.header, snapshot = o.snapshot FROM ${other.schema}.segments o`,
      'STATE_CHAIN_BROKEN',
      "another store's segment under this store's row",
    );

    // The wrong identity.
    const wrong = await generateX25519Identity();
    await refuses(
      t,
      schema,
      'STATE_KEY',
      { identity: wrong, recipients: [await identityToRecipient(wrong)] },
      'the wrong identity',
    );
    const again = await p.open(schema, { anchor: { seq: 6, storeId } });
    t.same(all(again), Object.fromEntries(values.map((v, i) => [`s/${i}`, { current: v }])), 'all refusals left it');
    await again.close();
  });

  t.test('the fence runs in every write transaction; when it throws, nothing is written: STATE_FENCED', async (t) => {
    const schema = p.schema();
    let calls = 0;
    let refuse = false;
    const fence = async (client: PoolClient) => {
      calls++;
      const [row] = (await client.query<{ tx: string | null }>('SELECT txid_current_if_assigned()::text AS tx')).rows;
      t.equal(row?.tx, null, 'the fence runs before anything is inserted');
      const [sync] = (await client.query<{ synchronous_commit: string }>('SHOW synchronous_commit')).rows;
      t.equal(sync?.synchronous_commit, 'on', 'in a session that waits for its commits (the server says off)');
      if (refuse) throw new Error('lease lost: another leader was elected');
    };
    const store = await p.open(schema, {}, { fence });
    t.equal(await store.write([{ op: 'put', key: 'a', value: 1 }]), 1);
    await store.compact();
    t.equal(calls, 2, 'a write and a compaction each call the fence');
    refuse = true;
    const late = [store.write([{ op: 'put', key: 'b', value: 2 }]), store.write([{ op: 'put', key: 'c', value: 3 }])];
    for (const w of late) await t.rejects(w, { name: 'StateError', code: 'STATE_FENCED', message: /lease lost/ });
    refuse = false;
    await t.rejects(store.write([{ op: 'put', key: 'd', value: 4 }]), { code: 'STATE_FENCED' }, 'and stays fenced');
    await t.rejects(store.compact(), { code: 'STATE_FENCED' });
    t.equal(store.seq, 1);
    t.equal(store.get('b'), undefined);
    const rows = await p.sql<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.records`);
    t.equal(rows[0]?.n, '0', 'no record of the fenced writes reached the database');
    await store.close();
    const again = await p.open(schema);
    t.same(all(again), { a: 1 });
    await again.close();
  });

  t.test('a second writer on the same store is fenced by the seq and the segment keys', async (t) => {
    const schema = p.schema();
    const a = await p.open(schema);
    await a.write([{ op: 'put', key: 'k', value: 'a1' }]);
    const b = await p.open(schema);
    t.equal(b.seq, 1);
    t.equal(await a.write([{ op: 'put', key: 'k', value: 'a2' }]), 2);
    await t.rejects(b.write([{ op: 'put', key: 'k', value: 'b2' }]), {
      code: 'STATE_FENCED',
      message: /another writer wrote generation 2/,
    });
    await t.rejects(b.write([{ op: 'put', key: 'x', value: 1 }]), { code: 'STATE_FENCED' }, 'b stays fenced');
    const c = await p.open(schema);
    await a.compact();
    await t.rejects(c.write([{ op: 'put', key: 'k', value: 'c3' }]), { code: 'STATE_FENCED' }, 'its segment is gone');
    t.equal(await a.write([{ op: 'put', key: 'k', value: 'a3' }]), 3, 'the first writer goes on');
    for (const s of [a, b, c]) await s.close();
    const again = await p.open(schema);
    t.equal(again.get('k'), 'a3');
    await again.close();
  });

  t.test('tables of version 1 are migrated to version 2, and the store in them opens unchanged', async (t) => {
    const schema = p.schema();
    const store = await p.open(schema);
    await store.write([{ op: 'put', key: 'kept', value: 'yes' }]);
    await store.close();
    for (const table of ['lease', 'terms', 'daemons', 'audit', 'receipts'])
      await p.sql(`DROP TABLE ${schema}.${table}`);
    await p.sql(`UPDATE ${schema}.schema_version SET version = 1`);
    const again = await p.open(schema);
    t.equal(again.get('kept'), 'yes', 'the store of version 1 opens with its entries');
    await again.close();
    const [v] = await p.sql<{ version: number }>(`SELECT version FROM ${schema}.schema_version`);
    t.equal(v?.version, 2, 'the tables are version 2 now');
    const [lease] = await p.sql<{ term: string }>(`SELECT term FROM ${schema}.lease`);
    t.equal(lease?.term, '0', 'the lease row was made, at term 0');
    const tables = await p.sql<{ n: string }>(`SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = $1`, [
      schema,
    ]);
    t.equal(tables[0]?.n, String(TABLES.length), 'every table of version 2 is there');
  });

  t.test('concurrent first opens on an empty database create one store', async (t) => {
    const schema = p.schema();
    const stores = await Promise.all([1, 2, 3, 4].map(() => p.open(schema)));
    t.equal(new Set(stores.map((s) => s.storeId)).size, 1, 'all four opened the same store');
    const counts = await p.sql<{ s: string; g: string; v: string }>(
      `SELECT (SELECT count(*) FROM ${schema}.store) AS s, (SELECT count(*) FROM ${schema}.segments) AS g,
              (SELECT count(*) FROM ${schema}.schema_version) AS v`,
    );
    t.same(counts[0], { s: '1', g: '1', v: '1' });
    for (const s of stores) await s.close();
  });

  t.test('group commit, compaction after N records, and readAfter for followers', async (t) => {
    const schema = p.schema();
    const store = await p.open(schema, {}, { compactAfter: { records: 50 } });
    await store.write([{ op: 'put', key: 'first', value: 1 }]);
    const at1 = store.chainHead;
    const seqs = await Promise.all(
      Array.from({ length: 40 }, (_, i) => store.write([{ op: 'put', key: `k${i}`, value: i }])),
    );
    t.same(
      seqs,
      Array.from({ length: 40 }, (_, i) => i + 2),
    );
    const r = await store.readAfter(1, at1);
    t.equal(r.compacted, false);
    if (!r.compacted) {
      t.same(
        r.records.map((x) => x.seq),
        seqs,
      );
      t.equal(r.head, store.chainHead, 'the chain ends where the store is');
      t.same(r.records[0]!.ops, [{ op: 'put', key: 'k0', value: 0 }]);
    }
    await t.rejects(store.readAfter(1, '0'.repeat(64)), { code: 'STATE_CHAIN_BROKEN' }, 'a head that is not there');
    for (let i = 0; i < 20; i++) await store.write([{ op: 'put', key: `m${i}`, value: i }]);
    const segs = await p.sql<{ base: string }>(`SELECT base_seq AS base FROM ${schema}.segments`);
    t.equal(segs.length, 1, 'one segment kept');
    t.equal(Number(segs[0]!.base), 50, 'compacted at 50 records');
    t.same(await store.readAfter(1, at1), { compacted: true }, 'a follower before the segment opens again');
    const n = await p.sql<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.records`);
    t.equal(n[0]?.n, '11', 'the records after the segment only');
    await store.close();
    const again = await p.open(schema);
    t.equal(again.seq, 61);
    t.equal(again.get('m19'), 19);
    await again.close();
  });

  t.test('a dump of the database and the server log show no value and no key name', async (t) => {
    const schema = p.schema();
    const keyFile = path.join(tempDir(t), 'break-glass.key');
    execFileSync('age-keygen', ['-o', keyFile], { stdio: 'ignore' });
    const glass = execFileSync('age-keygen', ['-y', keyFile], { encoding: 'utf8' }).trim();
    const store = await p.open(schema, { recipients: [RECIPIENT, glass] });
    const names = Array.from({ length: 20 }, () => `secret/${randomBytes(9).toString('hex')}`);
    const values = names.map(() => secret());
    await store.write(names.map((key, i) => ({ op: 'put', key, value: { current: values[i]! } })));
    await store.compact();
    for (let i = 0; i < 5; i++) await store.write([{ op: 'put', key: names[i]!, value: { current: values[i + 5]! } }]);
    await store.close();
    const dump = execFileSync(
      pgBinary('pg_dump'),
      ['-h', p.srv.host, '-p', String(p.srv.port), '-U', p.srv.superuser, 'rotor'],
      {
        env: { PATH: process.env.PATH ?? '', PGPASSWORD: p.srv.superPassword },
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'utf8',
      },
    );
    t.match(dump, new RegExp(`COPY ${schema}\\.records`), 'the dump holds the store');
    t.match(dump, store.storeId, 'with its id in clear');
    const log = readFileSync(p.srv.logFile, 'utf8');
    t.match(log, /INSERT INTO/, 'the server logged the statements');
    const keyNames = names.map((n) => n.slice('secret/'.length));
    const leaked = [...keyNames, ...values].filter((s) => dump.includes(s) || log.includes(s));
    t.same(leaked, [], 'none of the 20 key names and 25 values is in the dump or the server log');
    // Break-glass, offline, with Debian's age: the segment's snapshot is a standard age file.
    const [seg] = await p.sql<{ snapshot: Buffer }>(`SELECT snapshot FROM ${schema}.segments`);
    const snapshot = JSON.parse(execFileSync('age', ['-d', '-i', keyFile], { input: seg!.snapshot, encoding: 'utf8' }));
    t.same(snapshot.entries[names[19]!], { current: values[19] }, 'the break-glass identity opens the snapshot');
  });
}
