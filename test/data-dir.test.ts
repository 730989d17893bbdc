/**
 * The daemon's data directory against planted links: a data directory others may write to is refused
 * at start (DATA_DIR_UNSAFE), and the state store opens its files with O_NOFOLLOW, so a link put where
 * it writes a temporary file is refused instead of followed to truncate and overwrite its target.
 */
import { chmodSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import t from 'tap';
import { openStore } from '../src/state/store.js';
import { rotor, tempDir } from './helpers.js';
import { world } from './world.js';

t.test('a data directory others may write to is refused (DATA_DIR_UNSAFE)', async (t) => {
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'secrets.yaml': 'kind: Policy\nname: p\nevery: 30d\n---\nkind: Secret\nname: a/b\npolicy: p\ngenerate: {}\n',
  });
  chmodSync(w.dataDir, 0o777);
  const refused = await w.start({ socketDir: path.join(w.root, 'sockets') }).then(
    async (d) => {
      await d.stop();
      return undefined;
    },
    (e: unknown) => e,
  );
  t.match(
    refused,
    { code: 'DATA_DIR_UNSAFE', message: /writable by others \(mode 777\).*chmod 700/ },
    'Daemon.start refuses it',
  );
  if (!refused) return; // it started: rotor daemon would run until stopped
  const r = await rotor([
    'daemon',
    '--repo',
    w.remote,
    '--data-dir',
    w.dataDir,
    '--socket-dir',
    path.join(w.root, 'sockets'),
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    'off',
  ]);
  t.equal(r.code, 1, 'rotor daemon exits 1');
  t.match(r.stderr, /rotor daemon: .* is writable by others .* \[DATA_DIR_UNSAFE\]\n/);
  chmodSync(w.dataDir, 0o700);
  const d = await w.start({ socketDir: path.join(w.root, 'sockets') });
  await d.stop();
  t.pass('0700: it starts');
});

t.test('the state store does not follow a link planted where it writes a temporary file', async (t) => {
  const identity = await generateX25519Identity();
  const dir = tempDir(t);
  const store = await openStore({ dir, identity, recipients: [await identityToRecipient(identity)] });
  t.teardown(() => store.close().catch(() => undefined));
  await store.write([{ op: 'put', key: 'k', value: 1 }]);
  const victim = path.join(tempDir(t), 'victim');
  writeFileSync(victim, "not the store's\n");
  symlinkSync(victim, path.join(dir, 'snapshot.age.tmp'));
  await t.rejects(
    store.compact(),
    { name: 'StateError', code: 'STATE_IO', message: /ELOOP/ },
    'compaction refuses the link',
  );
  t.equal(readFileSync(victim, 'utf8'), "not the store's\n", "the link's target is untouched");
});
