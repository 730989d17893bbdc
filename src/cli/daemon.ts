/** `rotor daemon`: run the controller beside a GitOps repository. */
import path from 'node:path';
import { Daemon } from '../daemon/daemon.js';
import { KeyError } from '../keys.js';
import { StateError } from '../state/types.js';
import { jsonLogger } from '../log.js';
import { parse, UsageError } from './args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import { DEFAULT_DATA_DIR } from './rotate.js';

export const DEFAULT_SOCKET_DIR = '/run/rotor';

export const DAEMON_HELP = `Usage: rotor daemon --repo URL|PATH [--branch main] [--data-dir DIR] [--socket-dir DIR]
                    [--agent-listen HOST:PORT] [--metrics-listen HOST:PORT] [--break-glass age1...]...

Follows the GitOps repository at URL|PATH: clones it into DATA_DIR/repo (or opens that clone), fetches
on the Config's sync.interval and on SIGHUP, applies each new commit whose declarations are valid (an
invalid one is audited as config-rejected and the last good one stays in force), rotates secrets on
their schedules, and commits the audit log back to the repository and pushes it.

The data directory holds the keys (make them first: rotor keygen DATA_DIR), the encrypted state
store (DATA_DIR/state), the clone, and the admin socket (DATA_DIR/admin.sock) used by rotor rotate
and rotor status. Logs are JSON lines on stderr; they never contain a secret value.

Applications read their secrets over SOCKET_DIR/<consumer>.sock, one socket per Consumer declaration,
owned by the consumer's uid and mode 0600 (so the daemon runs as root to serve consumers of other
users). rotor get, rotor exec and the rotor/client module talk to them.

Options:
  --repo URL|PATH       the GitOps repository (required)                         [ROTOR_REPO]
  --branch NAME         the branch to follow (default main)                      [ROTOR_BRANCH]
  --data-dir DIR        keys, state, clone and admin socket (default ${DEFAULT_DATA_DIR})  [ROTOR_DATA_DIR]
  --socket-dir DIR      the consumer sockets (default $RUNTIME_DIRECTORY under systemd, else
                        ${DEFAULT_SOCKET_DIR}); made 0711 if missing, refused if others may write to it
                                                                                [ROTOR_SOCKET_DIR]
  --agent-listen HOST:PORT  where rotor-agent polls for database jobs (default 127.0.0.1:7700;
                        port 0 picks a free one). Requests are signed by each agent's key (its
                        Agent declaration); answers are signed with DATA_DIR's signing key, and
                        credentials are sealed to the agent's age recipient.      [ROTOR_AGENT_LISTEN]
  --metrics-listen HOST:PORT  Prometheus metrics at GET /metrics (default 127.0.0.1:9464,
                        loopback only; "off" for none)                          [ROTOR_METRICS_LISTEN]
  --break-glass age1... also encrypt the state to this age recipient (repeatable), so that an
                        operator holding its identity can open a snapshot offline with age -d
                                                                                [ROTOR_BREAK_GLASS]
  -h, --help            show this help

Signals: SIGHUP fetches now; SIGTERM and SIGINT stop after the running step, pushing what is left.
`;

export async function daemonCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parse(argv, {
    repo: { type: 'string' },
    branch: { type: 'string', default: 'main' },
    'data-dir': { type: 'string', default: DEFAULT_DATA_DIR },
    'socket-dir': { type: 'string' },
    'agent-listen': { type: 'string', default: '127.0.0.1:7700' },
    'metrics-listen': { type: 'string', default: '127.0.0.1:9464' },
    'break-glass': { type: 'string', multiple: true },
    help: { type: 'boolean', short: 'h' },
  }, io.env, 0);
  if (flags.help) {
    io.stdout(DAEMON_HELP);
    return EXIT.ok;
  }
  if (!flags.repo) throw new UsageError('--repo URL|PATH is required: the GitOps repository to follow');
  const breakGlass = flags['break-glass'].flatMap((r) => r.split(/[\s,]+/)).filter(Boolean);
  for (const r of breakGlass) if (!/^age1[02-9ac-hj-np-z]{58}$/.test(r)) throw new UsageError(`--break-glass ${r} is not an age recipient (age1...)`);
  const log = jsonLogger(io.stderr, io.now);
  const repo = /^[a-z+]+:\/\//i.test(flags.repo) || /^[^/]+@[^:]+:/.test(flags.repo) ? flags.repo : path.resolve(io.cwd, flags.repo);
  const socketDir = path.resolve(io.cwd, flags['socket-dir'] ?? io.env.RUNTIME_DIRECTORY?.split(':')[0] ?? DEFAULT_SOCKET_DIR);
  const daemon = new Daemon({ repo, branch: flags.branch!, dataDir: path.resolve(io.cwd, flags['data-dir']!), socketDir, agentListen: flags['agent-listen']!, ...(flags['metrics-listen'] !== 'off' ? { metricsListen: flags['metrics-listen']! } : {}), breakGlass, log, now: io.now });
  try {
    await daemon.start();
  } catch (e) {
    if (e instanceof KeyError || e instanceof StateError || (e as { code?: string }).code === 'DATA_DIR_LOCKED' || (e as { code?: string }).code?.startsWith?.('SOCKET_') || (e as { code?: string }).code?.startsWith?.('AGENT_LISTEN') || (e as { code?: string }).code?.startsWith?.('METRICS_LISTEN') || (e as { code?: string }).code?.startsWith?.('GIT_') || (e as { code?: string }).code?.startsWith?.('AUDIT_')) {
      const err = e as Error & { code: string };
      log('error', 'the daemon cannot start', { code: err.code, reason: err.message });
      io.stderr(`rotor daemon: ${err.message} [${err.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }
  return new Promise<number>((resolve) => {
    const stop = () => {
      process.off('SIGTERM', stop);
      process.off('SIGINT', stop);
      process.off('SIGHUP', hup);
      log('info', 'stopping');
      void daemon.stop().then(() => resolve(EXIT.ok));
    };
    const hup = () => void daemon.syncNow();
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    process.on('SIGHUP', hup);
  });
}
