/** `rotor daemon`: run the controller beside a GitOps repository. */
import path from 'node:path';
import { Daemon } from '../daemon/daemon.js';
import { RotorError } from '../errors.js';
import type { Level, LogFormat } from '../log.js';
import { LEVELS, LOG_FORMATS, logger } from '../log.js';
import { parseMetricsHosts } from '../serve/metrics.js';
import { readAgentTls } from '../serve/tls.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import { DEFAULT_DATA_DIR } from './rotate.js';
import { CLUSTER_FLAGS, STORE_FLAGS, stateBackendOf } from './state-flags.js';

export const DEFAULT_SOCKET_DIR = '/run/rotor';

export const DAEMON_FLAGS = {
  repo: { type: 'string', arg: 'URL|PATH', description: 'the GitOps repository (required)' },
  branch: { type: 'string', arg: 'NAME', default: 'main', description: 'the branch to follow' },
  'data-dir': {
    type: 'string',
    arg: 'DIR',
    default: DEFAULT_DATA_DIR,
    description: 'keys, state, clone and admin socket',
  },
  ...STORE_FLAGS,
  ...CLUSTER_FLAGS,
  'socket-dir': {
    type: 'string',
    arg: 'DIR',
    defaultText: `$RUNTIME_DIRECTORY under systemd, else ${DEFAULT_SOCKET_DIR}`,
    description:
      'the consumer sockets; made 0711 if missing, refused if it is a symbolic link or others may write to it',
  },
  'agent-listen': {
    type: 'string',
    arg: 'HOST:PORT',
    default: '127.0.0.1:7700',
    description:
      "where rotor-agent polls for database jobs and for the values of the consumers declared on it (port 0 picks a free one). Requests are signed by each agent's key (its Agent declaration); answers are signed with DATA_DIR's signing key, and credentials are sealed to the agent's age recipient",
  },
  'agent-tls-cert': {
    type: 'string',
    arg: 'FILE',
    description:
      'with --agent-tls-key: serve the agent API over HTTPS (TLS 1.2 or later) with this certificate, PEM, the leaf first, then any intermediates. Without both, it is plain HTTP, and a warning (AGENT_LISTEN_CLEAR) when the address is not loopback',
  },
  'agent-tls-key': {
    type: 'string',
    arg: 'FILE',
    description:
      "the private key of --agent-tls-cert, PEM, unencrypted (keep it mode 0600, readable by the daemon's user only)",
  },
  'metrics-listen': {
    type: 'string',
    arg: 'HOST:PORT',
    default: '127.0.0.1:9464',
    description:
      'Prometheus metrics at GET /metrics and the status page at GET / (loopback by default; "off" for none)',
  },
  'metrics-host': {
    type: 'string',
    arg: 'NAME',
    multiple: true,
    description:
      "a name the metrics listener also answers to, NAME (any port) or NAME:PORT, for a reverse proxy or Prometheus that asks for it by name (repeatable, or several separated by commas). Without it only the listener's own address and port (and localhost on loopback; on 0.0.0.0 or ::, the address each request came in on) are answered: any other Host header gets 421 HOST_NOT_ALLOWED, so that a web page cannot read the metrics through DNS rebinding",
  },
  'break-glass': {
    type: 'string',
    arg: 'RECIPIENT',
    multiple: true,
    description:
      'also encrypt the state to this age recipient, age1... (repeatable, or several separated by commas), so that an operator holding its identity can open a snapshot offline with age -d',
  },
  committer: {
    type: 'string',
    arg: '"NAME <EMAIL>"',
    defaultText: 'rotor <rotor@localhost>',
    description:
      "the author and committer of the daemon's audit commits. With audit.sign, GitHub and GitLab call them verified (and a branch that requires signed commits takes them) only when EMAIL is a verified address of the account that holds the daemon's signing key",
  },
  'log-level': {
    type: 'string',
    arg: 'LEVEL',
    default: 'info',
    choices: LEVELS,
    description: 'the least important log lines written: debug, info, warn or error',
  },
  'log-format': {
    type: 'string',
    arg: 'FORMAT',
    choices: LOG_FORMATS,
    description:
      'text (one readable line per event) or json (one JSON object per line, for a log collector); default: text when stderr is a terminal, json otherwise',
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const DAEMON_HELP = `rotor daemon: follow the repository, rotate on schedule, serve the secrets, commit the audit log

Usage: rotor daemon --repo URL|PATH [--branch main] [--data-dir DIR] [--socket-dir DIR]
                    [--agent-listen HOST:PORT] [--agent-tls-cert FILE --agent-tls-key FILE]
                    [--metrics-listen HOST:PORT] [--metrics-host NAME]...
                    [--break-glass RECIPIENT]... [--committer "NAME <EMAIL>"]
                    [--log-level LEVEL] [--log-format text|json]
                    [--state postgres://USER@HOST:PORT/DATABASE [--state-password-file FILE]
                     [--name NAME] [--agent-url URL]]

Follows the GitOps repository at URL|PATH: clones it into DATA_DIR/repo (or opens that clone), fetches
on the Config's sync.interval and on SIGHUP, applies each new commit whose declarations are valid (an
invalid one is audited as config-rejected and the last good one stays in force), rotates secrets on
their schedules, and commits the audit log back to the repository and pushes it.

The data directory holds the keys (make them first: rotor keygen DATA_DIR), the encrypted state
store (DATA_DIR/state), the clone, and the admin socket (DATA_DIR/admin.sock) used by rotor rotate
and rotor status. With --state postgres://... the state store lives in that database instead (in
the schema rotor by default, made at the first start; ciphertext only, as in the files), and
nothing is written to DATA_DIR/state. See "State on PostgreSQL" in docs/operations.md for the grants
it needs.

Several daemons may run on one PostgreSQL store, each with its own data directory holding copies of
the same keys. One leads, by a lease on the database's clock with a term that only grows: it alone
rotates, hands out agent jobs, and commits and pushes the audit log (whose chain is kept in the
database). The others follow: they serve consumers and agents' values from the database, and one of
them takes over when the leader stops (SIGTERM: at once), dies (within seconds) or is cut off from
the database (once its lease expires, 15 s). Every write checks the term in its own transaction, so
a deposed leader's late write is refused. See "Several daemons" in docs/operations.md.

Applications read their secrets over SOCKET_DIR/<consumer>.sock, one socket per Consumer declaration,
owned by the consumer's uid and mode 0600 (so the daemon runs as root to serve consumers of other
users). rotor get, rotor exec and the rotor/client module talk to them.

The listeners are bounded: the agent API authenticates each request from its headers (agent,
timestamp, nonce, signature) before it reads a byte of its body, reads at most 1 KiB (a poll) or
256 KiB (results) within 10 s, and takes 4,096 connections, 128 from one address; the metrics
listener takes 64, 16 from one address, and answers only for a Host header that names it (see
--metrics-host). A peer gets 10 s to send its headers on every listener.

The agent API is plain HTTP unless --agent-tls-cert and --agent-tls-key are given (both, PEM, checked
at start: AGENT_TLS_UNREADABLE, AGENT_TLS_INVALID); then it is HTTPS, TLS 1.2 or later, and the log
line "listening for agents" shows the certificate's pin (sha256/..., for an agent's tls.pin). The
signatures protect the exchange either way; TLS keeps secret names, versions and the timing of
rotations off the network. Plain HTTP on an address that is not loopback is logged as a warning
(AGENT_LISTEN_CLEAR); the daemon starts all the same.

Logs go to stderr, one line per event: "time" (ISO 8601), "level", "msg", and fields such as secret,
version, step and code. As JSON objects (--log-format json, the default when stderr is not a
terminal: journald, a container, a pipe) or as text for people ("TIME LEVEL  msg  key=value ...",
the default on a terminal). They never contain a secret value: fields named like one (password,
token, value, key...) are replaced by "[redacted]", in both formats.

Options:
${optionsHelp(DAEMON_FLAGS)}
Signals: SIGHUP fetches now; SIGTERM and SIGINT stop after the running step, pushing what is left.

Exit status: 0 stopped by SIGTERM or SIGINT, 1 cannot start (keys, state store, data directory in use
or writable by others, sockets, listeners, the repository), 2 usage error, 3 an unexpected failure.

Examples:
  rotor keygen /var/lib/rotor            # once
  rotor daemon --repo git@git.example.com:platform/secrets.git --data-dir /var/lib/rotor \\
      --agent-listen 0.0.0.0:7700 --agent-tls-cert /etc/rotor/tls.crt --agent-tls-key /etc/rotor/tls.key
  ROTOR_REPO=/srv/secrets.git rotor daemon --data-dir ./data --socket-dir ./sockets --log-level debug
`;

/** `--committer "NAME <EMAIL>"`: one line, a name and an email without < or >. */
export function parseCommitter(text: string): { name: string; email: string } {
  const m = text.length <= 512 ? /^([^<>\n]*[^<>\s]) <([^<>\s]+)>$/.exec(text.trim()) : null;
  if (!m) throw new UsageError(`--committer must be "NAME <EMAIL>", such as "rotor <rotor-bot@example.com>"`);
  return { name: m[1]!, email: m[2]! };
}

export async function daemonCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags } = parse(argv, DAEMON_FLAGS, io.env, 0);
  if (flags.help) {
    io.stdout(DAEMON_HELP);
    return EXIT.ok;
  }
  if (!flags.repo) throw new UsageError('--repo URL|PATH is required: the GitOps repository to follow');
  const breakGlass = flags['break-glass'].flatMap((r) => r.split(/[\s,]+/)).filter(Boolean);
  for (const r of breakGlass)
    if (!/^age1[02-9ac-hj-np-z]{58}$/.test(r))
      throw new UsageError(`--break-glass ${r} is not an age recipient (age1...)`);
  const metricsHosts = flags['metrics-host'].flatMap((h) => h.split(/[\s,]+/)).filter(Boolean);
  try {
    parseMetricsHosts(metricsHosts);
  } catch (e) {
    throw new UsageError(`${(e as Error).message}: give a name such as rotor.internal or rotor.internal:9464`);
  }
  const certFile = flags['agent-tls-cert'];
  const keyFile = flags['agent-tls-key'];
  if ((certFile === undefined) !== (keyFile === undefined)) {
    // A usage error, with a code of its own: a TLS listener half configured must not start as plain HTTP.
    const [given, missing] = certFile === undefined ? ['key', 'cert'] : ['cert', 'key'];
    io.stderr(
      `rotor daemon: --agent-tls-${given} needs --agent-tls-${missing}: give both (the agent API's certificate and its key, PEM) or neither [AGENT_TLS_INCOMPLETE]\nRun "rotor daemon --help" for usage.\n`,
    );
    return EXIT.usage;
  }
  const format = (flags['log-format'] ?? (io.stderrIsTTY ? 'text' : 'json')) as LogFormat;
  const log = logger(format, io.stderr, io.now, flags['log-level'] as Level);
  const repo =
    /^[a-z+]+:\/\//i.test(flags.repo) || /^[^/]+@[^:]+:/.test(flags.repo)
      ? flags.repo
      : path.resolve(io.cwd, flags.repo);
  const socketDir = path.resolve(
    io.cwd,
    flags['socket-dir'] ?? io.env.RUNTIME_DIRECTORY?.split(':')[0] ?? DEFAULT_SOCKET_DIR,
  );
  const state = stateBackendOf(flags, io);
  const committer = flags.committer !== undefined ? parseCommitter(flags.committer) : undefined;
  let daemon: Daemon;
  try {
    const agentTls =
      certFile !== undefined && keyFile !== undefined
        ? await readAgentTls(path.resolve(io.cwd, certFile), path.resolve(io.cwd, keyFile), {
            cert: certFile,
            key: keyFile,
          })
        : undefined;
    daemon = new Daemon({
      repo,
      branch: flags.branch!,
      dataDir: path.resolve(io.cwd, flags['data-dir']!),
      socketDir,
      agentListen: flags['agent-listen']!,
      ...(agentTls ? { agentTls } : {}),
      ...(flags['metrics-listen'] !== 'off' ? { metricsListen: flags['metrics-listen']!, metricsHosts } : {}),
      breakGlass,
      log,
      now: io.now,
      ...(committer ? { committer } : {}),
      ...state,
    });
    await daemon.start();
  } catch (e) {
    // An error rotor raised on purpose (a TLS file, a data directory, keys, state, audit log,
    // repository or listener it refuses) has a code and a message for the user: exit 1. Anything else
    // is a bug or an unforeseen failure: main reports it (exit 3).
    if (e instanceof RotorError) {
      log('error', 'the daemon cannot start', { code: e.code, reason: e.message });
      io.stderr(`rotor daemon: ${e.message} [${e.code}]\n`);
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
