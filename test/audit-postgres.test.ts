/**
 * The audit log in the PostgreSQL state store (src/audit/pg-log.ts) and its git mirror
 * (src/daemon/audit-mirror.ts), against a throwaway server with scram-sha-256 enforced: append,
 * reopen and verify; group commit; the fence and a second writer (AUDIT_FENCED); tampered rows refused
 * with the verifier's codes; a follower's catchUp; a file log seeded into the table; the mirror into
 * files that verifyAuditDir accepts, and files that differ refused; a COMMIT whose answer is lost.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import type { AuditInput } from '../src/audit/entry.js';
import { lineHash, sealEntry } from '../src/audit/entry.js';
import { AuditLog, verifyAuditDir } from '../src/audit/log.js';
import type { PgAuditDeps } from '../src/audit/pg-log.js';
import { PgAuditLog } from '../src/audit/pg-log.js';
import { mirrorAudit, seedAudit } from '../src/daemon/audit-mirror.js';
import type { PgStore } from '../src/state/postgres.js';
import { tempDir } from './helpers.js';
import type { PgPlace } from './lib/pg-store.js';
import { pgPlace } from './lib/pg-store.js';
import { lossyProxy } from './lib/tcp-proxy.js';

const OCT = '2026-10-30T23:59:59.000Z';
const NOV = '2026-11-26T02:00:00.000Z';

function ev(i: number, time = NOV): AuditInput {
  return { time, event: 'rotated', secret: `app/s${i}`, from: i, to: i + 1, trigger: 'schedule' };
}

const p = await pgPlace(t);
if (p) await suite(p);

async function suite(p: PgPlace): Promise<void> {
  /** A store in a new schema (closed at the end of the test) and the audit log's deps on it. */
  const place = async (
    t: Test,
    schema = p.schema(),
    extra: Partial<PgAuditDeps> = {},
    url?: string,
  ): Promise<{ schema: string; store: PgStore; deps: PgAuditDeps }> => {
    const store = await p.open(schema, {}, url ? { url } : {});
    t.teardown(() => store.close());
    return { schema, store, deps: { ...store.context, term: () => 7, ...extra } };
  };
  const rows = (schema: string) =>
    p.sql<{ seq: string; hash: string; line: string; term: string }>(
      `SELECT seq, hash, line, term FROM ${schema}.audit ORDER BY seq`,
    );

  t.test('append, reopen, verify: the rows are the file log lines, with the term', async (t) => {
    const { schema, deps } = await place(t);
    const log = await PgAuditLog.open(deps);
    t.same(log.head, { seq: 0, hash: '0'.repeat(64) }, 'an empty table: the empty head');
    const a = await log.append([ev(1), ev(2)]);
    const b = await log.append([ev(3)]);
    t.same(
      [...a, ...b].map((e) => e.seq),
      [1, 2, 3],
    );
    t.same(log.head, { seq: 3, hash: b[0]!.hash });
    const got = await rows(schema);
    let prev = '0'.repeat(64);
    for (const [i, e] of [...a, ...b].entries()) {
      const { line } = sealEntry({ ...ev(i + 1), seq: i + 1, prev });
      t.same(got[i], { seq: String(i + 1), hash: e.hash, line, term: '7' }, `row ${i + 1}`);
      prev = lineHash(line);
    }
    const again = await PgAuditLog.open(deps);
    t.same(again.head, log.head, 'reopened: the same head');
    t.same(await again.catchUp(), [], 'nothing after it');
    await t.rejects(log.append([{ time: 'yesterday', event: 'x' } as AuditInput]), { code: 'AUDIT_INVALID_ENTRY' });
    await log.close();
    await t.rejects(log.append([ev(5)]), { code: 'AUDIT_UNUSABLE' }, 'a closed log refuses appends');
  });

  t.test('group commit: concurrent appends get consecutive seqs in call order, in one transaction', async (t) => {
    const { schema, deps } = await place(t);
    const log = await PgAuditLog.open(deps);
    const pg = (await import('pg')).default;
    const listener = new pg.Client({
      host: p.srv.host,
      port: p.srv.port,
      user: p.srv.superuser,
      password: p.srv.superPassword,
      database: 'rotor',
    });
    await listener.connect();
    t.teardown(() => listener.end());
    const payloads: string[] = [];
    const seen = new Promise<void>((resolve) =>
      listener.on('notification', (n) => {
        payloads.push(n.payload ?? '');
        if (n.payload === `${schema} audit 6`) resolve();
      }),
    );
    await listener.query('LISTEN rotor');
    const calls = [[ev(1)], [ev(2), ev(3)], [ev(4)], [ev(5), ev(6)]];
    const results = await Promise.all(calls.map((c) => log.append(c)));
    t.same(
      results.map((r) => r.map((e) => [e.seq, e.secret])),
      [
        [[1, 'app/s1']],
        [
          [2, 'app/s2'],
          [3, 'app/s3'],
        ],
        [[4, 'app/s4']],
        [
          [5, 'app/s5'],
          [6, 'app/s6'],
        ],
      ],
      'in call order',
    );
    await seen;
    t.same(payloads, [`${schema} audit 6`], 'one transaction, one notification: <schema> audit <last seq>');
    t.equal((await PgAuditLog.open(deps)).head.seq, 6);
  });

  t.test('a fence that throws refuses the append, writes nothing, and every later append', async (t) => {
    let refuse = true;
    const { schema, deps } = await place(t, undefined, {
      fence: async (client) => {
        await client.query('SELECT 1');
        if (refuse) throw new Error('term 3 is over: term 4 holds the lease');
      },
    });
    const log = await PgAuditLog.open(deps);
    await t.rejects(log.append([ev(1)]), { code: 'AUDIT_FENCED', message: /the fence refused it.*term 4/ });
    t.same(await rows(schema), [], 'nothing written');
    refuse = false;
    await t.rejects(log.append([ev(2)]), { code: 'AUDIT_FENCED' }, 'fenced for good: a deposed writer reopens');
    await t.rejects(log.seed([]), { code: 'AUDIT_FENCED' });
    const fresh = await PgAuditLog.open(deps);
    t.equal((await fresh.append([ev(3)]))[0]!.seq, 1, 'a log opened again (the new term) appends');
  });

  t.test('a second writer that appended first makes the stale one fenced, not merged', async (t) => {
    const { schema, deps } = await place(t);
    const stale = await PgAuditLog.open(deps);
    const other = await PgAuditLog.open({ ...deps, term: () => 8 });
    await other.append([ev(1)]);
    await t.rejects(stale.append([ev(2)]), { code: 'AUDIT_FENCED', message: /another writer appended entry 1/ });
    await t.rejects(stale.append([ev(3)]), { code: 'AUDIT_FENCED' });
    t.same(
      (await rows(schema)).map((r) => [r.seq, r.term]),
      [['1', '8']],
      "only the other writer's row",
    );
    t.equal((await other.append([ev(4)]))[0]!.seq, 2, 'the other writer goes on');
  });

  t.test("tampered rows are refused at open with the verifier's codes", async (t) => {
    const sample = async (): Promise<{ schema: string; deps: PgAuditDeps }> => {
      const s = await place(t);
      const log = await PgAuditLog.open(s.deps);
      await log.append([ev(1), ev(2), ev(3), ev(4)]);
      return s;
    };
    // `at.seq`: the seq the refused row's line carries, as the file verifier reports it.
    const cases: [string, (s: string) => Promise<void>, string, number][] = [
      [
        'a changed line',
        async (s) => void (await p.sql(`UPDATE ${s}.audit SET line = replace(line, 'app/s2', 'app/sX') WHERE seq = 2`)),
        'AUDIT_HASH_MISMATCH',
        2,
      ],
      [
        'a changed hash column',
        async (s) => void (await p.sql(`UPDATE ${s}.audit SET hash = repeat('a', 64) WHERE seq = 3`)),
        'AUDIT_HASH_MISMATCH',
        3,
      ],
      [
        'swapped rows',
        async (s) =>
          void (await p.sql(
            `UPDATE ${s}.audit a SET line = b.line, hash = b.hash FROM ${s}.audit b
              WHERE (a.seq, b.seq) IN ((2, 3), (3, 2))`,
          )),
        'AUDIT_SEQ_GAP',
        3,
      ],
      [
        'a deleted middle row',
        async (s) => void (await p.sql(`DELETE FROM ${s}.audit WHERE seq = 2`)),
        'AUDIT_SEQ_GAP',
        3,
      ],
      [
        'a rewritten line with its hash recomputed',
        async (s) => {
          const [row] = await p.sql<{ line: string }>(`SELECT line FROM ${s}.audit WHERE seq = 2`);
          const e = JSON.parse(row!.line) as { prev: string };
          const forged = sealEntry({ ...ev(2), secret: 'app/forged', seq: 2, prev: e.prev });
          await p.sql(`UPDATE ${s}.audit SET line = $1, hash = $2 WHERE seq = 2`, [forged.line, forged.entry.hash]);
        },
        'AUDIT_CHAIN_BROKEN',
        3,
      ],
    ];
    for (const [what, tamper, code, seq] of cases) {
      const { schema, deps } = await sample();
      await tamper(schema);
      await t.rejects(PgAuditLog.open(deps), { name: 'AuditError', code, at: { seq } }, what);
    }
  });

  t.test('catchUp: a follower keeps up, then leads', async (t) => {
    const { deps } = await place(t);
    const leader = await PgAuditLog.open(deps);
    const follower = await PgAuditLog.open({ ...deps, term: () => 9 });
    const written = [...(await leader.append([ev(1)])), ...(await leader.append([ev(2), ev(3)]))];
    const read = await follower.catchUp();
    t.same(read, written, 'the same entries');
    t.same(follower.head, leader.head);
    t.same(await follower.catchUp(), [], 'nothing more');
    t.equal((await follower.append([ev(4)]))[0]!.seq, 4, 'the new leader continues the chain');
    await t.rejects(leader.append([ev(5)]), { code: 'AUDIT_FENCED' }, 'the old one is fenced');
  });

  t.test('seed from a file log, then continue in the database and mirror back', async (t) => {
    const dir = path.join(tempDir(t), 'audit');
    const file = await AuditLog.open(dir);
    await file.append([ev(1, OCT), ev(2, OCT), ev(3)]);
    const { schema, deps } = await place(t);
    const db = await PgAuditLog.open(deps);
    t.same(await seedAudit(db, dir), file.head, "the database's head is the file log's");
    t.equal((await rows(schema)).length, 3);
    t.same((await PgAuditLog.open(deps)).head, file.head, 'reopened: verified');
    await t.rejects(db.seed([]), { code: 'AUDIT_INVALID_ENTRY' }, 'only an empty table is seeded');
    const [next] = await db.append([ev(4)]);
    t.equal(next!.seq, 4);
    t.same(await mirrorAudit(db, file), [next], 'the mirror writes the new entry to the files');
    const v = await verifyAuditDir(dir);
    t.match(v.result, { ok: true, entries: 4, head: db.head });
    // A broken file log is refused with the verifier's code, and nothing is written.
    const bad = path.join(tempDir(t), 'audit');
    const badLog = await AuditLog.open(bad);
    await badLog.append([ev(1), ev(2)]);
    const f = path.join(bad, '2026-11.jsonl');
    const text = readFileSync(f, 'utf8');
    writeFileSync(f, text.replace('app/s2', 'app/sY'));
    const empty = await place(t);
    await t.rejects(seedAudit(await PgAuditLog.open(empty.deps), bad), { code: 'AUDIT_HASH_MISMATCH' });
    t.same(await rows(empty.schema), [], 'nothing imported');
  });

  t.test('appendLines and the mirror: files that verify; files that differ or go further are refused', async (t) => {
    const { deps } = await place(t);
    const db = await PgAuditLog.open(deps);
    await db.append([ev(1, OCT), ev(2, OCT)]);
    await db.append([ev(3), ev(4), ev(5)]);
    const dir = path.join(tempDir(t), 'audit');
    const file = await AuditLog.open(dir);
    t.equal((await mirrorAudit(db, file)).length, 5);
    t.same(readdirSync(dir).sort(), ['2026-10.jsonl', '2026-11.jsonl'], 'month files');
    t.match((await verifyAuditDir(dir)).result, { ok: true, entries: 5, head: db.head });
    t.same(await mirrorAudit(db, file), [], 'up to date: nothing to do');
    await db.append([ev(6)]);
    t.equal((await mirrorAudit(db, file))[0]!.seq, 6);
    t.same(file.head, db.head);
    const size = () => readFileSync(path.join(dir, '2026-11.jsonl')).length;
    const before = size();
    const lines = await db.linesAfter(3, 10);
    t.same(
      lines.map((l) => l.seq),
      [4, 5, 6],
    );
    await t.rejects(file.appendLines([lines[0]!.line]), { code: 'AUDIT_CHAIN_BROKEN' }, 'not the next entry');
    await t.rejects(file.appendLines(['{"seq":7}']), { code: 'AUDIT_CHAIN_BROKEN' }, 'not an entry');
    t.equal(size(), before, 'nothing written');
    // Files with other entries than the database's.
    const otherDir = path.join(tempDir(t), 'audit');
    const other = await AuditLog.open(otherDir);
    await other.append([ev(1, OCT), { ...ev(2, OCT), secret: 'app/other' }]);
    await t.rejects(mirrorAudit(db, other), { code: 'AUDIT_CHAIN_BROKEN', message: /differs from entry 2/ });
    t.equal(other.head.seq, 2, 'nothing mirrored');
    // Files that go further than the database.
    await file.append([ev(7)]);
    await t.rejects(mirrorAudit(db, file), { code: 'AUDIT_CHAIN_BROKEN', message: /ends at entry 7, after/ });
  });

  t.test('linesAfter across seqs of one and two digits, in the order of the numbers', async (t) => {
    const { deps } = await place(t);
    const db = await PgAuditLog.open(deps);
    await db.append(Array.from({ length: 12 }, (_, i) => ev(i + 1)));
    t.same(
      (await db.linesAfter(7, 4)).map((l) => l.seq),
      [8, 9, 10, 11],
      '8, 9, 10, 11 (not 10, 11, 8, 9 as text would sort them)',
    );
    const dir = path.join(tempDir(t), 'audit');
    const file = await AuditLog.open(dir);
    t.equal((await mirrorAudit(db, file)).length, 12, 'the mirror copies all twelve');
    await db.append([ev(13)]);
    t.equal((await mirrorAudit(db, file)).length, 1, 'and goes on past entry 9');
  });

  t.test('a COMMIT whose answer is lost: refused, then adopted by the next append', async (t) => {
    const proxy = await lossyProxy(t, p.srv.port);
    const schema = p.schema();
    const url = `postgres://rotor_state@127.0.0.1:${proxy.port}/rotor?schema=${schema}`;
    const warnings: string[] = [];
    const { deps } = await place(t, schema, { warn: (m) => warnings.push(m) }, url);
    const log = await PgAuditLog.open(deps);
    await log.append([ev(1)]);
    proxy.cutAfter('COMMIT');
    await t.rejects(log.append([ev(2)]), { code: 'AUDIT_WRITE_FAILED', message: /at COMMIT/ });
    t.equal((await rows(schema)).length, 2, 'the server had committed it');
    t.equal(log.head.seq, 1, 'not acknowledged');
    const [next] = await log.append([ev(3)]);
    t.equal(next!.seq, 3, 'the next append adopts entry 2 and follows it');
    t.match(warnings, [/committed after all; kept/]);
    const again = await PgAuditLog.open(deps);
    t.same(again.head, log.head, 'the chain verifies');
  });
}
