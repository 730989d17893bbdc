/** `rotor validate [DIR]`: check the declarations of a repository directory. */
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { loadModel } from '../model/load.js';
import { DirectorySource } from '../model/source.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';
import type { ProblemFormat } from './report.js';
import { formatProblems } from './report.js';

export const VALIDATE_FLAGS = {
  format: {
    type: 'string',
    arg: 'FORMAT',
    default: 'text',
    choices: ['text', 'json', 'github'],
    description: 'text, json, or github (GitHub Actions annotations)',
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const VALIDATE_HELP = `rotor validate: check the declarations of a repository directory

Usage: rotor validate [DIR] [--format text|json|github]

Checks every declaration in DIR (default: the current directory): YAML syntax, the JSON Schemas of
schemas/, references between declarations, schedules, strategies, generator strength and limits,
and that the value of each sops: secret is encrypted in its SOPS file (read without a key).
Prints one line per problem, "file:line:col: error|warning: message [CODE]", file relative to DIR.

Options:
${optionsHelp(VALIDATE_FLAGS)}
Exit status: 0 valid (warnings allowed), 1 invalid, 2 usage error.

Examples:
  rotor validate                              # the repository you are in
  rotor validate policies --format json       # for a script
  npx rotor validate --format github          # in a GitHub Actions job: annotations on the diff
`;

export async function validateCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, VALIDATE_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(VALIDATE_HELP);
    return EXIT.ok;
  }
  const dirArg = positionals[0] ?? '.';
  const dir = path.resolve(io.cwd, dirArg);
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) throw new UsageError(`${dirArg} is not a directory`);
  const result = await loadModel(new DirectorySource(dir), { now: io.now(), sopsValues: true });
  io.stdout(formatProblems(result, flags.format as ProblemFormat, dirArg, dirArg));
  return result.valid ? EXIT.ok : EXIT.invalid;
}
