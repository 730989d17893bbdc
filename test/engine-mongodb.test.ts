/**
 * The MongoDB engine. MongoDB cannot run on this machine, so the engine runs against a recording stand-in
 * plugged into its `connect` seam: a tiny user store that checks SCRAM credentials per database, answers
 * `ping` and `updateUser` like mongod (same error codes, driver error classes), and records every
 * connection and command. The tests check the exact commands for each strategy and step.
 *
 * What only a live server can show (the driver really authenticates, mongod accepts the commands and the
 * admin's custom role suffices) runs when ROTOR_TEST_MONGODB_URL is set (see the live test at the end).
 */
import { randomBytes } from 'node:crypto';
import { type Document, MongoClient, type MongoClientOptions, MongoNetworkError, MongoServerError } from 'mongodb';
import t, { type Test } from 'tap';
import {
  adminOptions,
  createMongodbEngine,
  type MongoConnect,
  mongoClientConnect,
  mongodbEngine,
  parseMongoTarget,
  testOptions,
} from '../agent/src/engines/mongodb.js';
import type { Credential, DbEngine } from '../agent/src/engines/types.js';
import { rejectsWithNone } from './lib/db-errors.js';
import { freePort } from './services/common.js';

const URL_ = 'mongodb://rotor_admin@db1.example:27017,db2.example:27017/app?replicaSet=rs0&authSource=admin';
const ADMIN_PASSWORD = 'admin-secret-value';

const usedValues: string[] = [ADMIN_PASSWORD];
function value(): string {
  const v = `p'"\\ $ {} é ${randomBytes(12).toString('base64url')}`;
  usedValues.push(v);
  return v;
}

type Entry =
  | {
      kind: 'connect';
      url: string;
      username: string | undefined;
      authSource: string | undefined;
      authMechanism: string | undefined;
      maxPoolSize: number | undefined;
      ok: boolean;
    }
  | { kind: 'command'; as: string; db: string; command: Document }
  | { kind: 'close'; as: string };

/** A stand-in mongod: users by (database, name), the admin in `admin`, and a log of everything. */
class FakeMongo {
  readonly users = new Map<string, string>();
  readonly log: Entry[] = [];
  adminPassword = ADMIN_PASSWORD;
  /** Privileges of the admin: without changePassword, updateUser fails with Unauthorized (13). */
  adminMayChangePasswords = true;
  /** The next command's reply or error, once. */
  nextReply: Document | undefined;
  nextError: Error | undefined;
  /** Every connect fails like a server that cannot be reached. */
  down = false;

  addUser(db: string, name: string, password: string): void {
    this.users.set(`${db}\0${name}`, password);
  }

  password(db: string, name: string): string | undefined {
    return this.users.get(`${db}\0${name}`);
  }

  commands(): Array<Extract<Entry, { kind: 'command' }>> {
    return this.log.filter((e): e is Extract<Entry, { kind: 'command' }> => e.kind === 'command');
  }

  connect: MongoConnect = async (url: string, options: MongoClientOptions) => {
    // The real driver merges the URL and the options (which one wins matters): let it do so, offline.
    const parsed = new MongoClient(url, options).options;
    const cred = parsed.credentials;
    const username = cred?.username;
    const authSource = cred?.source;
    const entry = {
      kind: 'connect' as const,
      url,
      username,
      authSource,
      authMechanism: cred?.mechanism,
      maxPoolSize: parsed.maxPoolSize,
      ok: false,
    };
    this.log.push(entry);
    if (this.down) throw new MongoNetworkError('connect ECONNREFUSED 10.0.0.1:27017');
    const isAdmin = username === 'rotor_admin' && authSource === 'admin' && cred?.password === this.adminPassword;
    const isUser =
      username !== undefined && authSource !== undefined && this.password(authSource, username) === cred?.password;
    if (!isAdmin && !isUser)
      throw new MongoServerError({ errmsg: 'Authentication failed.', code: 18, codeName: 'AuthenticationFailed' });
    entry.ok = true;
    const as = username!;
    return {
      command: async (db: string, command: Document) => {
        this.log.push({ kind: 'command', as, db, command: structuredClone(command) });
        if (this.nextError) {
          const e = this.nextError;
          this.nextError = undefined;
          throw e;
        }
        if (this.nextReply) {
          const r = this.nextReply;
          this.nextReply = undefined;
          return r;
        }
        if ('ping' in command) return { ok: 1 };
        if ('updateUser' in command) {
          if (!isAdmin || !this.adminMayChangePasswords)
            throw new MongoServerError({
              errmsg: `not authorized on ${db} to execute command`,
              code: 13,
              codeName: 'Unauthorized',
            });
          if (this.password(db, command.updateUser) === undefined)
            throw new MongoServerError({
              errmsg: `Could not find user "${command.updateUser}" for db "${db}"`,
              code: 11,
              codeName: 'UserNotFound',
            });
          this.addUser(db, command.updateUser, command.pwd);
          return { ok: 1 };
        }
        throw new MongoServerError({ errmsg: 'no such command', code: 59, codeName: 'CommandNotFound' });
      },
      close: async () => void this.log.push({ kind: 'close', as }),
    };
  };
}

function setup(t: Test, url = URL_): { fake: FakeMongo; engine: DbEngine } {
  const fake = new FakeMongo();
  const engine = createMongodbEngine({ connect: fake.connect })({ url, password: ADMIN_PASSWORD });
  t.teardown(() => engine.close());
  return { fake, engine };
}

const updateUser = (name: string, pwd: string): Document => ({
  updateUser: name,
  pwd,
  mechanisms: ['SCRAM-SHA-256'],
  writeConcern: { w: 'majority', wtimeout: 10_000 },
});

const rejectsWith = rejectsWithNone(usedValues);

t.test(
  'the Target URL and the driver options (checked with the real MongoClient, which parses without connecting)',
  async (t) => {
    const ep = parseMongoTarget({ url: URL_, password: ADMIN_PASSWORD });
    t.equal(
      ep.url,
      'mongodb://db1.example:27017,db2.example:27017/app?replicaSet=rs0&authSource=admin',
      'the seed list stays; the user info goes',
    );
    t.equal(ep.userDb, 'app', 'the rotated users live in the URL database');

    const asUser = new MongoClient(ep.url, testOptions(ep, { username: `o'dd "name`, password: 'x' })).options;
    t.equal(asUser.credentials?.username, `o'dd "name`);
    t.equal(
      asUser.credentials?.source,
      'app',
      "a test login authenticates against the users' database, not the URL's authSource=admin",
    );
    t.equal(asUser.credentials?.mechanism, 'SCRAM-SHA-256');
    t.equal(asUser.maxPoolSize, 1);
    t.same(asUser.hosts.map(String), ['db1.example:27017', 'db2.example:27017']);

    const asAdmin = new MongoClient(ep.url, adminOptions(ep)).options;
    t.equal(asAdmin.credentials?.username, 'rotor_admin');
    t.equal(asAdmin.credentials?.source, 'admin');

    const noSource = parseMongoTarget({ url: 'mongodb://rotor_admin@127.0.0.1/app', password: ADMIN_PASSWORD });
    t.equal(
      new MongoClient(noSource.url, adminOptions(noSource)).options.credentials?.source,
      'admin',
      'without authSource= the admin authenticates against admin (the driver alone would pick the URL database)',
    );
    t.equal(parseMongoTarget({ url: 'mongodb://h/' }).userDb, 'admin', 'no database in the URL: admin');
    t.equal(
      parseMongoTarget({ url: 'mongodb+srv://u@cluster0.example.net/app' }).url,
      'mongodb+srv://cluster0.example.net/app',
    );
    t.throws(() => createMongodbEngine()({ url: 'redis://x@h' }), { code: 'DB_ERROR' }, 'not a mongodb:// URL');
  },
);

{
  const explicit = 'alternate' as const;
  t.test('alternate: rotations as the daemon runs them, with the exact commands', async (t) => {
    const { fake, engine } = setup(t);
    let current: Credential = { username: 'app_a', password: value() };
    let inactive = 'app_b';
    fake.addUser('app', 'app_a', current.password);
    fake.addUser('app', 'app_b', 'unknown-to-anyone');
    const randoms: string[] = [];
    for (let i = 1; i <= 3; i++) {
      await t.test(`rotation ${i}: set ${inactive}, test, retire ${current.username}`, async (t) => {
        const pending = { username: inactive, password: value() };
        const before = fake.log.length;
        t.equal(
          await engine.set({ strategy: explicit, username: pending.username, password: pending.password, current }),
          'applied',
        );
        const setLog = fake.log.slice(before);
        t.match(
          setLog[0],
          {
            kind: 'connect',
            username: inactive,
            authSource: 'app',
            authMechanism: 'SCRAM-SHA-256',
            maxPoolSize: 1,
            ok: false,
          },
          'set first tries to log in with the pending value (it fails)',
        );
        t.same(
          setLog.filter((e) => e.kind === 'command'),
          [{ kind: 'command', as: 'rotor_admin', db: 'app', command: updateUser(inactive, pending.password) }],
          'set: one updateUser on the inactive user, SCRAM-SHA-256, w:majority, in the users database, as the admin',
        );
        t.equal(fake.password('app', current.username), current.password, 'set does not touch the current user');

        const beforeTest = fake.log.length;
        t.equal(await engine.test(pending), true, 'test: the pending value logs in');
        t.same(
          fake.log.slice(beforeTest).map((e) => (e.kind === 'command' ? [e.kind, e.as, e.db, e.command] : [e.kind])),
          [['connect'], ['command', inactive, 'app', { ping: 1 }], ['close']],
          'test: a fresh connection as the user, ping, close',
        );
        t.equal(await engine.test(current), true, 'overlap: the current value still logs in');

        const beforeRetire = fake.log.length;
        await engine.retire({ strategy: explicit, retired: current, current: pending });
        const retireCommands = fake.log.slice(beforeRetire).filter((e) => e.kind === 'command');
        t.equal(retireCommands.length, 1, 'retire: one command');
        const cmd = (retireCommands[0] as Extract<Entry, { kind: 'command' }>).command;
        const random = String(cmd.pwd);
        t.same(
          cmd,
          updateUser(current.username, random),
          'retire: updateUser on the retired user, same mechanisms and write concern',
        );
        t.ok(
          random.length >= 40 && !usedValues.includes(random),
          'retire: the password is a fresh random value, not one the daemon knows',
        );
        randoms.push(random);
        t.equal(await engine.test(current), false, 'after retire: the retired value fails');
        t.equal(await engine.test(pending), true, 'after retire: the new value logs in');
        await engine.retire({ strategy: explicit, retired: current, current: pending });
        t.equal(await engine.test(pending), true, 'retire is idempotent (again: the current user is untouched)');
        inactive = current.username;
        current = pending;
      });
    }
    t.equal(new Set(randoms).size, randoms.length, 'every retire used a different random value');
    const adminConnects = fake.log.filter((e) => e.kind === 'connect' && e.username === 'rotor_admin');
    t.equal(adminConnects.length, 1, 'one admin connection, reused');
    const userConnects = fake.log.filter((e) => e.kind === 'connect' && e.username !== 'rotor_admin' && e.ok).length;
    const userCloses = fake.log.filter((e) => e.kind === 'close' && e.as !== 'rotor_admin').length;
    t.equal(userCloses, userConnects, 'every test connection was closed');
    await engine.close();
    t.match(fake.log.at(-1), { kind: 'close', as: 'rotor_admin' }, 'close() closes the admin connection');
  });
}

t.test('single: set changes the one user, the old value fails at once, retire sends nothing', async (t) => {
  const { fake, engine } = setup(t);
  const current = { username: 'app', password: value() };
  fake.addUser('app', 'app', current.password);
  const pending = { username: 'app', password: value() };
  t.equal(await engine.set({ strategy: 'single', username: 'app', password: pending.password, current }), 'applied');
  t.same(
    fake.commands().map((c) => c.command),
    [updateUser('app', pending.password)],
  );
  t.equal(await engine.test(pending), true);
  t.equal(await engine.test(current), false, 'the old value fails at once');
  const n = fake.log.length;
  await engine.retire({ strategy: 'single', retired: current, current: pending });
  t.equal(fake.log.length, n, 'retire: no connection, no command');
});

t.test('dual is not supported', async (t) => {
  const { fake, engine } = setup(t);
  await rejectsWith(
    t,
    engine.set({ strategy: 'dual', username: 'app', password: value() }),
    'DB_UNSUPPORTED',
    'set dual',
  );
  await rejectsWith(
    t,
    engine.retire({
      strategy: 'dual',
      retired: { username: 'app', password: value() },
      current: { username: 'app', password: value() },
    }),
    'DB_UNSUPPORTED',
    'retire dual',
  );
  t.same(fake.log, [], 'nothing was sent');
});

t.test('crash recovery: set twice -> already-applied, one updateUser', async (t) => {
  for (const strategy of ['alternate', 'single'] as const) {
    const { fake, engine } = setup(t);
    fake.addUser('app', 'app_b', 'old');
    const pw = value();
    t.equal(await engine.set({ strategy, username: 'app_b', password: pw }), 'applied', `${strategy}: applied`);
    t.equal(
      await engine.set({ strategy, username: 'app_b', password: pw }),
      'already-applied',
      `${strategy}: already-applied`,
    );
    t.equal(fake.commands().filter((c) => 'updateUser' in c.command).length, 1, `${strategy}: one updateUser`);
  }
});

t.test('odd usernames stay one value in the command document', async (t) => {
  const { fake, engine } = setup(t);
  for (const name of [`o'brien "x"`, 'a.b$c', '{"$ne": 1}', '$where', 'back\\slash', 'é☃ 😀', 'new\nline']) {
    const pw = value();
    fake.addUser('app', name, 'old');
    t.equal(await engine.set({ strategy: 'single', username: name, password: pw }), 'applied', JSON.stringify(name));
    const cmd = fake.commands().at(-1)!.command;
    t.equal(cmd.updateUser, name, `${JSON.stringify(name)}: updateUser is exactly the name, one string`);
    t.equal(typeof cmd.updateUser, 'string');
    t.equal(await engine.test({ username: name, password: pw }), true, `${JSON.stringify(name)}: logs in`);
  }
  await rejectsWith(
    t,
    engine.set({ strategy: 'single', username: '', password: value() }),
    'DB_USER_MISSING',
    'an empty name',
  );
});

t.test('errors', async (t) => {
  await t.test('missing user', async (t) => {
    const { engine } = setup(t);
    await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'ghost', password: value() }),
      'DB_USER_MISSING',
      'set',
    );
    await rejectsWith(
      t,
      engine.retire({
        strategy: 'alternate',
        retired: { username: 'ghost', password: value() },
        current: { username: 'app_a', password: value() },
      }),
      'DB_USER_MISSING',
      'retire',
    );
  });
  await t.test('wrong admin password, then the right one: the failed connection is not kept', async (t) => {
    const { fake, engine } = setup(t);
    fake.addUser('app', 'app_b', 'old');
    fake.adminPassword = 'something else';
    await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'DB_ADMIN_AUTH',
      'set with a wrong admin password',
    );
    fake.adminPassword = ADMIN_PASSWORD;
    t.equal(
      await engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'applied',
      'the next call connects again',
    );
  });
  await t.test('admin without changePassword', async (t) => {
    const { fake, engine } = setup(t);
    fake.addUser('app', 'app_b', 'old');
    fake.adminMayChangePasswords = false;
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'DB_PERMISSION',
      'set',
    );
    t.equal(err?.dbCode, '13');
  });
  await t.test('unreachable', async (t) => {
    const { fake, engine } = setup(t);
    fake.down = true;
    await rejectsWith(t, engine.test({ username: 'app_b', password: value() }), 'DB_UNREACHABLE', 'test');
    await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app_b', password: value() }),
      'DB_UNREACHABLE',
      'set',
    );
  });
  await t.test('a write concern error in an ok:1 reply is not a success', async (t) => {
    const { fake, engine } = setup(t);
    fake.addUser('app', 'app_b', 'old');
    fake.nextReply = {
      ok: 1,
      writeConcernError: { code: 64, codeName: 'WriteConcernFailed', errmsg: 'waiting for replication timed out' },
    };
    const err = await rejectsWith(
      t,
      engine.retire({
        strategy: 'alternate',
        retired: { username: 'app_b', password: value() },
        current: { username: 'app_a', password: value() },
      }),
      'DB_UNREACHABLE',
      'retire',
    );
    t.equal(err?.dbCode, '64');
  });
  await t.test('another server error', async (t) => {
    const { fake, engine } = setup(t);
    fake.addUser('app', 'app_b', 'old');
    fake.nextError = new MongoServerError({ errmsg: 'something', code: 2, codeName: 'BadValue' });
    const err = await rejectsWith(
      t,
      engine.set({ strategy: 'single', username: 'app_b', password: value() }),
      'DB_ERROR',
      'set',
    );
    t.equal(err?.dbCode, '2');
  });
  await t.test('retire refuses to scramble the current user', async (t) => {
    const { fake, engine } = setup(t);
    const same = { username: 'app_a', password: value() };
    await rejectsWith(
      t,
      engine.retire({ strategy: 'alternate', retired: same, current: same }),
      'DB_ERROR',
      'retired = current',
    );
    t.same(fake.log, [], 'nothing was sent');
  });
  await t.test('the real driver against a port nobody listens on', async (t) => {
    const engine = mongodbEngine({
      url: `mongodb://rotor_admin@127.0.0.1:${await freePort()}/app?directConnection=true`,
      password: ADMIN_PASSWORD,
      timeoutMs: 300,
    });
    t.teardown(() => engine.close());
    await rejectsWith(t, engine.test({ username: 'app', password: value() }), 'DB_UNREACHABLE', 'test');
    await rejectsWith(
      t,
      engine.set({ strategy: 'alternate', username: 'app', password: value() }),
      'DB_UNREACHABLE',
      'set',
    );
  });
});

const LIVE_URL = process.env.ROTOR_TEST_MONGODB_URL;
t.test(
  'live MongoDB (ROTOR_TEST_MONGODB_URL)',
  {
    skip: LIVE_URL
      ? false
      : 'ROTOR_TEST_MONGODB_URL is not set (e.g. mongodb://root@127.0.0.1:27017/rotor_it?authSource=admin, password in ROTOR_TEST_MONGODB_PASSWORD): no live MongoDB test',
  },
  async (t) => {
    // The URL's account creates a role and two users in the URL's database, and drops them afterwards.
    const target = {
      url: LIVE_URL!,
      ...(process.env.ROTOR_TEST_MONGODB_PASSWORD ? { password: process.env.ROTOR_TEST_MONGODB_PASSWORD } : {}),
    };
    const ep = parseMongoTarget(target);
    const admin = await mongoClientConnect(ep.url, adminOptions(ep));
    const suffix = randomBytes(4).toString('hex');
    const role = `rotor_it_role_${suffix}`;
    const a = `rotor_it_a_${suffix}`;
    const b = `rotor_it "b' ${suffix}`;
    t.teardown(async () => {
      for (const u of [a, b]) await admin.command(ep.userDb, { dropUser: u }).catch(() => {});
      await admin.command(ep.userDb, { dropRole: role }).catch(() => {});
      await admin.close();
    });
    await admin.command(ep.userDb, { createRole: role, privileges: [], roles: [] });
    let current = { username: a, password: value() };
    await admin.command(ep.userDb, {
      createUser: a,
      pwd: current.password,
      roles: [role],
      mechanisms: ['SCRAM-SHA-256'],
    });
    await admin.command(ep.userDb, {
      createUser: b,
      pwd: randomBytes(24).toString('base64url'),
      roles: [role],
      mechanisms: ['SCRAM-SHA-256'],
    });
    const engine = mongodbEngine(target);
    t.teardown(() => engine.close());

    t.equal(
      await engine.test({ username: a, password: 'wrong' }),
      false,
      'a wrong password is refused (auth enforced)',
    );
    let inactive = b;
    for (let i = 1; i <= 2; i++) {
      const pending = { username: inactive, password: value() };
      t.equal(
        await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
        'applied',
        `rotation ${i}: set`,
      );
      t.equal(
        await engine.set({ strategy: 'alternate', username: inactive, password: pending.password, current }),
        'already-applied',
        `rotation ${i}: set again`,
      );
      t.equal(await engine.test(pending), true, `rotation ${i}: the new value logs in`);
      t.equal(await engine.test(current), true, `rotation ${i}: the current one still does`);
      await engine.retire({ strategy: 'alternate', retired: current, current: pending });
      t.equal(await engine.test(current), false, `rotation ${i}: after retire the old one does not`);
      inactive = current.username;
      current = pending;
    }
    const next = { username: current.username, password: value() };
    t.equal(
      await engine.set({ strategy: 'single', username: next.username, password: next.password, current }),
      'applied',
      'single: set',
    );
    t.equal(await engine.test(current), false, 'single: the old value fails at once');
    t.equal(await engine.test(next), true, 'single: the new one logs in');
    await rejectsWith(
      t,
      engine.set({ strategy: 'single', username: `rotor_it_missing_${suffix}`, password: value() }),
      'DB_USER_MISSING',
      'a missing user',
    );
    const wrong = mongodbEngine({ url: target.url, password: value() });
    t.teardown(() => wrong.close());
    await rejectsWith(
      t,
      wrong.set({ strategy: 'single', username: a, password: value() }),
      'DB_ADMIN_AUTH',
      'a wrong admin password',
    );
  },
);
