#!/usr/bin/env node
/** The rotor command line: one file per command, wired here by hand. */
import type { Flags } from '../util/args.js';
import { UsageError } from '../util/args.js';
import { isMain, VERSION } from '../version.js';
import { AUDIT_FLAGS, AUDIT_HELP, auditCommand } from './audit.js';
import { DAEMON_FLAGS, DAEMON_HELP, daemonCommand } from './daemon.js';
import { EXEC_FLAGS, EXEC_HELP, execCommand } from './exec.js';
import { GET_FLAGS, GET_HELP, getCommand } from './get.js';
import { INIT_FLAGS, INIT_HELP, initCommand } from './init.js';
import type { Io } from './io.js';
import { EXIT, processIo } from './io.js';
import { KEYGEN_FLAGS, KEYGEN_HELP, keygenCommand } from './keygen.js';
import { PLAN_FLAGS, PLAN_HELP, planCommand } from './plan.js';
import { ROTATE_FLAGS, ROTATE_HELP, rotateCommand } from './rotate.js';
import { STATE_FLAGS, STATE_HELP, stateCommand } from './state.js';
import { STATUS_FLAGS, STATUS_HELP, statusCommand } from './status.js';
import { VALIDATE_FLAGS, VALIDATE_HELP, validateCommand } from './validate.js';

export const HELP = `rotor: declarative secret rotation from a Git repository

Usage: rotor <command> [options]

Commands:
  init [DIR] [--data-dir KEYS]    scaffold a new GitOps repository (and the daemon's keys)
  validate [DIR]                  check the declarations in DIR (exit 1 when invalid)
  plan --base REF [--head REF] [DIR]
                                  what a change between two commits does, for pull requests
  keygen DIR                      create a daemon's or an agent's keys and print their public halves
  audit verify [DIR]              check the hash chain of DIR's audit log (exit 1 when broken)
  daemon --repo URL|PATH [--data-dir DIR] [--log-level LEVEL]
                                  follow the repository, rotate on schedule, commit the audit log
  rotate NAME --reason TEXT       rotate a secret now, through the running daemon
  status [--json]                 what the running daemon knows: secrets, consumers, agents, config
  get NAME --socket PATH          print a secret, read over a consumer socket
  exec --env VAR=NAME... -- CMD   run CMD with secrets in its environment (--restart on rotation)
  state export --identity FILE --data-dir DIR|--state URL
                                  print the store's current values as JSON, with the daemon's or a
                                  break-glass identity, without the daemon (after a crash too)

Run "rotor <command> --help" (or "rotor help <command>") for a command's options, exit status and
examples. Options also read an environment variable, shown in each command's help: --data-dir from
ROTOR_DATA_DIR, --format from ROTOR_FORMAT, and so on; the command line wins.

Exit status: for every command 2 is a usage error and 3 an unexpected failure (ROTOR_DEBUG=1 adds the
stack trace); 0 and 1 are each command's own, see its help (exec exits with its command's status).

Examples:
  rotor init my-secrets --data-dir ~/.local/share/rotor
  rotor validate && rotor plan --base origin/main
  rotor daemon --repo git@git.example.com:platform/secrets.git --data-dir /var/lib/rotor
`;

type Command = (argv: readonly string[], io: Io) => Promise<number>;

/** A command: what runs it, the flags its parser takes, and its --help. */
export interface CommandEntry {
  readonly run: Command;
  readonly flags: Flags;
  readonly help: string;
}

export const COMMANDS: Readonly<Record<string, CommandEntry>> = {
  init: { run: initCommand, flags: INIT_FLAGS, help: INIT_HELP },
  validate: { run: validateCommand, flags: VALIDATE_FLAGS, help: VALIDATE_HELP },
  plan: { run: planCommand, flags: PLAN_FLAGS, help: PLAN_HELP },
  keygen: { run: keygenCommand, flags: KEYGEN_FLAGS, help: KEYGEN_HELP },
  audit: { run: auditCommand, flags: AUDIT_FLAGS, help: AUDIT_HELP },
  daemon: { run: daemonCommand, flags: DAEMON_FLAGS, help: DAEMON_HELP },
  rotate: { run: rotateCommand, flags: ROTATE_FLAGS, help: ROTATE_HELP },
  status: { run: statusCommand, flags: STATUS_FLAGS, help: STATUS_HELP },
  get: { run: getCommand, flags: GET_FLAGS, help: GET_HELP },
  exec: { run: execCommand, flags: EXEC_FLAGS, help: EXEC_HELP },
  state: { run: stateCommand, flags: STATE_FLAGS, help: STATE_HELP },
};

export async function run(argv: readonly string[], io: Io = processIo()): Promise<number> {
  const [name, ...rest] = argv;
  if (name === 'help' && rest.length > 0) return run([...rest, '--help'], io);
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    // Asked for: stdout, exit 0. No command at all is a usage error: stderr, exit 2.
    (name === undefined ? io.stderr : io.stdout)(HELP);
    return name === undefined ? EXIT.usage : EXIT.ok;
  }
  if (name === '--version' || name === '-v') {
    io.stdout(`rotor ${VERSION}\n`);
    return EXIT.ok;
  }
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name]!.run : undefined;
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

if (isMain(import.meta.url)) {
  run(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
