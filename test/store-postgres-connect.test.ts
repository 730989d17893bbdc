/**
 * How the PostgreSQL state store connects (src/state/pg-connect.ts): its URL (a password in it is
 * refused), where the password comes from (PGPASSWORD, PGPASSFILE or ~/.pgpass, a password file) and
 * what a wrong one says, the grants it needs, and a COMMIT whose answer is lost on the way back (a proxy
 * cuts the connection after the server has the COMMIT): the write is refused and the next one removes
 * what it left. Against a throwaway server with scram-sha-256 enforced.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { inspect } from 'node:util';
import type { Test } from 'tap';
import t from 'tap';
import { parseStateUrl, pgpassLookup } from '../src/state/pg-connect.js';
import { postgresStoreBackend } from '../src/state/postgres.js';
import { tempDir } from './helpers.js';
import type { PgPlace } from './lib/pg-store.js';
import { pgPlace } from './lib/pg-store.js';
import { lossyProxy } from './lib/tcp-proxy.js';
import { freePort } from './services/common.js';

// The server first: the root test ends (and tears it down) once its subtests are done.
const p = await pgPlace(t);

t.test('a state store URL with a password is refused, and so is what rotor does not take', async (t) => {
  const pw = `hunter2-${randomBytes(6).toString('hex')}`;
  for (const url of [`postgres://rotor:${pw}@db.internal/rotor`, `postgres://rotor@db.internal/rotor?password=${pw}`]) {
    const e = (() => {
      try {
        postgresStoreBackend({ url });
      } catch (err) {
        return err as Error;
      }
    })();
    t.match(e, {
      name: 'StateError',
      code: 'STATE_URL_PASSWORD',
      message: /PGPASSWORD, PGPASSFILE .* --state-password-file/,
    });
    t.notMatch(inspect(e, { depth: 5 }), pw, 'the password is not in the error');
  }
  for (const url of [
    'mysql://rotor@db/rotor',
    'postgres://db.internal/rotor',
    'postgres://rotor@db.internal/',
    'postgres://rotor@db.internal/rotor?application_name=x',
    'postgres://rotor@db.internal/rotor?schema=Rotor-State',
    'postgres://rotor@db.internal/rotor?sslmode=allow',
    'not a url',
  ])
    t.throws(() => postgresStoreBackend({ url }), { code: 'STATE_URL_INVALID' }, url);
  const u = parseStateUrl('postgres://rotor@db.internal:5433/state?sslmode=verify-full&schema=rotor_a');
  t.same(u.client, { host: 'db.internal', port: 5433, user: 'rotor', database: 'state', ssl: true });
  t.equal(u.schema, 'rotor_a');
  t.equal(u.place, 'postgres://rotor@db.internal:5433/state (schema rotor_a)');
  t.equal(parseStateUrl('postgresql://rotor@%2Frun%2Fpostgresql/state').client.host, '/run/postgresql');
  t.equal(parseStateUrl('postgres://rotor@x/state?host=/run/pg').client.host, '/run/pg', 'a socket directory');
  t.same(parseStateUrl('postgres://rotor@x/state?sslmode=no-verify').client.ssl, { rejectUnauthorized: false });
  t.equal(parseStateUrl('postgres://rotor@x/state', 'other').schema, 'other', 'the schema option');
});

t.test('.pgpass lines are looked up as libpq does', async (t) => {
  const c = { host: '127.0.0.1', port: 5432, user: 'rotor', database: 'state' };
  const text = [
    '# a comment',
    'other:5432:state:rotor:not-this-host',
    '127.0.0.1:5432:state:someone:not-this-user',
    '127.0.0.1:*:state:rotor:p\\:w\\\\1',
    '*:*:*:*:too-late',
  ].join('\n');
  t.equal(pgpassLookup(text, c), 'p:w\\1', 'the first match, escapes undone');
  t.equal(pgpassLookup(text, { ...c, user: 'x' }), 'too-late');
  t.equal(pgpassLookup('localhost:5432:state:rotor:sock', { ...c, host: '/run/postgresql' }), 'sock', 'a socket');
  t.equal(pgpassLookup('a:b:c', c), undefined);
});

async function suite(p: PgPlace): Promise<void> {
  const { srv } = p;
  const opens = async (t: Test, config: Parameters<PgPlace['open']>[2], what: string) => {
    const store = await p.open(p.schema(), {}, { env: {}, ...config });
    t.equal(store.seq, 0, what);
    await store.close();
  };
  const refused = async (
    t: Test,
    config: Parameters<PgPlace['open']>[2],
    code: string,
    what: string,
    secret?: string,
  ) => {
    const e = await p.open(p.schema(), {}, { env: {}, ...config }).then(
      async (s) => {
        await s.close();
        return undefined;
      },
      (err: unknown) => err as Error,
    );
    t.match(e, { name: 'StateError', code }, what);
    if (secret !== undefined)
      t.notMatch(inspect(e, { depth: 10, showHidden: true }), secret, `${what}: the password is nowhere in the error`);
    return e;
  };

  t.test('PGPASSWORD, PGPASSFILE, ~/.pgpass and a password file each log in', async (t) => {
    const dir = tempDir(t);
    await opens(t, { env: { PGPASSWORD: p.password } }, 'PGPASSWORD');
    const pgpass = path.join(dir, 'pgpass');
    writeFileSync(
      pgpass,
      `# rotor\nother:1:rotor:rotor_state:x\n${srv.host}:${srv.port}:rotor:rotor_state:${p.password}\n`,
      {
        mode: 0o600,
      },
    );
    await opens(t, { env: { PGPASSFILE: pgpass } }, 'PGPASSFILE');
    writeFileSync(path.join(dir, '.pgpass'), `*:*:*:rotor_state:${p.password}\n`, { mode: 0o600 });
    await opens(t, { env: { HOME: dir } }, '~/.pgpass, with wildcards');
    const file = path.join(dir, 'state-password');
    writeFileSync(file, `${p.password}\nignored second line\n`, { mode: 0o600 });
    await opens(t, { passwordFile: file, env: { PGPASSWORD: 'wrong' } }, 'the password file, first before PGPASSWORD');

    chmodSync(pgpass, 0o644);
    const e = await refused(t, { env: { PGPASSFILE: pgpass } }, 'STATE_PASSWORD_FILE', 'a PGPASSFILE others can read');
    t.match(e?.message, /readable by other users \(mode 644\); run: chmod 600/);
    chmodSync(file, 0o640);
    await refused(t, { passwordFile: file }, 'STATE_PASSWORD_FILE', 'a password file the group can read');
    await refused(t, { passwordFile: path.join(dir, 'missing') }, 'STATE_PASSWORD_FILE', 'a missing password file');
    const empty = path.join(dir, 'empty');
    writeFileSync(empty, '\nsecond\n', { mode: 0o600 });
    await refused(t, { passwordFile: empty }, 'STATE_PASSWORD_FILE', 'an empty first line');
  });

  t.test('a wrong or missing password is STATE_AUTH, and the password appears in no error', async (t) => {
    const dir = tempDir(t);
    const wrong = `wrong-${randomBytes(12).toString('hex')}`;
    await refused(t, { env: { PGPASSWORD: wrong } }, 'STATE_AUTH', 'a wrong PGPASSWORD', wrong);
    const file = path.join(dir, 'pw');
    writeFileSync(file, `${wrong}\n`, { mode: 0o600 });
    const e = await refused(t, { passwordFile: file }, 'STATE_AUTH', 'a wrong password file', wrong);
    t.match(e?.message, /refused the login of user rotor_state/);
    const none = await refused(t, { env: { HOME: dir } }, 'STATE_AUTH', 'no password anywhere');
    t.match(none?.message, /none was given: set PGPASSWORD/);
    const nobody = p.open(p.schema(), {}, { url: p.url('x', 'nobody'), env: { PGPASSWORD: p.password } });
    await t.rejects(nobody, { code: 'STATE_AUTH' }, 'a role that does not exist');
    const url = `postgres://rotor_state@${srv.host}:${srv.port}/nothere`;
    await t.rejects(
      p.open('x', {}, { url, env: { PGPASSWORD: p.password } }),
      { code: 'STATE_AUTH' },
      'no such database',
    );
    const closed = `postgres://rotor_state@127.0.0.1:${await freePort()}/rotor`;
    await t.rejects(p.open('x', {}, { url: closed }), { code: 'STATE_IO', message: /ECONNREFUSED/ }, 'no server');
  });

  t.test('grants: CREATE on the schema for the first start, then USAGE and SELECT, INSERT, DELETE', async (t) => {
    const pw = `pw-${randomBytes(8).toString('hex')}`;
    await p.sql(`CREATE ROLE state_owner LOGIN PASSWORD '${pw}'`);
    await p.sql(`CREATE ROLE state_rw LOGIN PASSWORD '${pw}'`);
    await p.sql(`CREATE ROLE state_ro LOGIN PASSWORD '${pw}'`);
    const as = (user: string, schema: string) => ({ url: p.url(schema, user), env: { PGPASSWORD: pw } });
    await t.rejects(p.open('state_a', {}, as('state_owner', 'state_a')), { code: 'STATE_PERMISSION' }, 'no CREATE');
    await p.sql('CREATE SCHEMA state_a AUTHORIZATION state_owner');
    const first = await p.open('state_a', {}, as('state_owner', 'state_a'));
    await first.write([{ op: 'put', key: 'k', value: 1 }]);
    await first.close();
    await p.sql('GRANT USAGE ON SCHEMA state_a TO state_rw, state_ro');
    await p.sql('GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA state_a TO state_rw');
    await p.sql('GRANT SELECT ON ALL TABLES IN SCHEMA state_a TO state_ro');
    const rw = await p.open('state_a', {}, as('state_rw', 'state_a'));
    t.equal(await rw.write([{ op: 'put', key: 'k', value: 2 }]), 2, 'SELECT, INSERT and DELETE suffice to write');
    await rw.compact();
    t.equal(await rw.write([{ op: 'put', key: 'k', value: 3 }]), 3, 'and to compact');
    await rw.close();
    const ro = await p.open('state_a', {}, as('state_ro', 'state_a'));
    t.equal(ro.get('k'), 3, 'SELECT alone opens');
    await t.rejects(ro.write([{ op: 'put', key: 'k', value: 4 }]), {
      code: 'STATE_PERMISSION',
      message: /user state_ro lacks a privilege/,
    });
    await ro.close();
  });

  t.test('a COMMIT whose answer is lost: refused, and the next write removes what it left', async (t) => {
    const proxy = await lossyProxy(t, srv.port);
    const url = (schema: string) => `postgres://rotor_state@127.0.0.1:${proxy.port}/rotor?schema=${schema}`;
    for (const mode of ['transaction (a fence)', 'autocommit (no fence)'] as const) {
      const schema = p.schema();
      const warnings: string[] = [];
      const fence = mode.startsWith('transaction') ? { fence: async () => undefined } : {};
      const open = () => p.open(schema, { onWarning: (m) => warnings.push(m) }, { url: url(schema), ...fence });
      const store = await open();
      await store.write([{ op: 'put', key: 'k', value: 'one' }]);
      proxy.cutAfter(mode.startsWith('transaction') ? 'COMMIT' : 'INSERT INTO');
      await t.rejects(store.write([{ op: 'put', key: 'k', value: 'lost' }]), { code: 'STATE_IO' }, `${mode}: refused`);
      const rows = await p.sql<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.records`);
      t.equal(rows[0]?.n, '2', `${mode}: the server had committed it`);
      t.equal(store.get('k'), 'one', `${mode}: not applied`);
      t.equal(await store.write([{ op: 'put', key: 'k', value: 'two' }]), 2, `${mode}: the next write takes its seq`);
      t.match(warnings, [/had been committed after all; removed them/]);
      proxy.cutAfter('COMMIT');
      await t.rejects(store.compact(), { code: 'STATE_IO' }, `${mode}: a compaction whose answer is lost`);
      t.equal(await store.write([{ op: 'put', key: 'k', value: 'three' }]), 3, `${mode}: adopted, goes on`);
      const segs = await p.sql<{ base: string }>(`SELECT base_seq AS base FROM ${schema}.segments`);
      t.same(segs, [{ base: '2' }], `${mode}: the compaction had committed: one segment, at 2`);
      await store.close();
      const again = await open();
      t.equal(again.seq, 3);
      t.equal(again.get('k'), 'three', `${mode}: the lost write never comes back`);
      await again.close();
    }
  });
}

if (p) await suite(p);
