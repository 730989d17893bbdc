/** `rotor rotate NAME --reason TEXT [--data-dir DIR]`: rotate a secret now, through the admin socket. */
import path from 'node:path';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import { AdminError, adminSocket, callAdmin } from './admin-client.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const DEFAULT_DATA_DIR = '/var/lib/rotor';

export const ROTATE_FLAGS = {
  reason: {
    type: 'string',
    arg: 'TEXT',
    description: 'why (required, 1 to 500 characters); it goes into the audit log',
  },
  'data-dir': { type: 'string', arg: 'DIR', default: DEFAULT_DATA_DIR, description: "the daemon's data directory" },
  help: HELP_FLAG,
} as const satisfies Flags;

export const ROTATE_HELP = `rotor rotate: rotate a secret now, through the running daemon

Usage: rotor rotate NAME --reason TEXT [--data-dir DIR]

Rotates the secret NAME now, on suspected compromise say, through the running daemon's admin socket
(DATA_DIR/admin.sock, for the daemon's user only). The reason goes into the audit log. Returns when
the new version is current; a rotation of NAME already running is joined, not repeated.

The GitOps way to do the same is a new rotate.request in the secret's declaration.

Options:
${optionsHelp(ROTATE_FLAGS)}
Exit status: 0 the new version is current, 1 the daemon refused (unknown secret, the rotation failed)
or cannot be reached, 2 usage error.

Examples:
  rotor rotate payments/webhook-signing --reason "seen in a log"
  sudo -u rotor rotor rotate app/db --reason "INC-4711" --data-dir /srv/rotor
`;

export async function rotateCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, ROTATE_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(ROTATE_HELP);
    return EXIT.ok;
  }
  const name = positionals[0];
  if (!name) throw new UsageError('NAME is required: the secret to rotate');
  if (!flags.reason || flags.reason.trim() === '')
    throw new UsageError('--reason TEXT is required: it is recorded in the audit log');
  try {
    const r = (await callAdmin(adminSocket(path.resolve(io.cwd, flags['data-dir']!)), 'POST', '/v1/rotate', {
      name,
      reason: flags.reason,
    })) as { name: string; version: number };
    io.stdout(`${r.name}: rotated, version ${r.version} is current\n`);
    return EXIT.ok;
  } catch (e) {
    if (e instanceof AdminError) {
      io.stderr(`rotor rotate: ${e.message} [${e.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }
}
