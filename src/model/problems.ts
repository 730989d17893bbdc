/**
 * Problems found in a repository's declarations. Every problem has a stable code (listed in CODES with
 * what to do about it), a position, and a message that never contains a secret value.
 */

export type Severity = 'error' | 'warning';

/** Every code rotor reports, with a one-line explanation of what to do. Codes are stable: match on them. */
export const CODES = {
  // Files and YAML
  FILE_TOO_LARGE: 'A declaration file is larger than the limit (1 MiB). Split it into several files.',
  REPO_TOO_LARGE:
    'The repository holds more YAML than rotor reads (file count or total size). Move unrelated YAML under `Config.ignore`.',
  FILE_NOT_UTF8: 'A file is not valid UTF-8. Save it as UTF-8.',
  FILE_UNREADABLE: 'A file could not be read. Check its permissions.',
  SYMLINK_OUTSIDE: 'A symbolic link points outside the repository (or to a directory) and is ignored.',
  YAML_SYNTAX: 'The YAML does not parse. Fix the syntax at the position given.',
  YAML_DUPLICATE_KEY: 'A mapping has the same key twice. Remove one of them.',
  YAML_ALIAS_LIMIT: 'YAML aliases expand too much (a "billion laughs" pattern). Write the values out.',
  YAML_TOO_DEEP: 'YAML nesting is too deep. Declarations need only a few levels.',
  YAML_TOO_MANY_DOCUMENTS: 'A file or the repository has more YAML documents than the limit. Split or trim them.',
  DOC_NOT_MAPPING: 'A YAML document is not a mapping. Each document is one declaration with a `kind`.',
  KIND_MISSING: 'A document has no `kind`. Add one of Config, Policy, Secret, Target, Agent, Consumer.',
  KIND_UNKNOWN: 'A document has a `kind` rotor does not know.',
  // Schema
  SCHEMA_UNKNOWN_FIELD: 'A field is not part of this kind. Check its spelling against schemas/.',
  SCHEMA_REQUIRED: 'A required field is missing.',
  SCHEMA_TYPE:
    'A field has the wrong type (a number where a string is expected, say). Quote strings that look like numbers.',
  SCHEMA_ENUM: 'A field has a value outside its allowed set.',
  SCHEMA_RANGE: 'A number, string or list is too small or too large.',
  SCHEMA_INVALID: 'A field does not match the schema.',
  NAME_INVALID:
    'A name breaks the naming rule: lower case letters, digits, `.`, `_`, `-`; secrets may use `/` between segments; no `..`.',
  DURATION_INVALID:
    'A duration is not a whole number followed by s, m, h or d (`30s`, `10m`, `24h`, `30d`), or is out of range.',
  CLOCK_INVALID: 'A window time is not HH:MM in 24-hour form.',
  RETAIN_TOO_SMALL: '`retain` must be at least 2: the current and the previous version.',
  GLOB_INVALID:
    'A consumer or ignore glob is malformed: use names, `*` within a segment, `**` as a whole segment; at most 253 characters and 32 segments.',
  // Config
  CONFIG_MISSING:
    'There is no `kind: Config` in rotor.yaml at the repository root. Create it (`rotor init` makes one).',
  CONFIG_DUPLICATE: 'There is more than one `kind: Config`. Keep exactly one, in rotor.yaml.',
  CONFIG_LOCATION: '`kind: Config` must be in rotor.yaml at the repository root.',
  AUDIT_DIR_INVALID: '`audit.dir` must be a relative directory outside `.git`, such as `audit`.',
  AUDIT_PATH_SYMLINK:
    'The audit directory, a parent of it or a file in it is a symbolic link. rotor never writes through links: make it a plain directory.',
  AUDIT_PATH_NOT_PLAIN:
    'The audit directory or a parent of it is a file or submodule, or the audit directory holds one. Make it a plain directory of plain files.',
  NOTIFY_URL_INVALID:
    'A `notify` URL is not https:// (or http:// to a loopback address), carries a user name or password, or has a fragment.',
  NOTIFY_NAME_DUPLICATE: 'Two `notify` endpoints have the same name. Give each its own.',
  NOTIFY_SECRET_UNKNOWN:
    'A `notify` endpoint names a secret that is not declared; declare it (its value is the HMAC key).',
  NOTIFY_SECRET_INVALID:
    'A `notify` secret must be a plain `generate` or `sops` secret (not `fields` or `database`): its value is the HMAC key.',
  // Names and references
  NAME_DUPLICATE: 'Two declarations of the same kind have the same name.',
  POLICY_UNKNOWN: 'A secret names a policy that is not declared.',
  TARGET_UNKNOWN: 'A secret names a database target that is not declared.',
  AGENT_UNKNOWN: 'A target names an agent that is not declared.',
  CONSUMER_GLOB_UNMATCHED: 'A consumer glob matches no secret.',
  UNUSED: 'A policy, target or agent is declared but nothing uses it.',
  // Policies
  POLICY_SCHEDULE_MISSING: 'A policy needs `every` or `cron`.',
  POLICY_SCHEDULE_CONFLICT: 'A policy has both `every` and `cron`; keep one.',
  CRON_INVALID: 'A cron expression does not parse; it needs 5 fields (or 6 with seconds first).',
  TIMEZONE_INVALID: 'A time zone is not an IANA name such as UTC or Europe/Berlin.',
  WINDOW_EMPTY: 'A window starts and ends at the same time.',
  OVERLAP_TOO_LONG: '`overlap` must be shorter than the rotation interval, or versions would pile up.',
  JITTER_TOO_LONG: '`jitter` must be shorter than the rotation interval.',
  JITTER_EXCEEDS_WINDOW: '`jitter` is longer than the window: rotations may start after it closes.',
  VERIFY_NOT_DATABASE:
    'The policy has `verify` (drift detection), but this secret is not a database secret: only database credentials are checked, this secret is not.',
  DRIFT_WITHOUT_VERIFY: '`onDrift` does nothing without `verify`: add `verify: 15m` (how often to check) or remove it.',
  MAXAGE_TOO_SHORT: '`maxAge` is shorter than the rotation interval: the secret shows as overdue before each rotation.',
  // Secrets
  SECRET_SOURCE_MISSING: 'A secret needs exactly one value source: `generate`, `fields` or `sops`.',
  SECRET_SOURCE_MULTIPLE: 'A secret has more than one value source; keep one of `generate`, `fields`, `sops`.',
  FIELD_SOURCE_INVALID: 'A field needs exactly one of `generate` or `value`.',
  CHARSET_CHARS_MISSING: 'A `custom` charset needs `chars`.',
  CHARSET_CHARS_UNUSED: '`chars` is only used with `charset: custom`.',
  CHARSET_CHARS_INVALID: '`chars` must be distinct printable ASCII characters (no space).',
  ENTROPY_TOO_LOW:
    'A generator gives less than 128 bits of entropy. Make it longer, use a larger charset, or set `allowWeak: true`.',
  SOPS_FILE_INVALID: 'A `sops.file` path must be relative, inside the repository and outside the audit directory.',
  SOPS_FILE_MISSING: 'A `sops.file` does not exist in the repository.',
  SOPS_VALUE_CLEARTEXT:
    "The value at a `sops.key` is stored in clear in its file (the key matches the file's unencrypted_suffix or regex, or the file is not a SOPS file): make sops encrypt it, and replace the value, which is in the repository's history.",
  // Database credentials
  DB_SOURCE_INVALID: 'A database secret must use `generate` (a password), not `fields` or `sops`.',
  DB_CHARSET_UNSAFE:
    'A database password charset contains quotes, backslashes or whitespace. Use alphanumeric, hex or base64url.',
  DB_PASSWORD_TOO_LONG: 'The password is longer than the engine accepts.',
  STRATEGY_UNSUPPORTED: 'The engine does not support this strategy.',
  USERNAME_MISSING: 'The strategy needs `username` (dual, single) or `usernames` (alternate).',
  USERNAME_CONFLICT:
    '`username` and `usernames` do not fit the strategy: `usernames` is for alternate, `username` for dual and single.',
  USERNAMES_SAME: '`alternate` needs two different usernames.',
  USERNAME_TOO_LONG: 'A username is longer than the engine accepts.',
  DB_USER_SHARED: 'Two secrets manage the same database user on the same target; they would undo each other.',
  // Agents
  AGENT_RECIPIENT_INVALID:
    '`recipient` is not a valid age recipient (bad checksum or length). Copy it again from `rotor keygen`.',
  AGENT_KEY_REUSED: 'Two agents share a signing key; each agent needs its own (`rotor keygen`).',
} as const;

export type Code = keyof typeof CODES;

export interface Position {
  /** Path relative to the repository root, with '/' separators. */
  file: string;
  /** 1-based line. */
  line: number;
  /** 1-based column. */
  col: number;
}

export interface Problem extends Position {
  severity: Severity;
  code: Code;
  message: string;
}

/**
 * One line for people, as compilers print them: `FILE:LINE:COL: SEVERITY: MESSAGE [CODE]`. Takes any
 * problem of that shape (the agent's configuration problems have codes of their own).
 */
export function problemLine(
  p: Position & { readonly severity: Severity; readonly code: string; readonly message: string },
): string {
  return `${p.file}:${p.line}:${p.col}: ${p.severity}: ${p.message} [${p.code}]`;
}

export function hasErrors(problems: readonly Problem[]): boolean {
  return problems.some((p) => p.severity === 'error');
}

export function compareProblems(a: Problem, b: Problem): number {
  return a.file < b.file
    ? -1
    : a.file > b.file
      ? 1
      : a.line - b.line || a.col - b.col || (a.code < b.code ? -1 : a.code > b.code ? 1 : 0);
}

/** Levenshtein distance, for "did you mean" suggestions on short words. */
export function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j]!;
      prev[j] = Math.min(prev[j]! + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length]!;
}

/** The closest candidate to `word`, if it is close enough to be a likely typo. */
export function suggest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = c;
    }
  }
  return best !== undefined && bestD <= Math.max(1, Math.floor(best.length / 3)) ? best : undefined;
}
