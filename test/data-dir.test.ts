/**
 * The daemon's data directory against planted links: a data directory others may write to is refused
 * at start (DATA_DIR_UNSAFE); the state store opens its files with O_NOFOLLOW, so a link put where it
 * writes a temporary file is refused instead of followed to truncate and overwrite its target; and the
 * audit log in the clone is never written through a symbolic link a repository committed (the audit
 * directory, or an audit file).
 */
import { chmodSync, mkdirSync, readdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import { openStore } from '../src/state/store.js';
import { AuditLog } from '../src/audit/log.js';
import type { AuditInput } from '../src/audit/entry.js';
import { commitAll, git, rotor, tempDir } from './helpers.js';
import { world } from './world.js';

t.test('a data directory others may write to is refused (DATA_DIR_UNSAFE)', async (t) => {
  const w = await world(t, { 'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n', 'secrets.yaml': 'kind: Policy\nname: p\nevery: 30d\n---\nkind: Secret\nname: a/b\npolicy: p\ngenerate: {}\n' });
  chmodSync(w.dataDir, 0o777);
  const refused = await w.start({ socketDir: path.join(w.root, 'sockets') }).then(async (d) => {
    await d.stop();
    return undefined;
  }, (e: unknown) => e);
  t.match(refused, { code: 'DATA_DIR_UNSAFE', message: /writable by others \(mode 777\).*chmod 700/ }, 'Daemon.start refuses it');
  if (!refused) return; // it started: rotor daemon would run until stopped
  const r = await rotor(['daemon', '--repo', w.remote, '--data-dir', w.dataDir, '--socket-dir', path.join(w.root, 'sockets'), '--agent-listen', '127.0.0.1:0', '--metrics-listen', 'off']);
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
  writeFileSync(victim, 'not the store\'s\n');
  symlinkSync(victim, path.join(dir, 'snapshot.age.tmp'));
  await t.rejects(store.compact(), { name: 'StateError', code: 'STATE_IO', message: /ELOOP/ }, 'compaction refuses the link');
  t.equal(readFileSync(victim, 'utf8'), 'not the store\'s\n', 'the link\'s target is untouched');
});

const entry = (time: string): AuditInput => ({ time, event: 'rotated', secret: 'app/db', from: 1, to: 2, trigger: 'schedule' });

t.test('the audit log does not write through a link: an audit file (O_NOFOLLOW), the directory (within)', async (t) => {
  const root = tempDir(t);
  const victim = path.join(tempDir(t), 'victim');
  writeFileSync(victim, 'not an audit file\n');
  const dir = path.join(root, 'audit');
  const log = await AuditLog.open(dir, { within: root });
  await log.append([entry('2026-11-26T00:00:00.000Z')]);
  // The month's file becomes a link (as a commit can make it).
  renameSync(path.join(dir, '2026-11.jsonl'), path.join(root, 'moved'));
  symlinkSync(victim, path.join(dir, '2026-11.jsonl'));
  await t.rejects(log.append([entry('2026-11-26T00:00:01.000Z')]), { code: 'AUDIT_WRITE_FAILED', message: /ELOOP/ }, 'the append is refused');
  t.equal(readFileSync(victim, 'utf8'), 'not an audit file\n', 'the link\'s target is untouched');

  // The directory itself a link, to a directory elsewhere.
  const elsewhere = path.join(tempDir(t), 'elsewhere');
  mkdirSync(elsewhere);
  const root2 = tempDir(t);
  symlinkSync(elsewhere, path.join(root2, 'audit'));
  const log2 = await AuditLog.open(path.join(root2, 'audit'), { within: root2 });
  await t.rejects(log2.append([entry('2026-11-26T00:00:00.000Z')]), { code: 'AUDIT_WRITE_FAILED', message: /audit is a symbolic link; .*restore the audit directory/ });
  t.same(readdirSync(elsewhere), [], 'nothing is written where the link points');
});

t.test('a daemon following a repository that commits its audit directory as a link writes nothing through it', async (t) => {
  const w = await world(t, { 'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n', 'secrets.yaml': 'kind: Policy\nname: p\nevery: 30d\n---\nkind: Secret\nname: a/b\npolicy: p\ngenerate: {}\n' });
  const elsewhere = path.join(tempDir(t), 'elsewhere');
  mkdirSync(elsewhere);
  symlinkSync(elsewhere, path.join(w.person, 'audit'));
  commitAll(w.person, 'the audit directory is a link');
  git(w.person, 'push', '-q', 'origin', 'main');
  const refused = await w.start({ socketDir: path.join(w.root, 'sockets') }).then(async (d) => {
    await d.stop();
    return undefined;
  }, (e: unknown) => e);
  t.match(refused, { code: 'AUDIT_WRITE_FAILED', message: /audit is a symbolic link; .*restore the audit directory/ }, 'the daemon does not start: its first audit entries cannot be written');
  t.same(readdirSync(elsewhere), [], 'nothing is written where the link points');
});
