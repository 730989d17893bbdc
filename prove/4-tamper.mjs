// Proof, part 4: tampered state is refused, and kills during state writes never leave a partial
// state.
//
// A real data directory: the daemon (dist/, in this process) runs on a small repository, creates four
// secrets and rotates them in rounds, is stopped (its store compacts), started again and rotates more;
// the state files are copied at every step boundary (after each pending and each finishing write), and
// the whole data directory at the end ("G": a snapshot, a log of records, the audit log that anchors
// them). Then G's state files are tampered with in every way below and the daemon's start-up path is
// run on them: the audit log opened and indexed, the store opened against the audit's anchor (its
// latest store generation and id), the audit log checked against the store's copy of its head, exactly
// as src/daemon/daemon.ts does. It must refuse with a stable code and a reason, or open a state that is
// genuine (byte for byte one the daemon wrote) and not older than the audit log says: the one such
// state is the one a crash right after the last audit entry leaves, which the daemon finishes on start.
//   flip        one bit flipped at every byte of snapshot.age, of the log's header frame and of every
//               frame header, and in each record its first and last 16 bytes (nonce, tag) and every
//               13th between (the short run: sparser)
//   truncation  snapshot.age at every byte of its age header and every 7th of its payload; log.bin at
//               every byte of its header, every frame boundary and inside every frame
//   rollback    each older copy of the state files put back
//   mix         a snapshot of one time with a log of another
//   removal     snapshot.age, log.bin or both removed
//   audit cut   the audit log cut at every line and inside lines (the store keeps its head)
// A sample of each class is then run through the real Daemon.start on a full copy of G (clone, remote
// and all): it must refuse with the same code as the start-up path (or start, for the crash state).
// And the audit log's tail beyond the store's copy of its head (a start's config-applied entry, already
// pushed), removed or changed in the clone: Daemon.start must refuse, and push nothing.
// Not detectable, by design: a state the daemon wrote after its last audit entry put back (the "crash
// state"): it is the state a crash at that point leaves, and the daemon finishes it on start.
//
// Kills: a child process (prove/lib/store-writer.mjs) writes batches with four concurrent writers,
// compacting every 25 records, and is SIGKILLed at a random moment (sometimes while it opens and
// repairs the store); after each kill a copy of the store is opened and must hold exactly the first m
// batches, with m at least the last acknowledged and at most the last submitted.
import { execFileSync, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import diagnostics_channel from 'node:diagnostics_channel';
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { clip, count, dist, int, ms, nth, pool, tally } from './lib/harness.mjs';
import { canonical, stateAfter } from './lib/store-writes.mjs';

export const part = 4;
export const title =
  'State tampering (flipped, truncated, rolled back, mixed, removed) and kills during 1,000+ state writes';

const SECRETS = ['tamper/api-key', 'tamper/hex-token', 'tamper/structured', 'tamper/long'];
const DECLARATIONS = {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  'policies.yaml': 'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1h\nretain: 3\n',
  'secrets.yaml': [
    `kind: Secret\nname: ${SECRETS[0]}\npolicy: monthly\ngenerate: { length: 40 }\n`,
    `kind: Secret\nname: ${SECRETS[1]}\npolicy: monthly\ngenerate: { length: 64, charset: hex }\n`,
    `kind: Secret\nname: ${SECRETS[2]}\npolicy: monthly\nfields:\n  token: { generate: { length: 32, charset: base64url } }\n  region: { value: eu-west-1 }\n`,
    `kind: Secret\nname: ${SECRETS[3]}\npolicy: monthly\ngenerate: { length: 200 }\n`,
  ].join('---\n'),
};
const AUDIT_HEAD_KEY = 'meta/audit-head';
const WRITER = fileURLToPath(new URL('./lib/store-writer.mjs', import.meta.url));

const GIT_ENV = {
  ...process.env,
  GIT_AUTHOR_NAME: 'prove',
  GIT_AUTHOR_EMAIL: 'prove@rotor.invalid',
  GIT_COMMITTER_NAME: 'prove',
  GIT_COMMITTER_EMAIL: 'prove@rotor.invalid',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_TERMINAL_PROMPT: '0',
};
/** A copy of a directory tree without its sockets (the admin socket of a running daemon). */
const copyTree = (from, to) => cpSync(from, to, { recursive: true, filter: (p) => !lstatSync(p).isSocket() });
const git = (cwd, ...args) =>
  execFileSync('git', args, { cwd, env: GIT_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();

/** Every string of a JSON value of at least 8 characters (the values a refusal must never show). */
function strings(v, out = new Set()) {
  if (typeof v === 'string' && v.length >= 8) out.add(v);
  else if (v !== null && typeof v === 'object') for (const x of Object.values(v)) strings(x, out);
  return out;
}

export async function run({ short, log }) {
  const base = mkdtempSync(path.join(os.tmpdir(), 'rotor-prove-tamper-'));
  try {
    const mods = {
      ...(await dist('src/daemon/daemon.js')),
      ...(await dist('src/keys.js')),
      ...(await dist('src/state/store.js')),
      ...(await dist('src/audit/log.js')),
      ...(await dist('src/state/codec.js')),
      ...(await dist('src/audit/entry.js')),
    };
    const world = await makeWorld(base, mods, { short, log });
    const rows = await tamper(base, world, mods, { short, log });
    rows.push(...(await auditTail(base, world, mods, { short, log })));
    rows.push(...(await kills(base, mods, { short, log })));
    return { rows };
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

// --- the world: the real daemon writes a real data directory -------------------------------------------

async function makeWorld(root, { Daemon, generateKeys, loadKeys }, { short, log }) {
  const person = path.join(root, 'person');
  mkdirSync(person);
  git(person, 'init', '-q', '-b', 'main');
  for (const [f, text] of Object.entries(DECLARATIONS)) writeFileSync(path.join(person, f), text);
  git(person, 'add', '-A');
  git(person, 'commit', '-q', '-m', 'declarations');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', person, remote], { env: GIT_ENV });
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  const keys = await loadKeys(dataDir);
  const warnings = [];
  const daemonLog = (level, message) => {
    if (level === 'warn' || level === 'error') warnings.push(message);
  };
  const options = {
    repo: remote,
    branch: 'main',
    dataDir,
    socketDir: path.join(root, 'sockets'),
    breakGlass: [],
    log: daemonLog,
    commitDelayMs: 3_600_000,
  };
  const stateDir = path.join(dataDir, 'state');
  // The state files at every step boundary, read in the same tick as the step (nothing else writes then).
  const copies = [];
  const take = (label) =>
    copies.push({
      label,
      snap: readFileSync(path.join(stateDir, 'snapshot.age')),
      log: readFileSync(path.join(stateDir, 'log.bin')),
    });
  const onStep = (m) => {
    if (m.step === 'created' || m.step === 'finished') take(`${m.secret} ${m.step} v${m.version}`);
  };
  const channel = diagnostics_channel.channel('rotor:rotation');
  channel.subscribe(onStep);
  let rotations = 0;
  let running;
  const g = path.join(root, 'G');
  /** Starts a daemon, rotates every secret `rounds` times, one at a time. */
  const runDaemon = async (rounds, phase) => {
    const d = new Daemon(options);
    await d.start();
    running = d;
    for (let r = 0; r < rounds; r++) {
      for (const name of SECRETS) {
        await d.rotateNow(name, `prove: tampering, ${phase}`);
        rotations++;
      }
    }
    return d;
  };
  try {
    const rounds = short ? [1, 1] : [2, 3];
    await (await runDaemon(rounds[0], 'phase 1')).stop();
    running = undefined;
    take('phase 1 stopped (compacted)');
    const d2 = await runDaemon(rounds[1], 'phase 2');
    await d2.syncNow(); // the audit entries committed: the clone is clean
    // G: the whole data directory and the remote, now (no timer of the daemon fires for a day).
    copyTree(dataDir, path.join(g, 'data'));
    cpSync(remote, path.join(g, 'remote.git'), { recursive: true });
    await d2.stop();
    running = undefined;
    // One more start and stop: its config-applied entry is the last, beyond the store's copy of the head.
    const d3 = new Daemon(options);
    await d3.start();
    running = d3;
    await d3.stop();
    running = undefined;
  } finally {
    await running?.stop().catch(() => undefined);
    channel.unsubscribe(onStep);
  }
  log(
    `daemon ran: ${SECRETS.length} secrets created, ${rotations} rotations, ${copies.length} copies of the state files`,
  );
  return { g, keys, copies, rotations, warnings, final: { dataDir, remote } };
}

// --- the audit log's tail in the clone, beyond the store's copy of the head ----------------------------------

async function auditTail(root, world, { Daemon, lineHash, sealEntry }, { log }) {
  const { dataDir, remote } = world.final;
  const auditDir = path.join(dataDir, 'repo', 'audit');
  const name = readdirSync(auditDir)
    .filter((f) => f.endsWith('.jsonl'))
    .sort()
    .at(-1);
  const lines = readFileSync(path.join(auditDir, name), 'utf8').trimEnd().split('\n');
  const last = JSON.parse(lines.at(-1));
  const { hash: _h, ...body } = last;
  const cases = [
    { what: 'the last entry removed', text: `${lines.slice(0, -1).join('\n')}\n`, code: 'AUDIT_TRUNCATED' },
    {
      what: 'the last entry changed (its hash recomputed)',
      text: `${[...lines.slice(0, -1), sealEntry({ ...body, detail: 'forged', prev: lineHash(lines.at(-2)) }).line].join('\n')}\n`,
      code: 'AUDIT_CHAIN_BROKEN',
    },
    { what: 'untouched', text: undefined, code: undefined },
  ];
  const results = await pool(cases, cases.length, async (c, i) => {
    const dir = path.join(root, `tail-case-${i}`);
    copyTree(dataDir, path.join(dir, 'data'));
    cpSync(remote, path.join(dir, 'remote.git'), { recursive: true });
    git(path.join(dir, 'data', 'repo'), 'remote', 'set-url', 'origin', path.join(dir, 'remote.git'));
    if (c.text !== undefined) writeFileSync(path.join(dir, 'data', 'repo', 'audit', name), c.text);
    const remoteLog = () => git(path.join(dir, 'remote.git'), 'show', `main:audit/${name}`);
    const before = remoteLog();
    const d = new Daemon({
      repo: path.join(dir, 'remote.git'),
      branch: 'main',
      dataDir: path.join(dir, 'data'),
      socketDir: path.join(dir, 'sockets'),
      breakGlass: [],
      log: () => undefined,
      commitDelayMs: 3_600_000,
    });
    let got;
    try {
      await d.start();
      await d.stop();
      got = 'started';
    } catch (e) {
      got = e.code ?? 'ERROR';
    }
    const unchanged = c.text === undefined || remoteLog() === before;
    return { ...c, got, ok: got === (c.code ?? 'started') && unchanged };
  });
  log(`audit tail: ${results.map((r) => `${r.what}: ${r.got}`).join('; ')}`);
  return [
    {
      check: `the clone's audit log changed after the last entry the store anchors (the ${last.event} entry of a start, already pushed): Daemon.start refuses and pushes nothing; untouched, it starts`,
      figure: results
        .map(
          (r) =>
            `${r.what}: ${r.got}${r.ok ? '' : ` (WRONG, expected ${r.code ?? 'a start'}${r.got === 'started' && r.code ? ', and the change was committed to be pushed' : ''})`}`,
        )
        .join('; '),
      ok: results.every((r) => r.ok),
    },
  ];
}

// --- tampering ---------------------------------------------------------------------------------------------

async function tamper(root, world, mods, { short, log }) {
  const { AuditLog, openStore, verifyAuditDir, splitFrames, Daemon } = mods;
  const { keys, copies, g } = world;
  const rows = [];
  const gState = path.join(g, 'data', 'state');
  const auditDir = path.join(g, 'data', 'repo', 'audit');
  const snap = readFileSync(path.join(gState, 'snapshot.age'));
  const logBin = readFileSync(path.join(gState, 'log.bin'));
  const { frames } = splitFrames(logBin);
  const scratch = path.join(root, 'scratch');

  /** Opens a directory of state files as a plain store (no anchor): its generation and state. */
  const plainOpen = async (files) => {
    rmSync(scratch, { recursive: true, force: true });
    mkdirSync(scratch);
    for (const [name, buf] of Object.entries(files)) writeFileSync(path.join(scratch, name), buf);
    const warnings = [];
    const s = await openStore({
      dir: scratch,
      identity: keys.identity,
      recipients: [keys.recipient],
      onWarning: (m) => warnings.push(m),
    });
    try {
      return {
        seq: s.seq,
        storeId: s.storeId,
        state: canonical(s.entries()),
        values: strings(Object.fromEntries(s.entries())),
        warnings,
      };
    } finally {
      await s.close();
    }
  };

  // The genuine states: every generation the daemon wrote, from the copies (and G).
  const genuine = new Map();
  let conflicts = 0;
  let tornCopies = 0;
  const secretValues = new Set();
  for (const c of [...copies, { label: 'G', snap, log: logBin }]) {
    const o = await plainOpen({ 'snapshot.age': c.snap, 'log.bin': c.log });
    c.seq = o.seq;
    if (o.warnings.length) tornCopies++;
    if (genuine.has(o.seq) && genuine.get(o.seq) !== o.state) conflicts++;
    genuine.set(o.seq, o.state);
    for (const v of o.values) secretValues.add(v);
  }
  const gOpen = await plainOpen({ 'snapshot.age': snap, 'log.bin': logBin });

  // The audit log's anchor for the store, as the daemon computes it, and the last version of each secret.
  let anchorSeq = 0;
  let anchorId;
  let entries = 0;
  const audited = new Map();
  const al = await AuditLog.open(auditDir, {
    onEntry: (e) => {
      entries++;
      if (e.stateSeq !== undefined) anchorSeq = Math.max(anchorSeq, e.stateSeq);
      if (e.storeId !== undefined) anchorId = e.storeId;
      if ((e.event === 'created' || e.event === 'rotated') && e.secret) audited.set(e.secret, e.to);
    },
  });
  await al.close();
  rows.push({
    check: 'the real daemon wrote a data directory to tamper with',
    figure: `${SECRETS.length} secrets, ${world.rotations} rotations over two runs; store at generation ${gOpen.seq} (snapshot.age ${int(snap.length)} bytes, log.bin ${int(logBin.length)} bytes: header and ${frames.length - 1} records); audit log ${entries} entries, anchoring generation ${anchorSeq}; ${copies.length} older copies of the state files (${genuine.size} distinct generations${tornCopies ? `, ${tornCopies} taken while another write was in flight` : ''})`,
    ok: conflicts === 0 && anchorId === gOpen.storeId && frames.length > 5 && world.warnings.length === 0,
  });
  if (world.warnings.length) rows.at(-1).figure += `; daemon warnings: ${world.warnings.slice(0, 3).join(' / ')}`;

  /** The daemon's start-up path (src/daemon/daemon.ts, open()) on the state files in `stateDir`. */
  const startup = async (stateDir, audit = auditDir) => {
    const index = { stateSeq: undefined, storeId: undefined };
    let a;
    try {
      a = await AuditLog.open(audit, {
        onEntry: (e) => {
          if (e.stateSeq !== undefined) index.stateSeq = Math.max(index.stateSeq ?? 0, e.stateSeq);
          if (e.storeId !== undefined) index.storeId = e.storeId;
        },
      });
    } catch (e) {
      return { refused: e.code ?? 'ERROR', message: e.message };
    }
    await a.close();
    const warnings = [];
    let store;
    try {
      store = await openStore({
        dir: stateDir,
        identity: keys.identity,
        recipients: [keys.recipient],
        ...(index.stateSeq !== undefined
          ? { anchor: { seq: index.stateSeq, ...(index.storeId ? { storeId: index.storeId } : {}) } }
          : {}),
        onWarning: (m) => warnings.push(m),
      });
    } catch (e) {
      return { refused: e.code ?? 'ERROR', message: e.message };
    }
    try {
      const head = store.get(AUDIT_HEAD_KEY);
      if (head) {
        const v = await verifyAuditDir(audit, { anchor: head });
        if (!v.result.ok)
          return {
            refused: v.result.code,
            message: `the audit log ${audit} is behind the state store: ${v.result.message}`,
          };
      }
      return { opened: true, seq: store.seq, state: canonical(store.entries()), warnings };
    } finally {
      await store.close();
    }
  };

  /** Runs the start-up path on G with the given state files (null: the file absent), in the lane's own directory. */
  const tryState = async (files, lane) => {
    const caseDir = path.join(root, `case-${lane}`);
    rmSync(caseDir, { recursive: true, force: true });
    mkdirSync(caseDir);
    for (const [name, buf] of Object.entries(files)) if (buf !== null) writeFileSync(path.join(caseDir, name), buf);
    return startup(caseDir);
  };
  // A case waits mostly on the file system and the crypto thread pool: several run at once.
  const LANES = 6;

  // Classes of tampering, each a list of cases { what, files }.
  const flip = (buf, i) => {
    const b = Buffer.from(buf);
    b[i] ^= 1 << (i % 8);
    return b;
  };
  const G = { 'snapshot.age': snap, 'log.bin': logBin };
  const every = short ? 53 : 1;
  const headerEvery = short ? 41 : 1;
  const sparse = short ? 97 : 13;
  const edge = short ? 4 : 16;
  const classes = [];

  // Flips: every byte of the snapshot, of the log's magic and header frame, and of each frame header;
  // the records' bodies every `sparse` bytes plus their first and last 16 (nonce, tag).
  {
    const cases = [];
    for (let i = 0; i < snap.length; i += every)
      cases.push({ what: `snapshot.age byte ${i}`, files: { ...G, 'snapshot.age': flip(snap, i) } });
    const dense = new Set();
    for (let i = 0; i < frames[0][1]; i += every) dense.add(i);
    for (const [s, e] of frames.slice(1)) {
      for (let i = s; i < s + 8; i++) dense.add(i);
      for (let i = s + 8; i < e; i++) if (i - s - 8 < edge || e - i <= edge || (i - s) % sparse === 0) dense.add(i);
    }
    for (const i of [...dense].sort((a, b) => a - b))
      cases.push({ what: `log.bin byte ${i}`, files: { ...G, 'log.bin': flip(logBin, i) } });
    classes.push({
      name: 'flip',
      check: `one bit flipped at a byte of snapshot.age or log.bin (${every === 1 ? 'every byte' : `every ${nth(every)} byte`} of the snapshot and of the log's magic and header frame, every byte of every frame header, the first and last ${edge} bytes of each record and every ${nth(sparse)} between): refused`,
      cases,
      codes: ['STATE_CORRUPT'],
      crashOk: false,
    });
  }
  // Truncations.
  {
    const cases = [];
    // The snapshot: every byte of its age header, every 7th of the payload (one STREAM chunk) and its last 20.
    const payload = snap.indexOf('\n--- ') + 1 + snap.subarray(snap.indexOf('\n--- ') + 1).indexOf('\n') + 1;
    for (let i = 0; i < snap.length; i++) {
      if ((short && i % every === 0) || (!short && (i < payload || (i - payload) % 7 === 0 || snap.length - i <= 20)))
        cases.push({ what: `snapshot.age cut to ${i} bytes`, files: { ...G, 'snapshot.age': snap.subarray(0, i) } });
    }
    for (let i = 0; i < frames[0][1]; i += headerEvery)
      cases.push({
        what: `log.bin cut to ${i} bytes (magic, header)`,
        files: { ...G, 'log.bin': logBin.subarray(0, i) },
      });
    for (const [s, e] of frames.slice(1)) {
      cases.push({ what: `log.bin cut at the frame boundary ${s}`, files: { ...G, 'log.bin': logBin.subarray(0, s) } });
      for (const off of short
        ? [7, (e - s) >> 1, e - s - 1]
        : [1, 4, 7, 8, 9, 20, (e - s) >> 1, e - s - 16, e - s - 1]) {
        if (off > 0 && off < e - s)
          cases.push({
            what: `log.bin cut inside the frame at ${s} (+${off})`,
            files: { ...G, 'log.bin': logBin.subarray(0, s + off) },
          });
      }
    }
    classes.push({
      name: 'truncation',
      check: `snapshot.age or log.bin truncated (${short ? `every ${nth(every)} byte of the snapshot, every ${nth(headerEvery)} of the log's header` : "every byte of the snapshot's age header, every 7th of its payload, every byte of the log's header"}, every frame boundary, inside every frame): refused, or the crash state`,
      cases,
      codes: ['STATE_CORRUPT', 'STATE_ROLLBACK'],
      crashOk: true,
    });
  }
  // Rollbacks: each older copy of the state files put back.
  {
    const cases = copies
      .filter((c) => c.seq < gOpen.seq)
      .map((c) => ({
        what: `the copy of generation ${c.seq} (${c.label})`,
        files: { 'snapshot.age': c.snap, 'log.bin': c.log },
      }));
    classes.push({
      name: 'rollback',
      check:
        'an older valid copy of the state files put back (every step boundary of both runs): refused, or the crash state',
      cases,
      codes: ['STATE_ROLLBACK'],
      crashOk: true,
    });
  }
  // Mixes: a snapshot of one time with a log of another (distinct files only).
  {
    const snaps = [
      ...new Map(
        [...copies, { snap, log: logBin, seq: gOpen.seq }].map((c) => [c.snap.toString('base64'), c.snap]),
      ).values(),
    ];
    const logs = [
      ...new Map([...copies, { snap, log: logBin }].map((c) => [c.log.toString('base64'), c.log])).values(),
    ];
    const pairs = new Set(
      [...copies, { snap, log: logBin }].map((c) => `${c.snap.toString('base64')}|${c.log.toString('base64')}`),
    );
    const cases = [];
    for (const s of snaps)
      for (const l of logs)
        if (!pairs.has(`${s.toString('base64')}|${l.toString('base64')}`))
          cases.push({
            what: `a snapshot of ${s.length} bytes with a log of ${l.length}`,
            files: { 'snapshot.age': s, 'log.bin': l },
          });
    classes.push({
      name: 'mix',
      check:
        'a snapshot of one time with a log of another (every pair that never existed together): refused, or a genuine state',
      cases,
      codes: ['STATE_CHAIN_BROKEN', 'STATE_ROLLBACK', 'STATE_CORRUPT'],
      crashOk: true,
    });
  }
  // Removals.
  classes.push({
    name: 'removal',
    check: 'snapshot.age, log.bin or both removed: refused, never a new empty store',
    codes: ['STATE_CORRUPT', 'STATE_ROLLBACK'],
    crashOk: false,
    cases: [
      { what: 'snapshot.age removed', files: { ...G, 'snapshot.age': null } },
      { what: 'log.bin removed', files: { ...G, 'log.bin': null } },
      { what: 'both removed', files: { 'snapshot.age': null, 'log.bin': null } },
      {
        what: 'both removed, an old snapshot.age.tmp left',
        files: { 'snapshot.age.tmp': copies[0].snap, 'log.bin': null },
      },
    ],
  });

  const crashStates = new Map();
  const refusalSamples = new Map();
  const leaks = [];
  let messages = 0; // refusal messages searched for values
  const t0 = performance.now();
  for (const cls of classes) {
    let refused = 0;
    let crash = 0;
    const codes = {};
    const bad = [];
    const results = await pool(cls.cases, LANES, (c, lane) => tryState(c.files, lane));
    cls.cases.forEach((c, i) => {
      const r = results[i];
      if (r.refused) {
        count(codes, r.refused);
        if (!cls.codes.includes(r.refused) || !r.message) bad.push(`${c.what}: ${r.refused}`);
        else refused++;
        if (r.message) messages++;
        for (const v of secretValues) if (r.message?.includes(v)) leaks.push(`${cls.name}: ${c.what}`);
        if (!refusalSamples.has(`${cls.name} ${r.refused}`)) refusalSamples.set(`${cls.name} ${r.refused}`, c);
      } else {
        const genuineState = genuine.get(r.seq) === r.state;
        if (cls.crashOk && genuineState && r.seq >= anchorSeq) {
          crash++;
          crashStates.set(r.seq, c);
        } else {
          bad.push(
            `${c.what}: OPENED at generation ${r.seq}${genuineState ? ' (a genuine state)' : ' (a state the daemon never wrote)'}, anchor ${anchorSeq}`,
          );
        }
      }
    });
    const n = cls.cases.length;
    // A class without a case proves nothing: it fails (the copies or files it is made from are missing).
    rows.push({
      check: cls.check,
      figure: `${int(n)} cases${n === 0 ? ' (the class is empty: nothing was tried)' : ''}: ${int(refused)} refused (${tally(codes)})${crash ? `, ${int(crash)} opened the crash state (generation ${[...crashStates.keys()].join(', ')}: the one a crash right after the last audit entry leaves)` : ''}${bad.length ? `; WRONG: ${bad.slice(0, 3).join(' / ')}${bad.length > 3 ? ` (+${bad.length - 3})` : ''}` : ''}`,
      ok: n > 0 && bad.length === 0 && refused + crash === n,
    });
    log(`${cls.name}: ${refused} refused, ${crash} crash state, ${bad.length} wrong, of ${n}`);
  }

  // The audit log cut back (at each line, and inside lines): the store keeps its head.
  {
    const names = readdirSync(auditDir)
      .filter((n) => n.endsWith('.jsonl'))
      .sort();
    const texts = names.map((n) => readFileSync(path.join(auditDir, n), 'utf8'));
    const cuts = [];
    for (let f = 0; f < names.length; f++) {
      const t = texts[f];
      for (let at = 0; at < t.length; at = t.indexOf('\n', at) + 1) {
        const nl = t.indexOf('\n', at);
        cuts.push({ f, cut: at }, { f, cut: at + ((nl - at) >> 1) });
        if (nl < 0) break;
      }
    }
    let refused = 0;
    const codes = {};
    const bad = [];
    const n = cuts.length;
    await pool(cuts, LANES, async ({ f, cut }, lane) => {
      const cutDir = path.join(root, `audit-cut-${lane}`);
      const stateCopy = path.join(root, `state-copy-${lane}`);
      rmSync(cutDir, { recursive: true, force: true });
      mkdirSync(cutDir);
      for (let j = 0; j < f; j++) writeFileSync(path.join(cutDir, names[j]), texts[j]);
      writeFileSync(path.join(cutDir, names[f]), texts[f].slice(0, cut));
      rmSync(stateCopy, { recursive: true, force: true });
      cpSync(gState, stateCopy, { recursive: true });
      const r = await startup(stateCopy, cutDir);
      if (r.refused) {
        count(codes, r.refused);
        if (r.message) messages++;
        for (const v of secretValues) if (r.message?.includes(v)) leaks.push(`audit cut: ${names[f]} at ${cut}`);
        if (r.refused.startsWith('AUDIT_') || r.refused === 'STATE_ROLLBACK') refused++;
        else bad.push(`${names[f]} cut at ${cut}: ${r.refused}`);
      } else bad.push(`${names[f]} cut at ${cut}: OPENED`);
    });
    log(`audit cuts: ${refused} refused of ${n}`);
    rows.push({
      check:
        "the audit log cut back (at every line and inside every line) behind the store's copy of its head: refused",
      figure: `${int(n)} cuts${n === 0 ? ' (none: the audit log is empty)' : ''}: ${int(refused)} refused (${tally(codes)})${bad.length ? `; WRONG: ${bad.slice(0, 3).join(' / ')}` : ''}`,
      ok: n > 0 && bad.length === 0 && refused === n,
    });
  }
  const checkedMs = performance.now() - t0;
  rows.push({
    check: 'no refusal message holds a secret value (nor a value of the store)',
    figure: `${int(secretValues.size)} values looked for in ${int(messages)} messages; found: ${leaks.length}${leaks.length ? ` (${leaks.slice(0, 3).join(' / ')})` : ''}; all cases in ${ms(checkedMs)}`,
    ok: secretValues.size > 0 && messages > 0 && leaks.length === 0,
  });

  // --- the real daemon on a sample: the same answer as the start-up path ---------------------------------
  // Every class and code (the short run: every code), and the crash state.
  const samples = [...refusalSamples.entries()]
    .filter(([k], i, all) => !short || all.findIndex(([x]) => x.split(' ')[1] === k.split(' ')[1]) === i)
    .map(([k, c]) => ({ key: k, c }));
  for (const [seq, c] of crashStates) samples.push({ key: `crash state ${seq}`, c, crash: true });
  let same = 0;
  let crashFinished = '';
  const diffs = [];
  const examples = [];
  // A few daemons at a time, each on its own copy (they share nothing but this process).
  await pool(samples, short ? 2 : 3, async ({ key, c, crash }, lane) => {
    const dir = path.join(root, `daemon-case-${lane}`);
    rmSync(dir, { recursive: true, force: true });
    copyTree(path.join(g, 'data'), path.join(dir, 'data'));
    cpSync(path.join(g, 'remote.git'), path.join(dir, 'remote.git'), { recursive: true });
    git(path.join(dir, 'data', 'repo'), 'remote', 'set-url', 'origin', path.join(dir, 'remote.git'));
    const st = path.join(dir, 'data', 'state');
    for (const name of readdirSync(st)) rmSync(path.join(st, name));
    for (const [name, buf] of Object.entries(c.files)) if (buf !== null) writeFileSync(path.join(st, name), buf);
    const expected = await startup(st, path.join(dir, 'data', 'repo', 'audit'));
    const d = new Daemon({
      repo: path.join(dir, 'remote.git'),
      branch: 'main',
      dataDir: path.join(dir, 'data'),
      socketDir: path.join(dir, 'sockets'),
      breakGlass: [],
      log: () => undefined,
      commitDelayMs: 3_600_000,
    });
    let got;
    try {
      await d.start();
      // Started: the crash state must be finished, each secret at the version the audit log last made current.
      const versions = SECRETS.map((s) => d.served(s)?.version);
      await d.stop();
      got = { opened: true, versions };
    } catch (e) {
      got = { refused: e.code ?? 'ERROR', message: e.message };
    }
    const lastAudited = SECRETS.map((name) => audited.get(name));
    const agree = crash
      ? got.opened === true && expected.opened === true && JSON.stringify(got.versions) === JSON.stringify(lastAudited)
      : got.refused !== undefined && got.refused === expected.refused;
    if (crash && got.opened)
      crashFinished = `the daemon started on the crash state and serves each secret at the version the audit log last made current (${got.versions.join(', ')})`;
    if (agree) same++;
    else
      diffs.push(
        `${key} (${c.what}): daemon ${got.refused ?? 'started'}, start-up path ${expected.refused ?? 'opened'}`,
      );
    if (got.refused && examples.length < 2 && !examples.some((x) => x.startsWith(got.refused)))
      examples.push(`${got.refused}: "${clip(got.message.replace(root, '...'), 170)}"`);
  });
  log(`Daemon.start: ${same}/${samples.length} the same`);
  rows.push({
    check: `Daemon.start on a full copy of the data directory gives the same answer as the start-up path (a case of every ${short ? 'code' : 'class and code'}, and the crash state)`,
    figure: `${same}/${samples.length} the same${diffs.length ? `; DIFFERENT: ${diffs.slice(0, 3).join(' / ')}` : ''}${crashFinished ? `; ${crashFinished}` : '; no crash state was found to start on'}; e.g. ${examples.join('; ')}`,
    ok: samples.length > 0 && crashStates.size > 0 && same === samples.length,
  });
  return rows;
}

// --- kills during state writes ------------------------------------------------------------------------------

async function kills(root, { generateKeys, loadKeys }, { short, log }) {
  const keysDir = path.join(root, 'kill-keys');
  await generateKeys(keysDir);
  const keys = await loadKeys(keysDir);
  const idFile = path.join(root, 'kill-identity.txt');
  writeFileSync(idFile, `${keys.identity}\n`, { mode: 0o600 });
  const { openStore } = await dist('src/state/store.js');
  const LANES = 2;
  const KILLS = short ? 6 : 80; // per lane; the full run goes on until MIN_WRITES were acknowledged
  const MIN_WRITES = 1000;
  const expectedCache = new Map();
  const expected = (m) => {
    if (!expectedCache.has(m)) expectedCache.set(m, stateAfter(m));
    return expectedCache.get(m);
  };
  const totals = { kills: 0, acked: 0, submitted: 0, duringOpen: 0, repairs: {}, tmpLeft: 0, maxM: 0 };
  const bad = [];
  const t0 = performance.now();
  /** A child that has loaded its modules and waits for the go-ahead. */
  const spawnWriter = (dir) => {
    const child = spawn(process.execPath, [WRITER, dir, idFile, keys.recipient], {
      stdio: ['pipe', 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    child.stdin.on('error', () => undefined);
    const lines = [];
    let buf = '';
    let onLine = (l) => lines.push(l);
    child.stdio[3].on('data', (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        onLine(line);
      }
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
    const closed = new Promise((resolve) => child.on('close', (c, s) => resolve([c, s])));
    return {
      child,
      closed,
      stderr: () => stderr,
      listen(fn) {
        onLine = fn;
        for (const l of lines.splice(0)) fn(l);
      },
    };
  };
  const lane = async (no) => {
    const dir = path.join(root, `kill-store-${no}`);
    const check = path.join(root, `kill-check-${no}`);
    let mPrev = 0;
    let floor = 0;
    let next = spawnWriter(dir);
    try {
      for (let k = 0; k < KILLS || (!short && totals.acked < MIN_WRITES && k < 4 * KILLS); k++) {
        const w = next;
        let maxStart = 0;
        let maxAck = 0;
        let ready = false;
        let timer;
        const killAt = (msLater) => {
          if (timer === undefined) timer = setTimeout(() => w.child.kill('SIGKILL'), msLater);
        };
        w.listen((line) => {
          const [word, arg] = line.split(' ');
          if (word === 'open' && randomInt(100) < 15)
            killAt(randomInt(0, 12)); // while it opens (and repairs)
          else if (word === 'ready') {
            ready = true;
            killAt(randomInt(0, short ? 30 : 100));
          } else if (word === 'start') maxStart = Math.max(maxStart, Number(arg));
          else if (word === 'ack') maxAck = Math.max(maxAck, Number(arg));
          else if (word === 'warn') count(totals.repairs, arg);
          else if (word === 'error') bad.push(`lane ${no} kill ${k}: the writer failed: ${arg}`);
        });
        w.child.stdin.end('g');
        next = spawnWriter(dir); // loads while this one runs; waits for its go-ahead
        const [code, signal] = await w.closed;
        clearTimeout(timer);
        if (signal !== 'SIGKILL') {
          bad.push(`lane ${no} kill ${k}: the writer ended by itself (${code}): ${w.stderr().split('\n')[0]}`);
          return;
        }
        totals.kills++;
        if (!ready) totals.duringOpen++;
        if (existsSync(dir) && readdirSync(dir).some((f) => f.endsWith('.tmp'))) totals.tmpLeft++;
        // A copy is opened, so that the next child meets the files exactly as the kill left them.
        rmSync(check, { recursive: true, force: true });
        if (existsSync(dir)) cpSync(dir, check, { recursive: true });
        else mkdirSync(check);
        let s;
        try {
          s = await openStore({
            dir: check,
            identity: keys.identity,
            recipients: [keys.recipient],
            onWarning: () => undefined,
          });
        } catch (e) {
          bad.push(`lane ${no} kill ${k}: the store does not open: ${e.code ?? e.message}`);
          return;
        }
        const m = s.get('counter') ?? 0;
        const state = canonical(s.entries());
        await s.close();
        const hi = Math.max(mPrev, maxStart);
        const lo = Math.max(floor, maxAck, mPrev);
        if (m < lo || m > hi) bad.push(`lane ${no} kill ${k}: the store holds ${m} writes, expected ${lo}..${hi}`);
        else if (state !== expected(m))
          bad.push(`lane ${no} kill ${k}: the store's state is not that of the first ${m} writes (a partial batch)`);
        totals.acked += Math.max(0, maxAck - Math.max(floor, mPrev));
        totals.submitted += Math.max(0, maxStart - mPrev);
        floor = Math.max(floor, maxAck);
        mPrev = m;
        totals.maxM = Math.max(totals.maxM, m);
        if (bad.length > 5) return;
      }
    } finally {
      next.child.kill('SIGKILL'); // the one started ahead and never used
      await next.closed;
    }
  };
  await Promise.all(Array.from({ length: LANES }, (_, i) => lane(i)));
  const elapsed = performance.now() - t0;
  log(`kills: ${totals.kills}, writes acknowledged ${totals.acked}`);
  return [
    {
      check:
        'SIGKILL at random points while a child writes the store (four writers, group commit, compaction every 25 records): the store always opens and holds exactly the first m batches, m between the last acknowledged and the last submitted',
      figure: `${int(totals.kills)} kills (${int(totals.duringOpen)} while opening), ${int(totals.acked)} acknowledged writes (${int(totals.submitted)} submitted), ${LANES} stores of up to ${int(totals.maxM)} writes; repairs on open: ${tally(totals.repairs)}; a .tmp file left by ${int(totals.tmpLeft)} kills; ${ms(elapsed)}${bad.length ? `; WRONG: ${bad.slice(0, 3).join(' / ')}` : ''}`,
      ok: bad.length === 0 && totals.kills >= LANES * KILLS && totals.acked >= (short ? 1 : MIN_WRITES),
    },
  ];
}
