/**
 * `rotor daemon --state URL [--state-password-file FILE]`: where the daemon keeps its state store. Without
 * --state it is the file store in DATA_DIR/state; with a postgres:// URL, the PostgreSQL backend
 * (src/state/postgres.ts). Kept apart from daemon.ts: the flags, and the check that refuses a bad URL
 * before anything starts. `rotor state export` takes the same two store flags (STORE_FLAGS) and reads
 * the password the same way (postgresConfigOf).
 */
import path from 'node:path';
import type { PostgresStoreConfig, StoreBackend } from '../state/index.js';
import { parseStateUrl, postgresStoreBackend, StateError } from '../state/index.js';
import type { Flags } from '../util/args.js';
import { UsageError } from '../util/args.js';
import type { Io } from './io.js';

/** Where the store is: --state and its password file (the daemon's, and rotor state export's). */
export const STORE_FLAGS = {
  state: {
    type: 'string',
    arg: 'URL',
    defaultText: 'the file store in DATA_DIR/state',
    description:
      'keep the state store in PostgreSQL instead: postgres://USER@HOST:PORT/DATABASE, with optional parameters sslmode (disable, require, verify-ca, verify-full, no-verify), host (a Unix socket directory) and schema (default rotor). A password in the URL is refused: give it with --state-password-file, PGPASSWORD, or PGPASSFILE (or ~/.pgpass)',
  },
  'state-password-file': {
    type: 'string',
    arg: 'FILE',
    description:
      "the PostgreSQL password for --state: the file's first line, read at each new connection; refused if group or others can read it. Without it, PGPASSWORD, then PGPASSFILE or ~/.pgpass",
  },
} as const satisfies Flags;

/** How a daemon on a PostgreSQL store shows itself to the others. */
export const CLUSTER_FLAGS = {
  name: {
    type: 'string',
    arg: 'NAME',
    defaultText: 'the host name',
    description:
      'with --state: how this daemon is shown to the others on the same store (rotor status, the status page, metrics)',
  },
  'agent-url': {
    type: 'string',
    arg: 'URL',
    defaultText: 'http(s)://the --agent-listen address',
    description:
      "with --state: the agent API's address as agents reach it (https://rotor-2.example:7700); shown to the other daemons, and to agents that ask a follower where the leader is",
  },
} as const satisfies Flags;

/** The StoreBackend that --state names, or none (the file store). Usage errors for a bad combination or URL. */
export function stateBackendOf(
  flags: {
    state?: string | undefined;
    'state-password-file'?: string | undefined;
    name?: string | undefined;
    'agent-url'?: string | undefined;
  },
  io: Io,
): { stateBackend?: StoreBackend; name?: string; agentUrl?: string } {
  if (flags.state === undefined) {
    for (const flag of ['state-password-file', 'name', 'agent-url'] as const)
      if (flags[flag] !== undefined)
        throw new UsageError(`--${flag} is for several daemons on a PostgreSQL store; give --state postgres://... too`);
    return {};
  }
  const name = flags.name;
  if (name !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name))
    throw new UsageError(
      `--name ${JSON.stringify(name.slice(0, 70))}: use letters, digits, dots, dashes and underscores (at most 63)`,
    );
  let agentUrl: string | undefined;
  if (flags['agent-url'] !== undefined) {
    const u = URL.canParse(flags['agent-url']) ? new URL(flags['agent-url']) : undefined;
    if (
      !u ||
      (u.protocol !== 'http:' && u.protocol !== 'https:') ||
      u.username ||
      u.password ||
      u.pathname !== '/' ||
      u.search ||
      u.hash
    )
      throw new UsageError(
        `--agent-url ${flags['agent-url']}: give http://HOST:PORT or https://HOST:PORT, without a path`,
      );
    agentUrl = u.origin;
  }
  const extra = { ...(name !== undefined ? { name } : {}), ...(agentUrl !== undefined ? { agentUrl } : {}) };
  return { stateBackend: postgresStoreBackend(postgresConfigOf({ ...flags, state: flags.state }, io)), ...extra };
}

/**
 * The PostgreSQL store that --state names, with its password's sources: --state-password-file (relative
 * to the working directory), else PGPASSWORD, PGPASSFILE or ~/.pgpass from the environment. The URL is
 * checked here: a password in it, or a parameter rotor does not take, is a usage error.
 */
export function postgresConfigOf(
  flags: { state: string; 'state-password-file'?: string | undefined },
  io: Io,
): PostgresStoreConfig {
  try {
    parseStateUrl(flags.state);
  } catch (e) {
    if (e instanceof StateError) throw new UsageError(`--state: ${e.message} [${e.code}]`);
    throw e;
  }
  const file = flags['state-password-file'];
  return { url: flags.state, ...(file === undefined ? {} : { passwordFile: path.resolve(io.cwd, file) }), env: io.env };
}
