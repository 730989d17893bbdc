/**
 * `rotor daemon --state postgres://...` as a process, against a throwaway PostgreSQL with scram-sha-256
 * enforced: it rotates a secret with its state in the database (nothing in DATA_DIR/state), stops,
 * starts again (ROTOR_STATE and PGPASSWORD this time) and goes on with the next version; the audit log
 * anchors that store, so the same data directory without --state is refused. The password is never in
 * a log line or in the process arguments.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { loadKeys } from '../src/keys.js';
import type { SecretRecord } from '../src/rotation/record.js';
import { openPostgresStore } from '../src/state/postgres.js';
import { git, rotor } from './helpers.js';
import { pgPlace } from './lib/pg-store.js';
import { daemonProcess, world } from './world.js';

const p = await pgPlace(t);

t.test('a password in --state is refused before anything starts, and not shown', async (t) => {
  const r = await rotor(['daemon', '--repo', '/nowhere', '--state', 'postgres://rotor:s3cr3t-pw@db/rotor']);
  t.equal(r.code, 2);
  t.match(r.stderr, /--state: .*use PGPASSWORD, PGPASSFILE .* \[STATE_URL_PASSWORD\]/);
  t.notMatch(r.stderr, 's3cr3t-pw');
  const alone = await rotor(['daemon', '--repo', '/nowhere', '--state-password-file', '/x']);
  t.equal(alone.code, 2);
  t.match(alone.stderr, /give --state postgres:\/\/\.\.\. too/);
});

if (p) {
  t.test('rotor daemon --state postgres://...: rotates, restarts from the database, goes on', async (t) => {
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policies.yaml': 'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n',
      'secrets.yaml': 'kind: Secret\nname: demo/ticker\npolicy: fast\ngenerate: { length: 24 }\n',
    });
    const schema = p.schema();
    const url = p.url(schema);
    const pwFile = path.join(w.root, 'state-password');
    writeFileSync(pwFile, `${p.password}\n`, { mode: 0o600 });
    const base = ['--repo', w.remote, '--data-dir', w.dataDir, '--socket-dir', path.join(w.root, 'sockets')];
    const flags = [...base, '--agent-listen', '127.0.0.1:0', '--metrics-listen', 'off'];

    const first = daemonProcess(t, [...flags, '--state', url, '--state-password-file', pwFile]);
    await first.waitFor(/"msg":"secret rotated","secret":"demo\/ticker","version":2/);
    t.equal(await first.stop(), 0, 'a clean exit on SIGTERM');
    t.notOk(existsSync(path.join(w.dataDir, 'state')), 'nothing in DATA_DIR/state');

    const keys = await loadKeys(w.dataDir);
    const read = async () => {
      const s = await openPostgresStore(
        { url, env: { PGPASSWORD: p.password } },
        { identity: keys.identity, recipients: [keys.recipient], onWarning: () => undefined },
      );
      const rec = s.get('secret/demo/ticker') as SecretRecord | undefined;
      const out = { storeId: s.storeId, seq: s.seq, version: rec?.versions[0]?.version ?? 0 };
      await s.close();
      return out;
    };
    const before = await read();
    t.ok(before.version >= 2, `the database holds version ${before.version}`);

    const next = before.version + 1;
    const second = daemonProcess(t, flags, { env: { ROTOR_STATE: url, PGPASSWORD: p.password } });
    await second.waitFor(new RegExp(`"msg":"secret rotated","secret":"demo\\/ticker","version":${next}[,}]`));
    t.equal(await second.stop(), 0);
    const after = await read();
    t.equal(after.storeId, before.storeId, 'the same store');
    t.ok(after.version >= next && after.seq > before.seq, `went on from version ${before.version} to ${after.version}`);
    t.notOk(existsSync(path.join(w.dataDir, 'state')), 'still nothing in DATA_DIR/state');

    // The audit log (pushed to the remote) names the PostgreSQL store and its generations.
    git(w.person, 'pull', '-q', '--rebase');
    const audit = readAuditLines(path.join(w.person, 'audit'));
    const rotated = audit.filter((e) => e.secret === 'demo/ticker' && e.to !== undefined).map((e) => e.to);
    t.same(
      rotated,
      rotated.map((_, i) => i + 1),
      'one audit entry per version, no gap, across the restart',
    );
    t.ok(
      audit.some((e) => e.storeId === before.storeId),
      'the audit log records the PostgreSQL store id',
    );

    // The same data directory on the file store: the audit log names another store, so it is refused.
    const files = daemonProcess(t, flags);
    t.equal(await files.exited, 1, 'without --state the daemon refuses to start');
    t.match(files.stderr(), /STATE_ROLLBACK/);
    for (const d of [first, second, files]) t.notMatch(d.stderr(), p.password, 'the password is in no log line');
  });
}

function readAuditLines(dir: string): { secret?: string; to?: number; storeId?: string }[] {
  return readdirSync(dir)
    .sort()
    .flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean))
    .map((l) => JSON.parse(l));
}
