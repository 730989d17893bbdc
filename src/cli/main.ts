#!/usr/bin/env node
/** The rotor command line: one file per command, wired here by hand. */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { UsageError } from './args.js';
import type { Io } from './io.js';
import { EXIT, processIo } from './io.js';
import { validateCommand } from './validate.js';
import { planCommand } from './plan.js';
import { keygenCommand } from './keygen.js';
import { auditCommand } from './audit.js';
import { daemonCommand } from './daemon.js';
import { rotateCommand } from './rotate.js';
import { getCommand } from './get.js';
import { execCommand } from './exec.js';
import { statusCommand } from './status.js';
import { initCommand } from './init.js';

export const HELP = `rotor: declarative secret rotation from a Git repository

Usage: rotor <command> [options]

Commands:
  init [DIR] [--data-dir KEYS]    scaffold a new GitOps repository (and the daemon's keys)
  validate [DIR]                  check the declarations in DIR (exit 1 when invalid)
  plan --base REF [--head REF] [DIR]
                                  what a change between two commits does, for pull requests
  keygen DIR                      create a daemon's or an agent's keys and print their public halves
  audit verify [DIR]              check the hash chain of DIR's audit log (exit 1 when broken)
  daemon --repo URL|PATH --data-dir DIR
                                  follow the repository, rotate on schedule, commit the audit log
  rotate NAME --reason TEXT       rotate a secret now, through the running daemon
  status [--json]                 what the running daemon knows: secrets, consumers, agents, config
  get NAME --socket PATH          print a secret, read over a consumer socket
  exec --env VAR=NAME... -- CMD   run CMD with secrets in its environment (--restart on rotation)

Run "rotor <command> --help" for a command's options. Every option also reads from an environment
variable: --format from ROTOR_FORMAT, --base from ROTOR_BASE, and so on.
`;

type Command = (argv: readonly string[], io: Io) => Promise<number>;
const COMMANDS: Record<string, Command> = {
  validate: validateCommand,
  plan: planCommand,
  keygen: keygenCommand,
  audit: auditCommand,
  daemon: daemonCommand,
  rotate: rotateCommand,
  get: getCommand,
  exec: execCommand,
  status: statusCommand,
  init: initCommand,
};

export async function run(argv: readonly string[], io: Io = processIo()): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    io.stdout(HELP);
    return name === undefined ? EXIT.usage : EXIT.ok;
  }
  if (name === '--version' || name === '-v') {
    io.stdout('rotor 0.1.0\n');
    return EXIT.ok;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.stderr(`rotor: unknown command "${name}"\n\n${HELP}`);
    return EXIT.usage;
  }
  try {
    return await command(rest, io);
  } catch (e) {
    if (e instanceof UsageError) {
      io.stderr(`rotor ${name}: ${e.message}\nRun "rotor ${name} --help" for usage.\n`);
      return EXIT.usage;
    }
    const err = e as Error & { code?: string };
    io.stderr(`rotor ${name}: ${err.message}${err.code ? ` [${err.code}]` : ''}\n`);
    if (io.env.ROTOR_DEBUG) io.stderr(`${err.stack ?? ''}\n`);
    return EXIT.failure;
  }
}

if (process.argv[1] && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  run(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
