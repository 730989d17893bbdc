// The world of the proofs, parts 1-3: a bare remote (that accepts non-fast-forward pushes, so that a
// force-push would land and show, and keeps a reflog of every update), a person's clone with the declarations, a data directory with keys, the daemon
// in its own process (faults-daemon.mjs), a consumer reading through its socket, and the checks run
// afterwards on what is on disk: the audit log (local and remote), the state store, what was served.
// Values are kept in memory only as long as the run needs them, and never printed.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const dist = (p) => new URL(`../../dist/src/${p}`, import.meta.url).href;
const { generateKeys, loadKeys } = await import(dist('keys.js'));
const { openStore } = await import(dist('state/store.js'));
const { verifyAuditDir } = await import(dist('audit/log.js'));
const { callAdmin } = await import(dist('cli/admin-client.js'));
const { getSecret } = await import(dist('client/index.js'));

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const DAEMON = fileURLToPath(new URL('./faults-daemon.mjs', import.meta.url));
export const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

/** git for the people and scripts of the world (not the daemon): no user or system configuration. */
export const GIT_ENV = {
  ...process.env,
  GIT_AUTHOR_NAME: 'prove',
  GIT_AUTHOR_EMAIL: 'prove@rotor.invalid',
  GIT_COMMITTER_NAME: 'prove',
  GIT_COMMITTER_EMAIL: 'prove@rotor.invalid',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_CONFIG_GLOBAL: '/dev/null',
  GIT_TERMINAL_PROMPT: '0',
};

export function git(cwd, ...args) {
  return execFileSync('git', args, {
    cwd,
    env: GIT_ENV,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    maxBuffer: 256 * 1024 * 1024,
  }).trim();
}

/** git without blocking the event loop; resolves { code, stdout, stderr } (never rejects). */
export function gitRun(cwd, args, env = GIT_ENV) {
  return new Promise((resolve) => {
    execFile('git', args, { cwd, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      resolve({
        code: err ? (typeof err.code === 'number' ? err.code : -1) : 0,
        stdout: stdout.trim(),
        stderr: stderr.trim(),
      });
    });
  });
}

/** Polls `fn` (sync or async) until it returns a truthy value or `timeoutMs` passes; returns the value or undefined. */
export async function waitFor(fn, { timeoutMs, everyMs = 200 }) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() >= deadline) return undefined;
    await sleep(everyMs);
  }
}

/**
 * A bare remote with `files` on main, a person's clone of it, and a data directory with the daemon's
 * keys. The remote accepts non-fast-forward pushes (receive.denyNonFastForwards false, as many hosted
 * remotes do for unprotected branches): a force-push by rotor would land, not be refused, and then show
 * in the reflog (core.logAllRefUpdates: every update of main, with its old and new head) and as other
 * writers' commits missing. gc.auto 0: nothing is pruned or expired while the proof runs.
 */
export async function makeWorld(prefix, files) {
  const root = mkdtempSync(path.join(os.tmpdir(), `rotor-prove-${prefix}-`));
  const person = path.join(root, 'person');
  mkdirSync(person);
  git(person, 'init', '-q', '-b', 'main');
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(person, f)), { recursive: true });
    writeFileSync(path.join(person, f), text);
  }
  git(person, 'add', '-A');
  git(person, 'commit', '-q', '-m', 'declarations');
  const remote = path.join(root, 'remote.git');
  git(root, 'clone', '-q', '--bare', person, remote);
  git(remote, 'config', 'receive.denyNonFastForwards', 'false');
  git(remote, 'config', 'receive.denyDeletes', 'true');
  git(remote, 'config', 'core.logAllRefUpdates', 'always');
  git(remote, 'config', 'gc.auto', '0');
  git(person, 'remote', 'add', 'origin', remote);
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  const socketDir = path.join(root, 'sockets');
  // ROTOR_PROVE_KEEP=1 keeps the world (repositories, data directory, daemon.log) for a post-mortem.
  const cleanup = () =>
    process.env.ROTOR_PROVE_KEEP
      ? process.stderr.write(`kept ${root}\n`)
      : rmSync(root, { recursive: true, force: true });
  return { root, person, remote, dataDir, socketDir, cleanup };
}

/** Declarations: `n` generated secrets under load/ on a policy `every`, and one consumer with our uid. */
export function declarations({ n, every, overlap, prefix = 'load' }) {
  const secrets = [];
  for (let i = 0; i < n; i++)
    secrets.push(
      `kind: Secret\nname: ${prefix}/s${String(i).padStart(3, '0')}\npolicy: fast\n${i % 3 === 2 ? 'fields: { token: { generate: { length: 24 } }, region: { value: eu-west-1 } }' : 'generate: { length: 24 }'}\n`,
    );
  return {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': `kind: Policy\nname: fast\nevery: ${every}\noverlap: ${overlap}\n`,
    'secrets.yaml': secrets.join('---\n'),
    'consumer.yaml': `kind: Consumer\nname: prove\nuid: ${process.getuid()}\nsecrets: ["${prefix}/**"]\n`,
  };
}

export const secretNames = (n, prefix = 'load') =>
  Array.from({ length: n }, (_, i) => `${prefix}/s${String(i).padStart(3, '0')}`);

/**
 * Starts the daemon (faults-daemon.mjs) in its own process; resolves once it started. `env` is added
 * to its environment (the git wrapper's PATH); `breakGlass`: age recipients the store is sealed to too. Its log lines go to DATA_DIR/../daemon.log.
 */
export async function startDaemon(w, { env = {}, store, audit, seed = 1, commitDelayMs = 200, breakGlass = [] } = {}) {
  const logFile = path.join(w.root, 'daemon.log');
  const fd = openSync(logFile, 'a');
  const cfg = {
    repo: w.remote,
    dataDir: w.dataDir,
    socketDir: w.socketDir,
    seed,
    commitDelayMs,
    store,
    audit,
    breakGlass,
  };
  // env -u NODE_OPTIONS: a test runner's loaders in NODE_OPTIONS would double the child's start-up.
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, DAEMON, JSON.stringify(cfg)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', fd, 'ipc'],
  });
  closeSync(fd);
  let next = 0;
  const waiting = new Map();
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  void exited.then(() => {
    for (const [, w2] of waiting) w2.reject(new Error('the daemon process exited'));
    waiting.clear();
  });
  const started = new Promise((resolve, reject) => {
    child.on('message', (m) => {
      if (m.type === 'started') resolve();
      else if (m.type === 'failed')
        reject(Object.assign(new Error(`the daemon did not start: ${m.message}`), { code: m.code }));
      else if (m.id !== undefined) {
        const p = waiting.get(m.id);
        waiting.delete(m.id);
        if (m.ok) p?.resolve(m.result);
        else p?.reject(new Error(m.error));
      }
    });
    void exited.then(({ code, signal }) =>
      reject(new Error(`the daemon exited (${code ?? signal}) before it started: ${tail(logFile)}`)),
    );
  });
  await started;
  const send = (cmd, extra = {}) =>
    new Promise((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      child.send({ id, cmd, ...extra });
    });
  return {
    pid: child.pid,
    logFile,
    faults: (plans) => send('faults', plans),
    counts: () => send('counts'),
    /** A graceful stop (the daemon pushes what is left); resolves when the process is gone. */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) await send('stop').catch(() => undefined);
      return exited;
    },
    kill: () => child.kill('SIGKILL'),
    exited,
    logLines: () =>
      readFileSync(logFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l)),
  };
}

function tail(file) {
  try {
    return readFileSync(file, 'utf8').slice(-2000);
  } catch {
    return '';
  }
}

export const status = (w) => callAdmin(path.join(w.dataDir, 'admin.sock'), 'GET', '/v1/status');
export const rotate = (w, name, reason) =>
  callAdmin(path.join(w.dataDir, 'admin.sock'), 'POST', '/v1/rotate', { name, reason });

/** `rotor ARGS` as its own process (the real CLI): { code, stdout, stderr }. */
export function cli(args) {
  return new Promise((resolve) => {
    const { NODE_OPTIONS: _loaders, ...env } = process.env; // a test runner's loaders would slow the CLI's start
    execFile(
      process.execPath,
      [CLI, ...args],
      { encoding: 'utf8', env: { ...env, NO_COLOR: '1' } },
      (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
      },
    );
  });
}

/**
 * A consumer reading every secret in turn through its socket, in `loops` concurrent loops, until
 * stopped (each loop pausing `pauseMs` between reads). It keeps each (secret, version) -> value it was served (current and previous), and counts
 * what must never happen: a version served with two different values, a version lower than one this
 * loop was already served.
 */
export function startReader(w, names, { consumer = 'prove', loops = 4, pauseMs = 2 } = {}) {
  const socket = path.join(w.socketDir, `${consumer}.sock`);
  const seen = new Map(); // name -> Map(version -> canonical JSON of the value)
  const stats = { reads: 0, errors: 0, errorCodes: {}, conflicting: 0, backwards: 0 };
  const served = []; // [time, name, current version] of every read
  let stopped = false;
  const keep = (name, version, value) => {
    let m = seen.get(name);
    if (!m) seen.set(name, (m = new Map()));
    const v = canonicalJson(value);
    const had = m.get(version);
    if (had !== undefined && had !== v) stats.conflicting++;
    m.set(version, v);
  };
  const loop = async (k) => {
    const last = new Map();
    for (let i = k; !stopped; i++) {
      const name = names[i % names.length];
      try {
        const s = await getSecret(name, { socket, timeoutMs: 10_000 });
        stats.reads++;
        keep(name, s.version, s.value);
        served.push([Date.now(), name, s.version]);
        if (s.previous) keep(name, s.previous.version, s.previous.value);
        if (s.version < (last.get(name) ?? 0)) stats.backwards++;
        last.set(name, s.version);
        await sleep(pauseMs); // a steady load, not all of the machine's two cores
      } catch (e) {
        stats.errors++;
        stats.errorCodes[e.code ?? 'ERROR'] = (stats.errorCodes[e.code ?? 'ERROR'] ?? 0) + 1;
        await sleep(20);
      }
    }
  };
  const running = Array.from({ length: loops }, (_, k) => loop(k));
  return {
    seen,
    stats,
    /** secret -> the current versions served between `from` and `to` (ms). */
    servedBetween(from, to) {
      const out = new Map();
      for (const [at, name, version] of served) {
        if (at < from || at > to) continue;
        if (!out.has(name)) out.set(name, new Set());
        out.get(name).add(version);
      }
      return out;
    },
    /** The latest version this reader was served of each secret. */
    latest: () => new Map([...seen].map(([n, m]) => [n, Math.max(...m.keys())])),
    async stop() {
      stopped = true;
      await Promise.all(running);
    },
  };
}

// ---- what is on disk afterwards ------------------------------------------------------------------

/** Canonical JSON as src/audit/fingerprint.ts defines it (keys sorted, no spaces), written anew here. */
export function canonicalJson(v) {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  return `{${Object.keys(v)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`)
    .join(',')}}`;
}

/** The keyed fingerprint of a value, computed here independently of src/: "hmac-sha256:" + 16 bytes, base64url. */
export function fingerprintOf(key, canonical) {
  return `hmac-sha256:${createHmac('sha256', key).update(canonical, 'utf8').digest().subarray(0, 16).toString('base64url')}`;
}

/** The entries of an audit directory (every *.jsonl, in name order). */
export function auditEntries(dir) {
  let files;
  try {
    files = readdirSync(dir)
      .filter((f) => f.endsWith('.jsonl'))
      .sort();
  } catch {
    return [];
  }
  return files.flatMap((f) =>
    readFileSync(path.join(dir, f), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l)),
  );
}

/** The remote's audit log: a fresh clone of main, verified with src/audit's verifier. */
export async function remoteAudit(w, name = 'check') {
  const dir = path.join(w.root, `${name}-${Date.now()}`);
  git(w.root, 'clone', '-q', w.remote, dir);
  const audit = path.join(dir, 'audit');
  const v = await verifyAuditDir(audit);
  const entries = auditEntries(audit);
  rmSync(dir, { recursive: true, force: true });
  return { verified: v.result, entries };
}

/** The daemon's clone's audit log, verified with src/audit's verifier (from its first line). */
export async function localAudit(w) {
  return (await verifyAuditDir(path.join(w.dataDir, 'repo', 'audit'))).result;
}

/** The highest seq on the remote's main right now (reads the bare repository, cheap enough to poll). */
export function remoteSeq(w) {
  const files = git(w.remote, 'ls-tree', '--name-only', 'main', 'audit/')
    .split('\n')
    .filter((f) => f.endsWith('.jsonl'))
    .sort();
  const last = files.at(-1);
  if (!last) return 0;
  const lines = git(w.remote, 'show', `main:${last}`).split('\n').filter(Boolean);
  return lines.length ? JSON.parse(lines.at(-1)).seq : 0;
}

/** The highest seq in the daemon's clone (written and fsynced, maybe not yet committed). */
export function localSeq(w) {
  const e = auditEntries(path.join(w.dataDir, 'repo', 'audit'));
  return e.length ? e.at(-1).seq : 0;
}

/** After the daemon stopped: the fingerprint key and every secret record in the store. */
export async function storeView(w, anchorSeq) {
  const keys = await loadKeys(w.dataDir);
  const store = await openStore({
    dir: path.join(w.dataDir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
    ...(anchorSeq ? { anchor: { seq: anchorSeq } } : {}),
    onWarning: () => undefined,
  });
  try {
    const key = Buffer.from(store.get('meta/fingerprint-key'), 'base64');
    const records = new Map([...store.entries('secret/')].map(([, r]) => [r.name, r]));
    return { key, records };
  } finally {
    await store.close();
  }
}

/**
 * Versions per secret from the audit log's created/rotated entries: each must be the previous plus
 * one, from 1, each once. Returns { last: Map(name -> last version), byVersion: Map("name@v" -> entry), problems[] }.
 */
export function auditVersions(entries) {
  const last = new Map();
  const byVersion = new Map();
  const problems = [];
  for (const e of entries) {
    if (e.event === 'purged') last.delete(e.secret);
    if ((e.event !== 'created' && e.event !== 'rotated') || !e.secret) continue;
    const want = (last.get(e.secret) ?? 0) + 1;
    if (e.to !== want) problems.push(`${e.secret}: entry ${e.seq} makes version ${e.to} current, expected ${want}`);
    if (e.event === 'rotated' && e.from !== e.to - 1)
      problems.push(`${e.secret}: entry ${e.seq} rotates from ${e.from} to ${e.to}`);
    if (byVersion.has(`${e.secret}@${e.to}`))
      problems.push(
        `${e.secret}: version ${e.to} audited twice (entries ${byVersion.get(`${e.secret}@${e.to}`).seq} and ${e.seq})`,
      );
    byVersion.set(`${e.secret}@${e.to}`, e);
    last.set(e.secret, e.to);
  }
  return { last, byVersion, problems };
}

/** Sequence numbers 1..N, each once, in order. */
export function seqProblems(entries) {
  const out = [];
  entries.forEach((e, i) => {
    if (e.seq !== i + 1) out.push(`entry ${i + 1} has seq ${e.seq}`);
  });
  return out.slice(0, 5);
}

/**
 * The remote's reflog of main (logs/refs/heads/main: one line per update, "OLD NEW who when\tmessage"):
 * each update's old head must be an ancestor of its new one (a fast-forward; the remote accepts others,
 * so a force-push would be here), and each must start where the one before ended (none missing).
 * Returns { updates, forced, gaps, examples }.
 */
export function forcedUpdates(w) {
  const file = path.join(w.remote, 'logs', 'refs', 'heads', 'main');
  let text = '';
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return { updates: 0, forced: 0, gaps: 0, examples: [`no reflog at ${file}`] };
  }
  const ZERO = /^0+$/;
  let forced = 0;
  let gaps = 0;
  let prev;
  const examples = [];
  const lines = text.split('\n').filter(Boolean);
  for (const line of lines) {
    const [oldHead, newHead] = line.split(' ');
    if (prev !== undefined && oldHead !== prev) {
      gaps++;
      if (examples.length < 3)
        examples.push(`an update from ${oldHead.slice(0, 12)}, but main was at ${prev.slice(0, 12)}`);
    }
    if (!ZERO.test(oldHead)) {
      try {
        git(w.remote, 'merge-base', '--is-ancestor', oldHead, newHead);
      } catch {
        forced++;
        if (examples.length < 3)
          examples.push(
            `${oldHead.slice(0, 12)} -> ${newHead.slice(0, 12)} is not a fast-forward (${line.split('\t')[1] ?? ''})`,
          );
      }
    }
    prev = newHead;
  }
  return { updates: lines.length, forced, gaps, examples };
}

/** "a 3, b 1" from a count object, largest first. */
export function tally(counts) {
  const parts = Object.entries(counts)
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}`);
  return parts.length ? parts.join(', ') : 'none';
}

export const secondsOf = (ms) => `${(ms / 1000).toFixed(1)} s`;
