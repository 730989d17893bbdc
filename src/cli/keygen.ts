/** `rotor keygen DIR`: create a daemon's (or an agent's) keys and print their public halves. */
import { KeyError, generateKeys } from '../keys.js';
import { parse, UsageError } from './args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import path from 'node:path';

export const KEYGEN_HELP = `Usage: rotor keygen DIR

Creates, in DIR (made with mode 0700 if missing):
  identity.age   an age X25519 identity: the state store is encrypted to it, and the standard
                 age tool opens a state snapshot with it (age -d -i DIR/identity.age)
  signing.key    an Ed25519 private key that signs requests and answers between daemon and agents
Both are mode 0600. Existing keys are never replaced.

Prints the public halves, ready to paste into an Agent declaration or an agent's configuration:
  recipient: age1...
  signingKey: ed25519:...

The daemon reads its keys from its data directory: "rotor keygen DATA_DIR" prepares a daemon.
`;

export async function keygenCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, { help: { type: 'boolean', short: 'h' } }, io.env, 1);
  if (flags.help) {
    io.stdout(KEYGEN_HELP);
    return EXIT.ok;
  }
  const dirArg = positionals[0];
  if (!dirArg) throw new UsageError('DIR is required: the directory to create the keys in (a daemon\'s data directory)');
  try {
    const keys = await generateKeys(path.resolve(io.cwd, dirArg), new Date(io.now()));
    io.stdout(`recipient: "${keys.recipient}"\nsigningKey: "${keys.signingKey}"\n`);
    return EXIT.ok;
  } catch (e) {
    if (e instanceof KeyError) {
      io.stderr(`rotor keygen: ${e.message} [${e.code}]\n`);
      return EXIT.invalid;
    }
    throw e;
  }
}
