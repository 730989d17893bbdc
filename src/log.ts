/**
 * Structured logs through pino: one JSON object per line, `{"level":"info","time":"<ISO 8601>","msg":"...",
 * ...fields}`. Callers pass identifiers, versions, codes and counts, never a value; the redaction
 * below is a second line of defence for field names that suggest one.
 *
 * Every line is written before the call returns: a process killed right after a log call (SIGKILL
 * included) has still handed that line to the kernel (the crash tests rely on this). The destination
 * is a write function: writeStderr in the commands (below: a synchronous write to fd 2 that waits
 * while the pipe behind it is full, never a queue in memory), a string buffer in the tests.
 */
import { writeSync } from 'node:fs';
import type { DestinationStream, LoggerOptions } from 'pino';
import { pino } from 'pino';

export type Level = 'debug' | 'info' | 'warn' | 'error';
export const LEVELS: readonly Level[] = ['debug', 'info', 'warn', 'error'];

export type FieldValue =
  | string
  | number
  | boolean
  | null
  | undefined
  | readonly FieldValue[]
  | { readonly [key: string]: FieldValue };
export type Fields = Readonly<Record<string, FieldValue>>;

export type Logger = (level: Level, message: string, fields?: Fields) => void;

export const REDACTED = '[redacted]';

/** Field names that could only hold a value; none is ever passed, this catches a mistake. */
const SENSITIVE_NAMES = [
  'password',
  'passwd',
  'pwd',
  'passphrase',
  'value',
  'values',
  'plaintext',
  'token',
  'key',
  'privateKey',
  'secretKey',
  'apiKey',
] as const;
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

/** The longest pause between two attempts at a full pipe; the first is 1 ms, doubling up to this. */
const MAX_PAUSE_MS = 50;
const pauseCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Writes all of `text` to `fd` and returns only when the kernel has taken the last byte. libuv makes
 * a stdio pipe non-blocking (once anything touches process.stderr, or the fd is shared with a process
 * that did), and process.stderr.write then queues in memory what a full pipe refuses, which a SIGKILL
 * loses. Here a write the kernel refuses (EAGAIN) is tried again after a short Atomics.wait (1 ms,
 * doubling up to 50 ms), and a partial write goes on from the first byte not taken, so the event
 * loop waits while the reader is behind: a reader that never reads holds the process, as a blocking
 * descriptor would. Any other error (EPIPE: the reader is gone; EBADF: no fd 2) drops the rest of
 * the text: logging never throws into the work it describes.
 */
export function writeFdSync(fd: number, text: string): void {
  const bytes = Buffer.from(text, 'utf8');
  let done = 0;
  let pauseMs = 1;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
      pauseMs = 1;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EAGAIN' && code !== 'EINTR') return;
      Atomics.wait(pauseCell, 0, 0, pauseMs);
      pauseMs = Math.min(pauseMs * 2, MAX_PAUSE_MS);
    }
  }
}

/**
 * stderr for the commands, logs and messages alike: writeFdSync on fd 2. Everything rotor writes to
 * stderr goes through here, one write after the other, so a message and the log lines around it
 * arrive in the order they were written; nothing of ours sits in process.stderr's queue to be
 * overtaken. (Node's own warnings still go through process.stderr: they may arrive out of order.)
 */
export function writeStderr(text: string): void {
  writeFdSync(2, text);
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

export type LogFormat = 'text' | 'json';
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];

/** One field of a text line: bare when it is a plain word, else as JSON (quoted, escaped). */
function textValue(v: unknown): string {
  if (typeof v === 'string') return /^[\w@%+=:,./-]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/**
 * A line of a JSON log as a person reads it: `TIME LEVEL  msg  key=value ...`. Any control character
 * in a string comes out escaped (JSON.stringify), so a field cannot forge a line.
 */
export function textLine(json: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : `${json}\n`;
  }
  const { time, level, msg, ...fields } = o;
  const head = `${String(time)} ${String(level).toUpperCase().padEnd(5)} ${textValue(msg).replace(/^"|"$/g, '')}`;
  const rest = Object.entries(fields)
    .map(([k, v]) => `${k}=${textValue(v)}`)
    .join(' ');
  return `${head}${rest ? `  ${rest}` : ''}\n`;
}

/** A Logger in `format`: JSON lines (jsonLogger), or the same lines, redacted alike, as text (textLine). */
export function logger(format: LogFormat, write: (line: string) => void, now?: () => number, minLevel?: Level): Logger {
  return format === 'json' ? jsonLogger(write, now, minLevel) : jsonLogger((l) => write(textLine(l)), now, minLevel);
}
