// Real file-system faults for part 3, where the machine allows them (root with CAP_SYS_ADMIN; CI may
// not): a read-only bind mount of a directory over itself, and a small tmpfs that can be filled up.
// Without them the proof relies on the injected AuditFs alone (faults-fs.mjs), and says so.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const run = (cmd, args) => execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** Whether this process may mount (tries a read-only bind mount on a scratch directory). */
export function canMount() {
  if (process.getuid?.() !== 0) return false;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'rotor-prove-mount-'));
  try {
    run('mount', ['--bind', dir, dir]);
    try {
      run('mount', ['-o', 'remount,bind,ro', dir]);
      return true;
    } finally {
      run('umount', [dir]);
    }
  } catch {
    return false;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Makes `dir` read-only (a bind mount over itself, remounted ro); returns the undo. */
export function readOnly(dir) {
  run('mount', ['--bind', dir, dir]);
  try {
    run('mount', ['-o', 'remount,bind,ro', dir]);
  } catch (e) {
    run('umount', [dir]);
    throw e;
  }
  return () => run('umount', [dir]);
}

/** Mounts a tmpfs of `size` (e.g. "32m") on `dir` (created, must be empty); returns the unmount. */
export function tmpfs(dir, size) {
  mkdirSync(dir, { recursive: true });
  run('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir]);
  return () => {
    try {
      run('umount', [dir]);
    } catch {
      run('umount', ['-l', dir]); // busy: detach now, freed when the last user goes
    }
  };
}

/** Fills the file system of `dir` with the file `dir/name` until no space is left; returns its removal. */
export function fill(dir, name = '.filler') {
  const file = path.join(dir, name);
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(64 * 1024);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (e) {
    if (e.code !== 'ENOSPC') throw e;
  } finally {
    closeSync(fd);
  }
  // what is left is smaller than a chunk: take it byte-sized pieces at a time
  const fd2 = openSync(file, 'a');
  try {
    for (let piece = 4096; piece >= 1; piece = Math.floor(piece / 2)) {
      try {
        for (;;) writeSync(fd2, chunk.subarray(0, piece));
      } catch (e) {
        if (e.code !== 'ENOSPC') throw e;
      }
    }
  } finally {
    closeSync(fd2);
  }
  return () => unlinkSync(file);
}
