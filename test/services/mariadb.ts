/**
 * A throwaway MariaDB server: `mariadb-install-db` into a temporary datadir, then `mariadbd --no-defaults`
 * on a free port of 127.0.0.1 and a socket in the same directory, stopped and removed on teardown. The
 * machine's own MariaDB (port 3306, root without a password) is never used.
 *
 * Password authentication is enforced from the first connection: an --init-file, run by the server
 * before it accepts any connection, drops the anonymous and extra root accounts that mariadb-install-db
 * creates without a password and gives root@localhost and root@127.0.0.1 a random password (sent as its
 * mysql_native_password hash). --skip-name-resolve makes a TCP login from 127.0.0.1 match the
 * '127.0.0.1' rows and a socket login the 'localhost' rows, so a test can reach each host row of a user.
 */

import type { ChildProcess } from 'node:child_process';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Connection } from 'mysql2/promise';
import { createConnection } from 'mysql2/promise';
import type { Test } from 'tap';
import { findBinary, freePort, needService, waitUntil } from './common.js';

export interface MariadbServer {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** The Unix socket (matches the 'localhost' rows). */
  readonly socket: string;
  readonly dir: string;
  readonly rootPassword: string;
  /** SELECT VERSION(), e.g. 10.11.19-MariaDB-0+deb12u1-log. */
  readonly version: string;
  /** The general query log file, when started with `generalLog: true`. */
  readonly generalLog?: string;
  /** A root connection over the socket. The caller ends it. */
  root(): Promise<Connection>;
  /** Stops the server (SIGTERM, waits for the process to exit). Teardown does it too. */
  stop(): Promise<void>;
}

export interface MariadbOptions {
  /** Log every statement to `generalLog` (to check which values reach the server in clear). */
  readonly generalLog?: boolean;
}

const INSTALL_HINT = 'apt-get install mariadb-server';

/** Fast start-up for a datadir that lives a few seconds: a small buffer pool and redo log, no fsync per commit. */
const INNODB = [
  '--innodb-buffer-pool-size=16M',
  '--innodb-log-file-size=4M',
  '--innodb-flush-log-at-trx-commit=0',
  '--innodb-doublewrite=0',
];

function run(file: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 120_000, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(file)} failed: ${err.message}\n${stdout}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

function tail(file: string, lines = 30): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no error log)';
  }
}

/**
 * Starts a MariaDB server for this test and stops it on t.teardown. Returns undefined when the binaries
 * are missing and the test was skipped (or failed, under ROTOR_REQUIRE_SERVICES=1).
 */
export async function startMariadb(t: Test, options: MariadbOptions = {}): Promise<MariadbServer | undefined> {
  const mariadbd = findBinary('/usr/sbin/mariadbd', '/usr/bin/mariadbd', '/usr/local/bin/mariadbd');
  const installDb = findBinary(
    '/usr/bin/mariadb-install-db',
    '/usr/local/bin/mariadb-install-db',
    '/usr/bin/mysql_install_db',
  );
  if (!needService(t, 'MariaDB', mariadbd !== undefined && installDb !== undefined, INSTALL_HINT)) return undefined;

  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-mariadb-'));
  const datadir = path.join(dir, 'data');
  const socket = path.join(dir, 'mariadbd.sock');
  const errorLog = path.join(dir, 'error.log');
  const generalLog = options.generalLog ? path.join(dir, 'general.log') : undefined;
  // mariadbd refuses to run as root unless told to; as another user it runs as that user.
  const asUser = process.getuid?.() === 0 ? ['--user=root'] : [];

  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let running = false;
  const killOnExit = (): void => void child?.kill('SIGKILL');

  const stop = async (): Promise<void> => {
    if (child && running) {
      child.kill('SIGTERM');
      // A safety net only (no test waits on it): a server that ignores SIGTERM is killed.
      const force = setTimeout(() => child?.kill('SIGKILL'), 60_000);
      await exited;
      clearTimeout(force);
    }
    process.removeListener('exit', killOnExit);
  };
  t.teardown(async () => {
    await stop();
    rmSync(dir, { recursive: true, force: true });
  });

  await run(installDb!, [
    '--no-defaults',
    `--datadir=${datadir}`,
    ...asUser,
    '--auth-root-authentication-method=normal',
    '--skip-test-db',
    '--skip-name-resolve',
    ...INNODB,
  ]);

  const rootPassword = randomBytes(18).toString('base64url');
  const sha1 = (b: Buffer): Buffer => createHash('sha1').update(b).digest();
  const rootHash =
    '*' +
    sha1(sha1(Buffer.from(rootPassword)))
      .toString('hex')
      .toUpperCase();
  const initFile = path.join(dir, 'init.sql');
  writeFileSync(
    initFile,
    [
      // mariadb-install-db (normal auth) leaves root@<hostname>, root@::1 and anonymous accounts without a password.
      "DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host NOT IN ('localhost', '127.0.0.1'));",
      'FLUSH PRIVILEGES;',
      `ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING '${rootHash}';`,
      `ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING '${rootHash}';`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );

  const port = await freePort();
  child = spawn(
    mariadbd!,
    [
      '--no-defaults',
      `--datadir=${datadir}`,
      `--socket=${socket}`,
      `--port=${port}`,
      '--bind-address=127.0.0.1',
      '--skip-name-resolve',
      `--pid-file=${path.join(dir, 'mariadbd.pid')}`,
      `--log-error=${errorLog}`,
      `--tmpdir=${dir}`,
      `--init-file=${initFile}`,
      '--max-connections=64',
      '--loose-feedback=OFF',
      ...asUser,
      ...INNODB,
      ...(generalLog ? ['--general-log=1', `--general-log-file=${generalLog}`] : []),
    ],
    { stdio: 'ignore' },
  );
  running = true;
  process.once('exit', killOnExit);
  const proc = child;
  exited = new Promise((resolve) => {
    proc.once('exit', () => {
      running = false;
      resolve();
    });
  });

  const root = (): Promise<Connection> =>
    createConnection({ socketPath: socket, user: 'root', password: rootPassword, multipleStatements: false });
  const died = exited.then(() => {
    throw new Error(`mariadbd exited during start-up:\n${tail(errorLog)}`);
  });
  died.catch(() => {});
  const ready = waitUntil(
    async () => {
      if (!existsSync(socket)) return false;
      const c = await root();
      await c.query('SELECT 1');
      await c.end();
      return true;
    },
    60_000,
    'mariadbd',
  ).catch((e: Error) => {
    throw new Error(`${e.message}:\n${tail(errorLog)}`);
  });
  await Promise.race([ready, died]);

  const c = await root();
  const [rows] = await c.query('SELECT VERSION() AS v');
  await c.end();
  const version = String((rows as Array<{ v: string }>)[0]?.v);

  return { host: '127.0.0.1', port, socket, dir, rootPassword, version, generalLog, root, stop };
}
