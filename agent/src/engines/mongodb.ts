/**
 * MongoDB 6/7 engine (the `mongodb` driver). A MongoDB user holds one password, so the zero-downtime
 * strategy is `alternate`: two users (e.g. app_a, app_b) hold the same custom role, and each rotation
 * changes the inactive one.
 *
 * - alternate (default): set = `updateUser <inactive> pwd` (SCRAM-SHA-256, w:majority). retire = the same
 *   `updateUser` on the retired user with a fresh random password that is never stored or logged: MongoDB
 *   has no password expiry and no way to disable a user, and a password nobody knows refuses every new
 *   login while keeping the user and its roles exactly as they were (the next set just gives it a known
 *   password again). It needs no privilege beyond `changePassword`, and it is idempotent.
 * - single: set = `updateUser <user> pwd`; the old value fails at once. retire does nothing.
 * - dual: not supported (one password per user).
 *
 * Commands are BSON documents: a username is one string value, never part of a string the engine builds.
 * Open connections stay authenticated after a password change (authentication happens per connection).
 *
 * The Target URL names the database the rotated users live in: `mongodb://rotor_admin@host/app` rotates
 * users of `app`; the admin account authenticates against `?authSource=` (default `admin`).
 */
import { randomBytes } from 'node:crypto';
import { type Document, MongoClient, type MongoClientOptions } from 'mongodb';
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

/** What the engine needs from a connected client: run one command document on one database. */
export interface MongoSession {
  command(db: string, command: Document): Promise<Document>;
  close(): Promise<void>;
}

/** Opens a connected, authenticated session (the seam a test replaces). */
export type MongoConnect = (url: string, options: MongoClientOptions) => Promise<MongoSession>;

export interface MongodbEngineOptions {
  /** Default: a real `MongoClient` (`mongoClientConnect`). */
  readonly connect?: MongoConnect;
}

/** The real driver: `new MongoClient(url, options).connect()`, which also authenticates (it checks out a connection). */
export const mongoClientConnect: MongoConnect = async (url, options) => {
  const client = new MongoClient(url, options);
  try {
    await client.connect();
  } catch (err) {
    await client.close().catch(() => {});
    throw err;
  }
  return {
    command: (db, command) => client.db(db).command(command),
    close: () => client.close(),
  };
};

const DEFAULT_TIMEOUT_MS = 10_000;
export const MONGO_MECHANISMS = ['SCRAM-SHA-256'] as const;

interface Endpoint {
  /** The URL without its user info (credentials go in the options). */
  readonly url: string;
  /** The database the rotated users live in (the URL's path; default `admin`). */
  readonly userDb: string;
  readonly adminUser: string | undefined;
  readonly adminPassword: string | undefined;
  /** Whether the URL says `authSource=` itself. */
  readonly urlHasAuthSource: boolean;
  readonly timeoutMs: number;
}

export function parseMongoTarget(target: TargetConnection): Endpoint {
  // Not WHATWG URL: `mongodb://h1:1,h2:2/db` (a seed list) is not a valid URL there.
  const m = /^(mongodb(?:\+srv)?:\/\/)(?:([^@/?#]*)@)?([^/?#]+)(?:\/([^?#]*))?(\?[^#]*)?$/.exec(target.url);
  if (!m)
    throw new DbError(
      'DB_ERROR',
      'the MongoDB target URL cannot be parsed (expected mongodb://user@host:port/database)',
    );
  const [, scheme, userinfo, hosts, path, query] = m;
  let adminUser: string | undefined;
  let urlPassword: string | undefined;
  let userDb: string;
  try {
    if (userinfo) {
      const colon = userinfo.indexOf(':');
      adminUser = decodeURIComponent(colon < 0 ? userinfo : userinfo.slice(0, colon));
      if (colon >= 0) urlPassword = decodeURIComponent(userinfo.slice(colon + 1));
    }
    userDb = path ? decodeURIComponent(path) : 'admin';
  } catch {
    throw new DbError('DB_ERROR', 'the MongoDB target URL has a malformed %-escape');
  }
  return {
    url: `${scheme}${hosts}/${path ?? ''}${query ?? ''}`,
    userDb,
    adminUser: adminUser || undefined,
    adminPassword: target.password ?? urlPassword,
    urlHasAuthSource: /[?&]authSource=/i.test(query ?? ''),
    timeoutMs: target.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  };
}

/** Client options shared by the admin and test connections. */
function baseOptions(ep: Endpoint): MongoClientOptions {
  return {
    appName: 'rotor-agent',
    serverSelectionTimeoutMS: ep.timeoutMs,
    connectTimeoutMS: ep.timeoutMs,
    // The majority write concern may wait up to wtimeout on the server; the socket waits a little longer.
    socketTimeoutMS: ep.timeoutMs * 2,
    retryWrites: false,
    retryReads: false,
  };
}

/** The admin connection: the URL's user, the agent's password, authSource from the URL or `admin`. */
export function adminOptions(ep: Endpoint): MongoClientOptions {
  if (!ep.adminUser) return baseOptions(ep);
  return {
    ...baseOptions(ep),
    auth: { username: ep.adminUser, ...(ep.adminPassword !== undefined ? { password: ep.adminPassword } : {}) },
    ...(ep.urlHasAuthSource ? {} : { authSource: 'admin' }),
  };
}

/** A login as the rotated user: its own database, SCRAM-SHA-256, one connection, never pooled across tests. */
export function testOptions(ep: Endpoint, c: Credential): MongoClientOptions {
  return {
    ...baseOptions(ep),
    auth: { username: c.username, password: c.password },
    authSource: ep.userDb,
    authMechanism: 'SCRAM-SHA-256',
    maxPoolSize: 1,
    minPoolSize: 0,
  };
}

/** The `updateUser` command of a password change. */
export function updateUserCommand(username: string, password: string, timeoutMs: number): Document {
  return {
    updateUser: username,
    pwd: password,
    mechanisms: [...MONGO_MECHANISMS],
    writeConcern: { w: 'majority', wtimeout: timeoutMs },
  };
}

const NETWORK_ERRORS = new Set([
  'MongoServerSelectionError',
  'MongoNetworkError',
  'MongoNetworkTimeoutError',
  'MongoTopologyClosedError',
  'MongoNotConnectedError',
  'MongoOperationTimeoutError',
]);
/** Server codes that mean "try again later": shutdown, failover, write concern not satisfied in time. */
const TRANSIENT_CODES = new Set([6, 7, 64, 89, 91, 189, 10107, 11600, 11602, 13435, 13436]);

function errorCode(err: unknown): number | undefined {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 3; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'number') return code;
  }
  return undefined;
}

function isNetworkError(err: unknown): boolean {
  for (let e = err, depth = 0; e && typeof e === 'object' && depth < 3; e = (e as { cause?: unknown }).cause, depth++) {
    if (NETWORK_ERRORS.has((e as { name?: string }).name ?? '')) return true;
  }
  return false;
}

/** A DbError for a driver error; never copies the driver's message or properties (they may quote a command). */
function mapError(err: unknown, doing: string, asAdmin: boolean): DbError {
  if (err instanceof DbError) return err;
  const code = errorCode(err);
  const dbCode = code === undefined ? undefined : String(code);
  if (code === 18) {
    return asAdmin
      ? new DbError('DB_ADMIN_AUTH', 'MongoDB refused the admin credential (AuthenticationFailed)', dbCode)
      : new DbError('DB_ERROR', `MongoDB refused a login while trying to ${doing}`, dbCode);
  }
  if (code === 11)
    return new DbError(
      'DB_USER_MISSING',
      `MongoDB has no such user (UserNotFound) in the target database while trying to ${doing}`,
      dbCode,
    );
  if (code === 13)
    return new DbError(
      'DB_PERMISSION',
      `the MongoDB admin account lacks a privilege needed to ${doing} (Unauthorized; it needs changePassword on the users' database)`,
      dbCode,
    );
  if (isNetworkError(err) || (code !== undefined && TRANSIENT_CODES.has(code))) {
    return new DbError('DB_UNREACHABLE', `MongoDB is unreachable or not ready while trying to ${doing}`, dbCode);
  }
  if (
    (err as { name?: string })?.name === 'MongoParseError' ||
    (err as { name?: string })?.name === 'MongoInvalidArgumentError'
  ) {
    return new DbError('DB_ERROR', 'the MongoDB target URL or its options are invalid');
  }
  return new DbError('DB_ERROR', `MongoDB failed while trying to ${doing}`, dbCode);
}

function checkUsername(username: string): void {
  if (typeof username !== 'string' || username === '')
    throw new DbError('DB_USER_MISSING', 'a MongoDB username cannot be empty');
}

export function createMongodbEngine(options: MongodbEngineOptions = {}): EngineFactory {
  const connect = options.connect ?? mongoClientConnect;
  return (target) => new MongodbEngine(parseMongoTarget(target), connect);
}

export const mongodbEngine: EngineFactory = createMongodbEngine();

class MongodbEngine implements DbEngine {
  readonly engine = 'mongodb' as const;
  #admin: Promise<MongoSession> | undefined;

  constructor(
    private readonly ep: Endpoint,
    private readonly connect: MongoConnect,
  ) {}

  async set(job: SetJob): Promise<SetOutcome> {
    checkUsername(job.username);
    if (job.strategy === 'dual') throw unsupportedDual();
    if (await this.test({ username: job.username, password: job.password })) return 'already-applied';
    await this.updatePassword(job.username, job.password, 'set the new password (updateUser)');
    return 'applied';
  }

  async test(c: Credential): Promise<boolean> {
    checkUsername(c.username);
    let session: MongoSession;
    try {
      session = await this.connect(this.ep.url, testOptions(this.ep, c));
    } catch (err) {
      if (errorCode(err) === 18) return false;
      throw mapError(err, 'test a login', false);
    }
    try {
      await session.command(this.ep.userDb, { ping: 1 });
      return true;
    } catch (err) {
      if (errorCode(err) === 18) return false;
      throw mapError(err, 'test a login', false);
    } finally {
      await session.close().catch(() => {});
    }
  }

  async retire(job: RetireJob): Promise<void> {
    if (job.strategy === 'single') return;
    if (job.strategy === 'dual') throw unsupportedDual();
    checkUsername(job.retired.username);
    if (job.retired.username === job.current.username) {
      throw new DbError(
        'DB_ERROR',
        `refusing to retire: alternate needs two users, but the retired and the current user are both ${JSON.stringify(job.current.username)}`,
      );
    }
    // A value nobody knows: never stored, never logged; the next set gives the user a known one again.
    const unknowable = randomBytes(32).toString('base64url');
    await this.updatePassword(
      job.retired.username,
      unknowable,
      'retire the previous user (updateUser with an unknown password)',
    );
  }

  async close(): Promise<void> {
    const admin = this.#admin;
    this.#admin = undefined;
    const session = await admin?.catch(() => undefined);
    await session?.close().catch(() => {});
  }

  private async updatePassword(username: string, password: string, doing: string): Promise<void> {
    const admin = await this.adminSession();
    let reply: Document;
    try {
      reply = await admin.command(this.ep.userDb, updateUserCommand(username, password, this.ep.timeoutMs));
    } catch (err) {
      throw mapError(err, doing, true);
    }
    // runCommand does not throw on a write concern error: the reply says ok:1 with writeConcernError.
    const wce = reply?.writeConcernError as { code?: unknown } | undefined;
    if (wce) {
      const code = typeof wce.code === 'number' ? wce.code : undefined;
      throw new DbError(
        'DB_UNREACHABLE',
        `MongoDB applied the change on the primary but a majority did not confirm it in time while trying to ${doing}; it is retried`,
        code === undefined ? undefined : String(code),
      );
    }
  }

  private adminSession(): Promise<MongoSession> {
    if (!this.#admin) {
      const opening = this.connect(this.ep.url, adminOptions(this.ep)).catch((err: unknown) => {
        if (this.#admin === opening) this.#admin = undefined;
        throw mapError(err, 'connect as the admin', true);
      });
      this.#admin = opening;
    }
    return this.#admin;
  }
}

function unsupportedDual(): DbError {
  return new DbError(
    'DB_UNSUPPORTED',
    'the dual strategy is not supported for MongoDB: a user holds one password; use alternate (two users) or single',
  );
}
