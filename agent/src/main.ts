#!/usr/bin/env node
/**
 * rotor-agent: runs on a database host, takes the daemon's database jobs (set, test, retire) and applies
 * them with the admin accounts of its own configuration (agent/src/config.ts). See agent/src/agent.ts.
 */
import type { Flags, Level, LogFormat, Logger } from 'rotor/internal';
import {
  HELP_FLAG,
  isMain,
  LEVELS,
  LOG_FORMATS,
  logger,
  optionsHelp,
  parse,
  VERSION,
  writeStderr,
} from 'rotor/internal';
import type { AgentOptions } from './agent.js';
import { Agent, AgentError } from './agent.js';
import { AgentConfigError, agentConfigProblemLine, loadAgentConfig } from './config.js';

export const AGENT_FLAGS = {
  config: {
    type: 'string',
    arg: 'FILE',
    env: 'ROTOR_AGENT_CONFIG',
    description: "the agent's configuration (required)",
  },
  once: {
    type: 'boolean',
    env: false,
    description:
      'poll the daemon once, apply the database jobs it hands out, report the results, exit (for tests and cron; no consumer is served); without it the agent runs until SIGTERM or SIGINT',
  },
  'log-level': {
    type: 'string',
    arg: 'LEVEL',
    default: 'info',
    choices: LEVELS,
    env: 'ROTOR_AGENT_LOG_LEVEL',
    description: 'the least important log lines written: debug, info, warn or error',
  },
  'log-format': {
    type: 'string',
    arg: 'FORMAT',
    choices: LOG_FORMATS,
    env: 'ROTOR_AGENT_LOG_FORMAT',
    description: 'text or json; default: text when stderr is a terminal, json otherwise',
  },
  help: HELP_FLAG,
  version: { type: 'boolean', env: false, description: 'print the version' },
} as const satisfies Flags;

export const HELP = `rotor-agent: applies rotor's database rotation steps on this host, and serves the
sockets of the consumers declared on it

Usage: rotor-agent --config FILE [--once] [--log-level LEVEL] [--log-format text|json]

Database jobs: for each Target declared with agent: this agent's name, it long-polls the daemon for
signed, sealed jobs, applies the new credential with the admin account of its configuration, logs in
with it on a fresh connection, and reports back.

Consumers: for each Consumer declared with agent: this agent's name, it serves
SOCKET_DIR/<consumer>.sock (the configuration's socketDir; default $RUNTIME_DIRECTORY, else
/run/rotor) with the same API and rules as the daemon's sockets, from values the daemon pushes to it
as soon as they change. When the daemon is away it keeps serving the last values (/v1/health says
stale), never a previous value past its validUntil, also after its own restart, from
KEY_DIR/consumer-values.age (sealed to its own key, 0600). Serving consumers of other users needs
root, or CAP_CHOWN and CAP_FOWNER.

Options:
${optionsHelp(AGENT_FLAGS)}
The configuration is one YAML file on the agent's host, never in the repository (mode 0600):

  daemon: http://127.0.0.1:7700            # the daemon's --agent-listen address (https:// allowed),
                                           # or a list of them: several daemons on one store
  # tls: { ca: agent-api-ca.crt }          # https:// only: { ca: FILE } and/or { pin: "sha256/..." }
  name: db-host-1                          # this agent's Agent declaration in the repository
  keyDir: /var/lib/rotor-agent             # made by \`rotor keygen\` on this host
  daemonSigningKey: "ed25519:..."          # printed by \`rotor keygen\` for the daemon
  socketDir: /run/rotor-agent              # optional: the consumers' sockets
  targets:                                 # optional: the databases this agent changes
    payments-pg:                           # a Target whose agent is this one
      url: postgres://rotor_admin@127.0.0.1:5432/postgres
      password: { env: PG_ADMIN_PASSWORD } # or { sops: FILE, key: PATH }, or the password (warned)
      timeout: 10s                         # optional

With several daemons listed (all https:// or all http://), database jobs come from the one that leads
(a follower names it; the agent moves there at once, else to the next daemon of the list) and the
consumers' values from whichever answers; the backoff starts when every daemon of the list failed.

See docs/databases/README.md ("rotor-agent") for every field, the admin privileges each database
needs, and the codes.

Logs go to stderr, one line per event: "time" (ISO 8601), "level", "msg", and fields such as job,
secret, target, step and code; never a value (fields named like one are "[redacted]"). JSON objects
(--log-format json, the default when stderr is not a terminal) or text for people (the default on a
terminal).

Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 configuration invalid, 2 usage,
3 --once did not complete (the daemon unreachable, its answer refused, or the results not accepted).

Examples:
  rotor-agent --config /etc/rotor/agent.yaml
  ROTOR_AGENT_CONFIG=/etc/rotor/agent.yaml rotor-agent --once --log-level debug   # one cycle
`;

export const AGENT_EXIT = { ok: 0, invalid: 1, usage: 2, failure: 3 } as const;

export interface AgentCliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly env: NodeJS.ProcessEnv;
  /** Whether stderr is a terminal (logs are text there by default); false when absent. */
  readonly stderrIsTTY?: boolean;
  /** Resolves (once) on SIGTERM/SIGINT; default: the process's signals. */
  readonly stopSignal?: AbortSignal;
  /** Extra options for the Agent (tests). */
  readonly agentOptions?: AgentOptions;
}

function processSignal(log: Logger): AbortSignal {
  const ac = new AbortController();
  let count = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    count++;
    if (count === 1) {
      log('info', `${sig}: stopping (running jobs finish and are reported)`, { signal: sig });
      ac.abort();
    } else {
      log('warn', `${sig} again: exiting now; unfinished jobs are delivered again by the daemon`, {
        signal: sig,
        code: 'AGENT_FORCED_EXIT',
      });
      process.exit(1);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return ac.signal;
}

export async function main(
  argv: readonly string[],
  io: AgentCliIo = {
    stdout: (t) => void process.stdout.write(t),
    stderr: writeStderr,
    env: process.env,
    stderrIsTTY: Boolean(process.stderr.isTTY),
  },
): Promise<number> {
  let flags;
  try {
    flags = parse(argv, AGENT_FLAGS, io.env, 0).flags;
  } catch (e) {
    io.stderr(`rotor-agent: ${(e as Error).message}\nRun "rotor-agent --help" for usage.\n`);
    return AGENT_EXIT.usage;
  }
  if (flags.help) {
    io.stdout(HELP);
    return AGENT_EXIT.ok;
  }
  if (flags.version) {
    io.stdout(`rotor-agent ${VERSION}\n`);
    return AGENT_EXIT.ok;
  }
  if (flags.config === undefined) {
    io.stderr('rotor-agent: --config FILE (or ROTOR_AGENT_CONFIG) is required\nRun "rotor-agent --help" for usage.\n');
    return AGENT_EXIT.usage;
  }

  const format = (flags['log-format'] ?? (io.stderrIsTTY ? 'text' : 'json')) as LogFormat;
  const log = logger(format, io.stderr, undefined, flags['log-level'] as Level);
  let config;
  try {
    config = await loadAgentConfig(flags.config, { env: io.env });
  } catch (e) {
    if (!(e instanceof AgentConfigError)) throw e;
    io.stderr(
      `rotor-agent: ${flags.config}: the configuration is invalid:\n${e.problems.map((p) => `  ${agentConfigProblemLine(p)}\n`).join('')}`,
    );
    return AGENT_EXIT.invalid;
  }
  for (const w of config.warnings) log('warn', `${w.file}:${w.line}:${w.col}: ${w.message}`, { code: w.code });

  const agent = new Agent(config, { log, hostConsumers: true, ...io.agentOptions });
  if (flags.once) {
    try {
      const summary = await agent.runOnce();
      if (summary.unreported > 0) return AGENT_EXIT.failure;
      return AGENT_EXIT.ok;
    } catch (e) {
      if (e instanceof AgentError) return AGENT_EXIT.failure; // logged by the agent
      throw e;
    } finally {
      await agent.stop();
    }
  }
  await agent.run(io.stopSignal ?? processSignal(log));
  return AGENT_EXIT.ok;
}

if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      const err = e as Error & { code?: string };
      writeStderr(`rotor-agent: ${err?.message ?? String(e)}${err?.code ? ` [${err.code}]` : ''}\n`);
      process.exitCode = AGENT_EXIT.failure;
    },
  );
}
