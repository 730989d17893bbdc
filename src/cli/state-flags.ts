/**
 * `rotor daemon --state URL [--state-password-file FILE]`: where the daemon keeps its state store. Without
 * --state it is the file store in DATA_DIR/state; with a postgres:// URL, the PostgreSQL backend
 * (src/state/postgres.ts). Kept apart from daemon.ts: the flags, and the check that refuses a bad URL
 * before anything starts.
 */
import path from 'node:path';
import type { StoreBackend } from '../state/index.js';
import { postgresStoreBackend, StateError } from '../state/index.js';
import type { Flags } from '../util/args.js';
import { UsageError } from '../util/args.js';
import type { Io } from './io.js';

export const STATE_FLAGS = {
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

/** The StoreBackend that --state names, or none (the file store). Usage errors for a bad combination or URL. */
export function stateBackendOf(
  flags: { state?: string | undefined; 'state-password-file'?: string | undefined },
  io: Io,
): { stateBackend?: StoreBackend } {
  const file = flags['state-password-file'];
  if (flags.state === undefined) {
    if (file !== undefined)
      throw new UsageError('--state-password-file is the password for --state postgres://...; give --state too');
    return {};
  }
  try {
    const passwordFile = file === undefined ? {} : { passwordFile: path.resolve(io.cwd, file) };
    return { stateBackend: postgresStoreBackend({ url: flags.state, ...passwordFile, env: io.env }) };
  } catch (e) {
    if (e instanceof StateError) throw new UsageError(`--state: ${e.message} [${e.code}]`);
    throw e;
  }
}
