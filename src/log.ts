/**
 * Structured logs: one JSON object per line on stderr. Callers pass identifiers, versions, codes and
 * counts, never a value; `redact` below is a second line of defence for field names that suggest one.
 */
export type Level = 'debug' | 'info' | 'warn' | 'error';
export type Fields = Record<string, string | number | boolean | undefined>;

export interface Logger {
  (level: Level, message: string, fields?: Fields): void;
}

/** Field names that could only hold a value; none is ever passed, this catches a mistake. */
const SENSITIVE = /^(password|passwd|pwd|value|values|plaintext|token|key|privateKey)$/i;

function redact(fields: Fields | undefined): Fields {
  const out: Fields = {};
  for (const [k, v] of Object.entries(fields ?? {})) out[k] = SENSITIVE.test(k) ? '[redacted]' : v;
  return out;
}

export function jsonLogger(write: (line: string) => void, now: () => number = Date.now, minLevel: Level = 'info'): Logger {
  const order: Record<Level, number> = { debug: 0, info: 1, warn: 2, error: 3 };
  return (level, message, fields) => {
    if (order[level] < order[minLevel]) return;
    write(JSON.stringify({ time: new Date(now()).toISOString(), level, msg: message, ...redact(fields) }) + '\n');
  };
}
