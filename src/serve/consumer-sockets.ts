/**
 * The consumer sockets: SOCKET_DIR/<consumer>.sock, one per declared Consumer, owned by its uid (and
 * gid), mode 0600.
 *
 * No moment where a socket is more open: each is bound inside a fresh private directory
 * (SOCKET_DIR/.bind-XXXXXX, mode 0700, the daemon's), made 0600 and given to the consumer's uid there,
 * and only then renamed into place (an atomic rename, which also replaces an older socket of the same
 * consumer without a gap). SOCKET_DIR itself is 0711: others may reach a socket whose name they know,
 * not list the directory or put anything in it.
 *
 * At start, sockets left by a crashed daemon are removed, but a socket some other process still
 * answers on is not: the daemon refuses to start (SOCKET_DIR_IN_USE) rather than take it over.
 *
 * No symbolic link is followed where the daemon (often root) changes something: SOCKET_DIR itself
 * may not be a link (SOCKET_DIR_SYMLINK; else a link planted where the directory is expected would
 * have its target chmod'ed 0711 and filled with sockets); it is opened with O_NOFOLLOW and checked
 * and chmod'ed through that descriptor. A socket is given away with lchown and chmod'ed only after
 * lstat shows the very node that was bound (same device and inode, a socket). rename, unlink and rm
 * act on links themselves, never on their targets. The directories above SOCKET_DIR are the
 * operator's choice and are not checked.
 */
import { chmod, constants, lchown, lstat, mkdir, mkdtemp, open, readdir, rename, rm, unlink } from 'node:fs/promises';
import type { RequestListener, Server } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { NEVER, RotorError } from '../errors.js';
import type { Logger } from '../log.js';
import { SerialQueue } from '../util/serial.js';
import { boundedServer, type ListenerLimits } from './limits.js';

/**
 * Per socket, so per consumer (a Unix socket has no peer address to count by: the consumer's uid is
 * the one peer). The API takes no body (a request with one is refused, BODY_NOT_ALLOWED).
 */
export const CONSUMER_SOCKET_LIMITS: ListenerLimits = {
  maxConnections: 1024,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  maxHeaderSize: 8192,
};

export interface ConsumerSocketSpec {
  readonly name: string;
  readonly uid: number;
  readonly gid?: number;
}

/** The socket directory or a consumer's socket cannot be made safely: a person must fix it. */
export class SocketError extends RotorError {
  constructor(code: string, message: string) {
    super(code, message, { retry: NEVER });
  }
}

/** sockaddr_un.sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;

interface Bound {
  readonly spec: ConsumerSocketSpec;
  readonly server: Server;
  readonly path: string;
}

export class ConsumerSockets {
  private readonly bound = new Map<string, Bound>();
  private readonly queue = new SerialQueue();
  private closed = false;

  /** Who serves the sockets, and where the directory is set, for the messages. */
  private readonly who: string;
  private readonly flag: string;

  constructor(
    private readonly o: {
      dir: string;
      log: Logger;
      handler: (consumer: string) => RequestListener;
      /** Default "the daemon" and "--socket-dir"; the agent says "the agent" and "socketDir in its configuration". */
      words?: { who: string; flag: string };
    },
  ) {
    this.who = o.words?.who ?? 'the daemon';
    this.flag = o.words?.flag ?? '--socket-dir';
  }

  get dir(): string {
    return this.o.dir;
  }

  /** Creates or checks SOCKET_DIR and clears what a crashed daemon left. */
  async open(): Promise<void> {
    const dir = this.o.dir;
    const symlink = () =>
      new SocketError(
        'SOCKET_DIR_SYMLINK',
        `${dir} is a symbolic link; ${this.who} does not follow one to chmod its target or put sockets there: remove the link, or pass the real directory as ${this.flag}`,
      );
    const existing = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw new SocketError(
        'SOCKET_DIR_UNUSABLE',
        `cannot examine the socket directory ${dir} (${e.code}): check the permissions of its parents, or pass another ${this.flag}`,
      );
    });
    if (existing?.isSymbolicLink()) throw symlink();
    if (!existing) {
      try {
        await mkdir(dir, { recursive: true, mode: 0o711 });
      } catch (e) {
        throw new SocketError(
          'SOCKET_DIR_UNUSABLE',
          `cannot create the socket directory ${dir} (${(e as NodeJS.ErrnoException).code}): create it for ${this.who}'s user, or pass another ${this.flag}`,
        );
      }
    }
    // O_NOFOLLOW: a link put in place since the lstat is refused, not followed; what is checked and
    // chmod'ed below is the directory this descriptor holds.
    let fh;
    try {
      fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw symlink();
      if (code === 'ENOTDIR') throw new SocketError('SOCKET_DIR_UNSAFE', `${dir} is not a directory`);
      throw new SocketError(
        'SOCKET_DIR_UNUSABLE',
        `cannot open the socket directory ${dir} (${code}): make it ${this.who}'s, or pass another ${this.flag}`,
      );
    }
    try {
      const st = await fh.stat();
      const uid = process.getuid?.() ?? 0;
      if (st.uid !== uid)
        throw new SocketError(
          'SOCKET_DIR_UNSAFE',
          `${dir} belongs to uid ${st.uid}, not to ${this.who}'s user (${uid}): use a directory of ${this.who}'s own (${this.flag})`,
        );
      if ((st.mode & 0o022) !== 0)
        throw new SocketError(
          'SOCKET_DIR_UNSAFE',
          `${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)}): another user could replace a socket; make it 0711 (chmod 711 ${dir})`,
        );
      if ((st.mode & 0o777) !== 0o711) await fh.chmod(0o711);
    } finally {
      await fh.close();
    }
    for (const entry of await readdir(dir)) {
      const p = path.join(dir, entry);
      if (entry.startsWith('.bind-')) {
        await rm(p, { recursive: true, force: true });
      } else if (entry.endsWith('.sock')) {
        const s = await lstat(p).catch(() => undefined);
        if (!s?.isSocket()) continue;
        if (await answers(p))
          throw new SocketError(
            'SOCKET_DIR_IN_USE',
            `${p} is served by another process (another rotor daemon or agent?): stop it or give this one its own ${this.flag}`,
          );
        await unlink(p).catch(() => undefined);
      }
    }
  }

  /** Makes the sockets match the declared consumers: new ones bound, removed ones closed, changed owners rebound. */
  sync(consumers: Iterable<ConsumerSocketSpec>): Promise<void> {
    const want = new Map([...consumers].map((c) => [c.name, c]));
    return this.queue.run(() => this.apply(want));
  }

  private async apply(want: Map<string, ConsumerSocketSpec>): Promise<void> {
    if (this.closed) return;
    for (const [name, b] of [...this.bound]) {
      if (!want.has(name)) {
        this.bound.delete(name);
        await unlink(b.path).catch(() => undefined);
        await closeServer(b.server);
        this.o.log('info', 'consumer socket removed', { consumer: name });
      }
    }
    for (const spec of want.values()) {
      const old = this.bound.get(spec.name);
      if (old && old.spec.uid === spec.uid && old.spec.gid === spec.gid) continue;
      try {
        const server = await this.bind(spec);
        this.bound.set(spec.name, { spec, server, path: this.pathOf(spec.name) });
        if (old) await closeServer(old.server); // connections of the old owner end
        this.o.log('info', old ? 'consumer socket rebound for a new owner' : 'consumer socket ready', {
          consumer: spec.name,
          uid: spec.uid,
          gid: spec.gid ?? process.getgid?.(),
        });
      } catch (e) {
        const err = e as { code?: string; message?: string };
        this.o.log('error', 'consumer socket could not be made; that consumer cannot read until this is fixed', {
          consumer: spec.name,
          code: err.code ?? 'ERROR',
          reason: err.message,
        });
      }
    }
  }

  pathOf(consumer: string): string {
    return path.join(this.o.dir, `${consumer}.sock`);
  }

  private async bind(spec: ConsumerSocketSpec): Promise<Server> {
    const final = this.pathOf(spec.name);
    if (Buffer.byteLength(final) > MAX_SOCKET_PATH)
      throw new SocketError(
        'SOCKET_PATH_TOO_LONG',
        `${final} is longer than the ${MAX_SOCKET_PATH} bytes a Unix socket path may have: use a shorter ${this.flag}`,
      );
    const priv = await mkdtemp(path.join(this.o.dir, '.bind-')); // 0700, the daemon's
    try {
      const tmp = path.join(priv, 's');
      if (Buffer.byteLength(tmp) > MAX_SOCKET_PATH)
        throw new SocketError(
          'SOCKET_PATH_TOO_LONG',
          `${tmp} is longer than ${MAX_SOCKET_PATH} bytes: use a shorter ${this.flag}`,
        );
      const server = boundedServer(CONSUMER_SOCKET_LIMITS, this.o.handler(spec.name));
      await listenPrivately(server, tmp);
      try {
        const bound = await lstat(tmp);
        // lchown and an lstat before the chmod: the socket node itself, never what a link there points to.
        await lchown(tmp, spec.uid, spec.gid ?? process.getgid?.() ?? 0);
        const given = await lstat(tmp);
        if (!given.isSocket() || given.ino !== bound.ino || given.dev !== bound.dev) {
          throw new SocketError(
            'SOCKET_DIR_UNSAFE',
            `${tmp} was replaced while ${this.who} made it: something else writes to ${this.o.dir}; give ${this.who} a directory of its own (${this.flag})`,
          );
        }
        await chmod(tmp, 0o600);
        await rename(tmp, final);
      } catch (e) {
        await closeServer(server);
        if (e instanceof SocketError) throw e;
        const err = e as NodeJS.ErrnoException;
        if (err.code === 'EPERM')
          throw new SocketError(
            'SOCKET_CHOWN_DENIED',
            `cannot give ${final} to uid ${spec.uid}: serving consumers of other users needs root, or CAP_CHOWN and CAP_FOWNER (as deploy/systemd/rotor.service grants)`,
          );
        throw e;
      }
      return server;
    } finally {
      await rm(priv, { recursive: true, force: true });
    }
  }

  /** Closes every socket and ends its connections (long-polls included). */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue.idle();
    await Promise.all(
      [...this.bound.values()].map(async (b) => {
        await unlink(b.path).catch(() => undefined);
        await closeServer(b.server);
      }),
    );
    this.bound.clear();
  }

  /** The consumers that have a socket now. */
  names(): string[] {
    return [...this.bound.keys()];
  }
}

/** Listens on a Unix socket created 0600 (the umask is changed only for the synchronous bind). */
export function listenPrivately(server: Server, socketPath: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const old = process.umask(0o177);
    try {
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(old);
    }
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** Whether something accepts connections on the socket at `p`. */
function answers(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}
