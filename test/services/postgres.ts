/**
 * A throwaway PostgreSQL server for the integration tests: initdb with scram-sha-256 enforced for every
 * connection (local and TCP), a superuser password passed through a file, a free port on 127.0.0.1, the
 * unix socket inside the temporary directory, fsync off and every statement logged (so a test can scan
 * the log for values that must never reach the server in clear). A benchmark of durable writes asks for
 * `durable` (fsync and synchronous commits, as the server's defaults) and `quiet` (no statement log).
 * Stopped and removed on t.teardown.
 *
 * initdb and postgres refuse to run as root; when the tests run as root the server runs as the
 * `postgres` Unix user, with the temporary directory chowned to it.
 */

import type { ChildProcess } from 'node:child_process';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chownSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import type { Test } from 'tap';
import { findBinary, freePort, needService, waitUntil } from './common.js';

export interface PgServer {
  readonly host: string;
  readonly port: number;
  /** postgres://<superuser>@127.0.0.1:<port>/postgres (no password: it is `superPassword`). */
  readonly adminUrl: string;
  readonly superuser: string;
  readonly superPassword: string;
  /** The server's log file (stderr of postmaster, with log_statement=all). */
  readonly logFile: string;
  /** The server's major version, e.g. 15. */
  readonly version: number;
  /** Runs one statement as the superuser on a fresh connection (or several separated by `;` when there are no params). */
  query<R extends pg.QueryResultRow = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<R[]>;
  /** Stops the server (immediate shutdown). Idempotent; the teardown calls it too. */
  stop(): Promise<void>;
  /**
   * Stops the server (fast shutdown: clients are disconnected) and starts it again on the same port and
   * data directory; resolves once it accepts connections again. `pauseMs`: how long it stays down.
   */
  restart(o?: { pauseMs?: number }): Promise<void>;
}

const INSTALL = 'apt-get install postgresql';

/** initdb and postgres from the same installation: the highest /usr/lib/postgresql/<n>/bin, else PATH-like spots. */
function findBinaries(): { initdb: string; postgres: string } | undefined {
  const root = '/usr/lib/postgresql';
  const majors = existsSync(root)
    ? readdirSync(root)
        .filter((d) => /^\d+$/.test(d))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  for (const m of majors) {
    const bin = path.join(root, m, 'bin');
    if (existsSync(path.join(bin, 'initdb')) && existsSync(path.join(bin, 'postgres'))) {
      return { initdb: path.join(bin, 'initdb'), postgres: path.join(bin, 'postgres') };
    }
  }
  const initdb = findBinary('/usr/local/bin/initdb', '/usr/bin/initdb');
  const postgres = findBinary('/usr/local/bin/postgres', '/usr/bin/postgres');
  return initdb && postgres ? { initdb, postgres } : undefined;
}

/** The uid/gid to run the server as: the `postgres` user when we are root, else ourselves (undefined). */
function serverIdentity(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) =>
    Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new Error(
      'the tests run as root, and initdb/postgres refuse to: a `postgres` Unix user is needed to run the server (the postgresql package creates it)',
    );
  }
}

export async function startPostgres(
  t: Test,
  options: { durable?: boolean; quiet?: boolean } = {},
): Promise<PgServer | undefined> {
  const bins = findBinaries();
  if (!needService(t, 'PostgreSQL', bins !== undefined, INSTALL) || !bins) return undefined;
  const owner = serverIdentity();
  const spawnAs = owner ? { uid: owner.uid, gid: owner.gid } : {};

  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-pg-'));
  const data = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  const superuser = 'rotor_super';
  const superPassword = `super-${randomBytes(12).toString('hex')}`;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const stop = async (): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    c.kill('SIGQUIT'); // immediate shutdown: nothing to keep
    await exited;
  };
  const killOnExit = () => child?.kill('SIGKILL');
  process.once('exit', killOnExit);
  t.teardown(async () => {
    await stop();
    process.removeListener('exit', killOnExit);
    rmSync(dir, { recursive: true, force: true });
  });

  const pwfile = path.join(dir, 'pwfile');
  writeFileSync(pwfile, `${superPassword}\n`, { mode: 0o600 });
  if (owner) {
    chownSync(dir, owner.uid, owner.gid);
    chownSync(pwfile, owner.uid, owner.gid);
  }
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', LANG: 'C', LC_ALL: 'C' };
  try {
    execFileSync(
      bins.initdb,
      [
        '-D',
        data,
        '-U',
        superuser,
        `--pwfile=${pwfile}`,
        '--auth=scram-sha-256',
        '-E',
        'UTF8',
        '--locale=C',
        '--no-sync',
        '--no-instructions',
      ],
      { ...spawnAs, cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
  } catch (err) {
    const e = err as { stderr?: Buffer; stdout?: Buffer };
    throw new Error(`initdb failed: ${e.stderr?.toString() ?? ''}${e.stdout?.toString() ?? ''}`);
  } finally {
    rmSync(pwfile, { force: true });
  }

  const port = await freePort();
  const host = '127.0.0.1';
  const args = [
    '-D',
    data,
    '-p',
    String(port),
    '-c',
    `listen_addresses=${host}`,
    '-c',
    `unix_socket_directories=${dir}`,
    ...(options.durable ? [] : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
    '-c',
    'password_encryption=scram-sha-256',
    '-c',
    `log_statement=${options.quiet ? 'none' : 'all'}`,
    '-c',
    'log_connections=on',
    '-c',
    'logging_collector=off',
    '-c',
    'max_connections=40',
    '-c',
    'shared_buffers=16MB',
  ];

  const connect = async () => {
    const c = new pg.Client({
      host,
      port,
      user: superuser,
      password: superPassword,
      database: 'postgres',
      connectionTimeoutMillis: 5000,
    });
    c.on('error', () => {});
    await c.connect();
    return c;
  };
  const query = async <R extends pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<R[]> => {
    const c = await connect();
    try {
      return (await c.query<R>(sql, params)).rows;
    } finally {
      await c.end().catch(() => {});
    }
  };
  /** Starts postmaster on the data directory; resolves once it accepts connections. */
  const launch = async () => {
    const logFd = openSync(logFile, 'a');
    const proc = spawn(bins.postgres, args, { ...spawnAs, cwd: dir, env, stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    child = proc;
    exited = new Promise((resolve) => proc.once('exit', () => resolve()));
    const died = new Promise<never>((_, reject) => {
      proc.once('exit', (code, signal) => reject(new Error(`postgres exited (${signal ?? code})`)));
      proc.once('error', reject);
    });
    died.catch(() => {}); // observed by the race below; later exits (stop) are expected
    try {
      await Promise.race([
        died,
        waitUntil(
          async () => {
            await (await connect()).end();
            return true;
          },
          15_000,
          'PostgreSQL',
        ),
      ]);
    } catch (err) {
      const log = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-2000) : '';
      throw new Error(`PostgreSQL did not start (${(err as Error).message}); log tail:\n${log}`);
    }
  };
  await launch();
  const [row] = await query<{ v: string }>("SELECT current_setting('server_version_num') AS v");
  const version = Math.floor(Number(row?.v) / 10000);

  return {
    host,
    port,
    superuser,
    superPassword,
    logFile,
    version,
    adminUrl: `postgres://${superuser}@${host}:${port}/postgres`,
    query,
    stop,
    restart: async ({ pauseMs = 0 } = {}) => {
      const c = child;
      if (c && c.exitCode === null && c.signalCode === null) {
        c.kill('SIGINT'); // fast shutdown: the clients are disconnected, the data is kept
        await exited;
      }
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
      await launch();
    },
  };
}
