/**
 * The file backend of the state store (src/state/store.ts), against real files in temporary directories:
 * the contract every backend meets (test/lib/store-contract.ts), then what is the file backend's own
 * (its formats, tampering with its files, torn records, kills, injected file-system faults).
 */
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import type { Test } from 'tap';
import t from 'tap';
import { LOG_MAGIC, splitFrames } from '../src/state/codec.js';
import type { StoreFile, StoreFs, StoreOptions } from '../src/state/store.js';
import { fileStoreBackend, nodeFs, openStore } from '../src/state/store.js';
import type { Json, Op, StateError, StateStore } from '../src/state/types.js';
import { ROOT, tempDir } from './helpers.js';
import { storeContract } from './lib/store-contract.js';

const IDENTITY = await generateX25519Identity();
const RECIPIENT = await identityToRecipient(IDENTITY);

interface Opened {
  store: StateStore;
  warnings: string[];
}

async function openAt(dir: string, extra: Partial<StoreOptions> = {}): Promise<Opened> {
  const warnings: string[] = [];
  const store = await openStore({
    dir,
    identity: IDENTITY,
    recipients: [RECIPIENT],
    onWarning: (m) => warnings.push(m),
    ...extra,
  });
  return { store, warnings };
}

function all(store: StateStore): Record<string, Json> {
  return Object.fromEntries(store.entries());
}

/** Expects openStore to refuse with `code`, and the directory to be left exactly as it was. */
async function refuses(
  t: Test,
  dir: string,
  code: string,
  extra: Partial<StoreOptions> = {},
  what = code,
): Promise<void> {
  const before = Object.fromEntries(
    readdirSync(dir).map((f) => [f, readFileSync(path.join(dir, f)).toString('base64')]),
  );
  await t.rejects(openAt(dir, extra), { name: 'StateError', code }, what);
  const after = Object.fromEntries(
    readdirSync(dir).map((f) => [f, readFileSync(path.join(dir, f)).toString('base64')]),
  );
  t.same(after, before, `${what}: the files are left as they were`);
}

function secret(): string {
  return randomBytes(30).toString('base64url');
}

/** A store at seq 6: three records in the snapshot, then three log records of one batch each. */
async function sampleStore(t: Test): Promise<{ dir: string; storeId: string; values: string[] }> {
  const dir = tempDir(t);
  const { store } = await openAt(dir);
  const values: string[] = [];
  for (let i = 0; i < 6; i++) {
    values.push(secret());
    await store.write([{ op: 'put', key: `s/${i}`, value: { current: values[i]! } }]);
    if (i === 2) await store.compact();
  }
  const storeId = store.storeId;
  await store.close();
  return { dir, storeId, values };
}

function copyDir(t: Test, dir: string): string {
  const copy = tempDir(t);
  cpSync(dir, copy, { recursive: true });
  return copy;
}

// The contract every backend meets (put, delete, batches, order, group commit, durability across reopen,
// frozen values, compaction, close, the anchor), against a directory of its own per test.
await storeContract(t, 'file backend', async () => {
  const noop = (): void => undefined;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-test-'));
  const backend = fileStoreBackend({ dir });
  return {
    open: (options = {}) => backend.open({ identity: IDENTITY, recipients: [RECIPIENT], onWarning: noop, ...options }),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

t.test('bad options are refused', async (t) => {
  const dir = tempDir(t);
  await t.rejects(openStore({ dir, identity: IDENTITY, recipients: [] }), {
    message: /must include the identity's own recipient/,
  });
  await t.rejects(openStore({ dir, identity: 'AGE-SECRET-KEY-1NOPE', recipients: [RECIPIENT] }), {
    message: /not an age identity/,
  });
});

t.test(
  "Debian's age opens the snapshot with the daemon's and a break-glass identity; no value is in clear",
  async (t) => {
    const dir = tempDir(t);
    const keys = tempDir(t);
    const ownFile = path.join(keys, 'own.txt');
    writeFileSync(ownFile, `${IDENTITY}\n`, { mode: 0o600 });
    const glassFile = path.join(keys, 'glass.txt');
    execFileSync('/usr/bin/age-keygen', ['-o', glassFile], { stdio: 'ignore' });
    const glass = /# public key: (age1\S+)/.exec(readFileSync(glassFile, 'utf8'))![1]!;

    const { store } = await openAt(dir, { recipients: [RECIPIENT, glass] });
    const values = Array.from({ length: 8 }, secret);
    for (let i = 0; i < 4; i++)
      await store.write([{ op: 'put', key: `app/${i}`, value: { current: values[i]!, version: i } }]);
    await store.compact();
    for (let i = 4; i < 8; i++)
      await store.write([{ op: 'put', key: `app/${i}`, value: { current: values[i]!, version: i } }]);
    const snapshotEntries = Object.fromEntries(
      values.slice(0, 4).map((v, i) => [`app/${i}`, { current: v, version: i }]),
    );

    for (const identityFile of [ownFile, glassFile]) {
      const text = execFileSync('/usr/bin/age', ['-d', '-i', identityFile, path.join(dir, 'snapshot.age')], {
        encoding: 'utf8',
      });
      const snap = JSON.parse(text) as Record<string, unknown>;
      t.equal(snap.format, 'rotor-state/1');
      t.equal(snap.storeId, store.storeId);
      t.equal(snap.seq, 4);
      t.match(snap.chainHead, /^[0-9a-f]{64}$/);
      t.same(snap.entries, snapshotEntries, `${path.basename(identityFile)} opens it`);
    }
    await store.close();

    const files = readdirSync(dir);
    t.same(files.sort(), ['log.bin', 'snapshot.age']);
    for (const f of files) {
      const raw = readFileSync(path.join(dir, f));
      for (const v of values) {
        for (const form of [
          v,
          Buffer.from(v).toString('base64'),
          Buffer.from(v).toString('hex'),
          Buffer.from(v, 'base64url').toString('hex'),
        ]) {
          t.equal(raw.indexOf(form), -1, `${f} does not contain a value in clear (${form.length} chars)`);
          t.equal(raw.toString('latin1').toLowerCase().indexOf(form.toLowerCase()), -1);
        }
      }
    }
  },
);

t.test('group commit on files: 200 writes share an fsync, one frame each; a group over 8 MiB is split', async (t) => {
  const dir = tempDir(t);
  let syncs = 0;
  const counting: StoreFs = {
    ...nodeFs,
    async open(p, mode) {
      const f = await nodeFs.open(p, mode);
      return {
        ...bind(f),
        sync: () => {
          syncs++;
          return f.sync();
        },
      };
    },
  };
  const { store } = await openAt(dir, { fs: counting });
  const before = syncs;
  const seqs = await Promise.all(
    Array.from({ length: 200 }, (_, i) =>
      store.write([{ op: 'put', key: `k/${String(i).padStart(3, '0')}`, value: i }]),
    ),
  );
  t.same(
    seqs,
    Array.from({ length: 200 }, (_, i) => i + 1),
    'one seq per batch, in submission order',
  );
  t.ok(syncs - before <= 2, `200 writes took ${syncs - before} fsync(s)`);
  await store.close();
  const { store: again } = await openAt(dir);
  t.equal(again.seq, 200);
  t.same(
    [...again.entries()].map(([, v]) => v),
    Array.from({ length: 200 }, (_, i) => i),
  );
  await again.close();
  t.equal(splitFrames(readFileSync(path.join(dir, 'log.bin'))).frames.length, 201, 'a header and one frame per batch');

  // More than one append's worth (8 MiB) waiting when close() is called: close writes it all first.
  const { store: big } = await openAt(dir);
  const large = 'x'.repeat(5 * 1024 * 1024);
  const writes = [1, 2, 3].map((i) => big.write([{ op: 'put', key: `big/${i}`, value: large }]));
  await big.close();
  t.same(await Promise.all(writes), [201, 202, 203], 'close waited for every write submitted before it');
  const { store: after } = await openAt(dir);
  t.equal(after.seq, 203);
  t.equal((after.get('big/3') as string).length, large.length);
  await after.close();
});

function bind(f: StoreFile): StoreFile {
  return {
    read: (b, p) => f.read(b, p),
    write: (d, p) => f.write(d, p),
    sync: () => f.sync(),
    truncate: (l) => f.truncate(l),
    size: () => f.size(),
    close: () => f.close(),
  };
}

t.test('tampering, swapping and rollback are refused with their codes, and nothing is changed', async (t) => {
  const { dir, storeId, values } = await sampleStore(t);
  const log = readFileSync(path.join(dir, 'log.bin'));
  const { frames } = splitFrames(log);
  t.equal(frames.length, 4, 'a header and three records');
  const [, f1, f2, f3] = frames as [[number, number], [number, number], [number, number], [number, number]];
  const withLog = (bytes: Buffer): string => {
    const d = copyDir(t, dir);
    writeFileSync(path.join(d, 'log.bin'), bytes);
    return d;
  };
  const flip = (file: Buffer, at: number): Buffer => {
    const b = Buffer.from(file);
    b[at]! ^= 0x01;
    return b;
  };

  const { store: ok } = await openAt(dir, { anchor: { seq: 6, storeId } });
  t.same(ok.get('s/5'), { current: values[5] }, 'the untouched store opens with its anchor');
  await ok.close();

  const snap = readFileSync(path.join(dir, 'snapshot.age'));
  const mac = snap.indexOf('\n--- ') + 6;
  for (const [where, at] of [
    ['payload', snap.length - 20],
    ['header MAC', mac],
  ] as const) {
    const d = copyDir(t, dir);
    writeFileSync(path.join(d, 'snapshot.age'), flip(snap, at));
    await refuses(t, d, 'STATE_CORRUPT', {}, `a flipped byte in the snapshot's ${where}`);
  }
  const truncatedSnap = copyDir(t, dir);
  writeFileSync(path.join(truncatedSnap, 'snapshot.age'), snap.subarray(0, snap.length - 10));
  await refuses(t, truncatedSnap, 'STATE_CORRUPT', {}, 'a truncated snapshot');

  await refuses(t, withLog(flip(log, f2[0] + 20)), 'STATE_CORRUPT', {}, 'a flipped byte in a middle record');
  await refuses(t, withLog(flip(log, f3[1] - 1)), 'STATE_CORRUPT', {}, 'a flipped byte in the last (complete) record');
  await refuses(t, withLog(flip(log, f2[0] + 1)), 'STATE_CORRUPT', {}, 'a flipped byte in a frame length');
  await refuses(t, withLog(flip(log, LOG_MAGIC.length + 30)), 'STATE_CORRUPT', {}, 'a flipped byte in the log header');
  await refuses(t, withLog(flip(log, 0)), 'STATE_CORRUPT', {}, 'a flipped byte in the magic');
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(64 * 1024 * 1024 + 1, 0);
  huge.writeUInt32BE(~(64 * 1024 * 1024 + 1) >>> 0, 4);
  await refuses(
    t,
    withLog(Buffer.concat([log, huge, Buffer.alloc(100)])),
    'STATE_CORRUPT',
    {},
    'a frame longer than 64 MiB',
  );

  const part = (a: [number, number]): Buffer => log.subarray(a[0], a[1]);
  const head = log.subarray(0, f1[0]);
  await refuses(
    t,
    withLog(Buffer.concat([head, part(f1), part(f3)])),
    'STATE_CHAIN_BROKEN',
    {},
    'a middle record removed',
  );
  await refuses(
    t,
    withLog(Buffer.concat([head, part(f2), part(f1), part(f3)])),
    'STATE_CHAIN_BROKEN',
    {},
    'two records swapped',
  );
  await refuses(
    t,
    withLog(Buffer.concat([head, part(f1), part(f2), part(f2), part(f3)])),
    'STATE_CHAIN_BROKEN',
    {},
    'a record replayed',
  );
  await refuses(
    t,
    withLog(Buffer.concat([head, part(f2), part(f3)])),
    'STATE_CHAIN_BROKEN',
    {},
    'the first record removed',
  );

  // An older valid copy of the whole directory: only the anchor can tell.
  const old = copyDir(t, dir);
  const { store } = await openAt(dir);
  await store.write([{ op: 'put', key: 's/6', value: { current: secret() } }]);
  await store.close();
  await refuses(t, old, 'STATE_ROLLBACK', { anchor: { seq: 7, storeId } }, 'an older copy put back');
  const { store: oldStore } = await openAt(old, { anchor: { seq: 6, storeId } });
  t.equal(oldStore.seq, 6, 'the same copy opens against the anchor it matches');
  await oldStore.close();

  // Another store's files, and mixing two stores' files.
  const other = await sampleStore(t);
  await refuses(t, other.dir, 'STATE_FOREIGN', { anchor: { seq: 0, storeId } }, "another store's files");
  const mixed = copyDir(t, dir);
  cpSync(path.join(other.dir, 'log.bin'), path.join(mixed, 'log.bin'));
  await refuses(t, mixed, 'STATE_CHAIN_BROKEN', {}, "another store's log");

  // The wrong identity.
  const wrong = await generateX25519Identity();
  await refuses(
    t,
    dir,
    'STATE_KEY',
    { identity: wrong, recipients: [await identityToRecipient(wrong)] },
    'the wrong identity',
  );

  // Missing files: never a silent reset.
  const noSnap = copyDir(t, dir);
  rmSync(path.join(noSnap, 'snapshot.age'));
  await refuses(t, noSnap, 'STATE_CORRUPT', {}, 'a missing snapshot with a log present');
  const noLog = copyDir(t, dir);
  rmSync(path.join(noLog, 'log.bin'));
  await refuses(t, noLog, 'STATE_CORRUPT', {}, 'a missing log with a snapshot present');
  const empty = tempDir(t);
  await refuses(
    t,
    empty,
    'STATE_ROLLBACK',
    { anchor: { seq: 6, storeId } },
    'an empty directory where the anchor names a store',
  );
  t.same(readdirSync(empty), [], 'and no new store was made there');
});

t.test(
  'a compaction interrupted between its two renames, or a creation before its last, is finished on open',
  async (t) => {
    const { dir, storeId } = await sampleStore(t);
    const { store } = await openAt(dir);
    const expected = all(store);
    await store.close();
    const oldLog = readFileSync(path.join(dir, 'log.bin'));
    const { store: s2 } = await openAt(dir);
    await s2.compact(); // snapshot at seq 6; the new log is empty
    await s2.close();

    const crashed = copyDir(t, dir);
    writeFileSync(path.join(crashed, 'log.bin'), oldLog); // as if the log's rename never happened
    const { store: s3, warnings } = await openAt(crashed, { anchor: { seq: 6, storeId } });
    t.equal(s3.seq, 6);
    t.same(all(s3), expected);
    t.ok(
      warnings.some((w) => /compaction was interrupted/.test(w)),
      'with a warning',
    );
    t.equal(await s3.write([{ op: 'put', key: 'next', value: 1 }]), 7);
    await s3.close();
    t.equal(splitFrames(readFileSync(path.join(crashed, 'log.bin'))).frames.length, 2, 'the old log was replaced');
    const { store: s4 } = await openAt(crashed);
    t.same(all(s4), { ...expected, next: 1 });
    await s4.close();

    // A superseded log that does not reach the snapshot's seq is refused.
    const short = copyDir(t, dir);
    const { frames } = splitFrames(oldLog);
    writeFileSync(path.join(short, 'log.bin'), oldLog.subarray(0, frames[frames.length - 1]![0]));
    await refuses(t, short, 'STATE_CHAIN_BROKEN', {}, 'an old log that stops short of the snapshot');

    // Creation renames log.bin first; a crash before snapshot.age's rename leaves snapshot.age.tmp.
    const fresh = tempDir(t);
    const { store: s5 } = await openAt(fresh);
    const id = s5.storeId;
    await s5.close();
    renameSync(path.join(fresh, 'snapshot.age'), path.join(fresh, 'snapshot.age.tmp'));
    const { store: s6, warnings: w6 } = await openAt(fresh);
    t.equal(s6.storeId, id);
    t.ok(
      w6.some((w) => /finished creating/.test(w)),
      'with a warning',
    );
    await s6.close();
    t.same(readdirSync(fresh).sort(), ['log.bin', 'snapshot.age']);
    // ...but a snapshot.age.tmp that log.bin does not follow is not taken.
    renameSync(path.join(dir, 'snapshot.age'), path.join(dir, 'snapshot.age.tmp'));
    cpSync(path.join(fresh, 'log.bin'), path.join(dir, 'log.bin'));
    await refuses(t, dir, 'STATE_CHAIN_BROKEN', {}, 'a snapshot.age.tmp of another store');
  },
);

t.test(
  'a torn final record is truncated with a warning at every offset; a lost whole record is a rollback',
  async (t) => {
    const dir = tempDir(t);
    const { store } = await openAt(dir);
    for (let i = 0; i < 4; i++) await store.write([{ op: 'put', key: `k${i}`, value: { v: secret() } }]);
    const before = all(store);
    await store.write([{ op: 'delete', key: 'k0' }]);
    const storeId = store.storeId;
    await store.close();
    const log = readFileSync(path.join(dir, 'log.bin'));
    const last = splitFrames(log).frames.at(-1)!;
    const cuts = Array.from({ length: last[1] - last[0] - 1 }, (_, i) => last[0] + 1 + i);
    let checked = 0;
    // Four directories side by side: an open costs a few X25519 operations.
    await Promise.all(
      [0, 1, 2, 3].map(async (lane) => {
        const work = copyDir(t, dir);
        for (const end of cuts.filter((_, i) => i % 4 === lane)) {
          writeFileSync(path.join(work, 'log.bin'), log.subarray(0, end));
          const { store: s, warnings } = await openAt(work, { anchor: { seq: 4, storeId } });
          const ok =
            s.seq === 4 &&
            JSON.stringify(all(s)) === JSON.stringify(before) &&
            warnings.length === 1 &&
            /incomplete record/.test(warnings[0]!);
          await s.close();
          const size = readFileSync(path.join(work, 'log.bin')).length;
          if (!ok || size !== last[0])
            t.fail(`truncated at ${end}: seq ${s.seq}, warnings ${JSON.stringify(warnings)}, size ${size}`);
          else checked++;
        }
      }),
    );
    t.equal(
      checked,
      cuts.length,
      `all ${checked} cut points inside the last frame open with the previous state and a warning`,
    );

    const work = copyDir(t, dir);
    writeFileSync(path.join(work, 'log.bin'), log.subarray(0, last[0]));
    const { store: s, warnings } = await openAt(work);
    t.equal(s.seq, 4, 'cut at a frame boundary: opens cleanly with one record fewer');
    t.same(warnings, []);
    await s.close();
    await refuses(t, work, 'STATE_ROLLBACK', { anchor: { seq: 5, storeId } }, 'the anchor names the lost record');
  },
);

/**
 * The child of the crash test: four writers that write until killed, printing each acknowledged seq.
 * In 'step' mode its StoreFs (the store's injection seam) announces every write, fsync, truncate, rename
 * and unlink on stdout and waits for the parent's go-ahead on stdin, so that the parent can kill it
 * exactly before a chosen step (of a compaction, say).
 */
const CHILD = `
import { createHash } from 'node:crypto';
import { readFileSync, readSync } from 'node:fs';
import path from 'node:path';
const { openStore, nodeFs } = await import(process.argv[2]);
const [dir, idFile, recipient, round, mode] = process.argv.slice(3);
const gate = (op, file) => {
  if (mode !== 'step') return;
  process.stdout.write('op ' + op + ' ' + file + '\\n');
  if (readSync(0, Buffer.alloc(1), 0, 1, null) !== 1) process.exit(4);
};
const open = new Set(); // the names of the open files, following renames
const fs = {
  ...nodeFs,
  async open(p, m) {
    const f = await nodeFs.open(p, m);
    const h = { name: path.basename(p) };
    open.add(h);
    return {
      read: (b, pos) => f.read(b, pos),
      write: (d, pos) => (gate('write', h.name), f.write(d, pos)),
      sync: () => (gate('sync', h.name), f.sync()),
      truncate: (l) => (gate('truncate', h.name), f.truncate(l)),
      size: () => f.size(),
      close: () => (open.delete(h), f.close()),
    };
  },
  async rename(a, b) {
    gate('rename', path.basename(a));
    await nodeFs.rename(a, b);
    for (const h of open) if (h.name === path.basename(a)) h.name = path.basename(b);
  },
  unlink: (p) => (gate('unlink', path.basename(p)), nodeFs.unlink(p)),
  syncDir: (d) => (gate('syncDir', 'dir'), nodeFs.syncDir(d)),
};
const store = await openStore({ dir, identity: readFileSync(idFile, 'utf8').trim(), recipients: [recipient], fs,
  compactAfter: { records: 5 }, onWarning: (m) => process.stderr.write('warning: ' + m + '\\n') });
let n = 0;
const value = (key) => createHash('sha256').update(key).digest('hex');
async function writer() {
  for (;;) {
    const i = n++;
    const key = 'r' + round + '/' + i;
    const seq = await store.write([{ op: 'put', key, value: value(key) }, { op: 'put', key: 'counter/' + round, value: i }]);
    process.stdout.write('ack ' + seq + ' ' + i + '\\n');
  }
}
for (let w = 0; w < 4; w++) writer().catch((e) => { process.stderr.write(String(e) + '\\n'); process.exit(3); });
`;

/** Each step a compaction (or a write) takes; the step rounds kill the child just before one of them. */
const STEPS = [
  'write log.bin',
  'sync log.bin',
  'write snapshot.age.tmp',
  'sync snapshot.age.tmp',
  'rename snapshot.age.tmp',
  'syncDir dir',
  'write log.bin.tmp',
  'sync log.bin.tmp',
  'rename log.bin.tmp',
];

t.test(
  'kill -9 at random points and before every step of a compaction: every acknowledged write survives',
  async (t) => {
    const scratch = tempDir(t);
    const idFile = path.join(scratch, 'identity.txt');
    writeFileSync(idFile, `${IDENTITY}\n`, { mode: 0o600 });
    const script = path.join(scratch, 'child.mjs');
    writeFileSync(script, CHILD);
    const storeUrl = pathToFileURL(path.join(ROOT, 'dist/src/state/store.js')).href;
    // A plain node: tap's process-info hook puts its loader into every child's NODE_OPTIONS, which more than
    // doubles a child's start-up; env(1) removes it just before node starts (and keeps the pid we kill).
    const node = ['-u', 'NODE_OPTIONS', process.execPath];
    const value = (key: string): string => createHash('sha256').update(key).digest('hex');

    // Four independent stores, eight rounds each, side by side: a child spends most of its life starting.
    const LANES = 4;
    const ROUNDS = 8;
    const killedBefore = new Map<string, number>();
    const repairs: string[] = [];
    let leftovers = 0;
    let acknowledged = 0;
    const lane = async (laneNo: number): Promise<void> => {
      const dir = tempDir(t);
      const acked = new Map<string, string>();
      let lastSeq = 0;
      let storeId: string | undefined;
      for (let k = 0; k < ROUNDS; k++) {
        const round = laneNo * ROUNDS + k;
        // Odd rounds run freely and die after a random number of acknowledgements; even rounds die just
        // before a chosen step, after a random number of acknowledgements.
        const step = round % 2 === 0 ? STEPS[(round / 2) % STEPS.length] : undefined;
        const minAcks = step ? randomInt(0, 8) : randomInt(1, 30);
        const child = spawn(
          '/usr/bin/env',
          [...node, script, storeUrl, dir, idFile, RECIPIENT, String(round), step ? 'step' : 'free'],
          {
            stdio: [step ? 'pipe' : 'ignore', 'pipe', 'pipe'],
          },
        );
        child.stdin?.on('error', () => undefined); // the go-ahead may meet a killed child
        let stderr = '';
        child.stderr!.on('data', (d: Buffer) => void (stderr += d.toString()));
        let buffered = '';
        let acks = 0;
        let maxCounter = -1;
        let killed = false;
        const kill = (why: string): void => {
          killed = true;
          killedBefore.set(why, (killedBefore.get(why) ?? 0) + 1);
          child.kill('SIGKILL');
        };
        child.stdout!.on('data', (d: Buffer) => {
          buffered += d.toString();
          let nl: number;
          while ((nl = buffered.indexOf('\n')) >= 0) {
            const line = buffered.slice(0, nl);
            buffered = buffered.slice(nl + 1);
            const ack = /^ack (\d+) (\d+)$/.exec(line);
            if (ack) {
              const seq = Number(ack[1]);
              if (seq <= lastSeq) t.fail(`round ${round}: acknowledged seq ${seq} after ${lastSeq}`);
              lastSeq = seq;
              acked.set(`r${round}/${ack[2]}`, value(`r${round}/${ack[2]}`));
              maxCounter = Math.max(maxCounter, Number(ack[2]));
              acks++;
              if (!killed && ((!step && acks >= minAcks) || acks >= 300))
                kill(step ? `(${step} never came)` : 'a random acknowledgement');
            } else if (line.startsWith('op ') && !killed) {
              if (line.slice(3) === step && acks >= minAcks) kill(step);
              else child.stdin!.write('g');
            }
          }
        });
        const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) =>
          child.on('close', (c, s) => resolve([c, s])),
        );
        if (signal !== 'SIGKILL') {
          t.fail(`round ${round}: the child ended by itself (${code}): ${stderr}`);
          return;
        }
        if (existsSync(path.join(dir, 'snapshot.age.tmp')) || existsSync(path.join(dir, 'log.bin.tmp'))) leftovers++;

        const { store, warnings } = await openAt(dir, { anchor: { seq: lastSeq, ...(storeId && { storeId }) } });
        storeId ??= store.storeId;
        repairs.push(
          ...warnings.map((w) =>
            /incomplete record/.test(w)
              ? 'torn tail'
              : /compaction was interrupted/.test(w)
                ? 'compaction finished'
                : w,
          ),
        );
        let missing = 0;
        for (const [key, v] of acked) if (store.get(key) !== v) missing++;
        t.equal(
          missing,
          0,
          `round ${round} (killed before ${step ?? 'nothing in particular'}, ${acks} acks): every acknowledged write is there`,
        );
        t.ok(store.seq >= lastSeq, `seq ${store.seq} >= last acknowledged ${lastSeq}`);
        t.ok(
          ((store.get(`counter/${round}`) ?? -1) as number) >= maxCounter,
          'the counter is at least its last acknowledged value',
        );
        lastSeq = store.seq; // unacknowledged writes that made it to disk raise the floor
        await store.close();
      }
      acknowledged += acked.size;
    };
    await Promise.all(Array.from({ length: LANES }, (_, i) => lane(i)));
    for (const s of STEPS) t.ok(killedBefore.get(s), `killed just before: ${s}`);
    t.ok(leftovers > 0, `${leftovers} kills left a .tmp file behind, cleaned up on open`);
    t.comment(
      `${acknowledged} acknowledged writes over ${LANES * ROUNDS} kills; kills: ${JSON.stringify(Object.fromEntries(killedBefore))}; repairs on open: ${JSON.stringify(
        repairs.reduce<Record<string, number>>((a, r) => {
          a[r] = (a[r] ?? 0) + 1;
          return a;
        }, {}),
      )}`,
    );
  },
);

/**
 * A StoreFs whose writes, fsyncs and directory fsyncs fail with probability `rate`, on a schedule fixed by
 * `seed` (mulberry32). A failed write wrote half its bytes; a failed fsync did sync (the worst case:
 * the data is on disk, but the store is told it is not).
 */
function failingFs(rate: number, seed: number): StoreFs & { failures: number } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = Math.imul(s ^ (s >>> 15), 1 | s);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
  const state = { failures: 0 };
  const fail = (): boolean => next() < rate && ++state.failures > 0;
  const injected = (): Error => Object.assign(new Error('injected I/O failure'), { code: 'EIO' });
  const wrap = (f: StoreFile): StoreFile => ({
    ...bind(f),
    async write(d, p) {
      if (fail()) {
        await f.write(d.subarray(0, d.length >> 1), p); // half of it reached the file
        throw injected();
      }
      return f.write(d, p);
    },
    async sync() {
      if (fail()) {
        await f.sync(); // the data is on disk, but the caller is told it is not
        throw injected();
      }
      return f.sync();
    },
  });
  return Object.assign(state, {
    ...nodeFs,
    open: async (p: string, m: 'read' | 'write' | 'create') => wrap(await nodeFs.open(p, m)),
    syncDir: async (d: string) => {
      if (fail()) throw injected();
      return nodeFs.syncDir(d);
    },
  });
}

t.test(
  '20% injected write and fsync failures: failed writes reject, the store reopens to exactly the acknowledged ones',
  async (t) => {
    const dir = tempDir(t);
    const fs = failingFs(0.2, 20261126);
    const warnings: string[] = [];
    let store: StateStore | undefined;
    const openErrors: string[] = [];
    for (let attempt = 0; attempt < 5 && !store; attempt++) {
      store = await openStore({
        dir,
        identity: IDENTITY,
        recipients: [RECIPIENT],
        fs,
        compactAfter: { records: 7 },
        onWarning: (m) => warnings.push(m),
      }).catch((e: StateError) => void openErrors.push(e.code));
    }
    if (!store) throw new Error(`could not open: ${openErrors.join(', ')}`);
    t.ok(
      openErrors.every((c) => c === 'STATE_IO'),
      `opening failed ${openErrors.length} time(s) with STATE_IO, then succeeded`,
    );

    const values: string[] = [];
    const done: { seq: number; ops: Op[] }[] = [];
    let rejected = 0;
    let i = 0;
    const attempt = async (ops: Op[]): Promise<void> => {
      try {
        done.push({ seq: await store!.write(ops), ops });
      } catch (e) {
        t.equal((e as StateError).code, 'STATE_IO');
        for (const v of values) if ((e as Error).message.includes(v)) t.fail('an error message shows a value');
        rejected++;
      }
    };
    for (let round = 0; round < 60; round++) {
      const group: Promise<void>[] = [];
      for (let j = 0; j <= round % 4; j++) {
        const v = secret();
        values.push(v);
        const ops: Op[] = [
          { op: 'put', key: `k/${i}`, value: v },
          { op: 'put', key: 'shared', value: i },
        ];
        if (i % 3 === 0 && i > 0) ops.push({ op: 'delete', key: `k/${i - 3}` });
        i++;
        group.push(attempt(ops));
      }
      await Promise.all(group);
    }
    // One more write that must succeed: it first removes whatever a failed write left behind.
    for (let n = 0; n < 10 && done.at(-1)?.ops[0]?.key !== 'final'; n++)
      await attempt([{ op: 'put', key: 'final', value: n }]);
    await store.close();

    t.ok(
      rejected > 10 && done.length > 50,
      `${done.length} writes acknowledged, ${rejected} rejected, ${fs.failures} injected failures`,
    );
    const seqs = done.map((d) => d.seq);
    t.same(
      seqs,
      [...seqs].sort((a, b) => a - b),
      'acknowledged seqs increase',
    );
    t.equal(new Set(seqs).size, seqs.length, 'and are unique');
    const model = new Map<string, Json>();
    for (const { ops } of [...done].sort((a, b) => a.seq - b.seq)) {
      for (const op of ops) {
        if (op.op === 'put') model.set(op.key, op.value);
        else model.delete(op.key);
      }
    }
    const expected = Object.fromEntries([...model].sort(([a], [b]) => (a < b ? -1 : 1)));
    const { store: again } = await openAt(dir);
    t.same(all(again), expected, 'exactly the acknowledged writes, nothing rejected');
    t.equal(again.seq, seqs.at(-1));
    await again.close();
    t.ok(
      warnings.some((w) => /compacting the state store failed/.test(w)),
      'some compactions failed too',
    );
    for (const w of warnings) for (const v of values) if (w.includes(v)) t.fail('a warning shows a value');
  },
);

t.test('when a compaction cannot replace the log, writing goes on in the old one and nothing is lost', async (t) => {
  const dir = tempDir(t);
  let logRenames = 0;
  const fs: StoreFs = {
    ...nodeFs,
    rename: async (from, to) => {
      // The 1st (creating the store), 3rd and 4th (compacting) renames of a new log fail.
      if (from.endsWith('log.bin.tmp') && [1, 3, 4].includes(++logRenames))
        throw Object.assign(new Error('injected rename failure'), { code: 'EIO' });
      return nodeFs.rename(from, to);
    },
  };
  const first = await openAt(dir, { fs }).catch((e: StateError) => e);
  t.equal((first as StateError).code, 'STATE_IO', 'creating the store fails when its log cannot be put in place');
  t.same(
    readdirSync(dir).filter((f) => !f.endsWith('.tmp')),
    [],
    'and leaves no store behind',
  );
  const { store, warnings } = await openAt(dir, { fs, compactAfter: { records: 3 } });
  for (let i = 0; i < 10; i++) await store.write([{ op: 'put', key: `k${i}`, value: i }]);
  t.equal(warnings.filter((w) => /compacting the state store failed/.test(w)).length, 2);
  const expected = all(store);
  await store.close();
  const { store: again } = await openAt(dir);
  t.same(all(again), expected);
  t.equal(again.seq, 10);
  await again.close();
});
