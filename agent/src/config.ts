/**
 * The agent's configuration (`rotor-agent --config FILE`): a YAML file on the database host, never in the
 * repository. It names the daemon, the agent's Agent declaration and key directory, the daemon's public
 * signing key, and how to reach each Target as its admin account:
 *
 *   daemon: http://127.0.0.1:7700            # the daemon's --agent-listen address, or a list (./config-daemons.ts)
 *   # tls: { ca: agent-api-ca.crt }          # https:// only: { ca: FILE } and/or { pin: "sha256/..." }
 *   name: db-host-1                          # its Agent declaration
 *   keyDir: /var/lib/rotor-agent             # made by `rotor keygen`
 *   daemonSigningKey: "ed25519:..."          # printed by `rotor keygen` for the daemon
 *   socketDir: /run/rotor-agent              # optional: the sockets of the consumers declared on this agent
 *   targets:                                 # optional: the databases this agent changes
 *     payments-pg:
 *       url: postgres://rotor_admin@127.0.0.1:5432/postgres
 *       password: { env: PG_ADMIN_PASSWORD } # or { sops: admin.enc.yaml, key: pg }, or the password itself (warned)
 *       timeout: 10s                         # optional
 *
 * The file is validated against schemas/agent-config.schema.json, then: the URLs (a known scheme, no
 * password in them), the keys (loadKeys), `tls` (./config-tls.ts), and every admin password is resolved
 * now, so that a missing environment variable or an unreadable SOPS or CA file stops the agent at start,
 * with the file, line and column of the entry at fault and a stable code. No password ever appears in a
 * message.
 */

import type { KeyObject } from 'node:crypto';
import { access, constants, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { Keys, ParsedDoc, Path, Problem } from 'rotor/internal';
import {
  decodeUtf8,
  errorPath,
  KeyError,
  LIMITS,
  loadKeys,
  parseDocuments,
  parseDuration,
  parseSigningKey,
  positionOf,
  problemLine,
  quoteHint,
  RotorError,
  readSchema,
  suggest,
  uniqueProblems,
  valueAt,
} from 'rotor/internal';
import { DAEMON_CONFIG_CODES, daemonSchemaProblem, readDaemons } from './config-daemons.js';
import { type AgentTls, pinMessage, type RawTls, readTlsConfig } from './config-tls.js';
import type { EngineName, TargetConnection } from './engines/types.js';
import type { SopsDocument, SopsValue } from './sops.js';
import { openSopsFile, SopsError } from './sops.js';

/** The codes this loader adds to those of the YAML reader, the schema check, loadKeys and the SOPS reader. */
export const AGENT_CONFIG_CODES = {
  AGENT_CONFIG_UNREADABLE: 'The configuration file cannot be read. Check the path and its permissions.',
  AGENT_CONFIG_NOT_MAPPING:
    'The configuration must be one YAML mapping (daemon, name, keyDir, daemonSigningKey, targets).',
  ...DAEMON_CONFIG_CODES,
  AGENT_CONFIG_TLS_CLEAR:
    '`tls` is for an https:// daemon: over http:// there is no certificate to check. Write https:// (the daemon needs --agent-tls-cert and --agent-tls-key), or remove `tls`.',
  AGENT_CONFIG_TLS_CA_UNREADABLE:
    '`tls.ca` names a file that does not exist or cannot be read (a relative path is relative to the configuration file).',
  AGENT_CONFIG_TLS_CA_INVALID:
    '`tls.ca` holds no PEM certificate ("-----BEGIN CERTIFICATE-----"): give the certificate authority that signed the daemon\'s certificate, or the daemon\'s self-signed certificate.',
  AGENT_CONFIG_TLS_PIN:
    '`tls.pin` must be "sha256/" and the base64 of the SHA-256 of the daemon certificate\'s public key (44 characters), as the daemon logs it at start, or a list of them.',
  AGENT_CONFIG_SIGNING_KEY:
    "`daemonSigningKey` must be the daemon's public key as `rotor keygen` printed it for the daemon's data directory (not the agent's own).",
  AGENT_CONFIG_URL_INVALID: 'A target `url` cannot be read: write SCHEME://USER@HOST:PORT/...',
  AGENT_CONFIG_URL_SCHEME:
    'A target `url` has a scheme rotor-agent does not drive: postgres, postgresql, mysql, mariadb, redis, rediss, mongodb, mongodb+srv, mssql, sqlserver.',
  AGENT_CONFIG_PASSWORD_IN_URL:
    'A target `url` holds a password. Secrets do not go in URLs (they end up in logs and process lists): use `password:`.',
  AGENT_CONFIG_ENV_UNSET:
    'A `password: { env: VAR }` names an environment variable that is not set (or is empty) for the agent.',
  AGENT_CONFIG_SOPS_FILE_UNREADABLE:
    'A `password: { sops: FILE }` names a file that does not exist or cannot be read (paths are relative to the configuration file).',
  AGENT_CONFIG_SOPS_KEY_MISSING:
    'A `password: { sops: FILE, key: PATH }` names a PATH that is not in the decrypted file.',
  AGENT_CONFIG_SOPS_VALUE_INVALID:
    'The value at a SOPS `key` is not a non-empty string (a number, a list, ...): a password is a string; quote it in the file.',
  AGENT_CONFIG_SOPS_VALUE_CLEARTEXT:
    "The value at a SOPS `key` is stored in clear in the file (its key matches the file's unencrypted_suffix or regex): encrypt it.",
  AGENT_CONFIG_PLAIN_PASSWORD:
    'A password is written in the configuration file itself. Prefer `{ env: VAR }` or `{ sops: FILE, key: PATH }`.',
  AGENT_CONFIG_FILE_READABLE: 'The configuration holds a password and other users can read it: chmod 600 it.',
  AGENT_CONFIG_NO_TARGETS: 'The agent serves no target yet.',
} as const;

export type AgentConfigCode = keyof typeof AGENT_CONFIG_CODES;

export interface AgentConfigProblem {
  readonly file: string;
  readonly line: number;
  readonly col: number;
  readonly severity: 'error' | 'warning';
  /** An AgentConfigCode, a code of the YAML reader or schema check (YAML_SYNTAX, SCHEMA_REQUIRED, ...), of loadKeys (KEYS_*) or of the SOPS reader (SOPS_*). */
  readonly code: string;
  readonly message: string;
}

/** One line for people: `FILE:LINE:COL: SEVERITY: MESSAGE [CODE]`, as rotor validate prints its problems. */
export function agentConfigProblemLine(p: AgentConfigProblem): string {
  return problemLine(p);
}

/** The configuration needs a person's edit: never retried. */
export class AgentConfigError extends RotorError {
  declare readonly code: 'AGENT_CONFIG_INVALID';
  constructor(
    readonly file: string,
    /** Every problem found, errors and warnings, in file order. */
    readonly problems: readonly AgentConfigProblem[],
  ) {
    const errors = problems.filter((p) => p.severity === 'error').length;
    const lines = problems.map(agentConfigProblemLine).join('\n');
    const count = `${errors} error${errors === 1 ? '' : 's'}`;
    super('AGENT_CONFIG_INVALID', `${file}: the agent configuration is invalid (${count}):\n${lines}`);
  }
}

/** Which engines a URL scheme can reach (the Target's engine comes from the daemon's declarations). */
export const URL_SCHEMES: Readonly<Record<string, readonly EngineName[]>> = {
  postgres: ['postgres'],
  postgresql: ['postgres'],
  mysql: ['mysql', 'mariadb'],
  mariadb: ['mysql', 'mariadb'],
  redis: ['redis'],
  rediss: ['redis'],
  mongodb: ['mongodb'],
  'mongodb+srv': ['mongodb'],
  mssql: ['mssql'],
  sqlserver: ['mssql'],
};

/** Whether a target URL's scheme (as recorded in AgentConfig.schemes) fits the engine its Target declares. */
export function schemeFitsEngine(scheme: string, engine: EngineName): boolean {
  return (URL_SCHEMES[scheme.toLowerCase()] ?? []).includes(engine);
}

export type PasswordSource = 'env' | 'sops' | 'plain' | 'none';

export type { AgentTls } from './config-tls.js';

export interface AgentConfig {
  /** The configuration file, absolute. */
  readonly file: string;
  /** The daemons' agent APIs (origins only), as listed: one, or several on one store (one leads). */
  readonly daemons: readonly URL[];
  /** How an https:// daemon's certificate is checked; absent: the system's certificate authorities. */
  readonly tls?: AgentTls;
  /** The name of this agent's Agent declaration. */
  readonly name: string;
  /** The key directory, absolute. */
  readonly keyDir: string;
  /** The agent's age identity (opens what the daemon sends and the SOPS files) and Ed25519 signing key. */
  readonly keys: Keys;
  /** Verifies the daemon's answers. */
  readonly daemonSigningKey: KeyObject;
  /** Where the consumers' sockets go, absolute. */
  readonly socketDir: string;
  /** How to reach each Target, by name, with its admin password resolved. */
  readonly targets: ReadonlyMap<string, TargetConnection>;
  /** Each target URL's scheme, lower case (see schemeFitsEngine). */
  readonly schemes: ReadonlyMap<string, string>;
  /** Where each admin password came from. */
  readonly passwordSources: ReadonlyMap<string, PasswordSource>;
  /** Warnings (plain passwords, a readable file, no targets). */
  readonly warnings: readonly AgentConfigProblem[];
}

export interface LoadAgentConfigOptions {
  /** The environment `{ env: VAR }` reads (default: process.env). */
  readonly env?: NodeJS.ProcessEnv;
}

interface RawConfig {
  daemon: string | string[];
  tls?: RawTls;
  name: string;
  keyDir: string;
  daemonSigningKey: string;
  socketDir?: string;
  targets?: Record<string, RawTarget>;
}
type RawPassword = string | { env: string } | { sops: string; key: string };
interface RawTarget {
  url: string;
  password?: RawPassword;
  timeout?: string;
}

let validator: ValidateFunction | undefined;
function validate(): ValidateFunction {
  if (!validator) {
    const load = readSchema;
    const ajv = new Ajv2020({ allErrors: true, strict: true, allowUnionTypes: true });
    ajv.addSchema(load('common.schema.json'));
    validator = ajv.compile(load('agent-config.schema.json'));
  }
  return validator;
}

function describe(v: unknown): string {
  if (v === null || v === undefined) return 'empty';
  if (Array.isArray(v)) return 'a list';
  if (v instanceof Uint8Array) return 'bytes';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'bigint') return 'a number';
  return `a ${typeof v}`;
}

function fieldName(at: Path): string {
  return at.length ? at.map(String).join('.') : 'the configuration';
}

const PASSWORD_FORMS = 'a string, { env: VAR } or { sops: FILE, key: PATH }';

/** ajv's errors as problems, one per place and code. */
function schemaProblems(pd: ParsedDoc, errors: readonly ErrorObject[]): AgentConfigProblem[] {
  return uniqueProblems(errors, (err) => schemaProblem(pd, err));
}

function knownFields(at: Path): string[] {
  if (at.length === 0) return ['daemon', 'tls', 'name', 'keyDir', 'daemonSigningKey', 'targets'];
  if (at.length === 1 && at[0] === 'tls') return ['ca', 'pin'];
  if (at.length === 2 && at[0] === 'targets') return ['url', 'password', 'timeout'];
  if (at.length === 3 && at[2] === 'password') return ['env', 'sops', 'key'];
  return [];
}

function schemaProblem(pd: ParsedDoc, err: ErrorObject): AgentConfigProblem | undefined {
  const at = errorPath(err);
  const field = fieldName(at);
  const value = valueAt(pd.data, at);
  const isPassword = at.length === 3 && at[0] === 'targets' && at[2] === 'password';
  const isPin = at[0] === 'tls' && at[1] === 'pin';
  const mk = (code: string, message: string, where: Path = at, key = false): AgentConfigProblem => ({
    ...positionOf(pd, where, key),
    severity: 'error',
    code,
    message,
  });
  if (isPin && err.keyword !== 'if') return mk('AGENT_CONFIG_TLS_PIN', pinMessage(field, value, describe(value)));
  const daemon = daemonSchemaProblem(err, at, describe(value));
  if (daemon) return mk(daemon.code, daemon.message);
  switch (err.keyword) {
    case 'if':
    case 'propertyNames':
      return undefined; // the errors of the branch taken, or of the name itself, say what is wrong
    case 'minProperties':
      if (at.length === 1 && at[0] === 'tls')
        return mk(
          'SCHEMA_REQUIRED',
          'tls needs ca (a PEM file of the CA or of the daemon\'s certificate), pin ("sha256/..."), or both',
          at,
          true,
        );
      return mk('SCHEMA_INVALID', `${field} ${err.message ?? 'is invalid'}`);
    case 'additionalProperties': {
      const prop = String((err.params as { additionalProperty: string }).additionalProperty);
      const known = knownFields(at);
      const hint = suggest(prop, known);
      return mk(
        'SCHEMA_UNKNOWN_FIELD',
        `unknown field "${prop}" in ${field}${hint ? `; did you mean "${hint}"?` : known.length ? `; allowed: ${known.join(', ')}` : ''}`,
        [...at, prop],
        true,
      );
    }
    case 'required': {
      const prop = (err.params as { missingProperty: string }).missingProperty;
      if (isPassword) return mk('SCHEMA_REQUIRED', `${field} needs "${prop}": write ${PASSWORD_FORMS}`, at, true);
      return mk('SCHEMA_REQUIRED', `${field} needs the field "${prop}"`, at, at.length > 0);
    }
    case 'maxProperties':
      if (isPassword)
        return mk(
          'SCHEMA_INVALID',
          `${field} takes either { env: VAR } or { sops: FILE, key: PATH }, not both`,
          at,
          true,
        );
      return mk('SCHEMA_RANGE', `${field} has too many fields`);
    case 'type': {
      if (isPassword)
        return mk(
          'SCHEMA_TYPE',
          `${field} must be ${PASSWORD_FORMS}, not ${describe(value)}${typeof value === 'number' || typeof value === 'boolean' ? ' (quote it: "…")' : ''}`,
        );
      const want = (err.params as { type: string }).type;
      return mk('SCHEMA_TYPE', `${field} must be a ${want}, not ${describe(value)}${quoteHint(want, value)}`);
    }
    case 'pattern': {
      if (err.propertyName !== undefined) {
        return mk(
          'NAME_INVALID',
          `target name ${JSON.stringify(err.propertyName)} is not valid: use the Target's name, lower case letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters`,
          [...at, err.propertyName],
          true,
        );
      }
      if (at[0] === 'name')
        return mk(
          'NAME_INVALID',
          `name ${JSON.stringify(value)} is not valid: use the Agent's name, lower case letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters`,
        );
      if (at[0] === 'daemonSigningKey')
        return mk(
          'AGENT_CONFIG_SIGNING_KEY',
          'daemonSigningKey must be "ed25519:" followed by the base64 of a 32-byte Ed25519 public key, as `rotor keygen` printed it for the daemon',
        );
      if (at[at.length - 1] === 'timeout')
        return mk(
          'DURATION_INVALID',
          `${field} ${JSON.stringify(value)} is not valid: use a whole number and a unit, s, m, h or d (e.g. 10s)`,
        );
      if (at[at.length - 1] === 'env')
        return mk(
          'SCHEMA_INVALID',
          `${field} must be the name of an environment variable (letters, digits and "_", not starting with a digit)`,
        );
      return mk('SCHEMA_INVALID', `${field} must match ${(err.params as { pattern: string }).pattern}`);
    }
    case 'minLength':
    case 'maxLength': {
      const limit = (err.params as { limit: number }).limit;
      if (err.keyword === 'minLength' && limit === 1) return mk('SCHEMA_RANGE', `${field} must not be empty`);
      return mk(
        'SCHEMA_RANGE',
        `${field} must be ${err.keyword === 'minLength' ? 'at least' : 'at most'} ${limit} characters long`,
      );
    }
    default:
      return mk('SCHEMA_INVALID', `${field} ${err.message ?? 'is invalid'}`);
  }
}

interface UrlCheck {
  readonly scheme?: string;
  readonly code?: AgentConfigCode;
  readonly message?: string;
}

/**
 * A target URL: a known scheme and no password. Not WHATWG URL, which refuses MongoDB seed lists
 * (`mongodb://h1:1,h2:2/db`). No message repeats the URL: it might hold a password.
 */
function checkTargetUrl(field: string, url: string): UrlCheck {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(\?[^#]*)?(#.*)?$/s.exec(url);
  if (!m)
    return {
      code: 'AGENT_CONFIG_URL_INVALID',
      message: `${field} is not a URL: write SCHEME://USER@HOST:PORT/... (e.g. postgres://rotor_admin@127.0.0.1:5432/postgres)`,
    };
  const scheme = m[1]!.toLowerCase();
  const authority = m[2]!;
  const query = m[4] ?? '';
  const atSign = authority.lastIndexOf('@');
  const userinfo = atSign >= 0 ? authority.slice(0, atSign) : undefined;
  const hosts = authority.slice(atSign + 1);
  if (userinfo?.includes(':') || /[?&](?:password|passwd|pwd|pass)=/i.test(query)) {
    return {
      code: 'AGENT_CONFIG_PASSWORD_IN_URL',
      message: `${field} holds a password: secrets do not go in URLs (logs and process lists show them); remove it from the URL and use password: { env: VAR } or { sops: FILE, key: PATH }`,
    };
  }
  if (!Object.hasOwn(URL_SCHEMES, scheme)) {
    const known = Object.keys(URL_SCHEMES);
    const hint = suggest(scheme, known);
    return {
      code: 'AGENT_CONFIG_URL_SCHEME',
      message: `${field} starts with ${JSON.stringify(`${scheme}://`)}, which rotor-agent does not drive${hint ? `; did you mean ${hint}://?` : ''} (known: ${known.join(', ')})`,
    };
  }
  if (hosts === '' && !/[?&]host=/i.test(query))
    return { code: 'AGENT_CONFIG_URL_INVALID', message: `${field} names no host` };
  if (m[5] !== undefined) return { code: 'AGENT_CONFIG_URL_INVALID', message: `${field} must not have a #fragment` };
  return { scheme };
}

/** Loads, checks and resolves an agent configuration; throws AgentConfigError listing every problem. */
export async function loadAgentConfig(file: string, options: LoadAgentConfigOptions = {}): Promise<AgentConfig> {
  const env = options.env ?? process.env;
  const absFile = path.resolve(file);
  const problems: AgentConfigProblem[] = [];
  const sorted = () =>
    [...problems].sort((a, b) => a.line - b.line || a.col - b.col || (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));
  const fail = (): never => {
    throw new AgentConfigError(file, sorted());
  };
  const atStart = (code: string, message: string): AgentConfigProblem => ({
    file,
    line: 1,
    col: 1,
    severity: 'error',
    code,
    message,
  });

  let mode = 0;
  let buf: Buffer;
  try {
    const st = await stat(absFile);
    if (!st.isFile()) throw new RotorError('not a regular file', 'not a regular file');
    if (st.size > LIMITS.fileBytes) {
      problems.push(atStart('FILE_TOO_LARGE', `the configuration is larger than ${LIMITS.fileBytes} bytes`));
      fail();
    }
    mode = st.mode;
    buf = await readFile(absFile);
  } catch (e) {
    if (e instanceof AgentConfigError) throw e;
    problems.push(
      atStart(
        'AGENT_CONFIG_UNREADABLE',
        `${file} cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      ),
    );
    return fail();
  }

  // YAML, with the project's reader (duplicate keys, aliases, depth), then the schema.
  const yamlProblems: Problem[] = [];
  const text = decodeUtf8(file, buf, yamlProblems);
  const docs = text === undefined ? [] : parseDocuments(file, text, yamlProblems, { docs: 10 });
  problems.push(
    ...yamlProblems.map((p) => ({
      file: p.file,
      line: p.line,
      col: p.col,
      severity: p.severity,
      code: p.code,
      message: p.message,
    })),
  );
  if (problems.some((p) => p.severity === 'error')) fail();
  const pd = docs[0];
  if (docs.length !== 1 || !pd || typeof pd.data !== 'object' || pd.data === null || Array.isArray(pd.data)) {
    problems.push(
      atStart(
        'AGENT_CONFIG_NOT_MAPPING',
        'the agent configuration must be one YAML mapping with daemon, name, keyDir, daemonSigningKey and targets',
      ),
    );
    return fail();
  }
  const v = validate();
  if (!v(pd.data)) {
    problems.push(...schemaProblems(pd, v.errors ?? []));
    fail();
  }
  const raw = pd.data as RawConfig;
  const error = (at: Path, code: string, message: string, key = false) =>
    problems.push({ ...positionOf(pd, at, key), severity: 'error', code, message });
  const warn = (at: Path, code: string, message: string, key = false) =>
    problems.push({ ...positionOf(pd, at, key), severity: 'warning', code, message });

  // The daemon, the keys.
  const { daemons, problems: daemonProblems } = readDaemons(raw.daemon, raw.tls !== undefined);
  for (const p of daemonProblems) error(p.at, p.code, p.message, p.key);
  const tls = raw.tls === undefined ? undefined : await readTlsConfig(raw.tls, path.dirname(absFile));
  if (tls && 'code' in tls) error(['tls', 'ca'], tls.code, tls.message);
  let daemonSigningKey: KeyObject | undefined;
  try {
    daemonSigningKey = parseSigningKey(raw.daemonSigningKey);
  } catch {
    error(
      ['daemonSigningKey'],
      'AGENT_CONFIG_SIGNING_KEY',
      'daemonSigningKey must be "ed25519:" followed by the base64 of a 32-byte Ed25519 public key, as `rotor keygen` printed it for the daemon',
    );
  }
  const keyDir = path.resolve(path.dirname(absFile), raw.keyDir);
  let keys: Keys | undefined;
  try {
    keys = await loadKeys(keyDir);
  } catch (e) {
    if (!(e instanceof KeyError)) throw e;
    error(['keyDir'], e.code, `keyDir: ${e.message.replace("the daemon's keys", "the agent's keys")}`);
  }
  if (keys && keys.signingKey === raw.daemonSigningKey) {
    error(
      ['daemonSigningKey'],
      'AGENT_CONFIG_SIGNING_KEY',
      `daemonSigningKey is this agent's own public key (from ${raw.keyDir}); write the daemon's, printed by \`rotor keygen\` for the daemon's data directory`,
    );
  }

  // The targets.
  const targets = new Map<string, TargetConnection>();
  const schemes = new Map<string, string>();
  const sources = new Map<string, PasswordSource>();
  const sopsFiles = new Map<string, Promise<SopsDocument>>();
  let firstPlain: Path | undefined;
  const rawTargets = raw.targets ?? {};
  const names = Object.keys(rawTargets);
  if (raw.targets !== undefined && names.length === 0)
    warn(['targets'], 'AGENT_CONFIG_NO_TARGETS', 'targets is empty: this agent serves no database yet', true);
  for (const name of names) {
    const t = rawTargets[name]!;
    const at = ['targets', name];
    const field = `targets.${name}`;
    const url = checkTargetUrl(`${field}.url`, t.url);
    if (url.code) error([...at, 'url'], url.code, url.message!);
    let timeoutMs: number | undefined;
    if (t.timeout !== undefined) {
      timeoutMs = parseDuration(t.timeout);
      if (timeoutMs === undefined || timeoutMs === 0)
        error([...at, 'timeout'], 'DURATION_INVALID', `${field}.timeout must be a positive duration such as 10s`);
    }
    const password = await resolvePassword(t.password, [...at, 'password'], `${field}.password`);
    if (url.scheme !== undefined && password !== null) {
      schemes.set(name, url.scheme);
      sources.set(name, password.source);
      targets.set(
        name,
        Object.freeze({
          url: t.url,
          ...(password.value !== undefined ? { password: password.value } : {}),
          ...(timeoutMs ? { timeoutMs } : {}),
        }),
      );
    }
  }

  async function resolvePassword(
    p: RawPassword | undefined,
    at: Path,
    field: string,
  ): Promise<{ value?: string; source: PasswordSource } | null> {
    if (p === undefined) return { source: 'none' };
    if (typeof p === 'string') {
      warn(
        at,
        'AGENT_CONFIG_PLAIN_PASSWORD',
        `${field} is written in this file; prefer { env: VAR } or { sops: FILE, key: PATH }, and keep the file mode 0600`,
      );
      firstPlain ??= at;
      return { value: p, source: 'plain' };
    }
    if ('env' in p) {
      const value = env[p.env];
      if (value === undefined || value === '') {
        error(
          [...at, 'env'],
          'AGENT_CONFIG_ENV_UNSET',
          `${field}: the environment variable ${p.env} is ${value === undefined ? 'not set' : 'empty'} for the agent; set it (e.g. in the service's EnvironmentFile) or use another source`,
        );
        return null;
      }
      return { value, source: 'env' };
    }
    const sopsFile = path.resolve(path.dirname(absFile), p.sops);
    try {
      await access(sopsFile, constants.R_OK);
      if (!(await stat(sopsFile)).isFile()) throw new Error('not a file');
    } catch {
      error(
        [...at, 'sops'],
        'AGENT_CONFIG_SOPS_FILE_UNREADABLE',
        `${field}.sops: ${p.sops} does not exist or cannot be read (looked for ${sopsFile}; a relative path is relative to this file)`,
      );
      return null;
    }
    if (!keys) return null; // reported at keyDir: without the identity no SOPS file opens
    let doc: SopsDocument;
    try {
      let opening = sopsFiles.get(sopsFile);
      if (!opening) sopsFiles.set(sopsFile, (opening = openSopsFile(sopsFile, keys.identity, { name: p.sops })));
      doc = await opening;
    } catch (e) {
      if (!(e instanceof SopsError)) throw e;
      error([...at, 'sops'], e.code, `${field}.sops: ${e.message}`);
      return null;
    }
    const entry = doc.get(p.key);
    if (!entry) {
      error(
        [...at, 'key'],
        'AGENT_CONFIG_SOPS_KEY_MISSING',
        `${field}.key: ${p.sops} has no value at "${p.key}"${missingKeyHint(doc, p.key)}`,
      );
      return null;
    }
    if (typeof entry.value !== 'string' || entry.value === '') {
      const what = typeof entry.value === 'string' ? 'empty' : describe(entry.value);
      error(
        [...at, 'key'],
        'AGENT_CONFIG_SOPS_VALUE_INVALID',
        `${field}.key: the value at "${p.key}" in ${p.sops} is ${what}; a password is a non-empty string (quote it in the file)`,
      );
      return null;
    }
    if (!entry.encrypted) {
      error(
        [...at, 'key'],
        'AGENT_CONFIG_SOPS_VALUE_CLEARTEXT',
        `${field}.key: the value at "${p.key}" is stored in clear in ${p.sops} (its key matches the file's unencrypted_suffix or regex); rename the key or change the rule, and encrypt it with sops`,
      );
      return null;
    }
    return { value: entry.value, source: 'sops' };
  }

  if (firstPlain && (mode & 0o004) !== 0) {
    warn(
      firstPlain,
      'AGENT_CONFIG_FILE_READABLE',
      `${file} holds a password and every user can read it (mode ${(mode & 0o777).toString(8)}); run: chmod 600 ${file}`,
    );
  }
  if (problems.some((p) => p.severity === 'error')) fail();
  return Object.freeze({
    file: absFile,
    daemons,
    ...(tls ? { tls: tls as AgentTls } : {}),
    name: raw.name,
    keyDir,
    socketDir: path.resolve(path.dirname(absFile), raw.socketDir ?? defaultSocketDir(env)),
    keys: keys!,
    daemonSigningKey: daemonSigningKey!,
    targets,
    schemes,
    passwordSources: sources,
    warnings: sorted(),
  });
}

/** $RUNTIME_DIRECTORY (the first, when systemd lists several), else /run/rotor. */
export function defaultSocketDir(env: NodeJS.ProcessEnv): string {
  const first = env.RUNTIME_DIRECTORY?.split(':')[0];
  return first && path.isAbsolute(first) ? first : '/run/rotor';
}

/** " (keys there: a, b)" or "; did you mean ...": names only, never values. */
function missingKeyHint(doc: SopsDocument, key: string): string {
  const steps = key.split('.');
  let parent: SopsValue = doc.data;
  let i = 0;
  for (; i < steps.length - 1; i++) {
    const next = doc.get(steps.slice(0, i + 1));
    if (!next || typeof next.value !== 'object' || next.value === null || next.value instanceof Uint8Array) break;
    parent = next.value;
  }
  if (typeof parent !== 'object' || parent === null || Array.isArray(parent) || parent instanceof Uint8Array) return '';
  const keys = Object.keys(parent);
  const hint = suggest(steps[i]!, keys);
  if (hint) return `; did you mean "${[...steps.slice(0, i), hint].join('.')}"?`;
  return keys.length && keys.length <= 20
    ? ` (keys${i ? ` under "${steps.slice(0, i).join('.')}"` : ''}: ${keys.join(', ')})`
    : '';
}
