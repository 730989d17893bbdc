/**
 * Consumers on agents' hosts, with real processes: one `rotor daemon` and two `rotor-agent`s (web-1 and
 * web-2, each with keys made by `rotor keygen` and a socket directory of its own), the CLIs from dist/,
 * and two consumers running as Unix users created here (needs root and useradd, as in CI):
 *
 *   alpha  on web-1, granted shop/* (shop/db, shop/api, shop/session)
 *   beta   on web-2, granted shop/db and shop/session
 *   nobody is granted admin/root
 *
 * shop/db and shop/api overlap 1 day, shop/session 30 s; every policy says `retireAfter: consumers`.
 * What is proved:
 *  1. The access matrix across hosts: each user, through every socket path on both agents' hosts and in
 *     the daemon's socket directory, reads exactly its granted secrets on its own socket (the value each
 *     agent has in its sealed cache, the same on both hosts); 403 ACCESS_DENIED on its own socket for the
 *     others, EACCES on the other user's socket, ENOENT where no socket is.
 *  2. A rotation reaches both hosts through long-polls held by both users; both having read it, the
 *     previous version retires early.
 *  3. An agent reporting a read of a consumer it does not host (web-2 signing a receipt for alpha) is
 *     refused (accepted: 0) and logged (AGENT_CONSUMER_FOREIGN); the status keeps alpha's receipt.
 *  4. Receipts across hosts: only alpha reads the new version: the status shows beta behind on web-2, the
 *     previous version stays until its overlap ends (retired, not early); the next rotation, read by
 *     both, retires the previous early.
 *  5. The daemon SIGKILLed: both agents keep serving (health stale, with since); long-polls held on both
 *     hosts across the daemon's restart (same data dir and port) answer with the next version after a
 *     rotation; health ok again.
 *  6. An agent SIGKILLed and restarted while the daemon is down serves its sealed cache (it logs so;
 *     health stale); the daemon back, it is current again.
 *  7. No value any probe saw is in any process's log or in either cache file; the caches are 0600 and
 *     hold only the secrets of the agent's own consumers.
 *
 * Events are awaited (log lines on the children's stderr, probe output, exits); the only polling is of
 * `rotor status` (a receipt arriving) and of the cache file (written just after an answer is applied).
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as pause } from 'node:timers/promises';
import t from 'tap';
import { CACHE_FILE } from '../agent/src/host.js';
import { loadKeys, parseSigningKey } from '../src/keys.js';
import { openSealed } from '../src/protocol/seal.js';
import { H_NONCE, signRequest, verifyResponse } from '../src/protocol/sign.js';
import type { SecretCopy } from '../src/protocol/values.js';
import { AGENT_RECEIPTS_PATH, MAX_VALUES_ANSWER } from '../src/protocol/values.js';
import { ROOT } from './helpers.js';
import { world } from './world.js';

const BIN = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const AGENT_BIN = path.join(ROOT, 'agent', 'dist', 'main.js');
/** How long any one awaited event may take on a busy machine. */
const EVENT_MS = 120_000;

const isRoot = process.getuid?.() === 0;
const haveUseradd = spawnSync('useradd', ['--help']).status === 0;

const SECRETS = ['shop/db', 'shop/api', 'shop/session', 'admin/root'] as const;
const AGENTS = ['web-1', 'web-2'] as const;
type AgentName = (typeof AGENTS)[number];
const CONSUMERS = {
  alpha: { agent: 'web-1', globs: ['shop/*'], granted: ['shop/db', 'shop/api', 'shop/session'] },
  beta: { agent: 'web-2', globs: ['shop/db', 'shop/session'], granted: ['shop/db', 'shop/session'] },
} as const;
type ConsumerName = keyof typeof CONSUMERS;
const HOSTS = [...AGENTS, 'daemon'] as const;
type Host = (typeof HOSTS)[number];

// ---------------------------------------------------------------------------------------------------
// Processes: the CLIs, their JSON log lines, awaited.

interface LogLine {
  readonly msg?: string;
  readonly code?: string;
  readonly [field: string]: unknown;
}

/** Runs node SCRIPT ARGS without tap's loaders (NODE_OPTIONS), as root or as `as`. */
function spawnNode(script: string, args: readonly string[], as?: User): ChildProcess {
  return spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(as
      ? { uid: as.uid, gid: as.gid, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, cwd: os.tmpdir() }
      : { env: process.env }),
  });
}

/** A long-running daemon or agent: its stderr, parsed into lines that can be awaited. */
class Proc {
  readonly lines: LogLine[] = [];
  text = '';
  exited = false;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly #child: ChildProcess;
  readonly #wake = new Set<() => void>();

  constructor(
    readonly what: string,
    script: string,
    args: readonly string[],
  ) {
    this.#child = spawnNode(script, args);
    let partial = '';
    this.#child.stdout!.resume();
    this.#child.stderr!.on('data', (c: Buffer) => {
      this.text += c.toString();
      partial += c.toString();
      const parts = partial.split('\n');
      partial = parts.pop()!;
      for (const l of parts) {
        try {
          this.lines.push(JSON.parse(l) as LogLine);
        } catch {
          this.lines.push({ msg: l });
        }
      }
      for (const w of [...this.#wake]) w();
    });
    this.exit = new Promise((resolve) => {
      const end = (code: number | null, signal: NodeJS.Signals | null) => {
        this.exited = true;
        for (const w of [...this.#wake]) w();
        resolve({ code, signal });
      };
      this.#child.on('exit', end);
      this.#child.on('error', (e) => {
        this.text += `spawn failed: ${e.message}\n`;
        end(-1, null);
      });
    });
  }

  /** Where the log is now: `line(..., from)` looks only at what comes after. */
  mark(): number {
    return this.lines.length;
  }

  /** The first line from `from` on that `match` accepts; fails if the process exits first or after `ms`. */
  async line(what: string, match: (l: LogLine) => boolean, from = 0, ms = EVENT_MS): Promise<LogLine> {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = this.lines.slice(from).find(match);
      if (found) return found;
      const left = deadline - Date.now();
      if (this.exited || left <= 0)
        throw new Error(
          `${this.what} ${this.exited ? 'exited' : `did not log within ${ms / 1000} s`} before ${what}; its log ends:\n${this.text.slice(-4000)}`,
        );
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.#wake.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.#wake.add(done);
      });
    }
  }

  msg(text: string, from = 0, ms = EVENT_MS): Promise<LogLine> {
    return this.line(`"${text}"`, (l) => l.msg === text, from, ms);
  }

  async kill(): Promise<void> {
    if (!this.exited) this.#child.kill('SIGKILL');
    await this.exit;
  }

  /** SIGTERM, and the exit (SIGKILL after 30 s: a hang). */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (!this.exited) this.#child.kill('SIGTERM');
    const r = await Promise.race([this.exit, pause(30_000, undefined, { ref: false })]);
    if (r) return r;
    await this.kill();
    return { code: null, signal: 'SIGKILL' };
  }
}

/** Runs a CLI to its end: exit code and output. */
function run(
  script: string,
  args: readonly string[],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawnNode(script, args);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (b: Buffer) => (stdout += b));
    child.stderr!.on('data', (b: Buffer) => (stderr += b));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// ---------------------------------------------------------------------------------------------------
// The probe: a small script each consumer's user runs; it prints what it was answered (values too: the
// test needs them, to compare and to look for in the logs).

interface User {
  readonly consumer: ConsumerName;
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/** One GET, or (with `after`) long-polls `?wait=&after=` until a newer version or `deadlineMs`. */
interface ProbeRequest {
  readonly socket: string;
  readonly path: string;
  readonly after?: number;
}

interface Answer {
  /** 0 when no connection was made (then `code` is the errno). */
  readonly status: number;
  readonly code?: string;
  // biome-ignore lint/suspicious/noExplicitAny: answers of several shapes, read field by field
  readonly body?: any;
}

const PROBE = `
import http from 'node:http';
const [requests, deadlineMs] = [JSON.parse(process.argv[2]), Number(process.argv[3])];
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
const get = (socketPath, p, onConnect) => new Promise((resolve) => {
  const req = http.request({ socketPath, path: p, agent: false }, (res) => {
    let b = '';
    res.setEncoding('utf8');
    res.on('data', (c) => (b += c));
    res.on('end', () => {
      let body;
      try { body = JSON.parse(b); } catch {}
      resolve({ status: res.statusCode, code: body?.error?.code, body });
    });
  });
  req.on('socket', (s) => s.once('connect', () => onConnect?.()));
  req.on('error', (e) => resolve({ status: 0, code: e.code }));
  req.end();
});
const deadline = Date.now() + deadlineMs;
const results = await Promise.all(requests.map(async (r, i) => {
  if (r.after === undefined) return [await get(r.socket, r.path)];
  // A long-poll, again while the wait runs out with nothing newer, until a newer version comes.
  const answers = [];
  for (let first = true; Date.now() < deadline; first = false) {
    const a = await get(r.socket, r.path + '?wait=60&after=' + r.after, first ? () => say({ sent: i }) : undefined);
    answers.push(a);
    if (a.status !== 200 || a.body.version > r.after) break;
  }
  return answers;
}));
say({ uid: process.getuid(), gid: process.getgid(), results });
`;

// ---------------------------------------------------------------------------------------------------

if (!isRoot || !haveUseradd) {
  if (process.env.ROTOR_REQUIRE_SERVICES === '1')
    t.fail('the agent-hosts test needs root and useradd (it creates Unix users); CI runs as root');
  else
    t.skip(
      'the agent-hosts test needs root and useradd (it creates two Unix users and serves their sockets): run the tests as root, as .ci/run does',
      () => undefined,
    );
} else {
  t.test("consumers on two agents' hosts, with real processes", async (t) => {
    const started = Date.now();
    const procs: Proc[] = [];
    const probes = new Set<ChildProcess>();
    const tag = randomBytes(3).toString('hex');
    const users = {} as Record<ConsumerName, User>;
    // One teardown, in order: processes (probes included) first, then the users they ran as.
    t.teardown(async () => {
      for (const p of probes) p.kill('SIGKILL');
      await Promise.all(procs.map((p) => p.kill()));
      for (const u of Object.values(users)) spawnSync('userdel', [u.name]);
    });
    for (const consumer of Object.keys(CONSUMERS) as ConsumerName[]) {
      const name = `rtr-${tag}-${consumer}`;
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', name]);
      users[consumer] = {
        consumer,
        name,
        uid: Number(execFileSync('id', ['-u', name], { encoding: 'utf8' })),
        gid: Number(execFileSync('id', ['-g', name], { encoding: 'utf8' })),
      };
    }

    // The socket directories must be reachable by the consumers' users; the key and data directories not.
    const open = mkdtempSync(path.join(os.tmpdir(), 'rotor-hosts-'));
    chmodSync(open, 0o755);
    t.teardown(() => rmSync(open, { recursive: true, force: true }));
    const socketDirs: Record<Host, string> = {
      'web-1': path.join(open, 'web-1'),
      'web-2': path.join(open, 'web-2'),
      daemon: path.join(open, 'daemon'),
    };
    const probeFile = path.join(open, 'probe.mjs');
    writeFileSync(probeFile, PROBE, { mode: 0o644 });

    // `rotor keygen` on each agent's host: its keys, and the public halves for its Agent declaration.
    const keyRoot = mkdtempSync(path.join(os.tmpdir(), 'rotor-hosts-keys-'));
    t.teardown(() => rmSync(keyRoot, { recursive: true, force: true }));
    const keyDirs = {} as Record<AgentName, string>;
    const agentDecls: string[] = [];
    for (const agent of AGENTS) {
      keyDirs[agent] = path.join(keyRoot, agent);
      const k = await run(BIN, ['keygen', keyDirs[agent]]);
      t.equal(k.code, 0, `rotor keygen for ${agent}: ${k.stderr}`);
      const recipient = /^recipient: "?(age1[a-z0-9]+)"?$/m.exec(k.stdout)?.[1];
      const signingKey = /^signingKey: "?(ed25519:[A-Za-z0-9+/=]+)"?$/m.exec(k.stdout)?.[1];
      if (!recipient || !signingKey) throw new Error(`rotor keygen printed no keys: ${k.stdout}`);
      agentDecls.push(`kind: Agent\nname: ${agent}\nsigningKey: "${signingKey}"\nrecipient: ${recipient}\n`);
    }

    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policies.yaml': [
        'kind: Policy\nname: long\nevery: 30d\noverlap: 1d\nretireAfter: consumers\n',
        'kind: Policy\nname: short\nevery: 30d\noverlap: 30s\nretireAfter: consumers\n',
      ].join('---\n'),
      'agents.yaml': agentDecls.join('---\n'),
      'secrets.yaml': SECRETS.map(
        (s) =>
          `kind: Secret\nname: ${s}\npolicy: ${s === 'shop/session' ? 'short' : 'long'}\ngenerate: { length: 32 }\n`,
      ).join('---\n'),
      'consumers.yaml': (Object.keys(CONSUMERS) as ConsumerName[])
        .map((c) => {
          const { agent, globs } = CONSUMERS[c];
          const u = users[c];
          return `kind: Consumer\nname: ${c}\nagent: ${agent}\nuid: ${u.uid}\ngid: ${u.gid}\nsecrets: ${JSON.stringify(globs)}\n`;
        })
        .join('---\n'),
    });
    const daemonKeys = await loadKeys(w.dataDir);

    // ----- The processes.
    const startDaemon = async (listen: string): Promise<{ proc: Proc; address: string }> => {
      const proc = new Proc(`the daemon (${procs.length})`, BIN, [
        'daemon',
        '--repo',
        w.remote,
        '--data-dir',
        w.dataDir,
        '--socket-dir',
        socketDirs.daemon,
        '--agent-listen',
        listen,
        '--metrics-listen',
        'off',
        '--log-format',
        'json',
      ]);
      procs.push(proc);
      const listening = await proc.msg('listening for agents');
      await proc.msg('daemon started');
      return { proc, address: String(listening.address) };
    };
    let { proc: daemon, address } = await startDaemon('127.0.0.1:0');
    const configs = {} as Record<AgentName, string>;
    for (const agent of AGENTS) {
      configs[agent] = path.join(keyRoot, `${agent}.yaml`);
      writeFileSync(
        configs[agent],
        [
          `daemon: http://${address}`,
          `name: ${agent}`,
          `keyDir: ${keyDirs[agent]}`,
          `daemonSigningKey: "${daemonKeys.signingKey}"`,
          `socketDir: ${socketDirs[agent]}`,
          '',
        ].join('\n'),
        { mode: 0o600 },
      );
    }
    const startAgent = (agent: AgentName): Proc => {
      const proc = new Proc(`agent ${agent} (${procs.length})`, AGENT_BIN, [
        '--config',
        configs[agent],
        '--log-format',
        'json',
      ]);
      procs.push(proc);
      return proc;
    };
    const agents = {} as Record<AgentName, Proc>;
    for (const agent of AGENTS) agents[agent] = startAgent(agent);
    // The daemon made version 1 of every secret before it logged "daemon started": the agents' first answer has them.
    for (const agent of AGENTS) await agents[agent].msg('values from the daemon are current');

    // ----- Helpers on top of the processes.
    const socketOf = (host: Host, consumer: ConsumerName) => path.join(socketDirs[host], `${consumer}.sock`);
    const own = (c: ConsumerName) => socketOf(CONSUMERS[c].agent, c);
    /** Every value a probe was answered. */
    const seen = new Set<string>();
    const hash = (v: unknown) => createHash('sha256').update(String(v)).digest('hex');

    /** Runs the probe as `user`: `sent(i)` resolves when long-poll i is connected; `done` with every answer. */
    const probe = (user: User, requests: readonly ProbeRequest[], deadlineMs = 300_000) => {
      const child = spawnNode(probeFile, [JSON.stringify(requests), String(deadlineMs)], user);
      probes.add(child);
      const sentWaiters = new Map<number, () => void>();
      const sentSeen = new Set<number>();
      let out = '';
      let err = '';
      child.stderr!.on('data', (b: Buffer) => (err += b));
      child.stdout!.on('data', (b: Buffer) => {
        out += b;
        for (const m of out.matchAll(/^\{"sent":(\d+)\}$/gm)) {
          const i = Number(m[1]);
          sentSeen.add(i);
          sentWaiters.get(i)?.();
        }
      });
      const done = new Promise<Answer[][]>((resolve, reject) =>
        child.on('close', (code) => {
          probes.delete(child);
          const last = out.trim().split('\n').pop() ?? '';
          let report: { uid: number; gid: number; results: Answer[][] } | undefined;
          try {
            report = JSON.parse(last);
          } catch {
            report = undefined;
          }
          if (code !== 0 || !report?.results) {
            reject(new Error(`the probe as ${user.name} failed (exit ${code}): ${err.slice(0, 2000)}`));
            return;
          }
          if (report.uid !== user.uid || report.gid !== user.gid) {
            reject(new Error(`the probe ran as ${report.uid}:${report.gid}, not ${user.uid}:${user.gid}`));
            return;
          }
          for (const answers of report.results)
            for (const a of answers) {
              if (a.body?.value !== undefined) seen.add(String(a.body.value));
              if (a.body?.previous?.value !== undefined) seen.add(String(a.body.previous.value));
            }
          resolve(report.results);
        }),
      );
      const sent = (i: number) =>
        Promise.race([
          new Promise<void>((resolve) => (sentSeen.has(i) ? resolve() : sentWaiters.set(i, resolve))),
          done.then(() => {
            if (!sentSeen.has(i)) throw new Error(`the long-poll ${i} of ${user.name} never connected`);
          }),
        ]);
      return { sent, done };
    };
    /** One GET per path, as `c`, on its own socket: the answers in order. */
    const read = async (c: ConsumerName, ...paths: string[]): Promise<Answer[]> =>
      (
        await probe(
          users[c],
          paths.map((p) => ({ socket: own(c), path: p })),
        ).done
      ).map((a) => a[0]!);
    /** A long-poll held by `c` on its own socket until a version newer than `after`. */
    const longPoll = (c: ConsumerName, secret: string, after: number) => {
      const p = probe(users[c], [{ socket: own(c), path: `/v1/secrets/${secret}`, after }]);
      return { sent: p.sent(0), done: p.done.then((r) => r[0]!) };
    };

    interface ConsumerView {
      name: string;
      host: string;
      version?: number;
      behind: boolean;
    }
    const status = async (): Promise<{ secrets: { name: string; version?: number; consumers: ConsumerView[] }[] }> => {
      const r = await run(BIN, ['status', '--json', '--data-dir', w.dataDir]);
      try {
        return JSON.parse(r.stdout);
      } catch {
        throw new Error(`rotor status --json answered no JSON (exit ${r.code}): ${r.stderr}`);
      }
    };
    const consumerOf = async (secret: string, c: ConsumerName): Promise<ConsumerView | undefined> =>
      (await status()).secrets.find((s) => s.name === secret)?.consumers.find((x) => x.name === c);
    /** Polls `rotor status` (each an awaited child process) until `c` has read `secret` at `version`. */
    const receiptOf = async (secret: string, c: ConsumerName, version: number): Promise<ConsumerView | undefined> => {
      const deadline = Date.now() + EVENT_MS;
      for (;;) {
        const v = await consumerOf(secret, c);
        if (v?.version === version || Date.now() > deadline) return v;
        await pause(250);
      }
    };
    const rotate = async (secret: string, reason: string): Promise<void> => {
      const r = await run(BIN, ['rotate', secret, '--reason', reason, '--data-dir', w.dataDir]);
      if (r.code !== 0) throw new Error(`rotor rotate ${secret} failed: ${r.stderr}`);
    };
    const retired = (secret: string, version: number, from: number) =>
      daemon.line(
        `"previous version retired" of ${secret} version ${version}`,
        (l) => l.msg === 'previous version retired' && l.secret === secret && l.version === version,
        from,
      );

    /** The agent's sealed cache, opened with its identity; polled until `ready` accepts it (written just after an answer). */
    const cacheOf = async (agent: AgentName, ready: (m: Map<string, SecretCopy>) => boolean = () => true) => {
      const file = path.join(keyDirs[agent], CACHE_FILE);
      const { identity } = await loadKeys(keyDirs[agent]);
      const deadline = Date.now() + EVENT_MS;
      for (;;) {
        if (existsSync(file)) {
          const c = (await openSealed(identity, readFileSync(file, 'utf8'), MAX_VALUES_ANSWER)) as {
            secrets: SecretCopy[];
          };
          const m = new Map(c.secrets.map((s) => [s.name, s]));
          if (ready(m) || Date.now() > deadline) return m;
        } else if (Date.now() > deadline) throw new Error(`${agent} wrote no cache`);
        await pause(100);
      }
    };

    // ---------------------------------------------------------------------------------------------
    await t.test('1. the access matrix across hosts', async (t) => {
      const cells: Record<ConsumerName, Map<string, Answer>> = { alpha: new Map(), beta: new Map() };
      const consumers = Object.keys(CONSUMERS) as ConsumerName[];
      await Promise.all(
        consumers.map(async (c) => {
          const requests: (ProbeRequest & { key: string })[] = [];
          for (const host of HOSTS)
            for (const via of consumers)
              for (const s of SECRETS)
                requests.push({ key: `${host} ${via} ${s}`, socket: socketOf(host, via), path: `/v1/secrets/${s}` });
          const results = await probe(users[c], requests).done;
          for (const [i, r] of requests.entries()) cells[c].set(r.key, results[i]![0]!);
        }),
      );
      const caches = { 'web-1': await cacheOf('web-1'), 'web-2': await cacheOf('web-2') };
      let n = 0;
      for (const c of consumers) {
        const mine = CONSUMERS[c];
        for (const host of HOSTS)
          for (const via of consumers)
            for (const s of SECRETS) {
              const cell = cells[c].get(`${host} ${via} ${s}`)!;
              const where = `${c} via ${host}/${via}.sock, ${s}`;
              n++;
              if (via === c && host === mine.agent) {
                if ((mine.granted as readonly string[]).includes(s)) {
                  const cached = caches[mine.agent].get(s)?.current;
                  t.same(
                    [cell.status, cell.body?.version, hash(cell.body?.value)],
                    [200, 1, hash(cached?.value)],
                    `${where}: version 1, the value ${mine.agent} was sent`,
                  );
                } else t.same([cell.status, cell.code], [403, 'ACCESS_DENIED'], `${where}: 403`);
              } else if (via !== c && host === CONSUMERS[via].agent) {
                t.same([cell.status, cell.code], [0, 'EACCES'], `${where}: another user's socket, EACCES`);
              } else {
                t.same([cell.status, cell.code], [0, 'ENOENT'], `${where}: no socket there, ENOENT`);
              }
            }
      }
      t.equal(n, 48, '2 users x 3 socket directories x 2 socket names x 4 secrets');
      const value = (c: ConsumerName, s: string) => cells[c].get(`${CONSUMERS[c].agent} ${c} ${s}`)!.body?.value;
      t.equal(hash(value('alpha', 'shop/db')), hash(value('beta', 'shop/db')), 'shop/db: the same value on both hosts');
      t.equal(hash(value('alpha', 'shop/session')), hash(value('beta', 'shop/session')), 'shop/session too');
      t.equal(
        new Set(['shop/db', 'shop/api', 'shop/session'].map((s) => value('alpha', s))).size,
        3,
        'each secret its own value',
      );
      for (const agent of AGENTS) {
        const st = statSync(socketDirs[agent]);
        t.equal(st.mode & 0o777, 0o711, `${agent}'s socket directory is 0711`);
      }
      for (const c of consumers) {
        const st = statSync(own(c));
        t.same([st.mode & 0o777, st.uid, st.gid], [0o600, users[c].uid, users[c].gid], `${c}.sock: 0600, ${c}'s`);
      }
    });

    // ---------------------------------------------------------------------------------------------
    await t.test('2. a rotation reaches both hosts through long-polls', async (t) => {
      const from = daemon.mark();
      const polls = { alpha: longPoll('alpha', 'shop/db', 1), beta: longPoll('beta', 'shop/db', 1) };
      await Promise.all([polls.alpha.sent, polls.beta.sent]);
      await rotate('shop/db', 'agent-hosts: long-polls on two hosts');
      for (const c of ['alpha', 'beta'] as const) {
        const answers = await polls[c].done;
        const last = answers.at(-1)!;
        t.same(
          [last.status, last.body?.version],
          [200, 2],
          `${c}'s long-poll on ${CONSUMERS[c].agent} answers version 2`,
        );
      }
      // Both have read version 2: the previous one retires early, long before its overlap of a day.
      const line = await retired('shop/db', 1, from);
      t.equal(line.early, true, 'both consumers read version 2 (on two hosts): version 1 retired early');
    });

    // ---------------------------------------------------------------------------------------------
    await t.test('3 and 4. receipts across hosts; a foreign receipt is refused', async (t) => {
      const from = daemon.mark();
      await rotate('shop/session', 'agent-hosts: only alpha reads');
      // At once (the overlap is 30 s), once web-2 has version 2 (in its cache: applied), which beta does not
      // read: version 1 is served there as the previous one.
      await cacheOf('web-2', (m) => m.get('shop/session')?.current?.version === 2);
      const [prev] = await read('beta', '/v1/secrets/shop/session?version=1');
      t.same([prev!.status, prev!.body?.state], [200, 'previous'], "version 1 is served as previous on beta's host");

      // web-2 reports that alpha (on web-1) read version 2: refused and logged; alpha's receipt stays.
      const body = JSON.stringify({ receipts: [{ consumer: 'alpha', secret: 'shop/session', version: 2 }] });
      const web2 = await loadKeys(keyDirs['web-2']);
      const headers = signRequest({
        agent: 'web-2',
        method: 'POST',
        path: AGENT_RECEIPTS_PATH,
        body,
        privateKey: web2.signing,
      });
      const answer = await postAgent(address, AGENT_RECEIPTS_PATH, headers, body);
      t.equal(answer.status, 200, `the receipts request is answered: ${answer.text}`);
      t.ok(
        verifyResponse({
          headers: answer.headers,
          status: answer.status,
          requestNonce: headers[H_NONCE]!,
          body: answer.text,
          publicKey: parseSigningKey(daemonKeys.signingKey),
        }).ok,
        "the answer is the daemon's, for this request",
      );
      t.same(JSON.parse(answer.text), { accepted: 0 }, 'the receipt for a consumer web-2 does not host is not taken');
      const refused = await daemon.line('AGENT_CONSUMER_FOREIGN', (l) => l.code === 'AGENT_CONSUMER_FOREIGN', from);
      t.same(
        [refused.agent, refused.consumer, refused.secret],
        ['web-2', 'alpha', 'shop/session'],
        'the daemon logs the refusal, naming the agent, the consumer and the secret',
      );
      const alphaBefore = await consumerOf('shop/session', 'alpha');
      t.same(
        [alphaBefore?.host, alphaBefore?.version, alphaBefore?.behind],
        ['web-1', 1, true],
        "status: alpha's receipt is unchanged (version 1, behind)",
      );

      // alpha reads version 2 on web-1 (a long-poll: answered once web-1 has it); beta does not.
      const a = (await longPoll('alpha', 'shop/session', 1).done).at(-1);
      t.same(
        [a!.status, a!.body?.version, a!.body?.previous?.version],
        [200, 2, 1],
        'alpha reads version 2 (previous 1)',
      );
      const alpha = await receiptOf('shop/session', 'alpha', 2);
      t.same(
        [alpha?.host, alpha?.version, alpha?.behind],
        ['web-1', 2, false],
        "status: alpha's read of version 2, from web-1",
      );
      const beta = await consumerOf('shop/session', 'beta');
      t.same([beta?.host, beta?.version, beta?.behind], ['web-2', 1, true], 'status: beta behind, on web-2');

      // The previous version stays for its overlap, then retires: not early, since beta never read version 2.
      const overlap = await retired('shop/session', 1, from);
      t.equal(overlap.early, false, 'version 1 retired when its overlap ended, not early');
      const [gone] = await read('beta', '/v1/secrets/shop/session?version=1');
      t.same(
        [gone!.status, gone!.code],
        [404, 'VERSION_UNKNOWN'],
        "the retired version is no longer served on beta's host",
      );

      // The next rotation, read by both: the previous retires early.
      const from2 = daemon.mark();
      await rotate('shop/session', 'agent-hosts: both read');
      const reads = await Promise.all([
        longPoll('alpha', 'shop/session', 2).done,
        longPoll('beta', 'shop/session', 2).done,
      ]);
      t.same(
        reads.map((answers) => [answers.at(-1)!.status, answers.at(-1)!.body?.version]),
        [
          [200, 3],
          [200, 3],
        ],
        'alpha and beta read version 3',
      );
      const early = await retired('shop/session', 2, from2);
      t.equal(early.early, true, 'both read version 3: version 2 retired early (its overlap is 30 s)');
    });

    // ---------------------------------------------------------------------------------------------
    await t.test('5. the daemon SIGKILLed: the agents serve, long-polls span the restart', async (t) => {
      const marks = { 'web-1': agents['web-1'].mark(), 'web-2': agents['web-2'].mark() };
      await daemon.kill();
      for (const agent of AGENTS)
        await agents[agent].msg('lost the daemon: serving the last values received (health: stale)', marks[agent]);
      const before = new Map<ConsumerName, string>();
      for (const c of ['alpha', 'beta'] as const) {
        const [v, h] = await read(c, '/v1/secrets/shop/db', '/v1/health');
        t.same([v!.status, v!.body?.version], [200, 2], `${c} still reads shop/db version 2 on ${CONSUMERS[c].agent}`);
        before.set(c, hash(v!.body?.value));
        t.same([h!.body?.status, h!.body?.consumer], ['stale', c], `${c}'s health: stale`);
        t.ok(Date.parse(h!.body?.since) > 0 && Date.parse(h!.body?.since) <= Date.now(), `since ${h!.body?.since}`);
      }
      t.equal(before.get('alpha'), before.get('beta'), 'the same value on both hosts');

      const polls = { alpha: longPoll('alpha', 'shop/db', 2), beta: longPoll('beta', 'shop/db', 2) };
      await Promise.all([polls.alpha.sent, polls.beta.sent]);
      const again = { 'web-1': agents['web-1'].mark(), 'web-2': agents['web-2'].mark() };
      ({ proc: daemon } = await startDaemon(address));
      for (const agent of AGENTS) await agents[agent].msg('values from the daemon are current', again[agent]);
      for (const c of ['alpha', 'beta'] as const) {
        const [h] = await read(c, '/v1/health');
        t.equal(h!.body?.status, 'ok', `${c}'s health: ok again`);
      }
      await rotate('shop/db', 'agent-hosts: after the daemon restarted');
      for (const c of ['alpha', 'beta'] as const) {
        const answers = await polls[c].done;
        t.ok(
          answers.slice(0, -1).every((a) => a.status === 200 && a.body?.version === 2),
          `${c}: any long-poll that ran out while the daemon was away answered version 2`,
        );
        const last = answers.at(-1)!;
        t.same(
          [last.status, last.body?.version],
          [200, 3],
          `${c}'s long-poll, held across the restart, answers version 3 (none skipped; ${answers.length} polls)`,
        );
      }
    });

    // ---------------------------------------------------------------------------------------------
    await t.test('6. an agent restarted while the daemon is down serves its sealed cache', async (t) => {
      const [v3] = await read('alpha', '/v1/secrets/shop/db');
      // web-1's cache has version 3 before anything is killed.
      await cacheOf('web-1', (m) => m.get('shop/db')?.current?.version === 3);
      const m = agents['web-1'].mark();
      await daemon.kill();
      await agents['web-1'].msg('lost the daemon: serving the last values received (health: stale)', m);
      const [lastHeard] = await read('alpha', '/v1/health');
      await agents['web-1'].kill();
      agents['web-1'] = startAgent('web-1');
      const line = await agents['web-1'].msg('serving the sealed cache until the daemon answers');
      t.equal(line.secrets, 3, "the cache holds alpha's three secrets");
      const [v, api, h] = await read('alpha', '/v1/secrets/shop/db', '/v1/secrets/shop/api', '/v1/health');
      t.same(
        [v!.status, v!.body?.version, hash(v!.body?.value)],
        [200, 3, hash(v3!.body?.value)],
        'alpha reads shop/db version 3 from the restarted agent, the value it read before',
      );
      t.same([api!.status, api!.body?.version], [200, 1], 'and shop/api');
      t.equal(h!.body?.status, 'stale', 'health: stale');
      t.equal(h!.body?.since, line.savedAt, 'since: when the cache was written');
      // The cache's savedAt is the time of the last answer: what `since` said before the kill.
      const sinceBefore = lastHeard!.body?.since;
      t.equal(h!.body?.since, sinceBefore, `since: the last answer before the restart (${sinceBefore})`);

      const back = agents['web-1'].mark();
      ({ proc: daemon } = await startDaemon(address));
      await agents['web-1'].msg('values from the daemon are current', back);
      const [ok] = await read('alpha', '/v1/health');
      t.equal(ok!.body?.status, 'ok', 'the daemon back: health ok');
    });

    // ---------------------------------------------------------------------------------------------
    await t.test('7. no value in any log or cache file; the caches', async (t) => {
      // The agents first, so that none logs losing the daemon on the way out.
      const exits: (readonly [string, Awaited<ReturnType<Proc['stop']>>])[] = [];
      for (const p of [...procs.filter((p) => p !== daemon), daemon].filter((p) => !p.exited))
        exits.push([p.what, await p.stop()]);
      for (const [what, e] of exits) t.same([e.code, e.signal], [0, null], `${what} stops on SIGTERM with 0`);
      const logs = procs.map((p) => p.text).join('\n');
      const files: Record<AgentName, string> = {
        'web-1': readFileSync(path.join(keyDirs['web-1'], CACHE_FILE), 'utf8'),
        'web-2': readFileSync(path.join(keyDirs['web-2'], CACHE_FILE), 'utf8'),
      };
      const values = [...seen];
      t.equal(values.length, 7, 'the probes saw 7 values: shop/db versions 1-3, shop/api 1, shop/session 1-3');
      const leaked = values.filter((v) =>
        [logs, files['web-1'], files['web-2']].some(
          (text) => text.includes(v) || text.includes(JSON.stringify(v).slice(1, -1)),
        ),
      );
      t.same(
        leaked.length,
        0,
        `no value in the logs of ${procs.length} processes (${logs.length} bytes) or in the cache files`,
      );
      for (const agent of AGENTS) {
        const file = path.join(keyDirs[agent], CACHE_FILE);
        t.equal(statSync(file).mode & 0o777, 0o600, `${agent}'s cache is 0600`);
        t.match(files[agent], /^-----BEGIN AGE ENCRYPTED FILE-----/, `${agent}'s cache is an age file`);
        const cache = await cacheOf(agent);
        t.same(
          [...cache.keys()].sort(),
          agent === 'web-1' ? ['shop/api', 'shop/db', 'shop/session'] : ['shop/db', 'shop/session'],
          `${agent}'s cache holds only what its consumers may read`,
        );
      }
      t.comment(`${procs.length} processes, ${Math.round((Date.now() - started) / 1000)} s`);
    });
  });
}

/** A POST to the daemon's agent API (TCP): status, headers, text. */
function postAgent(
  address: string,
  urlPath: string,
  headers: Record<string, string>,
  body: string,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }> {
  const [host, port] = [
    address.slice(0, address.lastIndexOf(':')),
    Number(address.slice(address.lastIndexOf(':') + 1)),
  ];
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host,
        port,
        method: 'POST',
        path: urlPath,
        agent: false,
        headers: { ...headers, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
