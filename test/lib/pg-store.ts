/**
 * What the tests of the PostgreSQL state store share: a throwaway server (test/services/postgres.ts,
 * scram-sha-256 enforced), a login role `rotor_state` that owns a database `rotor` (so it may create
 * schemas there), a fresh schema per place, and the age keys the stores are opened with.
 */
import { randomBytes } from 'node:crypto';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import type { Test } from 'tap';
import type { PostgresStoreConfig } from '../../src/state/postgres.js';
import { openPostgresStore, postgresStoreBackend } from '../../src/state/postgres.js';
import type { StoreOpenOptions } from '../../src/state/types.js';
import type { PgServer } from '../services/postgres.js';
import { startPostgres } from '../services/postgres.js';

export const IDENTITY = await generateX25519Identity();
export const RECIPIENT = await identityToRecipient(IDENTITY);

export interface PgPlace {
  readonly srv: PgServer;
  /** rotor_state's password. */
  readonly password: string;
  /** postgres://rotor_state@127.0.0.1:PORT/rotor?schema=SCHEMA */
  url(schema: string, user?: string): string;
  /** A new schema name (not created). */
  schema(): string;
  /** Opens the store in `schema` as rotor_state (PGPASSWORD), with the test identity. */
  open(
    schema: string,
    options?: Partial<StoreOpenOptions>,
    config?: Partial<PostgresStoreConfig>,
  ): ReturnType<typeof openPostgresStore>;
  backend(schema: string, config?: Partial<PostgresStoreConfig>): ReturnType<typeof postgresStoreBackend>;
  /** Runs SQL as the superuser in the database rotor. */
  sql<R extends Record<string, unknown> = Record<string, unknown>>(text: string, params?: unknown[]): Promise<R[]>;
}

const noop = (): void => undefined;

/** Starts the server and makes the role and database; undefined when PostgreSQL is not installed (skipped). */
export async function pgPlace(t: Test): Promise<PgPlace | undefined> {
  const srv = await startPostgres(t);
  if (!srv) return undefined;
  const password = `pw-${randomBytes(12).toString('hex')}`;
  await srv.query(`CREATE ROLE rotor_state LOGIN PASSWORD '${password}'`);
  await srv.query('CREATE DATABASE rotor OWNER rotor_state');
  const pg = (await import('pg')).default;
  const admin = new pg.Pool({
    host: srv.host,
    port: srv.port,
    user: srv.superuser,
    password: srv.superPassword,
    database: 'rotor',
    max: 2,
  });
  admin.on('error', noop);
  t.teardown(() => admin.end());
  const url = (schema: string, user = 'rotor_state') =>
    `postgres://${user}@${srv.host}:${srv.port}/rotor?schema=${schema}`;
  const config = (schema: string, extra: Partial<PostgresStoreConfig> = {}): PostgresStoreConfig => ({
    url: url(schema),
    env: { PGPASSWORD: password },
    ...extra,
  });
  return {
    srv,
    password,
    url,
    schema: () => `s_${randomBytes(6).toString('hex')}`,
    open: (schema, options = {}, extra = {}) =>
      openPostgresStore(config(schema, extra), {
        identity: IDENTITY,
        recipients: [RECIPIENT],
        onWarning: noop,
        ...options,
      }),
    backend: (schema, extra = {}) => postgresStoreBackend(config(schema, extra)),
    sql: async <R extends Record<string, unknown>>(text: string, params?: unknown[]) =>
      (await admin.query<R>(text, params)).rows,
  };
}
