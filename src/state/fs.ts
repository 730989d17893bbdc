/**
 * The file-system layer under the state store: the few operations it needs, so that a test (or another
 * medium) can be plugged in without a flag in the store. The default is plain node:fs.
 *
 * Contract: every method either completes or rejects. A rejected write or sync may have reached the disk
 * in part, or not at all; the store assumes nothing about it (it truncates back to what it knows is
 * durable before writing again).
 */
import { constants } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { mkdir, open, rename, stat, unlink } from 'node:fs/promises';

export interface StoreFile {
  /** Reads up to buffer.length bytes at `position`; returns how many were read (0 at the end). */
  read(buffer: Uint8Array, position: number): Promise<number>;
  /** Writes all of `data` at `position`. */
  write(data: Uint8Array, position: number): Promise<void>;
  /** fsync: resolves once everything written so far (data and size) is durable. */
  sync(): Promise<void>;
  truncate(length: number): Promise<void>;
  size(): Promise<number>;
  close(): Promise<void>;
}

export interface StoreFs {
  /**
   * 'read' opens an existing file read-only; 'write' opens an existing file read-write; 'create'
   * creates a file (mode 0600), emptying it if it exists.
   */
  open(path: string, mode: 'read' | 'write' | 'create'): Promise<StoreFile>;
  /** The size of a file, or undefined when there is none. */
  size(path: string): Promise<number | undefined>;
  /** Atomically replaces `to` with `from` (same directory). */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file; a missing file is not an error. */
  unlink(path: string): Promise<void>;
  /** fsyncs a directory, making the renames and creations in it durable. */
  syncDir(dir: string): Promise<void>;
  /** Creates a directory (and its parents) with mode 0700 if missing. */
  mkdir(dir: string): Promise<void>;
}

class NodeFile implements StoreFile {
  constructor(private readonly fh: FileHandle) {}

  async read(buffer: Uint8Array, position: number): Promise<number> {
    return (await this.fh.read(buffer, 0, buffer.length, position)).bytesRead;
  }

  async write(data: Uint8Array, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  }

  sync(): Promise<void> {
    return this.fh.sync();
  }

  truncate(length: number): Promise<void> {
    return this.fh.truncate(length);
  }

  async size(): Promise<number> {
    return (await this.fh.stat()).size;
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

/**
 * O_NOFOLLOW: the store's files are never symbolic links; a link planted in their place is refused
 * (ELOOP, STATE_IO), not followed to truncate and write whatever it points to.
 */
const FLAGS = {
  read: constants.O_RDONLY | constants.O_NOFOLLOW,
  write: constants.O_RDWR | constants.O_NOFOLLOW,
  create: constants.O_RDWR | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
} as const;

export const nodeFs: StoreFs = {
  async open(path, mode) {
    return new NodeFile(await open(path, FLAGS[mode], 0o600));
  },
  async size(path) {
    try {
      return (await stat(path)).size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  },
  rename(from, to) {
    return rename(from, to);
  },
  async unlink(path) {
    try {
      await unlink(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  },
  async syncDir(dir) {
    const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  },
  async mkdir(dir) {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  },
};
