/**
 * `rotor state export`, as real processes from dist/: a daemon started with a break-glass recipient
 * (made by Debian's age-keygen) rotates through the admin socket while a consumer reads over its socket;
 * it is SIGKILLed after rotations that only its log holds (snapshot.age, decrypted with Debian's age,
 * is shown to be behind); the export with the break-glass identity then holds exactly what the
 * consumer was last served, current and previous. Exporting beside the running daemon changes nothing
 * (every file byte for byte, no lock taken): the daemon rotates afterwards, and its store opens again
 * after the kill. A torn last record is ignored and left in the file; a wrong identity, a missing or
 * empty directory and an unknown secret fail with their codes; --secret filters; --audit checks the
 * store against the audit log (and refuses an older copy). No value reaches stderr. On PostgreSQL: a
 * daemon on --state postgres:// and an export with the break-glass identity by a role that may only
 * SELECT, whose session runs nothing but reads; tables of an unknown version are refused, and tables
 * of version 1 are read without being migrated.
 */
import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, cpSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import { fingerprint } from '../src/audit/fingerprint.js';
import { checkAgainstAudit, exportDocument } from '../src/cli/state-export.js';
import type { StoreReading } from '../src/state/index.js';
import { identitiesDecrypter, readFileStore } from '../src/state/index.js';
import { openStore } from '../src/state/store.js';
import { ROOT, tempDir } from './helpers.js';
import { IDENTITY, pgPlace, RECIPIENT } from './lib/pg-store.js';
import { raw, world } from './world.js';

const BIN = path.join(ROOT, 'dist/src/cli/main.js');
const UID = process.getuid!();
/** A throwaway PostgreSQL (undefined when none is installed: those tests are skipped), started first. */
const p = await pgPlace(t);

const FILES = {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  // Rotations only when asked (rotor rotate): nothing rotates between a consumer's read and the kill.
  'policies.yaml': 'kind: Policy\nname: slow\nevery: 30d\noverlap: 1d\nretain: 3\n',
  'secrets.yaml':
    'kind: Secret\nname: app/token\npolicy: slow\ngenerate: { length: 32 }\n---\n' +
    'kind: Secret\nname: app/config\npolicy: slow\nfields:\n  key: { generate: { length: 40, charset: hex } }\n  region: { value: eu-west-1 }\n',
  'consumers.yaml': `kind: Consumer\nname: app\nuid: ${UID}\nsecrets: ["app/*"]\n`,
};

interface Served {
  version: number;
  value: unknown;
  previous?: { version: number; value: unknown; validUntil: string };
}

interface Exported {
  store: { storeId: string; generation: number; snapshotGeneration: number; tornRecordIgnored?: boolean };
  audit?: { entries: number };
  secrets: Record<
    string,
    {
      current?: { version: number; value?: unknown; audited?: boolean };
      previous?: { version: number; value?: unknown; validUntil?: string; audited?: boolean };
      pending?: unknown;
    }
  >;
}

/** Runs a rotor command to its end; env replaces PGPASSWORD and NODE_OPTIONS of this process. */
function rotorProcess(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { PGPASSWORD: _, NODE_OPTIONS: __, ...inherited } = process.env;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...inherited, ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** `rotor daemon FLAGS` as a process, with its stderr to wait on. */
function daemon(t: Test, flags: string[], env: NodeJS.ProcessEnv = {}) {
  const { PGPASSWORD: _, NODE_OPTIONS: __, ...inherited } = process.env;
  const child: ChildProcess = spawn(process.execPath, [BIN, 'daemon', ...flags], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...inherited, ...env },
  });
  let err = '';
  const waiting = new Set<() => void>();
  child.stderr!.on('data', (c: Buffer) => {
    err += c.toString();
    for (const check of [...waiting]) check();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const waitFor = (re: RegExp) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (re.test(err)) {
          waiting.delete(check);
          resolve();
        }
      };
      waiting.add(check);
      void exited.then(() => reject(new Error(`the daemon exited: ${err.slice(-3000)}`)));
      check();
    });
  const ready = waitFor(/"msg":"daemon started"/);
  return { ready, exited, stderr: () => err, kill: (s: NodeJS.Signals) => child.kill(s) };
}

/** The consumer's answer for a secret, once it has a version newer than `after` (a long-poll, no sleep). */
async function served(socket: string, name: string, after = 0): Promise<Served> {
  const r = await raw(socket, `/v1/secrets/${name}?wait=120&after=${after}`);
  if (r.status !== 200) throw new Error(`GET ${name}: ${r.status} ${r.text}`);
  return r.body as Served;
}

async function rotate(dataDir: string, name: string): Promise<number> {
  const r = await rotorProcess(['rotate', name, '--reason', 'test', '--data-dir', dataDir]);
  if (r.code !== 0) throw new Error(`rotor rotate ${name}: ${r.stderr}`);
  return Number(/version (\d+) is current/.exec(r.stdout)![1]);
}

/** Every file under a directory with the SHA-256 of its bytes and its mode: what must not change. */
function fingerprintTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(e.parentPath, e.name);
    if (!e.isFile()) continue;
    const st = statSync(p);
    out[path.relative(dir, p)] =
      `${createHash('sha256').update(readFileSync(p)).digest('hex')} ${(st.mode & 0o7777).toString(8)} ${st.mtimeMs}`;
  }
  return out;
}

function valuesOf(s: Served): string[] {
  const all = [s.value, s.previous?.value].filter((v) => v !== undefined);
  return all.flatMap((v) => (typeof v === 'string' ? [v] : Object.values(v as Record<string, string>)));
}

function ageKeygen(file: string): string {
  execFileSync('age-keygen', ['-o', file], { stdio: 'ignore' });
  return execFileSync('age-keygen', ['-y', file], { encoding: 'utf8' }).trim();
}

t.test('after a SIGKILL, the break-glass export holds what the consumer was last served', async (t) => {
  const w = await world(t, FILES);
  const bg = path.join(w.root, 'break-glass.key');
  const bgRecipient = ageKeygen(bg);
  const sockets = path.join(w.root, 'sockets');
  const socket = path.join(sockets, 'app.sock');
  const flags = [
    '--repo',
    w.remote,
    '--data-dir',
    w.dataDir,
    '--socket-dir',
    sockets,
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    'off',
    '--break-glass',
    bgRecipient,
  ];
  const seen: string[] = [];
  const keep = (s: Served) => {
    seen.push(...valuesOf(s));
    return s;
  };

  // First run: version 1 of each, one rotation, a clean stop (SIGTERM compacts: snapshot.age holds all).
  const first = daemon(t, flags);
  await first.ready;
  keep(await served(socket, 'app/token'));
  keep(await served(socket, 'app/config'));
  t.equal(await rotate(w.dataDir, 'app/token'), 2);
  first.kill('SIGTERM');
  t.equal((await first.exited).code, 0, 'the first daemon stopped cleanly');
  const oldCopy = path.join(w.root, 'old-state');
  cpSync(path.join(w.dataDir, 'state'), oldCopy, { recursive: true });

  // Second run: rotations that only log.bin will hold.
  const second = daemon(t, flags);
  await second.ready;
  t.equal(await rotate(w.dataDir, 'app/token'), 3);
  t.equal(await rotate(w.dataDir, 'app/config'), 2);
  let token = keep(await served(socket, 'app/token', 2));
  let config = keep(await served(socket, 'app/config', 1));
  t.equal(token.version, 3);

  // Export beside the running daemon: the same as served. The daemon may append meanwhile (receipts),
  // so what is checked here is that the export took no lock, made no file, compacted and truncated
  // nothing; the byte-for-byte check is on the killed daemon's files below.
  const stateDir = path.join(w.dataDir, 'state');
  const names = () => [...readdirSync(w.dataDir), ...readdirSync(stateDir).map((n) => `state/${n}`)].sort();
  const beforeNames = names();
  const lock = readFileSync(path.join(w.dataDir, 'daemon.lock'), 'utf8');
  const snapBefore = readFileSync(path.join(stateDir, 'snapshot.age'));
  const logBefore = readFileSync(path.join(stateDir, 'log.bin'));
  const running = await rotorProcess(['state', 'export', '--data-dir', w.dataDir, '--identity', bg]);
  t.equal(running.code, 0, `export beside the daemon: ${running.stderr}`);
  const live = JSON.parse(running.stdout) as Exported;
  t.same(
    { version: live.secrets['app/token']!.current!.version, value: live.secrets['app/token']!.current!.value },
    { version: 3, value: token.value },
    'exported beside the daemon: the current version as served',
  );
  t.same(names(), beforeNames, 'no file made or removed in the data directory or state/');
  t.equal(readFileSync(path.join(w.dataDir, 'daemon.lock'), 'utf8'), lock, "the daemon's lock is its own still");
  t.same(readFileSync(path.join(stateDir, 'snapshot.age')), snapBefore, 'snapshot.age as it was');
  const logAfter = readFileSync(path.join(stateDir, 'log.bin'));
  t.same(logAfter.subarray(0, logBefore.length), logBefore, 'log.bin only grew (by the daemon), nothing cut');
  // ...and the daemon goes on: it rotates afterwards.
  t.equal(await rotate(w.dataDir, 'app/token'), 4);
  token = keep(await served(socket, 'app/token', 3));
  config = keep(await served(socket, 'app/config', 1));
  t.equal(token.version, 4);
  t.ok(token.previous, 'the consumer is served a previous version too');

  second.kill('SIGKILL');
  t.equal((await second.exited).signal, 'SIGKILL');

  // snapshot.age alone (Debian's age, the break-glass identity) is behind: it lacks versions 3 and 4.
  const snapshot = JSON.parse(
    execFileSync('age', ['-d', '-i', bg, path.join(w.dataDir, 'state', 'snapshot.age')], { encoding: 'utf8' }),
  ) as { entries: Record<string, { versions: { version: number }[] }> };
  const snapVersion = snapshot.entries['secret/app/token']!.versions[0]!.version;
  t.equal(snapVersion, 2, 'snapshot.age holds version 2 only: versions 3 and 4 are only in log.bin');

  // The export after the kill: exactly what the consumer was last served, current and previous.
  const killedTree = fingerprintTree(w.dataDir); // nothing runs on it now: every byte must stay
  const r = await rotorProcess(['state', 'export', '--data-dir', w.dataDir, '--identity', bg]);
  t.equal(r.code, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as Exported;
  t.equal(doc.store.snapshotGeneration < doc.store.generation, true, 'records after the snapshot were applied');
  for (const [name, s] of [
    ['app/token', token],
    ['app/config', config],
  ] as const) {
    const e = doc.secrets[name]!;
    t.same(
      { version: e.current!.version, value: e.current!.value },
      { version: s.version, value: s.value },
      `${name}: current as served`,
    );
    t.same(
      { version: e.previous!.version, value: e.previous!.value, validUntil: e.previous!.validUntil },
      { version: s.previous!.version, value: s.previous!.value, validUntil: s.previous!.validUntil },
      `${name}: previous as served`,
    );
  }
  t.same(Object.keys(doc.secrets), ['app/config', 'app/token'], 'every secret, in name order');
  t.match(
    r.stderr,
    /^rotor state export: 2 secrets from store \S+ at generation \d+ \(snapshot \d+, \d+ records after it\)\n/,
  );
  t.same(fingerprintTree(w.dataDir), killedTree, 'nothing changed in the data directory');

  // --secret filters; --no-values leaves every value out.
  const one = await rotorProcess([
    'state',
    'export',
    '--data-dir',
    w.dataDir,
    '--identity',
    bg,
    '--secret',
    'app/token',
  ]);
  t.same(Object.keys((JSON.parse(one.stdout) as Exported).secrets), ['app/token'], '--secret: that one only');
  const bare = await rotorProcess(['state', 'export', '--data-dir', w.dataDir, '--identity', bg, '--no-values']);
  t.equal(bare.code, 0);
  const bareToken = (JSON.parse(bare.stdout) as Exported).secrets['app/token']!;
  t.equal(bareToken.current!.version, 4);
  t.notOk('value' in bareToken.current! || 'value' in bareToken.previous!, '--no-values: no value at all');
  for (const v of new Set(seen))
    t.notOk(bare.stdout.includes(v) && v !== 'eu-west-1', '--no-values: no value in the output');

  // The daemon's own identity opens it too; so does a copy of the two files alone.
  const own = await rotorProcess([
    'state',
    'export',
    '--data-dir',
    w.dataDir,
    '--identity',
    path.join(w.dataDir, 'identity.age'),
  ]);
  t.same(JSON.parse(own.stdout).secrets, doc.secrets, "the daemon's identity.age gives the same");

  // A torn last record (a write cut short) is ignored and left in the file.
  const torn = path.join(w.root, 'torn');
  cpSync(path.join(w.dataDir, 'state'), torn, { recursive: true });
  const header = Buffer.alloc(8);
  header.writeUInt32BE(500, 0);
  header.writeUInt32BE(~500 >>> 0, 4);
  appendFileSync(path.join(torn, 'log.bin'), Buffer.concat([header, Buffer.alloc(100, 7)]));
  const tornBytes = readFileSync(path.join(torn, 'log.bin'));
  const tr = await rotorProcess(['state', 'export', '--data-dir', torn, '--identity', bg]);
  t.equal(tr.code, 0, tr.stderr);
  t.same(JSON.parse(tr.stdout).secrets, doc.secrets, 'the same values, from a copy of state/ alone');
  t.equal(JSON.parse(tr.stdout).store.tornRecordIgnored, true);
  t.match(tr.stderr, /the last record of the log was cut short \(108 bytes.*ignored, the file left as it is/);
  t.same(readFileSync(path.join(torn, 'log.bin')), tornBytes, 'log.bin is not truncated');

  // --audit: the daemon's clone holds every entry: every exported version is the audited one.
  const audited = await rotorProcess([
    'state',
    'export',
    '--data-dir',
    w.dataDir,
    '--identity',
    bg,
    '--audit',
    path.join(w.dataDir, 'repo'),
  ]);
  t.equal(audited.code, 0, audited.stderr);
  const ad = JSON.parse(audited.stdout) as Exported;
  t.ok(ad.audit!.entries > 0);
  t.equal(ad.secrets['app/token']!.current!.audited, true, 'current: its fingerprint is the audited one');
  t.equal(ad.secrets['app/token']!.previous!.audited, true, 'previous too');
  // The copy taken after the first run is older than the audit log: refused.
  const rollback = await rotorProcess([
    'state',
    'export',
    '--data-dir',
    oldCopy,
    '--identity',
    bg,
    '--audit',
    path.join(w.dataDir, 'repo'),
  ]);
  t.equal(rollback.code, 1);
  t.match(rollback.stderr, /older than generation \d+ recorded in the audit log.*leave out --audit \[STATE_ROLLBACK\]/);
  const oldOk = await rotorProcess(['state', 'export', '--data-dir', oldCopy, '--identity', bg]);
  t.equal(
    JSON.parse(oldOk.stdout).secrets['app/token'].current.version,
    2,
    'without --audit nothing tells the old copy',
  );

  // Errors: codes, what to do, exit 1, and no value.
  const wrongKey = path.join(w.root, 'wrong.key');
  const wrongRecipient = ageKeygen(wrongKey);
  const errors = {
    wrong: await rotorProcess(['state', 'export', '--data-dir', w.dataDir, '--identity', wrongKey]),
    missing: await rotorProcess(['state', 'export', '--data-dir', path.join(w.root, 'nowhere'), '--identity', bg]),
    empty: await rotorProcess(['state', 'export', '--data-dir', tempDir(t), '--identity', bg]),
    unknown: await rotorProcess(['state', 'export', '--data-dir', w.dataDir, '--identity', bg, '--secret', 'app/nope']),
    noIdentity: await rotorProcess([
      'state',
      'export',
      '--data-dir',
      w.dataDir,
      '--identity',
      path.join(w.root, 'person', 'rotor.yaml'),
    ]),
  };
  t.match(
    errors.wrong.stderr,
    new RegExp(`public key ${wrongRecipient}\\) does not open this store.*--break-glass.*\\[STATE_KEY\\]`),
  );
  t.match(errors.missing.stderr, /does not exist: give the daemon's data directory.*\[EXPORT_DIR_MISSING\]/);
  t.match(errors.empty.stderr, /holds no rotor state store.*\[EXPORT_NOT_DATA_DIR\]/);
  t.match(
    errors.unknown.stderr,
    /the store holds no secret "app\/nope" \(it holds 2 secrets\).*\[EXPORT_SECRET_UNKNOWN\]/,
  );
  t.match(errors.noIdentity.stderr, /holds no age identity.*\[EXPORT_IDENTITY\]/);
  for (const [what, e] of Object.entries(errors)) {
    t.equal(e.code, 1, `${what}: exit 1`);
    t.equal(e.stdout, '', `${what}: nothing on stdout`);
  }
  t.equal((await rotorProcess(['state', 'export', '--identity', bg])).code, 2, 'no store named: usage');

  // No value on stderr, whatever the command said there.
  const stderrs = [running, r, one, bare, own, tr, audited, rollback, oldOk, ...Object.values(errors)]
    .map((x) => x.stderr)
    .join('\n');
  t.ok(seen.length >= 8, `${seen.length} served values to look for`);
  for (const v of new Set(seen)) t.notOk(stderrs.includes(v), 'a served value is not on stderr');

  // The daemon starts again on the killed store, and goes on from version 4.
  const third = daemon(t, flags);
  await third.ready;
  t.equal(await rotate(w.dataDir, 'app/token'), 5, 'the store opens and rotations go on');
  third.kill('SIGTERM');
  t.equal((await third.exited).code, 0);
});

t.test('a read beside writes and compactions is always one consistent generation', async (t) => {
  const dir = path.join(tempDir(t), 'state');
  const keys = { identity: IDENTITY, recipients: [RECIPIENT] };
  // Compaction every 7 records: the reads meet snapshot and log replaced under them.
  const store = await openStore({ dir, ...keys, compactAfter: { records: 7 } });
  const dec = await identitiesDecrypter([IDENTITY]);
  let writing = true;
  const writer = (async () => {
    for (let i = 1; i <= 300; i++) await store.write([{ op: 'put', key: 'n', value: i }]);
    writing = false;
  })();
  let reads = 0;
  let last = 0;
  while (writing) {
    const r = await readFileStore(dir, dec);
    reads++;
    if (!r) continue; // before the creation finished
    if (r.entries.get('n') !== (r.seq === 0 ? undefined : r.seq)) {
      t.fail(`generation ${r.seq} read with n = ${String(r.entries.get('n'))}`);
      break;
    }
    if (r.seq < last) t.fail(`generation ${r.seq} after ${last}`);
    last = r.seq;
  }
  await writer;
  await store.close();
  t.ok(reads > 1, `${reads} reads, each one generation, never going back`);
  t.equal((await readFileStore(dir, dec))!.seq, 300);
});

t.test('--audit: a value that is not the audited one, another store or an older one is refused', async (t) => {
  const key = Buffer.alloc(32, 9);
  const record = (value: string) => ({
    name: 'app/token',
    versions: [{ version: 2, value, createdAt: '2026-12-01T00:00:00.000Z' }],
  });
  const reading = (value: string, extra: Partial<StoreReading> = {}): StoreReading => ({
    place: '/x/state',
    storeId: 'store-a',
    seq: 10,
    snapshotSeq: 4,
    entries: new Map<string, never>([
      ['meta/fingerprint-key', key.toString('base64') as never],
      ['secret/app/token', record(value) as never],
    ]),
    ...extra,
  });
  const facts = (fp: string | undefined) => ({
    log: 'repo/audit',
    entries: 5,
    head: `5:${'a'.repeat(64)}`,
    stateSeq: 9,
    storeId: 'store-a',
    fingerprints: new Map(fp ? [['app/token\0' + '2', fp]] : []),
  });
  const now = Date.parse('2026-12-02T00:00:00Z');
  const good = exportDocument(reading('right'), { values: true, now, audit: facts(fingerprint(key, 'right')) });
  t.match(good, { secrets: { 'app/token': { current: { version: 2, value: 'right', audited: true } } } });
  const notInLog = exportDocument(reading('right'), { values: true, now, audit: facts(undefined) });
  t.match(notInLog, { secrets: { 'app/token': { current: { audited: false } } } }, 'no entry for it: false');
  t.throws(() => exportDocument(reading('forged'), { values: true, now, audit: facts(fingerprint(key, 'right')) }), {
    code: 'EXPORT_AUDIT_MISMATCH',
  });
  try {
    exportDocument(reading('forged'), { values: true, now, audit: facts(fingerprint(key, 'right')) });
  } catch (e) {
    t.notMatch((e as Error).message, /forged|right/, 'the error holds no value');
  }
  t.throws(() => checkAgainstAudit(reading('right', { storeId: 'store-b' }), facts(undefined)), {
    code: 'STATE_FOREIGN',
  });
  t.throws(() => checkAgainstAudit(reading('right', { seq: 8 }), facts(undefined)), { code: 'STATE_ROLLBACK' });
  t.doesNotThrow(() => checkAgainstAudit(reading('right'), facts(undefined)), 'the same store, newer than the log');
});

if (p) {
  t.test('PostgreSQL: the break-glass export matches what the daemon serves, and only reads', async (t) => {
    const w = await world(t, FILES);
    const bg = path.join(w.root, 'break-glass.key');
    const bgRecipient = ageKeygen(bg);
    const sockets = path.join(w.root, 'sockets');
    const socket = path.join(sockets, 'app.sock');
    const schema = p.schema();
    const env = { PGPASSWORD: p.password };
    const d = daemon(
      t,
      [
        '--repo',
        w.remote,
        '--data-dir',
        w.dataDir,
        '--socket-dir',
        sockets,
        '--agent-listen',
        '127.0.0.1:0',
        '--metrics-listen',
        'off',
        '--break-glass',
        bgRecipient,
        '--state',
        p.url(schema),
      ],
      env,
    );
    await d.ready;
    await served(socket, 'app/token');
    t.equal(await rotate(w.dataDir, 'app/token'), 2);
    t.equal(await rotate(w.dataDir, 'app/token'), 3);
    const token = await served(socket, 'app/token', 2);
    const config = await served(socket, 'app/config');

    // A role that may only read the store's four tables: the export needs no more.
    const reader = 'rotor_reader';
    const readerPw = `pw-${Date.now()}`;
    await p.sql(`CREATE ROLE ${reader} LOGIN PASSWORD '${readerPw}'`);
    await p.sql(`GRANT USAGE ON SCHEMA ${schema} TO ${reader}`);
    await p.sql(
      `GRANT SELECT ON ${schema}.schema_version, ${schema}.store, ${schema}.segments, ${schema}.records TO ${reader}`,
    );
    const pwFile = path.join(w.root, 'reader-password');
    writeFileSync(pwFile, `${readerPw}\n`, { mode: 0o600 });
    const url = p.url(schema, reader);
    const r = await rotorProcess([
      'state',
      'export',
      '--state',
      url,
      '--state-password-file',
      pwFile,
      '--identity',
      bg,
    ]);
    t.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as Exported;
    for (const [name, s] of [
      ['app/token', token],
      ['app/config', config],
    ] as const) {
      const e = doc.secrets[name]!;
      t.same(
        { version: e.current!.version, value: e.current!.value },
        { version: s.version, value: s.value },
        `${name}: current as served`,
      );
      if (s.previous)
        t.same(
          { version: e.previous!.version, value: e.previous!.value },
          { version: s.previous.version, value: s.previous.value },
          `${name}: previous as served`,
        );
    }
    t.equal(doc.secrets['app/token']!.previous!.version, 2);
    // The export's session ran nothing but reads (the server logs every statement with its process id).
    const log = readFileSync(p.srv.logFile, 'utf8');
    const pids = [...log.matchAll(/\[(\d+)\][^\n]*application_name=rotor-state-export/g)].map((m) => m[1]);
    t.ok(pids.length >= 1, 'the export connected as rotor-state-export');
    const statements = log
      .split('\n')
      .filter((l) => pids.some((pid) => l.includes(`[${pid}]`)) && /(statement|execute [^:]*): /.test(l))
      .map((l) => l.replace(/^.*?(statement|execute [^:]*): /, ''));
    t.ok(statements.length >= 4, `${statements.length} statements`);
    t.same(
      statements.filter((s) => !/^(BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY|SELECT )/.test(s.trim())),
      [],
      'only BEGIN ... READ ONLY and SELECTs',
    );
    // PGPASSWORD works as well, and the password is never shown.
    const viaEnv = await rotorProcess(
      ['state', 'export', '--state', p.url(schema), '--identity', bg, '--secret', 'app/token'],
      env,
    );
    t.equal(viaEnv.code, 0, viaEnv.stderr);
    t.notMatch(viaEnv.stderr + r.stderr, p.password);
    t.notMatch(r.stderr, readerPw);
    const wrong = await rotorProcess(
      ['state', 'export', '--state', p.url(schema), '--identity', path.join(w.dataDir, 'signing.key')],
      env,
    );
    t.match(wrong.stderr, /\[EXPORT_IDENTITY\]/);
    const other = path.join(w.root, 'other.key');
    ageKeygen(other);
    const refused = await rotorProcess(['state', 'export', '--state', p.url(schema), '--identity', other], env);
    t.equal(refused.code, 1);
    t.match(refused.stderr, /does not open this store.*\[STATE_KEY\]/);
    const none = await rotorProcess(['state', 'export', '--state', p.url(p.schema()), '--identity', bg], env);
    t.match(none.stderr, /holds no rotor state store in that schema.*\[EXPORT_NO_STORE\]/);
    t.equal(none.code, 1);
    for (const v of [...valuesOf(token), ...valuesOf(config)])
      t.notOk(
        [r, viaEnv, wrong, refused, none].some((x) => x.stderr.includes(v)),
        'no value on stderr',
      );
    d.kill('SIGTERM');
    t.equal((await d.exited).code, 0);
  });

  t.test('PostgreSQL: tables of an unknown version are refused, version 1 is read, nothing migrated', async (t) => {
    const schema = p.schema();
    const s = await p.open(schema);
    await s.write([
      { op: 'put', key: 'secret/a', value: { name: 'a', versions: [{ version: 1, value: 'x', createdAt: 'now' }] } },
    ]);
    await s.close();
    const dir = tempDir(t);
    const idFile = path.join(dir, 'id.key');
    writeFileSync(idFile, `# test\n${IDENTITY}\n`, { mode: 0o600 });
    const env = { PGPASSWORD: p.password };
    const run = () =>
      rotorProcess(['state', 'export', '--state', p.url(schema), '--identity', idFile, '--no-values'], env);
    for (const version of [99, 0]) {
      await p.sql(`UPDATE ${schema}.schema_version SET version = ${version}`);
      const r = await run();
      t.equal(r.code, 1, `version ${version}: refused`);
      t.match(
        r.stderr,
        version === 99
          ? /version 99, made by a newer rotor.*\[STATE_SCHEMA\]/
          : /no version this rotor knows.*\[STATE_SCHEMA\]/,
      );
    }
    await p.sql(`UPDATE ${schema}.schema_version SET version = 1`);
    const r = await run();
    t.equal(r.code, 0, r.stderr);
    t.same(JSON.parse(r.stdout).secrets, { a: { current: { version: 1, rotatedAt: 'now' } } });
    const [row] = await p.sql<{ version: number }>(`SELECT version FROM ${schema}.schema_version`);
    t.equal(row!.version, 1, 'the tables were not migrated');
  });
}

t.test('an empty state/ is no store, and the export makes nothing in it', async (t) => {
  const w = await world(t, { 'rotor.yaml': FILES['rotor.yaml'] });
  mkdirSync(path.join(w.dataDir, 'state'));
  const r = await rotorProcess([
    'state',
    'export',
    '--data-dir',
    w.dataDir,
    '--identity',
    path.join(w.dataDir, 'identity.age'),
  ]);
  t.equal(r.code, 1);
  t.match(r.stderr, /\[EXPORT_NOT_DATA_DIR\]/);
  t.same(readdirSync(path.join(w.dataDir, 'state')), [], 'nothing was created in an empty state/');
});
