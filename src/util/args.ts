/**
 * Command-line parsing shared by the commands: node:util parseArgs, every flag also read from an
 * environment variable (ROTOR_ + the flag in upper snake case), and usage errors that exit with 2.
 * The flags are data: the same declaration parses the command line and writes the Options section of
 * the command's --help (optionsHelp), so that an option cannot exist without its help.
 */
import { parseArgs } from 'node:util';
import { NEVER, RotorError } from '../errors.js';

/** The command line is wrong: the user must change it (exit 2). */
export class UsageError extends RotorError {
  declare readonly code: 'USAGE';
  constructor(message: string) {
    super('USAGE', message, { retry: NEVER });
  }
}

export interface FlagSpec {
  readonly type: 'string' | 'boolean';
  readonly short?: string;
  readonly default?: string;
  readonly choices?: readonly string[];
  readonly multiple?: boolean;
  /** What the option does, for --help; the default and the environment variable are added to it. */
  readonly description: string;
  /** The placeholder of a string option's value in --help: DIR, REF, HOST:PORT... (default VALUE). */
  readonly arg?: string;
  /** The default as --help shows it, where it is not `default` (decided at run time, say). */
  readonly defaultText?: string;
  /** The environment variable the option also reads: envName(flag) unless named here; false for none. */
  readonly env?: string | false;
}

export type Flags = Readonly<Record<string, FlagSpec>>;

/** -h, --help: every command takes it, and it is never read from the environment. */
export const HELP_FLAG = {
  type: 'boolean',
  short: 'h',
  env: false,
  description: 'show this help',
} as const satisfies FlagSpec;

export function envName(flag: string): string {
  return `ROTOR_${flag.replace(/-/g, '_').toUpperCase()}`;
}

/** The environment variable a flag reads, if any. */
export function flagEnv(flag: string, spec: FlagSpec): string | undefined {
  if (spec.env === false || flag === 'help') return undefined;
  return spec.env ?? envName(flag);
}

/** The width --help is laid out for. */
const WIDTH = 100;
/** Where option descriptions start, unless every option is shorter. */
const MAX_LABEL = 26;

/** Words filled into lines of at most `width` characters (a longer word gets a line of its own). */
function wrap(words: readonly string[], width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line !== '' && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else {
      line = line === '' ? w : `${line} ${w}`;
    }
  }
  lines.push(line);
  return lines;
}

/** The option's name as --help shows it: "-h, --help", "--data-dir DIR", "--env VAR=NAME..." (repeatable). */
export function flagLabel(flag: string, spec: FlagSpec): string {
  const value = spec.type === 'string' ? ` ${spec.arg ?? 'VALUE'}` : '';
  return `${spec.short ? `-${spec.short}, ` : ''}--${flag}${value}${spec.multiple ? '...' : ''}`;
}

/**
 * The Options section of a command's help, one entry per flag: its label, then its description, its
 * default and the environment variable it reads, wrapped to the width of a terminal.
 */
export function optionsHelp(flags: Flags): string {
  const entries = Object.entries(flags).map(([name, spec]) => {
    const shown = spec.defaultText ?? spec.default;
    const env = flagEnv(name, spec);
    const words = [
      ...spec.description.split(/\s+/),
      ...(shown !== undefined ? `(default: ${shown})`.split(/\s+/) : []),
      ...(env ? [`[env ${env}]`] : []),
    ];
    return { label: flagLabel(name, spec), words };
  });
  const col = 2 + Math.min(MAX_LABEL, Math.max(...entries.map((e) => e.label.length))) + 2;
  const out: string[] = [];
  for (const e of entries) {
    const lines = wrap(e.words, WIDTH - col);
    if (2 + e.label.length + 2 <= col) out.push(`  ${e.label.padEnd(col - 4)}  ${lines.shift()}`);
    else out.push(`  ${e.label}`);
    out.push(...lines.map((l) => ' '.repeat(col) + l));
  }
  return out.map((l) => `${l}\n`).join('');
}

export interface Parsed<F extends Flags> {
  readonly flags: {
    [K in keyof F]: F[K]['type'] extends 'boolean'
      ? boolean
      : F[K]['multiple'] extends true
        ? string[]
        : string | undefined;
  };
  readonly positionals: string[];
}

export function parse<F extends Flags>(
  argv: readonly string[],
  specs: F,
  env: NodeJS.ProcessEnv,
  maxPositionals: number,
): Parsed<F> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: Object.fromEntries(
        Object.entries(specs).map(([k, s]) => [
          k,
          { type: s.type, ...(s.short ? { short: s.short } : {}), ...(s.multiple ? { multiple: true } : {}) },
        ]),
      ),
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify a positional argument.*$/, ''));
  }
  if (parsed.positionals.length > maxPositionals)
    throw new UsageError(`unexpected argument "${parsed.positionals[maxPositionals]}"`);
  const flags: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(specs)) {
    let v: unknown = (parsed.values as Record<string, unknown>)[name];
    const variable = flagEnv(name, spec);
    if (v === undefined && variable !== undefined) {
      const fromEnv = env[variable];
      // A variable shared by commands (ROTOR_FORMAT) is used where its value is one this command takes.
      const fits = fromEnv !== undefined && fromEnv !== '' && (!spec.choices || spec.choices.includes(fromEnv));
      if (fits) v = spec.type === 'boolean' ? !/^(0|false|no)$/i.test(fromEnv) : spec.multiple ? [fromEnv] : fromEnv;
    }
    if (v === undefined) v = spec.type === 'boolean' ? false : spec.multiple ? [] : spec.default;
    if (spec.choices && typeof v === 'string' && !spec.choices.includes(v)) {
      throw new UsageError(`--${name} must be one of ${spec.choices.join(', ')}, not "${v}"`);
    }
    flags[name] = v;
  }
  return { flags: flags as Parsed<F>['flags'], positionals: parsed.positionals };
}
