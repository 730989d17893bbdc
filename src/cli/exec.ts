/**
 * `rotor exec [--socket PATH] --env VAR=NAME[.field] ... [--restart] -- CMD ARGS...`: run a command with
 * secrets in its environment; with --restart, restart it (SIGTERM, then start again) on a new version.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import type { Secret } from '../client/index.js';
import { getSecret, listSecrets, RotorClientError, watchSecret } from '../client/index.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import { FieldError, pickField, render } from './get.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const EXEC_FLAGS = {
  socket: { type: 'string', arg: 'PATH', description: "the consumer's socket, SOCKET_DIR/<consumer>.sock (required)" },
  env: {
    type: 'string',
    arg: 'VAR=NAME[.field]',
    multiple: true,
    env: false,
    description: 'a variable to set for CMD (at least one; repeatable)',
  },
  restart: { type: 'boolean', description: 'restart CMD when a secret it uses rotates' },
  grace: {
    type: 'string',
    arg: 'SECONDS',
    default: '10',
    description: "how long CMD's process group may take to stop before SIGKILL",
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const EXEC_HELP = `rotor exec: run a command with secrets in its environment

Usage: rotor exec [--socket PATH] --env VAR=NAME[.field]... [--restart] [--grace SECONDS]
                  -- CMD [ARGS...]

Reads the secrets from the daemon over the consumer socket, then runs CMD with them in its
environment (never in its arguments): VAR=NAME gives the value of NAME (a structured secret as
JSON), VAR=NAME.field one field of it (.username: the database user). Signals sent to rotor exec (TERM,
INT, HUP, QUIT, USR1, USR2) are passed to CMD's process group; after TERM or INT the group has --grace
seconds to end before SIGKILL. rotor exec exits with CMD's status.

CMD runs in a process group of its own (a session: it has no controlling terminal), and every
signal goes to the whole group, so that the children CMD starts (a shell's, a server's workers)
stop with it. When CMD exits, whatever it left running in its group gets SIGTERM, then SIGKILL after
--grace seconds, before rotor exec exits.

With --restart, rotor exec watches the secrets (long-polls) and, when one of them has a new version,
sends CMD's group SIGTERM, waits up to --grace seconds for every process in it to end (then SIGKILL
to the group), and starts CMD again with the new values. The previous version stays valid for the
policy's overlap, so open connections keep working while CMD restarts.

Options:
${optionsHelp(EXEC_FLAGS)}
Exit status: CMD's own (128+N when a signal N ended it), 1 the secrets cannot be read (not granted,
unknown, no such field, the daemon cannot be reached; CMD is not started), 2 usage error, 127 CMD
cannot be run.

Examples:
  rotor exec --socket /run/rotor/billing-api.sock --env API_TOKEN=example/api-token -- ./server
  ROTOR_SOCKET=/run/rotor/billing-api.sock rotor exec --restart --grace 30 \\
      --env DB_USER=payments/db.username --env DB_PASSWORD=payments/db -- ./server --port 8080
`;

interface Binding {
  readonly variable: string;
  readonly secret: string;
  readonly field?: string;
}

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];

export async function execCommand(argv: readonly string[], io: Io): Promise<number> {
  const dash = argv.indexOf('--');
  const own = dash < 0 ? argv : argv.slice(0, dash);
  const command = dash < 0 ? [] : argv.slice(dash + 1);
  const { flags } = parse(own, EXEC_FLAGS, io.env, 0);
  if (flags.help) {
    io.stdout(EXEC_HELP);
    return EXIT.ok;
  }
  if (command.length === 0)
    throw new UsageError('give the command to run after "--": rotor exec --env DB_PASSWORD=app/db -- ./server');
  if (!flags.socket)
    throw new UsageError(
      '--socket PATH is required (or ROTOR_SOCKET): the consumer socket, SOCKET_DIR/<consumer>.sock',
    );
  if (flags.env.length === 0) throw new UsageError('give at least one --env VAR=NAME[.field]');
  if (!/^\d{1,5}$/.test(flags.grace!)) throw new UsageError('--grace must be a number of seconds');
  const socket = flags.socket;
  const graceMs = Number(flags.grace) * 1000;

  let bindings: Binding[];
  let values: Map<string, Secret>;
  try {
    bindings = await resolveBindings(flags.env, socket);
    values = await fetchAll(bindings, socket);
    envOf(bindings, values); // a missing field fails here, before CMD starts
  } catch (e) {
    if (e instanceof RotorClientError || e instanceof FieldError) {
      io.stderr(`rotor exec: ${e.message} [${e.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }

  let child: ChildProcess | undefined;
  let restarting = false;
  let finished = false;
  const stopWatch = new AbortController();
  const start = () => {
    const env = { ...io.env, ...envOf(bindings, values) };
    // detached: setsid(2), so CMD leads a new process group and signals reach its children too.
    child = spawn(command[0]!, command.slice(1), { env, stdio: 'inherit', cwd: io.cwd, detached: true });
    return child;
  };
  // To the whole group, while any of it lives (the leader may be gone and its children not). SIGTERM
  // and SIGINT ask rotor exec to end: the group gets --grace seconds to follow, then SIGKILL.
  let ending: Promise<void> | undefined;
  const forward = (signal: NodeJS.Signals) => () => {
    if (child?.pid === undefined) return;
    if ((signal === 'SIGTERM' || signal === 'SIGINT') && ending === undefined)
      ending = stopGroup(child.pid, graceMs, signal);
    else signalGroup(child.pid, signal);
  };
  const handlers = FORWARDED.map((s) => [s, forward(s)] as const);
  for (const [s, h] of handlers) process.on(s, h);

  return new Promise<number>((resolve) => {
    const done = (code: number, group?: number) => {
      if (finished) return;
      finished = true;
      stopWatch.abort();
      // What CMD left behind in its group stops with it (within the grace), then rotor exec exits.
      const leftovers = ending ?? (group === undefined ? Promise.resolve() : stopGroup(group, graceMs));
      void leftovers.then(() => {
        for (const [s, h] of handlers) process.off(s, h);
        resolve(code);
      });
    };
    const watchExit = (c: ChildProcess) => {
      c.once('error', (e: NodeJS.ErrnoException) => {
        io.stderr(`rotor exec: cannot run ${command[0]}: ${e.code ?? e.message}\n`);
        if (!restarting) done(127);
      });
      c.once('exit', (code, signal) => {
        if (restarting) return;
        done(code ?? 128 + (signal ? signalNumber(signal) : 0), c.pid);
      });
    };
    watchExit(start());
    if (!flags.restart) return;

    // Watch every secret; a new version of any restarts CMD once with fresh values for all.
    let pending: Promise<void> = Promise.resolve();
    const restart = (why: string) => {
      pending = pending.then(async () => {
        if (finished) return;
        let fresh: Map<string, Secret>;
        try {
          fresh = await fetchAll(bindings, socket);
          envOf(bindings, fresh);
        } catch (e) {
          io.stderr(
            `rotor exec: ${why} but could not be read (${(e as { code?: string }).code ?? 'ERROR'}); ${command[0]} keeps running with the values it has\n`,
          );
          return;
        }
        if ([...fresh].every(([n, s]) => values.get(n)?.version === s.version)) return;
        values = fresh;
        io.stderr(`rotor exec: ${why}; restarting ${command[0]}\n`);
        restarting = true;
        const old = child!;
        await stopChild(old, graceMs);
        if (finished) return;
        restarting = false;
        watchExit(start());
      });
    };
    for (const name of new Set(bindings.map((b) => b.secret))) {
      void (async () => {
        try {
          for await (const s of watchSecret(name, {
            socket,
            after: values.get(name)!.version,
            signal: stopWatch.signal,
          })) {
            restart(`${name} is now at version ${s.version}`);
          }
        } catch (e) {
          if (!finished) io.stderr(`rotor exec: stopped watching ${name}: ${(e as Error).message}\n`);
        }
      })();
    }
  });
}

/** NAME.field is a field only when NAME.field itself is not a secret this consumer may read. */
async function resolveBindings(specs: readonly string[], socket: string): Promise<Binding[]> {
  const parsed = specs.map((spec) => {
    const eq = spec.indexOf('=');
    const variable = spec.slice(0, eq);
    const ref = spec.slice(eq + 1);
    if (eq <= 0 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(variable) || ref === '')
      throw new UsageError(`--env ${spec}: expected VAR=NAME or VAR=NAME.field`);
    return { variable, ref };
  });
  const needList = parsed.some((p) => p.ref.includes('.'));
  const readable = needList ? new Set(await listSecrets({ socket })) : new Set<string>();
  return parsed.map(({ variable, ref }) => {
    const dot = ref.lastIndexOf('.');
    if (dot < 0 || readable.has(ref)) return { variable, secret: ref };
    return { variable, secret: ref.slice(0, dot), field: ref.slice(dot + 1) };
  });
}

async function fetchAll(bindings: readonly Binding[], socket: string): Promise<Map<string, Secret>> {
  const names = [...new Set(bindings.map((b) => b.secret))];
  const got = await Promise.all(names.map((n) => getSecret(n, { socket })));
  return new Map(names.map((n, i) => [n, got[i]!]));
}

function envOf(bindings: readonly Binding[], values: Map<string, Secret>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const b of bindings) {
    const s = values.get(b.secret)!;
    env[b.variable] = b.field === undefined ? render(s.value) : pickField(s, b.field);
  }
  return env;
}

/** Sends a signal to a process group; false when no process is left in it. */
function signalGroup(pgid: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-pgid, signal);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw e;
  }
}

/** How often an ending group is looked at: no event says that a process which is not ours ended. */
const GROUP_POLL_MS = 25;

/** After SIGKILL, how long to look for the group to empty: a zombie that nobody reaps (a container
 * whose PID 1 does not) stays in it forever, and must not keep rotor exec waiting. */
const AFTER_KILL_MS = 2000;

/**
 * SIGTERM (or `signal`) to the group, then wait until no process is left in it; at the end of the grace, SIGKILL
 * to the group and wait again, a little (a SIGKILLed process ends at once; init reaps the ones that
 * are not our child).
 */
async function stopGroup(pgid: number, graceMs: number, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!signalGroup(pgid, signal)) return;
  let deadline = Date.now() + graceMs;
  let killed = false;
  while (signalGroup(pgid, 0)) {
    if (Date.now() >= deadline) {
      if (killed) return;
      killed = true;
      signalGroup(pgid, 'SIGKILL');
      deadline = Date.now() + AFTER_KILL_MS;
    }
    await new Promise((r) => setTimeout(r, GROUP_POLL_MS));
  }
}

/** Stops CMD and its group: the leader's exit is awaited (it is our child), then the rest of its group. */
async function stopChild(c: ChildProcess, graceMs: number): Promise<void> {
  const pgid = c.pid;
  if (pgid === undefined) return;
  const exited =
    c.exitCode !== null || c.signalCode !== null ? Promise.resolve() : new Promise((r) => c.once('exit', r));
  await stopGroup(pgid, graceMs);
  await exited;
}

function signalNumber(signal: NodeJS.Signals): number {
  const n: Partial<Record<NodeJS.Signals, number>> = {
    SIGHUP: 1,
    SIGINT: 2,
    SIGQUIT: 3,
    SIGKILL: 9,
    SIGUSR1: 10,
    SIGUSR2: 12,
    SIGTERM: 15,
  };
  return n[signal] ?? 0;
}
