/**
 * A daemon's world for tests: a bare remote, a person's clone, a data dir with keys; rotation events and
 * an agent's values answers to await; `rotor daemon` as a process.
 */
import { execFileSync, spawn } from 'node:child_process';
import diagnostics_channel from 'node:diagnostics_channel';
import { mkdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import path from 'node:path';
import type { Test } from 'tap';
import type { AgentValuesMessage } from '../agent/src/host.js';
import { Daemon } from '../src/daemon/daemon.js';
import { generateKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { commitAll, git, gitInit, ROOT, tempDir } from './helpers.js';

type T = Test;

/** A remote (bare) with the given files, a person's clone of it, and a data dir with keys. */
export async function world(t: T, files: Record<string, string>) {
  const root = tempDir(t, 'rotor-daemon-');
  const person = path.join(root, 'person');
  mkdirSync(person);
  gitInit(person);
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(person, f)), { recursive: true });
    writeFileSync(path.join(person, f), text);
  }
  commitAll(person, 'declarations');
  const remote = path.join(root, 'remote.git');
  execFileSync('git', ['clone', '-q', '--bare', person, remote]);
  git(person, 'remote', 'add', 'origin', remote);
  git(person, 'fetch', '-q', 'origin');
  git(person, 'branch', '-q', '--set-upstream-to=origin/main', 'main');
  const dataDir = path.join(root, 'data');
  await generateKeys(dataDir);
  let logs = '';
  const log = jsonLogger((l) => void (logs += l));
  const start = async (extra: Partial<ConstructorParameters<typeof Daemon>[0]> = {}) => {
    const d = new Daemon({ repo: remote, branch: 'main', dataDir, breakGlass: [], log, commitDelayMs: 50, ...extra });
    await d.start();
    return d;
  };
  /** Commits a file as a person would and pushes, pulling again when the daemon's audit push came in between. */
  const push = (f: string, text: string, message = 'change') => {
    git(person, 'pull', '-q', '--rebase');
    writeFileSync(path.join(person, f), text);
    commitAll(person, message);
    for (let attempt = 1; ; attempt++) {
      try {
        git(person, 'push', '-q', 'origin', 'main');
        return;
      } catch (e) {
        if (attempt >= 5) throw e;
        git(person, 'pull', '-q', '--rebase');
      }
    }
  };
  return { root, person, remote, dataDir, start, push, logs: () => logs };
}

/** Resolves when `secret` has finished `count` more rotations. */
export function finishes(secret: string, count: number): Promise<void> {
  const ch = diagnostics_channel.channel('rotor:rotation');
  return new Promise((resolve) => {
    let n = 0;
    const on = (m: unknown) => {
      const e = m as { secret: string; step: string };
      if (e.secret === secret && e.step === 'finished' && ++n >= count) {
        ch.unsubscribe(on);
        resolve();
      }
    };
    ch.subscribe(on);
  });
}

/** Resolves when `secret` publishes `stepName` on `rotor:rotation` (of `version`, when given). */
export function step(secret: string, stepName: string, version?: number): Promise<void> {
  const ch = diagnostics_channel.channel('rotor:rotation');
  return new Promise((resolve) => {
    const on = (m: unknown) => {
      const e = m as { secret: string; step: string; version?: number };
      if (e.secret === secret && e.step === stepName && (version === undefined || e.version === version)) {
        ch.unsubscribe(on);
        resolve();
      }
    };
    ch.subscribe(on);
  });
}

/** Resolves at the first values answer an agent applies that `match` accepts. */
export function applied(match: (m: AgentValuesMessage) => boolean): Promise<AgentValuesMessage> {
  const ch = diagnostics_channel.channel('rotor-agent:values');
  return new Promise((resolve) => {
    const f = (m: unknown) => {
      if (match(m as AgentValuesMessage)) {
        ch.unsubscribe(f);
        resolve(m as AgentValuesMessage);
      }
    };
    ch.subscribe(f);
  });
}

/** `rotor daemon` as a child process: its stderr (the JSON log lines) collected, lines to await. */
export interface DaemonProcess {
  readonly name: string;
  /** The exit code, once it has exited and its stderr is read to the end. */
  readonly exited: Promise<number | null>;
  /** Resolves once it logged "daemon started" (its signal handlers are in place); rejects if it exits first. */
  readonly ready: Promise<void>;
  /** Everything it wrote on stderr so far. */
  stderr(): string;
  /** Resolves once its stderr matches `re`; rejects if it exits first. */
  waitFor(re: RegExp): Promise<void>;
  kill(signal: NodeJS.Signals): void;
  /** SIGTERM once it is ready (before that, SIGTERM has no handler yet); its exit code. */
  stop(): Promise<number | null>;
}

/**
 * `rotor daemon FLAGS` as a process running the built code (dist/), in this process's environment less
 * NODE_OPTIONS (tap's loaders would double its start-up) and PGPASSWORD (a daemon gets a password only
 * from the test), plus `o.env`. SIGKILLed when `t` ends, if still running.
 */
export function daemonProcess(
  t: T,
  flags: string[],
  o: { env?: NodeJS.ProcessEnv; name?: string } = {},
): DaemonProcess {
  const name = o.name ?? 'the daemon';
  const { PGPASSWORD: _, NODE_OPTIONS: __, ...inherited } = process.env;
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli/main.js'), 'daemon', ...flags], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...inherited, ...o.env },
  });
  let err = '';
  const waiting = new Set<() => void>();
  child.stderr.on('data', (c: Buffer) => {
    err += c.toString();
    for (const check of [...waiting]) check();
  });
  const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
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
      void exited.then(() => reject(new Error(`${name} exited: ${err.slice(-2000)}`)));
      check();
    });
  const ready = waitFor(/"msg":"daemon started"/);
  ready.catch(() => undefined); // a daemon that must not start never gets there
  return {
    name,
    exited,
    ready,
    stderr: () => err,
    waitFor,
    kill: (signal) => void child.kill(signal),
    stop: async () => {
      await ready;
      child.kill('SIGTERM');
      return exited;
    },
  };
}

export interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  // biome-ignore lint/suspicious/noExplicitAny: answers of many shapes, read field by field in the tests
  body: any;
  text: string;
}

/** One HTTP request over a Unix socket, without the client library (so tests see statuses and headers). */
export function raw(
  socketPath: string,
  urlPath: string,
  o: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath, path: urlPath, method: o.method ?? 'GET', headers: o.headers ?? {}, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch {
            body = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text });
        });
      },
    );
    req.on('error', reject);
    if (o.body !== undefined) req.write(o.body);
    req.end();
  });
}
