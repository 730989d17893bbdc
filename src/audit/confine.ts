/**
 * The audit log lives in the daemon's clone of a repository that other people write to. A symbolic
 * link committed on its path (the audit directory, a parent of it, a file in it) must never carry the
 * daemon's writes, or its reads, out of the clone: the daemon often runs with privileges. The commits
 * that would do it are refused before they reach the clone (src/model/audit-path.ts and
 * src/git/repo.ts) and git checks out links as plain files there (core.symlinks=false); this is the
 * last line: every path the audit log touches under the clone is checked with lstat, component by
 * component, before each operation, and the last component is opened with O_NOFOLLOW (nodeAuditFs).
 * A link anywhere fails the operation with ELOOP and a message that names it; the audit log then
 * fails closed (no value is served without its audit entry) until the path is a plain directory again.
 */
import { lstat, realpath } from 'node:fs/promises';
import path from 'node:path';
import { RotorError } from '../errors.js';
import type { AuditFs } from './log.js';

/** A refusal with the code the file system would give: the audit log treats it as one of its errors. */
function fsError(code: 'ELOOP' | 'ENOTDIR' | 'EXDEV', message: string): RotorError {
  return new RotorError(code, message);
}

/**
 * `fs` confined to the directory `root`: every path given must lie inside it, and no component of it
 * below `root` may be a symbolic link (a missing one is fine: it is created, or ENOENT follows).
 * `root` itself may be a link (the operator's choice of data directory): it is resolved once, here.
 */
export async function confineAuditFs(root: string, fs: AuditFs): Promise<AuditFs> {
  const abs = path.resolve(root);
  const real = await realpath(abs).catch(() => abs);

  /** The path under the real root, after checking its components (all of them, or all but the last). */
  async function checked(p: string, last: boolean): Promise<string> {
    const rel = path.relative(abs, path.resolve(p));
    if (rel === '') return real;
    if (rel.startsWith('..') || path.isAbsolute(rel))
      throw fsError('EXDEV', `${p} is outside ${abs}: the audit log stays inside the clone`);
    const segs = rel.split(path.sep);
    let at = real;
    for (let i = 0; i < segs.length; i++) {
      at = path.join(at, segs[i]!);
      if (i === segs.length - 1 && !last) break;
      // (a missing component ends the checks: nothing further down can exist yet)
      const st = await lstat(at).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return undefined;
        throw e;
      });
      if (!st) break;
      const shown = path.join(abs, ...segs.slice(0, i + 1));
      if (st.isSymbolicLink())
        throw fsError(
          'ELOOP',
          `${shown} is a symbolic link: rotor never reads or writes its audit log through a link; make it a plain directory of the repository`,
        );
      if (i < segs.length - 1 && !st.isDirectory())
        throw fsError(
          'ENOTDIR',
          `${shown} is not a directory: the audit directory must be a plain directory of the repository`,
        );
    }
    return path.join(real, rel);
  }

  return {
    readdir: async (dir) => fs.readdir(await checked(dir, true)),
    readFile: async (file) => fs.readFile(await checked(file, false)),
    open: async (file, flags) => fs.open(await checked(file, flags === 'r'), flags),
    unlink: async (file) => fs.unlink(await checked(file, false)),
    mkdir: async (dir) => {
      // One level at a time, each checked: a recursive mkdir would follow a link on the way.
      const target = await checked(dir, true);
      const rel = path.relative(real, target);
      let first: string | undefined;
      let at = real;
      for (const seg of rel === '' ? [] : rel.split(path.sep)) {
        at = path.join(at, seg);
        const st = await lstat(at).catch(() => undefined);
        if (st) {
          if (st.isSymbolicLink())
            throw fsError('ELOOP', `${at} is a symbolic link: rotor never writes its audit log through a link`);
          if (!st.isDirectory()) throw fsError('ENOTDIR', `${at} is not a directory`);
          continue;
        }
        await fs.mkdir(at, { recursive: true });
        first ??= path.join(abs, path.relative(real, at)); // as the caller named it
      }
      return first;
    },
  };
}
