/**
 * How the PostgreSQL backend of the state store (postgres.ts) connects: the URL it takes, where the
 * password comes from, and what a driver error means as a StateError. No value of the store ever
 * reaches this module; a password never leaves it (no message, no log line, no process argument).
 *
 * The URL: postgres://USER@HOST:PORT/DB, with optional parameters sslmode (disable, the default, or
 * no-verify, require, verify-ca, verify-full: TLS, the certificate verified for every mode but
 * no-verify), host (a Unix socket directory, as in libpq URLs) and schema (where the tables go, default
 * rotor). A password in the URL is refused (STATE_URL_PASSWORD): it would sit in the unit file, the
 * process arguments and `ps`.
 *
 * The password, asked for each time the server asks for one (so a changed file is read again), from the
 * first of: the password file (--state-password-file: its first line), PGPASSWORD, the PGPASSFILE file
 * or ~/.pgpass (libpq's format: host:port:database:user:password, `*` matching anything, `\` escaping).
 * node-postgres 8.23 reads PGPASSWORD and ~/.pgpass itself, but its pgpass route is deprecated (a
 * DeprecationWarning on stderr, removed in pg 9) and skips a file others can read with a warning on
 * stderr only: here the password is looked up by this module, and a password file that group or others
 * can read is refused (STATE_PASSWORD_FILE), like the daemon's key files.
 */
import { readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { ClientConfig } from 'pg';
import { connectionFailed, sqlstate, transient } from '../util/pg-errors.js';
import { StateError } from './types.js';

/** The tables' schema: a plain lower-case identifier, so that it needs no quoting rules of its own. */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const MAX_PASSWORD_FILE = 64 * 1024;
const MAX_PGPASS = 1024 * 1024;
const PARAMS = new Set(['sslmode', 'host', 'schema']);
const SSLMODES = new Set(['disable', 'no-verify', 'require', 'verify-ca', 'verify-full']);

export const DEFAULT_SCHEMA = 'rotor';

export interface StateUrl {
  /** What pg needs, less the password (asked for by `password`). */
  readonly client: ClientConfig & { host: string; port: number; user: string; database: string };
  readonly schema: string;
  /** postgres://USER@HOST:PORT/DB schema S: for messages (never a password: the URL has none). */
  readonly place: string;
}

function urlError(message: string): StateError {
  return new StateError('STATE_URL_INVALID', message);
}

/** Parses a state store URL; throws STATE_URL_PASSWORD or STATE_URL_INVALID. */
export function parseStateUrl(url: string, schemaOption?: string): StateUrl {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw urlError('the state store URL is not a valid URL: give postgres://USER@HOST:PORT/DATABASE');
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:')
    throw urlError(`a state store URL starts with postgres://, not ${u.protocol}//`);
  if (u.password !== '' || u.searchParams.has('password'))
    throw new StateError(
      'STATE_URL_PASSWORD',
      'the state store URL holds a password: remove it from the URL and use PGPASSWORD, PGPASSFILE (or ~/.pgpass) or --state-password-file',
    );
  for (const key of u.searchParams.keys())
    if (!PARAMS.has(key))
      throw urlError(
        `the state store URL has a parameter "${key}" that rotor does not take (only ${[...PARAMS].join(', ')})`,
      );
  const user = decodeURIComponent(u.username);
  if (user === '') throw urlError('the state store URL must name the user: postgres://USER@HOST:PORT/DATABASE');
  const database = decodeURIComponent(u.pathname.slice(1));
  if (database === '' || database.includes('/'))
    throw urlError('the state store URL must name one database: postgres://USER@HOST:PORT/DATABASE');
  const schema = schemaOption ?? u.searchParams.get('schema') ?? DEFAULT_SCHEMA;
  if (!SCHEMA_NAME.test(schema))
    throw urlError(`the state store schema "${schema}" is not a lower-case identifier ([a-z_][a-z0-9_]*, at most 63)`);
  const sslmode = u.searchParams.get('sslmode') ?? 'disable';
  if (!SSLMODES.has(sslmode)) throw urlError(`sslmode=${sslmode} is not one of ${[...SSLMODES].join(', ')}`);
  const host =
    u.searchParams.get('host') ?? (decodeURIComponent(u.hostname.replace(/^\[(.*)\]$/, '$1')) || 'localhost');
  const port = u.port ? Number(u.port) : 5432;
  const ssl = sslmode === 'disable' ? false : sslmode === 'no-verify' ? { rejectUnauthorized: false } : true;
  const shownHost = host.startsWith('/') ? encodeURIComponent(host) : u.host.replace(/:\d+$/, '') || host;
  return {
    client: { host, port, user, database, ssl },
    schema,
    place: `postgres://${encodeURIComponent(user)}@${shownHost}:${port}/${encodeURIComponent(database)} (schema ${schema})`,
  };
}

function fileError(message: string, cause?: unknown): StateError {
  return new StateError('STATE_PASSWORD_FILE', message, { cause });
}

/** Reads a file that holds a password: a regular file, at most 64 KiB, that only its owner can read. */
async function readSecretFile(file: string, what: string, max: number): Promise<string | undefined> {
  const st = await stat(file).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return undefined;
    throw fileError(`${what} ${file} cannot be read (${e.code ?? 'error'})`, e);
  });
  if (!st) return undefined;
  if (!st.isFile()) throw fileError(`${what} ${file} is not a regular file`);
  if ((st.mode & 0o077) !== 0)
    throw fileError(
      `${what} ${file} is readable by other users (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${file}`,
    );
  if (st.size > max) throw fileError(`${what} ${file} is larger than ${max} bytes`);
  try {
    return await readFile(file, 'utf8');
  } catch (e) {
    throw fileError(`${what} ${file} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`, e);
  }
}

/** The first line of --state-password-file, its line ending removed. */
export async function passwordFromFile(file: string): Promise<string> {
  const text = await readSecretFile(file, 'the state store password file', MAX_PASSWORD_FILE);
  if (text === undefined) throw fileError(`the state store password file ${file} does not exist`);
  const line = text.split('\n', 1)[0]!.replace(/\r$/, '');
  if (line === '') throw fileError(`the first line of the state store password file ${file} is empty`);
  return line;
}

/** One field of a .pgpass line, split on unescaped colons, with `\:` and `\\` unescaped. */
function pgpassFields(line: string): string[] {
  const fields: string[] = [];
  let cur = '';
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === '\\' && i + 1 < line.length) cur += line[++i];
    else if (c === ':' && fields.length < 4) {
      fields.push(cur);
      cur = '';
    } else cur += c;
  }
  fields.push(cur);
  return fields;
}

/** The password .pgpass gives for this connection, as libpq looks it up (the first matching line). */
export function pgpassLookup(text: string, c: StateUrl['client']): string | undefined {
  // A socket directory is matched by "localhost", as libpq does for Unix-domain connections.
  const host = c.host.startsWith('/') ? 'localhost' : c.host;
  const want = [host, String(c.port), c.database, c.user];
  for (const line of text.split('\n')) {
    const l = line.replace(/\r$/, '');
    if (l === '' || l.startsWith('#')) continue;
    const f = pgpassFields(l);
    if (f.length < 5) continue;
    if (want.every((w, i) => f[i] === '*' || f[i] === w)) return f[4];
  }
  return undefined;
}

/**
 * The password function handed to pg: asked when the server asks for a password. Throws STATE_AUTH when
 * there is none to give, STATE_PASSWORD_FILE when a file cannot be used.
 */
export function passwordSource(
  c: StateUrl['client'],
  passwordFile: string | undefined,
  env: NodeJS.ProcessEnv,
): () => Promise<string> {
  return async () => {
    if (passwordFile !== undefined) return passwordFromFile(passwordFile);
    if (env.PGPASSWORD) return env.PGPASSWORD;
    const home = env.HOME ?? os.homedir();
    const file = env.PGPASSFILE ?? path.join(home, '.pgpass');
    const text = await readSecretFile(file, 'the PostgreSQL password file', MAX_PGPASS);
    const found = text === undefined ? undefined : pgpassLookup(text, c);
    if (found) return found;
    throw new StateError(
      'STATE_AUTH',
      `PostgreSQL asks user ${c.user} for a password and none was given: set PGPASSWORD, add a line to ${file} (PGPASSFILE), or give --state-password-file`,
    );
  };
}

export { connectionFailed, sqlstate } from '../util/pg-errors.js';

/** The first line of a message, at most 200 characters: the server's words, never a value (none is sent). */
function short(message: unknown): string {
  const m = typeof message === 'string' ? (message.split('\n', 1)[0] ?? '') : '';
  return m.length > 200 ? `${m.slice(0, 200)}...` : m;
}

/**
 * A StateError for a failure of `what` (an action on the store at `place`). Stable codes: STATE_IO for
 * the server or the network (retried), STATE_AUTH for a refused login or a missing database,
 * STATE_PERMISSION for a missing grant, STATE_SCHEMA for tables that are not as rotor makes them.
 */
export function toStateError(e: unknown, what: string, place: string, user: string): StateError {
  if (e instanceof StateError) return e;
  const code = sqlstate(e);
  const text = short((e as { message?: unknown } | undefined)?.message);
  if (code) {
    const said = `(${code}: ${text})`;
    if (code.startsWith('28'))
      return new StateError(
        'STATE_AUTH',
        `${place} refused the login of user ${user}: a wrong password, no such role, or pg_hba.conf refuses it ${said}`,
        { cause: e },
      );
    if (code === '3D000')
      return new StateError('STATE_AUTH', `${place}: the database does not exist ${said}`, { cause: e });
    if (code === '42501')
      return new StateError(
        'STATE_PERMISSION',
        `${what} in ${place}: user ${user} lacks a privilege (see "State on PostgreSQL" in docs/operations.md for the grants) ${said}`,
        { cause: e },
      );
    if (transient(code))
      return new StateError('STATE_IO', `${what} in ${place} failed: the server is unavailable ${said}`, { cause: e });
    if (code.startsWith('42') || code.startsWith('23'))
      return new StateError(
        'STATE_SCHEMA',
        `${what} in ${place} failed: the store's tables are not as rotor made them ${said}`,
        { cause: e },
      );
    return new StateError('STATE_IO', `${what} in ${place} failed ${said}`, { cause: e });
  }
  if (/^SASL|password/i.test(text) && !connectionFailed(e))
    return new StateError('STATE_AUTH', `${place}: the login of user ${user} failed (${text})`, { cause: e });
  const node = (e as { code?: unknown } | undefined)?.code;
  return new StateError(
    'STATE_IO',
    `${what} in ${place} failed (${typeof node === 'string' ? `${node}: ` : ''}${text || 'error'})`,
    { cause: e },
  );
}
