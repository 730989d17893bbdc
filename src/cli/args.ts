/**
 * Command-line parsing shared by the commands: node:util parseArgs, every flag also read from an
 * environment variable (ROTOR_ + the flag in upper snake case), and usage errors that exit with 2.
 */
import { parseArgs } from 'node:util';

export class UsageError extends Error {
  readonly code = 'USAGE';
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface FlagSpec {
  readonly type: 'string' | 'boolean';
  readonly short?: string;
  readonly default?: string;
  readonly choices?: readonly string[];
  readonly multiple?: boolean;
}

export function envName(flag: string): string {
  return `ROTOR_${flag.replace(/-/g, '_').toUpperCase()}`;
}

export interface Parsed<F extends Record<string, FlagSpec>> {
  readonly flags: { [K in keyof F]: F[K]['type'] extends 'boolean' ? boolean : F[K]['multiple'] extends true ? string[] : string | undefined };
  readonly positionals: string[];
}

export function parse<F extends Record<string, FlagSpec>>(argv: readonly string[], specs: F, env: NodeJS.ProcessEnv, maxPositionals: number): Parsed<F> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: Object.fromEntries(Object.entries(specs).map(([k, s]) => [k, { type: s.type, ...(s.short ? { short: s.short } : {}), ...(s.multiple ? { multiple: true } : {}) }])),
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    throw new UsageError((e as Error).message.replace(/\. To specify a positional argument.*$/, ''));
  }
  if (parsed.positionals.length > maxPositionals) throw new UsageError(`unexpected argument "${parsed.positionals[maxPositionals]}"`);
  const flags: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(specs)) {
    let v: unknown = (parsed.values as Record<string, unknown>)[name];
    if (v === undefined && name !== 'help') {
      const fromEnv = env[envName(name)];
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
