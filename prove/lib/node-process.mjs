// A node process for the proofs (a daemon through daemon-child.mjs, or rotor-agent), with its JSON log
// lines as they arrive on stderr, each with the time it arrived (performance.now): wait for a line,
// send it IPC messages (daemon-child.mjs's kill-at), stop or kill it. Used by parts 8 and 10.
import { spawn } from 'node:child_process';
import { ms } from './harness.mjs';

const instances = new Map();

/**
 * A daemon (daemon-child.mjs ARGS) or the agent in its own process: its JSON log lines as they arrive,
 * each with its time; `ready` once it logged `started`.
 */
export function nodeProcess(name, script, args, env, started = 'daemon started') {
  const { NODE_OPTIONS: _loaders, ...inherited } = process.env; // a test runner's loaders would slow it down
  const child = spawn(process.execPath, [script, ...args], {
    env: { ...inherited, ...env },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  const instance = (instances.get(name) ?? 0) + 1;
  instances.set(name, instance);
  let text = '';
  let partial = '';
  const lines = [];
  const waiters = new Set();
  let closed = false;
  const check = () => {
    for (const wt of [...waiters]) {
      for (let i = wt.since; i < lines.length; i++) {
        if (wt.pred(lines[i].o)) {
          waiters.delete(wt);
          clearTimeout(wt.timer);
          wt.resolve({ ...lines[i], i });
          break;
        }
      }
      if (waiters.has(wt)) wt.since = lines.length;
      if (waiters.has(wt) && closed) {
        waiters.delete(wt);
        clearTimeout(wt.timer);
        wt.reject(new Error(`${name} exited: ${text.slice(-1500)}`));
      }
    }
  };
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    const t = performance.now();
    text += chunk;
    partial += chunk;
    const parts = partial.split('\n');
    partial = parts.pop();
    for (const raw of parts) {
      if (!raw) continue;
      let o;
      try {
        o = JSON.parse(raw);
      } catch {
        o = { msg: undefined };
      }
      lines.push({ t, o, raw });
    }
    check();
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
  const closedP = new Promise((resolve) =>
    child.once('close', () => {
      closed = true;
      check();
      resolve();
    }),
  );
  child.on('error', () => undefined);
  const waitLine = (pred, { since = 0, timeoutMs = 30_000 } = {}) =>
    new Promise((resolve, reject) => {
      const wt = { pred, since, resolve, reject };
      wt.timer = setTimeout(() => {
        waiters.delete(wt);
        reject(new Error(`${name}: no such log line within ${ms(timeoutMs)}: ${text.slice(-1500)}`));
      }, timeoutMs);
      wt.timer.unref();
      waiters.add(wt);
      check();
    });
  const ready = waitLine((o) => o.msg === started, { timeoutMs: 60_000 });
  ready.catch(() => undefined);
  return {
    name,
    instance,
    lines,
    ready,
    exited,
    closed: closedP,
    text: () => text,
    waitLine,
    exitCode: () =>
      child.exitCode === null && child.signalCode === null ? null : (child.signalCode ?? child.exitCode),
    kill: (signal) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    send: (m) => child.send(m),
    /** SIGTERM; resolves with the exit code once it is gone. */
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}
