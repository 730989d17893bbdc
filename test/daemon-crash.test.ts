/**
 * Crash tests: the daemon (a real process) is killed with SIGKILL right after each step boundary of a
 * rotation, 20 times per boundary at random occurrences, and restarted each time. Afterwards the store
 * opens, every secret's versions run 1..N with no gap and no duplicate, there is exactly one audit
 * entry per finished rotation, the audited fingerprint of each kept version matches the value stored
 * (a crash never led to a second value), and the audit chain verifies.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { fingerprint as fingerprintOf } from '../src/audit/fingerprint.js';
import { verifyAuditDir } from '../src/audit/log.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import type { SecretRecord } from '../src/rotation/record.js';
import { openStore } from '../src/state/store.js';
import { commitAll, gitInit, ROOT, tempDir } from './helpers.js';

const BIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const PRELOAD = pathToFileURL(path.join(ROOT, 'test', 'fixtures', 'kill-at-step.mjs')).href;
const KILLS_PER_BOUNDARY = 20;
const BOUNDARIES = ['created', 'audited', 'finished', 'retired'];
const NAMES = ['crash/a', 'crash/b', 'crash/c'];

function runDaemon(
  remote: string,
  dataDir: string,
  env: Record<string, string>,
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    // env -u NODE_OPTIONS: tap puts its own loaders into NODE_OPTIONS, which doubles a child's start-up.
    const child = spawn(
      '/usr/bin/env',
      [
        '-u',
        'NODE_OPTIONS',
        process.execPath,
        '--import',
        PRELOAD,
        BIN,
        'daemon',
        '--repo',
        remote,
        '--data-dir',
        dataDir,
        '--socket-dir',
        path.join(dataDir, 'sockets'),
        '--agent-listen',
        '127.0.0.1:0',
        '--metrics-listen',
        'off',
      ],
      { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal, stderr }));
  });
}

t.test('SIGKILL at every step boundary loses and duplicates nothing', async (t) => {
  const root = tempDir(t, 'rotor-crash-');
  const person = path.join(root, 'person');
  mkdirSync(person);
  gitInit(person);
  writeFileSync(path.join(person, 'rotor.yaml'), 'kind: Config\nsync: { interval: 1d }\n');
  writeFileSync(path.join(person, 'p.yaml'), 'kind: Policy\nname: fast\nevery: 1s\noverlap: 0s\nretain: 3\n');
  writeFileSync(
    path.join(person, 's.yaml'),
    NAMES.map((n) => `kind: Secret\nname: ${n}\npolicy: fast\ngenerate: { length: 24 }\n`).join('---\n'),
  );
  commitAll(person, 'declarations');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', person, remote]);
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);

  let kills = 0;
  for (const boundary of BOUNDARIES) {
    for (let i = 0; i < KILLS_PER_BOUNDARY; i++) {
      const r = await runDaemon(remote, dataDir, { KILL_STEP: boundary, KILL_COUNT: String(1 + randomInt(3)) });
      if (r.signal !== 'SIGKILL') {
        t.fail(
          `the daemon should have been killed after "${boundary}", but exited with ${r.code}: ${r.stderr.slice(-2000)}`,
        );
        return;
      }
      kills++;
    }
  }
  t.equal(kills, BOUNDARIES.length * KILLS_PER_BOUNDARY);

  // A clean run after the crashes: every secret finishes one more rotation, then a graceful stop.
  const final = await runDaemon(remote, dataDir, { KILL_STEP: 'finished', KILL_COUNT: String(NAMES.length * 2) });
  t.equal(final.signal, 'SIGKILL', 'the daemon ran on after the crashes');

  // The store opens; versions are consecutive; the audit has one entry per version, with its fingerprint.
  const keys = await loadKeys(dataDir);
  const auditDir = path.join(dataDir, 'repo', 'audit');
  const v = await verifyAuditDir(auditDir);
  t.ok(v.result.ok, 'rotor audit verify passes');
  const entries = readdirSync(auditDir)
    .sort()
    .flatMap((f) =>
      readFileSync(path.join(auditDir, f), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map(
          (l) =>
            JSON.parse(l) as { event: string; secret?: string; to?: number; fingerprint?: string; stateSeq?: number },
        ),
    );
  const maxStateSeq = Math.max(...entries.map((e) => e.stateSeq ?? 0));
  const store = await openStore({
    dir: path.join(dataDir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
    anchor: { seq: maxStateSeq },
  });
  t.teardown(() => store.close());
  const fpKey = Buffer.from(store.get('meta/fingerprint-key') as string, 'base64');
  for (const name of NAMES) {
    const made = entries.filter((e) => e.secret === name && (e.event === 'created' || e.event === 'rotated'));
    t.same(
      made.map((e) => e.to),
      made.map((_, i) => i + 1),
      `${name}: audited versions run 1..${made.length}, no gap, no duplicate`,
    );
    const rec = store.get(`secret/${name}`) as unknown as SecretRecord;
    const current = rec.versions[0]!;
    const pendingAudited = rec.pending && made.at(-1)!.to === rec.pending.version;
    t.equal(
      current.version,
      made.length - (pendingAudited ? 1 : 0),
      `${name}: the current version is the last audited one (or a finish is pending)`,
    );
    t.same(
      rec.versions.map((x) => x.version),
      rec.versions.map((_, i) => current.version - i),
      `${name}: the store keeps consecutive versions`,
    );
    for (const ver of rec.versions) {
      t.equal(
        fingerprintOf(fpKey, ver.value),
        made[ver.version - 1]!.fingerprint,
        `${name} v${ver.version}: the stored value is the audited one`,
      );
    }
    if (rec.pending && pendingAudited)
      t.equal(
        fingerprintOf(fpKey, rec.pending.value),
        made.at(-1)!.fingerprint,
        `${name}: the pending value is the audited one`,
      );
  }
  t.ok(entries.filter((e) => e.event === 'retired').length > 0, 'retirements happened and were audited');
});
