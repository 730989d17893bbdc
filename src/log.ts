/**
 * Structured logs through pino: one JSON object per line, `{"level":"info","time":"<ISO 8601>","msg":"...",
 * ...fields}`. Callers pass identifiers, versions, codes and counts, never a value; the redaction
 * below is a second line of defence for field names that suggest one.
 *
 * Every line is written synchronously, before the call returns: a daemon killed right after a log call
 * has still logged it (the crash tests rely on this). The destination is a write function: stderr in
 * the commands (process.stderr writes synchronously to files, pipes and terminals on Linux), a string
 * buffer in the tests.
 */
import { pino } from 'pino';
import type { DestinationStream, LoggerOptions } from 'pino';

export type Level = 'debug' | 'info' | 'warn' | 'error';
export const LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];

export type FieldValue = string | number | boolean | null | undefined | readonly FieldValue[] | { readonly [key: string]: FieldValue };
export type Fields = Readonly<Record<string, FieldValue>>;

export interface Logger {
  (level: Level, message: string, fields?: Fields): void;
}

export const REDACTED = '[redacted]';

/** Field names that could only hold a value; none is ever passed, this catches a mistake. */
const SENSITIVE_NAMES = ['password', 'passwd', 'pwd', 'passphrase', 'value', 'values', 'plaintext', 'token', 'key', 'privateKey', 'secretKey', 'apiKey'] as const;
const SENSITIVE = new RegExp(`^(${SENSITIVE_NAMES.join('|')})$`, 'i');
/** How deep the name check walks nested fields; anything deeper is replaced whole. */
const MAX_DEPTH = 8;

/** pino's own redaction: the names at the top level and two levels down (`*.password`, `*.*.password`). */
export const REDACT_PATHS: readonly string[] = SENSITIVE_NAMES.flatMap((n) => [n, `*.${n}`, `*.*.${n}`]);

/**
 * The same names in any capitalisation and at any depth, which pino's paths cannot express (they are
 * exact and fixed-depth). Returns a copy; the caller's object is left as it was.
 */
export function redactFields(fields: object, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) out[k] = SENSITIVE.test(k) ? REDACTED : redactValue(v, depth + 1);
  return out;
}

function redactValue(v: unknown, depth: number): unknown {
  if (typeof v !== 'object' || v === null) return v;
  if (depth >= MAX_DEPTH) return REDACTED;
  if (Array.isArray(v)) return v.map((x) => redactValue(x, depth + 1));
  return redactFields(v, depth);
}

/** The pino options of every rotor logger; `now` replaces the clock of pino.stdTimeFunctions.isoTime. */
export function pinoOptions(minLevel: Level = 'info', now?: () => number): LoggerOptions<never, false> {
  return {
    level: minLevel,
    base: undefined,
    timestamp: now ? () => `,"time":"${new Date(now()).toISOString()}"` : pino.stdTimeFunctions.isoTime,
    formatters: {
      level: (label) => ({ level: label }),
      log: (fields) => redactFields(fields),
    },
    redact: { paths: [...REDACT_PATHS], censor: REDACTED },
  };
}

/**
 * A Logger on a pino instance that hands each line, newline included, to `write` before it returns.
 * `now` is the clock of the `time` field (default: the system clock).
 */
export function jsonLogger(write: (line: string) => void, now?: () => number, minLevel: Level = 'info'): Logger {
  const destination: DestinationStream = { write: (line: string) => void write(line) };
  const p = pino(pinoOptions(minLevel, now), destination);
  return (level, message, fields) => {
    // The message goes in the object, first, so that lines read "level, time, msg, fields" (pino puts
    // a message passed on its own after the fields); and it is never a format string.
    const obj: Record<string, FieldValue> = { msg: message, ...fields };
    obj.msg = message;
    p[level](obj);
  };
}
