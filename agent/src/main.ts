#!/usr/bin/env node
/**
 * rotor-agent: runs on a database host, takes the daemon's database jobs (set, test, retire) and applies
 * them with the admin accounts of its own configuration (agent/src/config.ts). See agent/src/agent.ts.
 */
import { realpathSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { jsonLogger } from '../../src/log.js';
import type { Level, Logger } from '../../src/log.js';
import { Agent, AgentError } from './agent.js';
import type { AgentOptions } from './agent.js';
import { AgentConfigError, agentConfigProblemLine, loadAgentConfig } from './config.js';

export const HELP = `rotor-agent: applies rotor's database rotation steps on this host

Usage: rotor-agent --config FILE [--once]

Options:
  --config FILE       the agent's configuration (default: $ROTOR_AGENT_CONFIG)
  --once              poll the daemon once, apply the jobs it hands out, report the results, exit
                      (for tests and cron); without it the agent runs until SIGTERM or SIGINT
  --log-level LEVEL   debug, info (default), warn or error (also $ROTOR_AGENT_LOG_LEVEL)
  -h, --help          this help
  --version           the version

The configuration is one YAML file on the database host, never in the repository (mode 0600):

  daemon: http://127.0.0.1:7700            # the daemon's --agent-listen address (https:// allowed)
  name: db-host-1                          # this agent's Agent declaration in the repository
  keyDir: /var/lib/rotor-agent             # made by \`rotor keygen\` on this host
  daemonSigningKey: "ed25519:..."          # printed by \`rotor keygen\` for the daemon
  targets:
    payments-pg:                           # a Target whose agent is this one
      url: postgres://rotor_admin@127.0.0.1:5432/postgres
      password: { env: PG_ADMIN_PASSWORD } # or { sops: FILE, key: PATH }, or the password (warned)
      timeout: 10s                         # optional

See "rotor-agent" in the README for every field, the admin privileges each database needs, and the codes.

Logs are JSON lines on stderr (job, secret, target, step, code; never a value).
Exit codes: 0 done (or stopped by SIGTERM/SIGINT), 1 configuration invalid, 2 usage,
3 --once did not complete (the daemon unreachable, its answer refused, or the results not accepted).
`;

export const AGENT_EXIT = { ok: 0, invalid: 1, usage: 2, failure: 3 } as const;

export interface AgentCliIo {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly env: NodeJS.ProcessEnv;
  /** Resolves (once) on SIGTERM/SIGINT; default: the process's signals. */
  readonly stopSignal?: AbortSignal;
  /** Extra options for the Agent (tests). */
  readonly agentOptions?: AgentOptions;
}

const LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];

class Usage extends Error {}

function processSignal(log: Logger): AbortSignal {
  const ac = new AbortController();
  let count = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    count++;
    if (count === 1) {
      log('info', `${sig}: stopping (running jobs finish and are reported)`, { signal: sig });
      ac.abort();
    } else {
      log('warn', `${sig} again: exiting now; unfinished jobs are delivered again by the daemon`, { signal: sig, code: 'AGENT_FORCED_EXIT' });
      process.exit(1);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return ac.signal;
}

export async function main(argv: readonly string[], io: AgentCliIo = { stdout: (t) => void process.stdout.write(t), stderr: (t) => void process.stderr.write(t), env: process.env }): Promise<number> {
  let flags: { config?: string; once: boolean; help: boolean; version: boolean; level: Level };
  try {
    const { values } = parseArgs({
      args: [...argv],
      options: {
        config: { type: 'string' },
        once: { type: 'boolean' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean' },
      },
      allowPositionals: false,
      strict: true,
    });
    const levelText = values['log-level'] ?? (io.env.ROTOR_AGENT_LOG_LEVEL || 'info');
    if (!LEVELS.includes(levelText as Level)) throw new Usage(`--log-level must be one of ${LEVELS.join(', ')}, not "${levelText}"`);
    const config = values.config ?? (io.env.ROTOR_AGENT_CONFIG || undefined);
    flags = { config, once: values.once === true, help: values.help === true, version: values.version === true, level: levelText as Level };
  } catch (e) {
    io.stderr(`rotor-agent: ${(e as Error).message.replace(/\. To specify a positional argument.*$/, '')}\nRun "rotor-agent --help" for usage.\n`);
    return AGENT_EXIT.usage;
  }
  if (flags.help) {
    io.stdout(HELP);
    return AGENT_EXIT.ok;
  }
  if (flags.version) {
    io.stdout('rotor-agent 0.1.0\n');
    return AGENT_EXIT.ok;
  }
  if (flags.config === undefined) {
    io.stderr('rotor-agent: --config FILE (or ROTOR_AGENT_CONFIG) is required\nRun "rotor-agent --help" for usage.\n');
    return AGENT_EXIT.usage;
  }

  const log = jsonLogger(io.stderr, Date.now, flags.level);
  let config;
  try {
    config = await loadAgentConfig(flags.config, { env: io.env });
  } catch (e) {
    if (!(e instanceof AgentConfigError)) throw e;
    io.stderr(`rotor-agent: ${flags.config}: the configuration is invalid:\n${e.problems.map((p) => `  ${agentConfigProblemLine(p)}\n`).join('')}`);
    return AGENT_EXIT.invalid;
  }
  for (const w of config.warnings) log('warn', `${w.file}:${w.line}:${w.col}: ${w.message}`, { code: w.code });

  const agent = new Agent(config, { log, ...io.agentOptions });
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

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      const err = e as Error & { code?: string };
      process.stderr.write(`rotor-agent: ${err?.message ?? String(e)}${err?.code ? ` [${err.code}]` : ''}\n`);
      process.exitCode = AGENT_EXIT.failure;
    },
  );
}
