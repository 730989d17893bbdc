/** `rotor get NAME [--socket PATH] [--field F] [--json] [--version N]`: read a secret over a consumer socket. */
import type { Secret, SecretVersion } from '../client/index.js';
import { getSecret, RotorClientError } from '../client/index.js';
import { NEVER, RotorError } from '../errors.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const GET_FLAGS = {
  socket: { type: 'string', arg: 'PATH', description: "the consumer's socket, SOCKET_DIR/<consumer>.sock (required)" },
  field: { type: 'string', arg: 'F', description: 'one field of a structured secret, or username' },
  version: { type: 'string', arg: 'N', defaultText: 'the current one', description: 'a retained older version' },
  json: { type: 'boolean', description: "print the daemon's whole answer as JSON" },
  help: HELP_FLAG,
} as const satisfies Flags;

export const GET_HELP = `rotor get: print a secret, read from the daemon over a consumer socket

Usage: rotor get NAME [--socket PATH] [--field F] [--json] [--version N]

Prints the current value of the secret NAME, read from the daemon over a consumer's socket (the
consumer must be granted NAME by its declaration, and the socket belongs to the consumer's uid).

A plain secret prints its value and a newline. A structured secret prints its fields as JSON, or one
field with --field. --field username prints the database user of a database secret (with the
alternate strategy it changes from one version to the next). --json prints the whole answer: version,
rotatedAt, nextRotationAt and, during the overlap, the previous version.

Options:
${optionsHelp(GET_FLAGS)}
Exit status: 0 printed, 1 the daemon refused (not granted, unknown, not ready) or cannot be reached,
2 usage. Values go to stdout only; errors never contain one.

Examples:
  rotor get example/api-token --socket /run/rotor/example-app.sock
  ROTOR_SOCKET=/run/rotor/billing.sock rotor get payments/db --field username
  rotor get payments/db --socket /run/rotor/billing.sock --json --version 3
`;

export async function getCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, GET_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(GET_HELP);
    return EXIT.ok;
  }
  const name = positionals[0];
  if (!name) throw new UsageError('NAME is required: the secret to print');
  if (!flags.socket)
    throw new UsageError(
      '--socket PATH is required (or ROTOR_SOCKET): the consumer socket, SOCKET_DIR/<consumer>.sock',
    );
  if (flags.version !== undefined && !/^[1-9]\d{0,8}$/.test(flags.version))
    throw new UsageError('--version must be a version number (1, 2, ...)');
  try {
    const s =
      flags.version !== undefined
        ? await getSecret(name, { socket: flags.socket, version: Number(flags.version) })
        : await getSecret(name, { socket: flags.socket });
    if (flags.json) {
      io.stdout(
        `${JSON.stringify(flags.field !== undefined ? { ...s, value: pickField(s, flags.field) } : s, null, 2)}\n`,
      );
    } else {
      io.stdout(flags.field !== undefined ? `${pickField(s, flags.field)}\n` : `${render(s.value)}\n`);
    }
    return EXIT.ok;
  } catch (e) {
    if (e instanceof RotorClientError || e instanceof FieldError) {
      io.stderr(`rotor get: ${e.message} [${e.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }
}

/** The secret has no such field: the command line must name another. */
export class FieldError extends RotorError {
  declare readonly code: 'FIELD_UNKNOWN';
  constructor(message: string) {
    super('FIELD_UNKNOWN', message, { retry: NEVER });
  }
}

/** A structured value as JSON, a plain one as it is. */
export function render(value: Secret['value']): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** One field of a secret: a field of a structured value, or `username`. */
export function pickField(s: Secret | SecretVersion, field: string): string {
  if (typeof s.value !== 'string' && Object.hasOwn(s.value, field)) return s.value[field]!;
  if (field === 'username' && s.username !== undefined) return s.username;
  if (field === 'value') return render(s.value);
  const fields = typeof s.value === 'string' ? [] : Object.keys(s.value);
  if (s.username !== undefined) fields.push('username');
  throw new FieldError(
    `"${s.name}" has no field "${field}"${fields.length ? `; it has: ${fields.join(', ')}` : ' (it is a plain value: leave out --field)'}`,
  );
}
