/**
 * Redis 6/7 ACL engine (ioredis). One user, two passwords at once, so `dual` is the zero-downtime strategy.
 *
 * - dual (default): set = `ACL SETUSER <user> on #<sha256(new)>` adds the new password next to the current
 *   one; retire = `ACL SETUSER <user> !<sha256(old)>` removes the old one. Only the SHA-256 of a value goes
 *   to the server, never the clear value.
 * - single: set = `ACL SETUSER <user> resetpass #<sha256(new)>`; the old value fails at once.
 * - alternate: not supported (DB_UNSUPPORTED): a Redis user can hold two passwords, so one user is enough.
 *
 * Every command goes as an argument array (one RESP bulk string per argument), so a username is one value
 * whatever it contains. ACL changes live in memory only: after each change the engine runs `ACL SAVE` (the
 * server uses an aclfile) or else `CONFIG REWRITE` (it has a config file). When neither works the rotation
 * still succeeds (the change is live) and the engine reports a warning through `onWarning`.
 *
 * ACLs are not replicated (redis/redis#6738): point one Target at each node.
 */
import { createHash } from 'node:crypto';
import { Redis, type RedisOptions } from 'ioredis';
import {
  type Credential,
  type DbEngine,
  DbError,
  type EngineFactory,
  type RetireJob,
  type SetJob,
  type SetOutcome,
  type TargetConnection,
} from './types.js';

/** Something the agent should log: the rotation went on, but not everything it wanted happened. */
export interface EngineWarning {
  /** `REDIS_NOT_PERSISTED`: the ACL change is live in memory but was not saved (a restart undoes it). */
  readonly code: 'REDIS_NOT_PERSISTED';
  readonly message: string;
  /** The server's error prefix (e.g. `NOPERM`, `ERR`), when the server gave one. */
  readonly dbCode?: string;
}

export interface RedisEngineOptions {
  /** Receives the warnings (default: `process.emitWarning`). */
  readonly onWarning?: (w: EngineWarning) => void;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/** Where the server is, from the Target's URL (`redis://[user@]host[:port]`, `rediss://` for TLS; a path is ignored:
 * ACLs are server-wide). */
interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  /** The admin's user (empty: the `default` user, `AUTH <password>`). */
  readonly username: string;
  readonly password: string | undefined;
  readonly timeoutMs: number;
}

export function parseRedisTarget(target: TargetConnection): Endpoint {
  let u: URL;
  try {
    u = new URL(target.url);
  } catch {
    // The URL itself is not repeated: it could hold a password.
    throw new DbError('DB_ERROR', 'the Redis target URL cannot be parsed (expected redis://user@host:port)');
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:')
    throw new DbError('DB_ERROR', `a Redis target URL starts with redis:// or rediss://, not ${u.protocol}//`);
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw new DbError('DB_ERROR', 'the Redis target URL has no host');
  const port = u.port ? Number(u.port) : 6379;
  return {
    host,
    port,
    tls: u.protocol === 'rediss:',
    username: decodeURIComponent(u.username),
    password: target.password ?? (u.password ? decodeURIComponent(u.password) : undefined),
    timeoutMs: target.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  };
}

/** The `#`/`!` form of a password: 64 lowercase hex characters, the unsalted SHA-256 of its UTF-8 bytes. */
export function redisPasswordHash(password: string): string {
  return createHash('sha256').update(password, 'utf8').digest('hex');
}

/**
 * Redis refuses usernames with whitespace or NUL (`isspace()`: space, \t, \n, \v, \f, \r). The engine also
 * refuses the empty name (Redis accepts it, but a config file rewrite turns `user  on ...` into a user
 * called `on`, and clients treat an empty username as "the default user") and strings that are not
 * well-formed UTF-16 (their UTF-8 bytes would name another user).
 */
export function checkRedisUsername(username: string): void {
  if (username === '') throw new DbError('DB_USER_MISSING', 'a Redis username cannot be empty');
  if (/[\0\t\n\v\f\r ]/.test(username)) {
    throw new DbError(
      'DB_USER_MISSING',
      `Redis usernames cannot contain spaces, tabs, line breaks or NUL characters, so no user ${JSON.stringify(username)} can exist`,
    );
  }
  if (/[\uD800-\uDFFF]/u.test(username))
    throw new DbError('DB_USER_MISSING', 'the Redis username is not well-formed Unicode (a lone surrogate)');
}

/** Names that `CONFIG REWRITE` writes unquoted into a config file Redis then cannot read back. */
function breaksConfigFile(username: string): boolean {
  return /["']/.test(username);
}

/** The server's error prefix (`WRONGPASS`, `NOPERM`, `ERR` ...) of an ioredis ReplyError, else undefined. */
function replyPrefix(err: unknown): string | undefined {
  if (!(err instanceof Error) || err.name !== 'ReplyError') return undefined;
  const m = /^([A-Z][A-Z_]*)\b/.exec(err.message);
  return m?.[1];
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
]);

/**
 * A DbError for anything ioredis threw. Never copies the driver's error: ioredis errors carry the command's
 * arguments (`err.command.args`), which for AUTH include the password.
 */
function mapError(err: unknown, doing: string, connectError?: Error): DbError {
  if (err instanceof DbError) return err;
  const prefix = replyPrefix(err);
  if (prefix === 'NOPERM')
    return new DbError(
      'DB_PERMISSION',
      `the Redis admin account lacks a permission needed to ${doing} (see docs/databases/redis.md for the ACL rules it needs)`,
      prefix,
    );
  if (prefix === 'WRONGPASS' || prefix === 'NOAUTH')
    return new DbError('DB_ADMIN_AUTH', `Redis refused the admin credential while trying to ${doing}`, prefix);
  if (prefix) return new DbError('DB_ERROR', `Redis answered ${prefix} while trying to ${doing}`, prefix);
  const cause = connectError ?? err;
  const code = (cause as { code?: unknown })?.code;
  if (typeof code === 'string' && NETWORK_CODES.has(code))
    return new DbError('DB_UNREACHABLE', `Redis is unreachable (${code}) while trying to ${doing}`, code);
  const message = cause instanceof Error ? cause.message : '';
  if (/Connection is closed|Command timed out|Stream isn't writeable|connect ETIMEDOUT/i.test(message)) {
    return new DbError('DB_UNREACHABLE', `Redis is unreachable (no connection or no answer) while trying to ${doing}`);
  }
  return new DbError('DB_ERROR', `unexpected error from the Redis client while trying to ${doing}`);
}

/** A connection that has not authenticated yet: nothing retried, nothing queued, no handshake commands. */
async function openConnection(ep: Endpoint): Promise<{ redis: Redis; connectError: () => Error | undefined }> {
  const options: RedisOptions = {
    host: ep.host,
    port: ep.port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: null,
    enableOfflineQueue: false,
    enableReadyCheck: false,
    disableClientInfo: true,
    autoResubscribe: false,
    protocol: 2,
    connectTimeout: ep.timeoutMs,
    commandTimeout: ep.timeoutMs,
    ...(ep.tls ? { tls: { servername: ep.host } } : {}),
  };
  const redis = new Redis(options);
  let last: Error | undefined;
  // ioredis reports connection failures as 'error' events (connect() itself only says "Connection is
  // closed."); keep the last one for the mapping, and never let it reach the default handler, which prints.
  redis.on('error', (e: Error) => void (last = e));
  try {
    await redis.connect();
  } catch (err) {
    redis.disconnect();
    throw mapError(err, 'connect', last);
  }
  return { redis, connectError: () => last };
}

export function createRedisEngine(options: RedisEngineOptions = {}): EngineFactory {
  const warn = options.onWarning ?? ((w: EngineWarning) => process.emitWarning(w.message, { code: w.code }));
  return (target) => new RedisEngine(parseRedisTarget(target), warn);
}

export const redisEngine: EngineFactory = createRedisEngine();

type PersistMode = 'unknown' | 'aclfile' | 'no-aclfile';

class RedisEngine implements DbEngine {
  readonly engine = 'redis' as const;
  #admin: Promise<{ redis: Redis; connectError: () => Error | undefined }> | undefined;
  #persistMode: PersistMode = 'unknown';

  constructor(
    private readonly ep: Endpoint,
    private readonly warn: (w: EngineWarning) => void,
  ) {}

  async set(job: SetJob): Promise<SetOutcome> {
    checkRedisUsername(job.username);
    if (job.strategy === 'alternate') throw unsupportedAlternate();
    if (await this.test({ username: job.username, password: job.password })) {
      // Crash recovery: already set. Saving again is what makes it lasting.
      await this.persist();
      return 'already-applied';
    }
    await this.requireUser(job.username);
    await this.refuseUnsavableName(job.username);
    const hash = redisPasswordHash(job.password);
    const rules = job.strategy === 'dual' ? ['on', `#${hash}`] : ['resetpass', `#${hash}`];
    await this.admin(['ACL', 'SETUSER', job.username, ...rules], 'set the new password (ACL SETUSER)');
    await this.persist();
    return 'applied';
  }

  async test(c: Credential): Promise<boolean> {
    checkRedisUsername(c.username);
    const { redis, connectError } = await openConnection(this.ep);
    try {
      try {
        await redis.call('AUTH', [c.username, c.password]);
      } catch (err) {
        if (replyPrefix(err) === 'WRONGPASS') return false;
        throw mapTestError(err, connectError());
      }
      try {
        await redis.call('PING');
      } catch (err) {
        // Logged in, but this user may not run PING: the credential works all the same.
        if (replyPrefix(err) === 'NOPERM') return true;
        throw mapTestError(err, connectError());
      }
      return true;
    } finally {
      redis.disconnect();
    }
  }

  async retire(job: RetireJob): Promise<void> {
    if (job.strategy === 'single') return;
    if (job.strategy === 'alternate') throw unsupportedAlternate();
    const { retired, current } = job;
    checkRedisUsername(retired.username);
    const oldHash = redisPasswordHash(retired.password);
    const user = await this.requireUser(retired.username);
    if (retired.username === current.username) {
      // Never leave the user without the current password: removing the old hash must not lock it out.
      if (oldHash === redisPasswordHash(current.password)) return;
      if (!user.passwords.includes(redisPasswordHash(current.password))) {
        throw new DbError(
          'DB_ERROR',
          `refusing to retire: the current password is not among user ${JSON.stringify(retired.username)}'s passwords, so removing the old one could lock it out`,
        );
      }
    }
    await this.refuseUnsavableName(retired.username);
    if (user.passwords.includes(oldHash)) {
      await this.admin(['ACL', 'SETUSER', retired.username, `!${oldHash}`], 'remove the old password (ACL SETUSER)');
    }
    await this.persist();
  }

  async close(): Promise<void> {
    const admin = this.#admin;
    this.#admin = undefined;
    if (!admin) return;
    const conn = await admin.catch(() => undefined);
    conn?.redis.disconnect();
  }

  /** The user's ACL (`ACL GETUSER`); DB_USER_MISSING when there is none. Checked first because SETUSER would create the user. */
  private async requireUser(username: string): Promise<{ passwords: string[] }> {
    const reply = await this.admin(['ACL', 'GETUSER', username], 'read the user (ACL GETUSER)');
    if (reply === null) throw new DbError('DB_USER_MISSING', `Redis has no user ${JSON.stringify(username)}`);
    if (!Array.isArray(reply)) throw new DbError('DB_ERROR', 'unexpected reply to ACL GETUSER');
    const i = reply.indexOf('passwords');
    const passwords =
      i >= 0 && Array.isArray(reply[i + 1])
        ? (reply[i + 1] as unknown[]).filter((p): p is string => typeof p === 'string')
        : [];
    return { passwords };
  }

  /**
   * `CONFIG REWRITE` writes `user <name> ...` unquoted, and Redis then refuses to start on a name with a quote
   * ("Unbalanced quotes in configuration line"). Such names rotate only on servers with an aclfile.
   */
  private async refuseUnsavableName(username: string): Promise<void> {
    if (!breaksConfigFile(username)) return;
    if ((await this.detectPersistMode()) !== 'no-aclfile') return;
    throw new DbError(
      'DB_UNSUPPORTED',
      `user ${JSON.stringify(username)} has a quote in its name: without an aclfile the change would be saved by CONFIG REWRITE, which writes a config file Redis cannot read back; configure an aclfile or rename the user`,
    );
  }

  /** Whether the server uses an aclfile, learnt from `ACL SAVE` (harmless: it writes what is live). */
  private async detectPersistMode(): Promise<PersistMode> {
    if (this.#persistMode !== 'unknown') return this.#persistMode;
    const saved = await this.tryPersist(['ACL', 'SAVE']);
    if (saved === true) this.#persistMode = 'aclfile';
    else if (saved.kind === 'no-aclfile') this.#persistMode = 'no-aclfile';
    // Otherwise (e.g. NOPERM) it stays unknown; persist() then warns and never runs CONFIG REWRITE.
    return this.#persistMode;
  }

  /** `ACL SAVE`, else `CONFIG REWRITE`; a warning (not an error) when neither saves the change. */
  private async persist(): Promise<void> {
    if (this.#persistMode !== 'no-aclfile') {
      const saved = await this.tryPersist(['ACL', 'SAVE']);
      if (saved === true) {
        this.#persistMode = 'aclfile';
        return;
      }
      if (saved.kind !== 'no-aclfile') return this.notPersisted('ACL SAVE', saved);
      this.#persistMode = 'no-aclfile';
    }
    const rewritten = await this.tryPersist(['CONFIG', 'REWRITE']);
    if (rewritten === true) return;
    this.notPersisted('CONFIG REWRITE', rewritten);
  }

  private async tryPersist(
    command: string[],
  ): Promise<true | { kind: 'no-aclfile' | 'no-config-file' | 'other'; prefix?: string }> {
    const conn = await this.connection();
    try {
      await conn.redis.call(command[0]!, command.slice(1));
      return true;
    } catch (err) {
      const prefix = replyPrefix(err);
      if (!prefix) throw mapError(err, `persist the change (${command.join(' ')})`, conn.connectError());
      const message = (err as Error).message;
      if (/not configured to use an ACL file/i.test(message)) return { kind: 'no-aclfile', prefix };
      if (/without a config file/i.test(message)) return { kind: 'no-config-file', prefix };
      return { kind: 'other', prefix };
    }
  }

  private notPersisted(command: string, failure: { kind: string; prefix?: string }): void {
    const why =
      failure.kind === 'no-config-file'
        ? 'the server has neither an aclfile nor a config file'
        : failure.prefix === 'NOPERM'
          ? `the admin account may not run ${command}`
          : `${command} failed (${failure.prefix ?? 'error'}; see the Redis log)`;
    this.warn({
      code: 'REDIS_NOT_PERSISTED',
      message: `the Redis ACL change is live but was not saved: ${why}; a restart of ${this.ep.host}:${this.ep.port} would bring back the previous passwords`,
      ...(failure.prefix ? { dbCode: failure.prefix } : {}),
    });
  }

  /** Runs one command on the admin connection (opened and authenticated on first use, reopened after a loss). */
  private async admin(args: string[], doing: string): Promise<unknown> {
    const conn = await this.connection();
    try {
      return await conn.redis.call(args[0]!, args.slice(1));
    } catch (err) {
      throw mapError(err, doing, conn.connectError());
    }
  }

  private async connection(): Promise<{ redis: Redis; connectError: () => Error | undefined }> {
    const existing = this.#admin && (await this.#admin.catch(() => undefined));
    if (existing && existing.redis.status === 'ready') return existing;
    existing?.redis.disconnect();
    const opening = this.openAdmin();
    this.#admin = opening;
    try {
      return await opening;
    } catch (err) {
      if (this.#admin === opening) this.#admin = undefined;
      throw err;
    }
  }

  private async openAdmin(): Promise<{ redis: Redis; connectError: () => Error | undefined }> {
    const conn = await openConnection(this.ep);
    try {
      if (this.ep.password !== undefined) {
        await conn.redis.call('AUTH', this.ep.username ? [this.ep.username, this.ep.password] : [this.ep.password]);
      }
    } catch (err) {
      conn.redis.disconnect();
      const prefix = replyPrefix(err);
      if (prefix === 'WRONGPASS' || prefix === 'NOAUTH' || (prefix === 'ERR' && /AUTH/i.test((err as Error).message))) {
        throw new DbError(
          'DB_ADMIN_AUTH',
          `Redis refused the admin credential of ${this.ep.username || 'default'}`,
          prefix,
        );
      }
      throw mapError(err, 'log in as the admin', conn.connectError());
    }
    return conn;
  }
}

function mapTestError(err: unknown, connectError: Error | undefined): DbError {
  const prefix = replyPrefix(err);
  if (prefix) return new DbError('DB_ERROR', `Redis answered ${prefix} while testing a login`, prefix);
  return mapError(err, 'test a login', connectError);
}

function unsupportedAlternate(): DbError {
  return new DbError(
    'DB_UNSUPPORTED',
    'the alternate strategy is not supported for Redis: one user holds two passwords at once, use dual (or single)',
  );
}
