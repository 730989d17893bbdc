/**
 * One daemon per data directory. Two daemons on one directory would interleave the audit log and the
 * state store, so the daemon holds DATA_DIR/daemon.lock (created exclusively, holding its pid) while it
 * runs. A lock left by a process that no longer exists (a crash, SIGKILL) is taken over.
 */
import { open, readFile, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { NEVER, RotorError } from '../errors.js';

/** Another daemon holds the data directory: it must be stopped first (or given its own --data-dir). */
export class LockError extends RotorError {
  declare readonly code: 'DATA_DIR_LOCKED';
  constructor(message: string) {
    super('DATA_DIR_LOCKED', message, { retry: NEVER });
  }
}

/** The data directory (or something made in it) is not the daemon's own: a person must fix it. */
export class DataDirError extends RotorError {
  declare readonly code: 'DATA_DIR_UNSAFE';
  constructor(message: string) {
    super('DATA_DIR_UNSAFE', message, { retry: NEVER });
  }
}

/**
 * Refuses a data directory that others may write to: whoever can create entries in it could replace
 * the keys, or plant a symbolic link where the daemon (often root) is about to write its lock, state
 * or admin socket. A missing directory is left to loadKeys (KEYS_MISSING). The directory itself may
 * be a link (the operator's choice); what counts is the directory it leads to.
 */
export async function checkDataDir(dataDir: string): Promise<void> {
  const st = await stat(dataDir).catch(() => undefined);
  if (!st) return;
  if (!st.isDirectory())
    throw new DataDirError(
      `${dataDir} is not a directory: pass the daemon's data directory (rotor keygen DIR makes one)`,
    );
  if ((st.mode & 0o022) !== 0) {
    throw new DataDirError(
      `${dataDir} is writable by others (mode ${(st.mode & 0o777).toString(8)}): another user could replace the keys or plant links where the daemon writes; make it the daemon's own: chmod 700 ${dataDir}`,
    );
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock; returns a function that releases it. */
export async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const file = path.join(dataDir, 'daemon.lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(file, 'wx', 0o600);
      await fh.writeFile(`${process.pid}\n`);
      await fh.sync();
      await fh.close();
      return async () => {
        const holder = Number((await readFile(file, 'utf8').catch(() => '')).trim());
        if (holder === process.pid) await unlink(file).catch(() => undefined);
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
        throw new LockError(
          `another rotor daemon (pid ${pid}) is using ${dataDir}; stop it first, or give this one its own --data-dir`,
        );
      }
      await unlink(file).catch(() => undefined); // a stale lock from a process that is gone
    }
  }
  throw new LockError(`cannot take the lock ${file}`);
}
