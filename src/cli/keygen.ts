/** `rotor keygen DIR` (or --data-dir DIR): create a daemon's (or an agent's) keys and print their public halves. */

import path from 'node:path';
import { sshPublicKeyLine } from '../git/sshsig.js';
import { generateKeys, KeyError, loadKeys, parseSigningKey } from '../keys.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const KEYGEN_FLAGS = {
  'data-dir': { type: 'string', arg: 'DIR', description: 'the directory to create the keys in, if DIR is not given' },
  help: HELP_FLAG,
} as const satisfies Flags;

export const KEYGEN_HELP = `rotor keygen: create a daemon's or an agent's keys and print their public halves

Usage: rotor keygen DIR
       rotor keygen --data-dir DIR    (or ROTOR_DATA_DIR, as the daemon's environment sets it)

Creates, in DIR (made with mode 0700 if missing):
  identity.age   an age X25519 identity: the state store is encrypted to it, and the standard
                 age tool opens a state snapshot with it (age -d -i DIR/identity.age)
  signing.key    an Ed25519 private key that signs requests and answers between daemon and agents
Both are mode 0600. Existing keys are never replaced.

Prints the public halves, ready to paste into an Agent declaration or an agent's configuration:
  recipient: "age1..."
  signingKey: "ed25519:..."
and, last, the same signing key as an OpenSSH public key line, for the daemon's signed audit commits
(audit: { sign: true } in rotor.yaml):
  ssh-ed25519 AAAA... rotor-audit
Give that line to the forge as a signing key (GitHub, GitLab: the account that pushes the audit
commits, whose verified email is the commits' committer), and put it, after a principal, in an
allowed-signers file for git verify-commit and rotor audit verify --allowed-signers:
  echo "rotor@localhost $(rotor keygen DIR | grep '^ssh-ed25519')" >> allowed_signers

The daemon reads its keys from its data directory: "rotor keygen DATA_DIR" prepares a daemon.

Options:
${optionsHelp(KEYGEN_FLAGS)}
Keys already in DIR are kept, and their public halves printed again (exit status 1, KEYS_EXIST):
"rotor keygen DIR" is also how to show them later.

Exit status: 0 created, 1 keys exist there already (kept; public halves printed), 2 usage error, 3 the
directory cannot be made or written.

Examples:
  rotor keygen /var/lib/rotor            # the daemon's keys, in its data directory
  rotor keygen /var/lib/rotor-agent      # on a database host: an agent's keys (its keyDir)
`;

/** The comment of the printed OpenSSH public key line (forges show it; signatures do not carry it). */
export const SSH_KEY_COMMENT = 'rotor-audit';

export async function keygenCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, KEYGEN_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(KEYGEN_HELP);
    return EXIT.ok;
  }
  const dirArg = positionals[0] ?? flags['data-dir'];
  if (!dirArg) throw new UsageError("DIR is required: the directory to create the keys in (a daemon's data directory)");
  const dir = path.resolve(io.cwd, dirArg);
  const show = (keys: { recipient: string; signingKey: string }) =>
    io.stdout(
      `recipient: "${keys.recipient}"\nsigningKey: "${keys.signingKey}"\n${sshPublicKeyLine(parseSigningKey(keys.signingKey), SSH_KEY_COMMENT)}\n`,
    );
  try {
    show(await generateKeys(dir, new Date(io.now())));
    return EXIT.ok;
  } catch (e) {
    if (!(e instanceof KeyError)) throw e;
    if (e.code === 'KEYS_EXIST') {
      // Kept; their public halves are what the person came for, most likely.
      try {
        const keys = await loadKeys(dir);
        io.stderr(`rotor keygen: keys exist in ${dir}, kept (never replaced); their public halves: [KEYS_EXIST]\n`);
        show(keys);
        return EXIT.invalid;
      } catch (l) {
        if (!(l instanceof KeyError)) throw l;
        io.stderr(`rotor keygen: ${e.message} [${e.code}]; they cannot be read: ${l.message} [${l.code}]\n`);
        return EXIT.invalid;
      }
    }
    io.stderr(`rotor keygen: ${e.message} [${e.code}]\n`);
    return EXIT.invalid;
  }
}
