/**
 * A throwaway redis-server for the Redis engine's tests: 127.0.0.1 on a free port, no RDB/AOF, the
 * `default` user off (so every connection must AUTH), and two users:
 * - `rotor_admin`, the agent's admin account, with only the ACL rules the engine needs;
 * - `rotor_root`, a test-only superuser (`+@all`) that creates the users to rotate and inspects the server.
 *
 * `persistence` picks how ACL changes can be saved: `aclfile` (default; users in an aclfile, `ACL SAVE`
 * works), `config-file` (users in redis.conf, `CONFIG REWRITE` works), `none` (everything on the command
 * line: neither works).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import type { Test } from 'tap';
import { findBinary, freePort, needService } from './common.js';

export type RedisPersistence = 'aclfile' | 'config-file' | 'none';

/** What the engine needs, and nothing more: AUTH/HELLO need no rule (Redis lets every user run them). */
export const REDIS_ADMIN_RULES = ['-@all', '+acl|setuser', '+acl|getuser', '+acl|save'] as const;
/** Without an aclfile the engine saves with CONFIG REWRITE instead. */
export const REDIS_ADMIN_RULES_CONFIG = [...REDIS_ADMIN_RULES, '+config|rewrite'] as const;

export interface RedisServer {
  readonly version: string;
  readonly port: number;
  /** The agent's Target URL: redis://rotor_admin@127.0.0.1:PORT (the password goes separately). */
  readonly url: string;
  readonly adminUser: 'rotor_admin';
  readonly adminPassword: string;
  readonly dir: string;
  /** The aclfile (persistence `aclfile`) or the config file (`config-file`); undefined for `none`. */
  readonly savedFile: string | undefined;
  /** Runs one command as the test-only superuser `rotor_root`. */
  root(command: string, ...args: string[]): Promise<unknown>;
  /** Creates (or resets) a user that logs in with `password` and may run PING. */
  createUser(username: string, password: string): Promise<void>;
  /**
   * A login by a plain client (not an engine's): AUTH username password on a fresh connection. 'OK', or
   * the prefix of the server's error (WRONGPASS...); throws when the server cannot be reached.
   */
  auth(username: string, password: string): Promise<string>;
  /** Whether `username` logs in with `password` (false: WRONGPASS); throws on any other failure. */
  login(username: string, password: string): Promise<boolean>;
  /** Stops the server (SIGTERM, then waits for the process to exit). Idempotent; also runs on teardown. */
  stop(): Promise<void>;
}

const sha256 = (s: string): string => createHash('sha256').update(s, 'utf8').digest('hex');

function redisServerBinary(): string | undefined {
  return findBinary('/usr/bin/redis-server', '/usr/local/bin/redis-server', '/opt/homebrew/bin/redis-server');
}

/** Starts a server for this test, or returns undefined when redis-server is missing (the test is skipped/failed by needService). */
export async function startRedis(
  t: Test,
  opts: { persistence?: RedisPersistence; adminRules?: readonly string[] } = {},
): Promise<RedisServer | undefined> {
  const bin = redisServerBinary();
  if (!needService(t, 'Redis', bin !== undefined, 'apt-get install redis-server')) return undefined;
  const persistence = opts.persistence ?? 'aclfile';
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-redis-'));
  const port = await freePort();
  const adminPassword = randomBytes(18).toString('base64url');
  const rootPassword = randomBytes(18).toString('base64url');
  const adminRules = opts.adminRules ?? (persistence === 'aclfile' ? REDIS_ADMIN_RULES : REDIS_ADMIN_RULES_CONFIG);
  // Users as ACL rule lists; passwords only as `#sha256`, so no clear value lands in a file or argv.
  const users: string[][] = [
    ['default', 'off', 'resetpass', '-@all'],
    ['rotor_admin', 'on', `#${sha256(adminPassword)}`, ...adminRules],
    ['rotor_root', 'on', `#${sha256(rootPassword)}`, '~*', '&*', '+@all'],
  ];
  const base = [
    ['port', String(port)],
    ['bind', '127.0.0.1'],
    ['save', ''],
    ['appendonly', 'no'],
    ['dir', dir],
    ['protected-mode', 'yes'],
    ['logfile', ''],
  ];

  let args: string[];
  let savedFile: string | undefined;
  if (persistence === 'none') {
    args = [...base, ...users.map((u) => ['user', ...u])].flatMap(([name, ...values]) => [
      `--${name}`,
      ...values.map((v) => v),
    ]);
  } else {
    const conf = path.join(dir, 'redis.conf');
    const lines = base.map(([k, v]) => `${k} ${v === '' ? '""' : v}`);
    if (persistence === 'aclfile') {
      savedFile = path.join(dir, 'users.acl');
      writeFileSync(savedFile, users.map((u) => `user ${u.join(' ')}\n`).join(''));
      lines.push(`aclfile ${savedFile}`);
    } else {
      savedFile = conf;
      lines.push(...users.map((u) => `user ${u.join(' ')}`));
    }
    writeFileSync(conf, `${lines.join('\n')}\n`);
    args = [conf];
  }

  const child = spawn(bin!, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return exited;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  };
  t.teardown(async () => {
    await stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const version = await waitForReady(child, exited);

  // A fresh connection per command: ACL LOAD, for one, disconnects every client of the users it reloads.
  const root = async (command: string, ...rest: string[]): Promise<unknown> => {
    const conn = new Redis({
      host: '127.0.0.1',
      port,
      username: 'rotor_root',
      password: rootPassword,
      lazyConnect: true,
      protocol: 2,
      retryStrategy: null,
      maxRetriesPerRequest: 0,
      enableReadyCheck: false,
      disableClientInfo: true,
    });
    conn.on('error', () => {});
    try {
      await conn.connect();
      return await conn.call(command, rest);
    } finally {
      conn.disconnect();
    }
  };

  return {
    version,
    port,
    url: `redis://rotor_admin@127.0.0.1:${port}`,
    adminUser: 'rotor_admin',
    adminPassword,
    dir,
    savedFile,
    root,
    createUser: async (username, password) => {
      await root('ACL', 'SETUSER', username, 'reset', 'on', `#${sha256(password)}`, '+ping');
    },
    auth: (username, password) => auth(port, username, password),
    login: async (username, password) => {
      const answer = await auth(port, username, password);
      if (answer === 'OK') return true;
      if (answer === 'WRONGPASS') return false;
      throw new Error(`AUTH as ${username} answered ${answer}`);
    },
    stop,
  };
}

/** AUTH on a fresh connection to 127.0.0.1:port: 'OK' or the server error's prefix; throws when unreachable. */
export async function auth(port: number, username: string, password: string): Promise<string> {
  const r = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    protocol: 2,
    retryStrategy: null,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    enableReadyCheck: false,
    disableClientInfo: true,
  });
  r.on('error', () => {});
  try {
    await r.connect();
    return String(await r.call('AUTH', [username, password]));
  } catch (err) {
    const prefix = /^[A-Z]+/.exec((err as Error).message)?.[0];
    if (prefix && prefix !== 'ECONNREFUSED') return prefix;
    throw err;
  } finally {
    r.disconnect();
  }
}

/** Resolves with the server's version once it logs "Ready to accept connections"; rejects if it exits first. */
function waitForReady(child: ChildProcess, exited: Promise<void>): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    let version = 'unknown';
    const onData = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.length > 100_000) out = out.slice(-50_000);
      const v = /Redis version=(\d+(?:\.\d+)*)|v=(\d+\.\d+\.\d+)/.exec(out);
      if (v) version = v[1] ?? v[2] ?? version;
      if (out.includes('Ready to accept connections')) {
        child.stdout?.off('data', onData);
        child.stdout?.resume();
        resolve(version);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (c: Buffer) => void (out += c.toString()));
    child.once('error', reject);
    void exited.then(() => reject(new Error(`redis-server exited before it was ready:\n${out.slice(-4000)}`)));
  });
}
