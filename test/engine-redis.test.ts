/**
 * The Redis engine against a live redis-server (test/services/redis.ts): password authentication enforced,
 * dual and single rotations run step by step as the daemon runs them (set -> test -> retire), the saved
 * ACLs (aclfile / config file), crash recovery, odd usernames, and the error mapping with no value in any
 * error.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import t, { type Test } from 'tap';
import { createRedisEngine, type EngineWarning } from '../agent/src/engines/redis.js';
import type { Credential, DbEngine, Strategy } from '../agent/src/engines/types.js';
import { rejectsWithNone } from './lib/db-errors.js';
import { freePort } from './services/common.js';
import { auth, REDIS_ADMIN_RULES, type RedisServer, startRedis } from './services/redis.js';

const sha256 = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

/** A value with the characters that break naive quoting (quotes, backslash, space, `>`/`<`, non-ASCII). */
const nextValue = (): string => `p'"\\ >< é ${randomBytes(12).toString('base64url')}`;

/** Every value used in the file, to prove none of them ever reaches an error. */
const usedValues: string[] = [];
function value(): string {
  const v = nextValue();
  usedValues.push(v);
  return v;
}

/** A login by a plain client (not the engine): 'OK' or the server's error prefix. */
const login = auth;

function engineFor(
  t: Test,
  server: RedisServer,
  opts: { password?: string } = {},
): { engine: DbEngine; warnings: EngineWarning[] } {
  const warnings: EngineWarning[] = [];
  const engine = createRedisEngine({ onWarning: (w) => warnings.push(w) })({
    url: server.url,
    password: opts.password ?? server.adminPassword,
    timeoutMs: 5000,
  });
  t.teardown(() => engine.close());
  return { engine, warnings };
}

/** The saved rules of `username` in an aclfile / config file (`user <name> <rules...>`), or undefined. */
function savedUser(file: string, username: string): string[] | undefined {
  const line = readFileSync(file, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`user ${username} `));
  return line?.slice(`user ${username} `.length).split(' ');
}

function savedHashes(file: string, username: string): string[] {
  return (savedUser(file, username) ?? [])
    .filter((r) => r.startsWith('#'))
    .map((r) => r.slice(1))
    .sort();
}

async function livePasswords(server: RedisServer, username: string): Promise<string[]> {
  const reply = (await server.root('ACL', 'GETUSER', username)) as unknown[] | null;
  if (!reply) return [];
  return [...(reply[reply.indexOf('passwords') + 1] as string[])].sort();
}

/** Asserts `p` rejects with a DbError of `code` that holds no used value, nor its hash. */
const rejectsWith = rejectsWithNone(usedValues, { hash: sha256 });

t.test('password authentication is enforced', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  t.comment(`redis-server ${server.version}`);
  const pw = value();
  await server.createUser('app', pw);
  const { engine } = engineFor(t, server);

  const anon = new Redis({
    host: '127.0.0.1',
    port: server.port,
    lazyConnect: true,
    protocol: 2,
    retryStrategy: null,
    maxRetriesPerRequest: 0,
    enableReadyCheck: false,
    disableClientInfo: true,
  });
  anon.on('error', () => {});
  await anon.connect();
  await t.rejects(anon.call('PING'), /NOAUTH/, 'a connection that has not authenticated cannot even PING');
  anon.disconnect();

  t.equal(await login(server.port, 'default', ''), 'WRONGPASS', 'the default user is off');
  t.equal(await login(server.port, 'app', 'wrong'), 'WRONGPASS', 'a wrong password is refused');
  t.equal(await login(server.port, 'app', pw), 'OK', 'the right one logs in');
  t.equal(await engine.test({ username: 'app', password: 'wrong' }), false, 'engine.test: false for a wrong password');
  t.equal(
    await engine.test({ username: 'nobody', password: pw }),
    false,
    'engine.test: false for a user that does not exist',
  );
  t.equal(await engine.test({ username: 'app', password: pw }), true, 'engine.test: true for the right one');

  const admin = new Redis({
    host: '127.0.0.1',
    port: server.port,
    username: 'rotor_admin',
    password: server.adminPassword,
    lazyConnect: true,
    protocol: 2,
    retryStrategy: null,
    maxRetriesPerRequest: 0,
    enableReadyCheck: false,
    disableClientInfo: true,
  });
  admin.on('error', () => {});
  await admin.connect();
  await t.rejects(
    admin.call('GET', ['k']),
    /NOPERM/,
    `the admin account holds only ${REDIS_ADMIN_RULES.join(' ')}: it cannot read data`,
  );
  await t.rejects(admin.call('PING'), /NOPERM/, '...nor even PING');
  admin.disconnect();
});

/** One rotation as the daemon runs it: set, test, (finish: the pending value is now current), retire. */
async function rotate(
  t: Test,
  engine: DbEngine,
  server: RedisServer,
  strategy: Strategy,
  username: string,
  current: Credential,
): Promise<Credential> {
  const pending = { username, password: value() };
  t.equal(await engine.set({ strategy, username, password: pending.password, current }), 'applied', 'set: applied');
  t.equal(await engine.test(pending), true, 'test: the pending value logs in (engine)');
  t.equal(await login(server.port, username, pending.password), 'OK', 'test: the pending value logs in (plain client)');
  const file = server.savedFile!;
  if (strategy === 'dual') {
    t.equal(await login(server.port, username, current.password), 'OK', 'overlap: the previous value still logs in');
    t.same(
      await livePasswords(server, username),
      [sha256(current.password), sha256(pending.password)].sort(),
      'overlap: the user holds both hashes',
    );
    t.same(
      savedHashes(file, username),
      [sha256(current.password), sha256(pending.password)].sort(),
      'overlap: ACL SAVE wrote both hashes',
    );
  } else {
    t.equal(
      await login(server.port, username, current.password),
      'WRONGPASS',
      'single: the previous value fails at once',
    );
    t.same(savedHashes(file, username), [sha256(pending.password)], 'single: ACL SAVE wrote only the new hash');
  }
  await engine.retire({ strategy, retired: current, current: pending });
  t.equal(await login(server.port, username, current.password), 'WRONGPASS', 'after retire: the previous value fails');
  t.equal(await engine.test(current), false, 'after retire: engine.test(previous) is false');
  t.equal(await engine.test(pending), true, 'after retire: the new value logs in');
  t.same(await livePasswords(server, username), [sha256(pending.password)], 'after retire: only the new hash is live');
  t.same(
    savedHashes(file, username),
    [sha256(pending.password)],
    'after retire: the saved file holds the new hash and not the old one',
  );
  const saved = readFileSync(file, 'utf8');
  t.notOk(
    usedValues.some((v) => saved.includes(v)),
    'no clear password in the saved file',
  );
  return pending;
}

for (const strategy of ['dual', 'single'] as const) {
  t.test(`${strategy}: several rotations, set -> test -> retire`, async (t) => {
    const server = await startRedis(t);
    if (!server) return;
    let current = { username: 'app', password: value() };
    await server.createUser('app', current.password);
    await server.createUser('bystander', 'bystander-pw');
    const { engine, warnings } = engineFor(t, server);
    for (let i = 1; i <= 3; i++) {
      await t.test(`rotation ${i}`, async (t) => {
        current = await rotate(t, engine, server, strategy, 'app', current);
      });
    }
    // The saved file is what a restart loads: reload it and the newest value still logs in.
    await server.root('ACL', 'LOAD');
    t.equal(await engine.test(current), true, 'after ACL LOAD from the saved file the newest value logs in');
    t.equal(await login(server.port, 'bystander', 'bystander-pw'), 'OK', 'another user is untouched');
    t.equal(await login(server.port, 'rotor_admin', server.adminPassword), 'OK', 'the admin still logs in');
    t.same(warnings, [], 'no warning: ACL SAVE worked every time');
    await t.resolves(
      engine.retire({ strategy, retired: { username: 'app', password: 'never-set' }, current }),
      'retire is idempotent (a value already gone)',
    );
    t.equal(await engine.test(current), true, 'and leaves the current value alone');
  });
}

t.test(
  'crash recovery: set twice -> already-applied, and the change is saved even if the crash came before ACL SAVE',
  async (t) => {
    const server = await startRedis(t);
    if (!server) return;
    for (const strategy of ['dual', 'single'] as const) {
      const user = `crash_${strategy}`;
      const current = { username: user, password: value() };
      await server.createUser(user, current.password);
      const { engine } = engineFor(t, server);
      const pending = value();
      t.equal(
        await engine.set({ strategy, username: user, password: pending, current }),
        'applied',
        `${strategy}: first set applied`,
      );
      t.equal(
        await engine.set({ strategy, username: user, password: pending, current }),
        'already-applied',
        `${strategy}: second set: already-applied`,
      );
      t.same(
        await livePasswords(server, user),
        strategy === 'dual' ? [sha256(current.password), sha256(pending)].sort() : [sha256(pending)],
        `${strategy}: no duplicate hash, nothing else changed`,
      );

      // A crash between ACL SETUSER and ACL SAVE: the change is live but not in the aclfile.
      const next = value();
      await server.root('ACL', 'SETUSER', user, `#${sha256(next)}`);
      t.notOk(
        savedHashes(server.savedFile!, user).includes(sha256(next)),
        `${strategy}: (setup) the live change is not saved yet`,
      );
      t.equal(
        await engine.set({ strategy, username: user, password: next, current: { username: user, password: pending } }),
        'already-applied',
        `${strategy}: set after the crash: already-applied`,
      );
      t.ok(
        savedHashes(server.savedFile!, user).includes(sha256(next)),
        `${strategy}: ...and it saved the ACLs, so the change outlives a restart`,
      );
    }
  },
);

t.test('odd usernames that Redis allows rotate correctly; ones it cannot hold get a clear error', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  const { engine } = engineFor(t, server);
  // Quotes, a backslash, non-ASCII, a control character, and names that read as ACL rules.
  const odd = [
    `q'"x`,
    'back\\slash',
    'é☃😀',
    'ctl\x01x',
    '>notapassword',
    '#x',
    'on',
    'resetpass',
    'nopass',
    '+@all',
    'allkeys',
    'a:b|c',
  ];
  for (const username of odd) {
    await t.test(JSON.stringify(username), async (t) => {
      let current = { username, password: value() };
      await server.createUser(username, current.password);
      current = await rotate(t, engine, server, 'dual', username, current);
      current = await rotate(t, engine, server, 'single', username, current);
      const [flags, , , , commands] = ((await server.root('ACL', 'GETUSER', username)) as unknown[]).slice(1) as [
        string[],
        unknown,
        unknown,
        unknown,
        string,
      ];
      t.ok(
        flags.includes('on') && !flags.includes('nopass'),
        `the user is on and has passwords (flags ${flags.join(' ')})`,
      );
      t.equal(commands, '-@all +ping', 'its permissions are unchanged (a name like "+@all" is only a name)');
    });
  }
  t.equal(
    await login(server.port, 'rotor_admin', server.adminPassword),
    'OK',
    'rotating "resetpass", "nopass"... left the admin alone',
  );
  await server.root('ACL', 'LOAD');
  t.pass('the aclfile with all these names loads back (ACL LOAD)');

  const usersBefore = await server.root('ACL', 'USERS');
  for (const [username, why] of [
    ['a b', 'a space'],
    ['tab\tx', 'a tab'],
    ['nl\nx', 'a line break'],
    ['cr\rx', 'a carriage return'],
    ['nul\0x', 'a NUL'],
    ['', 'empty'],
    ['lone\uD800', 'a lone surrogate'],
  ] as const) {
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'dual', username, password: value() }),
      'DB_USER_MISSING',
      `set for a name with ${why}`,
    );
    t.match(err?.message, /Redis username|Redis usernames/, `the message says why (${why})`);
    await rejectsWith(
      t,
      engine.test({ username, password: value() }),
      'DB_USER_MISSING',
      `test for a name with ${why}`,
    );
  }
  t.same(await server.root('ACL', 'USERS'), usersBefore, 'no user was created or changed');
});

t.test(
  'config-file server: CONFIG REWRITE saves; a name with a quote is refused before anything changes',
  async (t) => {
    const server = await startRedis(t, { persistence: 'config-file' });
    if (!server) return;
    const { engine, warnings } = engineFor(t, server);
    let current = { username: 'app', password: value() };
    await server.createUser('app', current.password);
    current = await rotate(t, engine, server, 'dual', 'app', current);
    t.same(warnings, [], 'no warning: CONFIG REWRITE saved each change');

    const quoted = `q'x`;
    const pw = value();
    await server.root('ACL', 'SETUSER', quoted, 'on', `#${sha256(pw)}`);
    const confBefore = readFileSync(server.savedFile!, 'utf8');
    const err = await rejectsWith(
      t,
      engine.set({
        strategy: 'dual',
        username: quoted,
        password: value(),
        current: { username: quoted, password: pw },
      }),
      'DB_UNSUPPORTED',
      'set for a name with a quote',
    );
    t.match(err?.message, /aclfile/, 'the message says to use an aclfile');
    t.same(await livePasswords(server, quoted), [sha256(pw)], 'the user was not changed');
    t.equal(
      readFileSync(server.savedFile!, 'utf8'),
      confBefore,
      'the config file was not rewritten (Redis could not read it back)',
    );
  },
);

t.test(
  'a server with neither an aclfile nor a config file: the rotation works and a warning says it is not saved',
  async (t) => {
    const server = await startRedis(t, { persistence: 'none' });
    if (!server) return;
    const { engine, warnings } = engineFor(t, server);
    const current = { username: 'app', password: value() };
    await server.createUser('app', current.password);
    const pending = value();
    t.equal(await engine.set({ strategy: 'dual', username: 'app', password: pending, current }), 'applied');
    t.equal(await engine.test({ username: 'app', password: pending }), true, 'the new value logs in');
    t.equal(warnings.length, 1, 'one warning');
    t.equal(warnings[0]?.code, 'REDIS_NOT_PERSISTED');
    t.match(warnings[0]?.message, /neither an aclfile nor a config file/);
    t.notOk(
      usedValues.some((v) => JSON.stringify(warnings).includes(v)),
      'no value in the warning',
    );
  },
);

t.test('an admin without +acl|save: the rotation works and a warning says so', async (t) => {
  const server = await startRedis(t, { adminRules: ['-@all', '+acl|setuser', '+acl|getuser'] });
  if (!server) return;
  const { engine, warnings } = engineFor(t, server);
  const current = { username: 'app', password: value() };
  await server.createUser('app', current.password);
  t.equal(await engine.set({ strategy: 'single', username: 'app', password: value(), current }), 'applied');
  t.same(
    warnings.map((w) => [w.code, w.dbCode]),
    [['REDIS_NOT_PERSISTED', 'NOPERM']],
    'a NOPERM warning, and no CONFIG REWRITE attempted',
  );
  t.match(warnings[0]?.message, /may not run ACL SAVE/);
});

t.test('errors', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  const current = { username: 'app', password: value() };
  await server.createUser('app', current.password);
  const { engine } = engineFor(t, server);

  await rejectsWith(
    t,
    engine.set({ strategy: 'dual', username: 'ghost', password: value() }),
    'DB_USER_MISSING',
    'set for a missing user',
  );
  t.equal(await server.root('ACL', 'GETUSER', 'ghost'), null, 'the missing user was not created by ACL SETUSER');
  await rejectsWith(
    t,
    engine.retire({
      strategy: 'dual',
      retired: { username: 'ghost', password: value() },
      current: { username: 'ghost', password: value() },
    }),
    'DB_USER_MISSING',
    'retire for a missing user',
  );
  await rejectsWith(
    t,
    engine.set({ strategy: 'alternate', username: 'app', password: value(), current }),
    'DB_UNSUPPORTED',
    'alternate',
  );
  await rejectsWith(
    t,
    engine.retire({ strategy: 'alternate', retired: current, current }),
    'DB_UNSUPPORTED',
    'alternate retire',
  );

  const notCurrent = { username: 'app', password: value() };
  await rejectsWith(
    t,
    engine.retire({ strategy: 'dual', retired: current, current: notCurrent }),
    'DB_ERROR',
    'retire when the current value is not on the user (it would lock the user out)',
  );
  t.equal(await engine.test(current), true, '...and the user still logs in');

  const wrongAdmin = engineFor(t, server, { password: value() }).engine;
  await rejectsWith(
    t,
    wrongAdmin.set({ strategy: 'dual', username: 'app', password: value(), current }),
    'DB_ADMIN_AUTH',
    'a wrong admin password',
  );

  const weak = await startRedis(t, { adminRules: ['-@all', '+acl|getuser'] });
  if (!weak) return;
  await weak.createUser('app', current.password);
  const weakEngine = engineFor(t, weak).engine;
  const perm = await rejectsWith(
    t,
    weakEngine.set({ strategy: 'dual', username: 'app', password: value(), current }),
    'DB_PERMISSION',
    'an admin without +acl|setuser',
  );
  t.equal(perm?.dbCode, 'NOPERM');

  const pending = value();
  t.equal(await engine.test(current), true, '(the engine works before the server stops)');
  await server.stop();
  await rejectsWith(
    t,
    engine.set({ strategy: 'dual', username: 'app', password: pending, current }),
    'DB_UNREACHABLE',
    'set on a stopped server',
  );
  await rejectsWith(
    t,
    engine.test({ username: 'app', password: pending }),
    'DB_UNREACHABLE',
    'test on a stopped server',
  );
  await rejectsWith(
    t,
    engine.retire({ strategy: 'dual', retired: current, current: { username: 'app', password: pending } }),
    'DB_UNREACHABLE',
    'retire on a stopped server',
  );
  const nobody = createRedisEngine({ onWarning: () => {} })({
    url: `redis://rotor_admin@127.0.0.1:${await freePort()}`,
    password: value(),
  });
  t.teardown(() => nobody.close());
  await rejectsWith(
    t,
    nobody.set({ strategy: 'single', username: 'app', password: value() }),
    'DB_UNREACHABLE',
    'a port nobody listens on',
  );
  t.throws(
    () => createRedisEngine()({ url: 'postgres://x@127.0.0.1/', password: value() }),
    { code: 'DB_ERROR' },
    'a URL that is not redis:// (the factory refuses it)',
  );
});

t.test('test(): a user that may not run PING still logs in', async (t) => {
  const server = await startRedis(t);
  if (!server) return;
  const pw = value();
  await server.root('ACL', 'SETUSER', 'noping', 'on', `#${sha256(pw)}`, '-@all');
  const { engine } = engineFor(t, server);
  t.equal(
    await engine.test({ username: 'noping', password: pw }),
    true,
    'AUTH succeeded: true even though PING is NOPERM',
  );
  t.equal(await engine.test({ username: 'noping', password: 'wrong' }), false);
});
