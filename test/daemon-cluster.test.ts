/**
 * Three `rotor daemon` processes on one PostgreSQL store (a throwaway server, scram-sha-256), each with
 * its own data directory holding copies of the same keys, a secret rotating every 2 s, and a consumer
 * reading on every daemon's socket (the first daemon makes the schema as its owner; the others log in
 * as a role holding exactly the grants docs/operations.md lists):
 * - one leads and rotates; the followers serve the values it made, from the database;
 * - the leader SIGKILLed: another takes over and rotates on; SIGTERMed: it resigns and a third leads;
 * - the killed one restarts as a follower;
 * - afterwards: one holder per term, terms only growing; versions 1..N with one audit entry each and no
 *   gap; the chain in the database verifies, and the remote's audit files are that chain; a version
 *   was never served with two values; no value or password in any log.
 */
import { appendFileSync, copyFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { verifyAuditDir } from '../src/audit/log.js';
import { git, rotor } from './helpers.js';
import { pgPlace } from './lib/pg-store.js';
import { daemonProcess, raw, world } from './world.js';

const p = await pgPlace(t);
const UID = process.getuid?.() ?? 0;

if (p) {
  t.test('three daemons on one store: one leads, the others serve; failover on SIGKILL and SIGTERM', async (t) => {
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policies.yaml': 'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n',
      'secrets.yaml': 'kind: Secret\nname: demo/ticker\npolicy: fast\ngenerate: { length: 24 }\n',
      'consumers.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["demo/*"]\n`,
    });
    const schema = p.schema();
    const url = p.url(schema);
    const names = ['d0', 'd1', 'd2'] as const;
    const dirs = names.map((n) => {
      const dataDir = path.join(w.root, n);
      mkdirSync(dataDir, { mode: 0o700 });
      for (const f of readdirSync(w.dataDir)) copyFileSync(path.join(w.dataDir, f), path.join(dataDir, f));
      return { dataDir, sockets: path.join(w.root, `${n}-sockets`) };
    });
    // d0 makes the schema as its owner; the others log in as a role holding exactly the documented grants.
    const grantedPassword = `pw-${Math.random().toString(36).slice(2)}-granted`;
    const user = (i: number) =>
      i === 0 ? { url, password: p.password } : { url: p.url(schema, 'rotor_daemon'), password: grantedPassword };
    const start = (i: number) =>
      daemonProcess(
        t,
        [
          '--repo',
          w.remote,
          '--data-dir',
          dirs[i]!.dataDir,
          '--socket-dir',
          dirs[i]!.sockets,
          '--agent-listen',
          '127.0.0.1:0',
          '--metrics-listen',
          'off',
          '--state',
          user(i).url,
          '--name',
          names[i]!,
        ],
        { name: names[i]!, env: { PGPASSWORD: user(i).password } },
      );

    /** Every value a consumer was served, per version: a version must never have two. */
    const served = new Map<number, Set<string>>();
    const read = async (i: number) => {
      const r = await raw(path.join(dirs[i]!.sockets, 'app.sock'), '/v1/secrets/demo/ticker');
      if (r.status !== 200) return undefined;
      const { version, value } = r.body as { version: number; value: string };
      served.set(version, (served.get(version) ?? new Set()).add(value));
      return version;
    };

    const d0 = start(0);
    await d0.waitFor(/"msg":"leading"/);
    await d0.ready;
    for (const sql of [
      `CREATE ROLE rotor_daemon LOGIN PASSWORD '${grantedPassword}'`,
      `GRANT USAGE ON SCHEMA ${schema} TO rotor_daemon`,
      `GRANT SELECT, INSERT, DELETE ON ${schema}.schema_version, ${schema}.store, ${schema}.segments, ${schema}.records TO rotor_daemon`,
      `GRANT SELECT, INSERT ON ${schema}.terms, ${schema}.audit TO rotor_daemon`,
      `GRANT SELECT, INSERT, UPDATE ON ${schema}.lease, ${schema}.daemons, ${schema}.receipts TO rotor_daemon`,
    ])
      await p.sql(sql);
    const d1 = start(1);
    const d2 = start(2);
    await Promise.all([d1.ready, d2.ready]);
    await d0.waitFor(/"msg":"secret rotated","secret":"demo\/ticker","version":2/);
    t.notMatch(d1.stderr(), /"msg":"secret rotated"/, 'a follower rotates nothing');

    // A follower says who leads, and refuses to rotate (the leader does).
    const status = await rotor(['status', '--json', '--data-dir', dirs[1]!.dataDir]);
    const seen = JSON.parse(status.stdout) as {
      leadership?: { role: string; term: number; leader?: { name: string } };
    };
    t.match(seen.leadership, { role: 'follower', term: 1, leader: { name: 'd0' } }, 'd1 follows d0 at term 1');
    const rotate = await rotor(['rotate', 'demo/ticker', '--reason', 'test', '--data-dir', dirs[1]!.dataDir]);
    t.not(rotate.code, 0, 'rotor rotate on a follower fails');
    t.match(rotate.stderr, /d0 leads.*NOT_LEADER|NOT_LEADER.*d0 leads/s, 'naming the leader and NOT_LEADER');

    // The followers serve what the leader made, learning of new versions from the database.
    const lead = await read(0);
    for (const i of [1, 2]) {
      let v = await read(i);
      for (let n = 0; n < 200 && (v === undefined || v < lead!); n++) v = await read(i); // bounded: the follower catches up
      t.ok(v !== undefined && v >= lead!, `${names[i]} serves version ${v}, the leader's ${lead} or newer`);
    }

    // The leader SIGKILLed: one of the others takes over and rotates on.
    d0.kill('SIGKILL');
    await d0.exited;
    const next = await Promise.race([d1, d2].map((d) => d.waitFor(/"msg":"leading"/).then(() => d)));
    const other = next === d1 ? d2 : d1;
    const version = (await read(next === d1 ? 1 : 2)) ?? 0;
    await next.waitFor(new RegExp(`"msg":"secret rotated","secret":"demo\\/ticker","version":${version + 1}[,}]`));
    t.pass(`${next.name} leads after the SIGKILL and rotates on`);

    // SIGTERM: the leader resigns and the third daemon leads.
    t.equal(await next.stop(), 0, 'the leader stops cleanly on SIGTERM');
    await other.waitFor(/"msg":"leading"/);
    const v2 = (await read(other === d1 ? 1 : 2)) ?? 0;
    await other.waitFor(new RegExp(`"msg":"secret rotated","secret":"demo\\/ticker","version":${v2 + 1}[,}]`));
    t.pass(`${other.name} leads after the SIGTERM and rotates on`);

    // The killed daemon restarts as a follower, even with an audit commit in its clone that the remote
    // never got and that conflicts with what the other leaders pushed since (a leader killed between
    // its commit and its push): the chain in the database is the record, so the clone is put back.
    const clone = path.join(dirs[0]!.dataDir, 'repo');
    const month = readdirSync(path.join(clone, 'audit')).sort().at(-1)!;
    appendFileSync(path.join(clone, 'audit', month), '{"unpushed":true}\n');
    git(clone, 'add', '-A');
    git(clone, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'unpushed');
    const again = start(0);
    await again.ready;
    t.notMatch(again.stderr(), /"msg":"leading"/, 'the restarted daemon follows');
    t.equal(await again.stop(), 0);
    t.equal(await other.stop(), 0);

    // One holder per term, terms growing: never two leaders in one term.
    const terms = await p.sql<{ term: number; holder: string; holder_name: string; how: string }>(
      `SELECT term::int AS term, holder, holder_name, how FROM ${schema}.terms ORDER BY term`,
    );
    t.same(
      terms.map((r) => r.term),
      terms.map((_, i) => i + 1),
      'terms 1..N, each granted once',
    );
    t.equal(terms[0]?.holder_name, 'd0', 'd0 led first');
    t.ok(terms.length >= 3, `${terms.length} terms: the first, the takeover after SIGKILL, after SIGTERM`);
    t.ok(
      terms.some((r) => r.how === 'resigned'),
      'a takeover after a resignation',
    );

    // The chain in the database: one entry per version, no gap; the remote's files are that chain.
    const rows = await p.sql<{ seq: number; line: string }>(
      `SELECT seq::int AS seq, line FROM ${schema}.audit ORDER BY seq`,
    );
    t.same(
      rows.map((r) => r.seq),
      rows.map((_, i) => i + 1),
      'the chain in the database has no gap',
    );
    const entries = rows.map((r) => JSON.parse(r.line) as { event: string; secret?: string; to?: number });
    const made = entries.filter((e) => e.secret === 'demo/ticker' && e.to !== undefined).map((e) => e.to);
    t.same(
      made,
      made.map((_, i) => i + 1),
      `versions 1..${made.length}, one audit entry each`,
    );
    git(w.person, 'pull', '-q', '--rebase');
    const auditDir = path.join(w.person, 'audit');
    const v = await verifyAuditDir(auditDir);
    t.ok(v.result.ok, 'the audit files pushed to the remote verify');
    const pushed = readdirSync(auditDir)
      .sort()
      .flatMap((f) => readFileSync(path.join(auditDir, f), 'utf8').split('\n').filter(Boolean));
    t.same(
      pushed,
      rows.map((r) => r.line),
      `the remote holds the database's chain, all ${rows.length} entries (the last leader pushed on its way out)`,
    );

    // A version was only ever served with one value; the values are in no log line.
    for (const [version, values] of served) t.equal(values.size, 1, `version ${version} was served with one value`);
    const logs = [d0, d1, d2, again].map((d) => d.stderr()).join('\n');
    for (const values of served.values())
      for (const value of values) t.notOk(logs.includes(value), 'no value in the logs');
    t.notOk(logs.includes(p.password) || logs.includes(grantedPassword), 'no password is in any log line');
  });
}
