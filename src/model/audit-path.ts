/**
 * The audit directory must be a plain directory of the repository all the way down: the daemon runs as
 * a privileged user and appends its log there, so a symbolic link committed on that path (the
 * directory, a parent of it, or a file inside it) would send its writes anywhere on the host, and a
 * file or submodule there would stop them. The loader refuses such a commit (rotor validate, rotor
 * plan, and the daemon, which records it as config-rejected), and the daemon's clone never checks one
 * out (src/git/repo.ts). Pure: the source's probe says what is there.
 */

import type { Code, Problem } from './problems.js';
import type { PathProbe } from './source.js';

/** Why `dir` cannot be an audit directory (a `.git` segment in any case), or undefined. */
export function auditDirNameProblem(dir: string): string | undefined {
  const segs = dir.split('/');
  // git refuses to check out any path with a .git segment (in any case; NTFS ignores trailing dots)
  if (segs.some((s) => /^\.git\.*$/i.test(s)))
    return `audit.dir "${dir}" is inside .git, which git does not check out or commit; use a directory such as "audit"`;
  if (segs.some((s) => s === '' || s === '.' || s === '..') || dir.startsWith('/'))
    return `audit.dir "${dir}" must be a relative path without empty, "." or ".." segments, such as "audit"`;
  return undefined;
}

/** The longest audit.dir (schemas/config.schema.json). */
export const AUDIT_DIR_MAX = 200;

/**
 * Why `dir` cannot be an audit directory at all: over AUDIT_DIR_MAX characters, characters other than
 * the schema's (letters, digits, ".", "_", "-" and "/" between segments), or any auditDirNameProblem.
 * The daemon's clone puts the name into an attributes pattern as it is, so it must be this plain.
 */
export function auditDirShapeProblem(dir: string): string | undefined {
  if (dir.length > AUDIT_DIR_MAX || !/^[A-Za-z0-9._-]+(?:\/[A-Za-z0-9._-]+)*$/.test(dir)) {
    return `audit directory "${dir.slice(0, 60)}${dir.length > 60 ? '...' : ''}" may hold only letters, digits, ".", "_", "-" and "/" between segments, at most ${AUDIT_DIR_MAX} characters`;
  }
  return auditDirNameProblem(dir);
}

/** Problems with what the source holds on and under the audit directory `dir`. */
export function auditPathProblems(dir: string, probe: PathProbe): Problem[] {
  const out: Problem[] = [];
  const at = (file: string, code: Code, message: string): Problem => ({
    file,
    line: 1,
    col: 1,
    severity: 'error',
    code,
    message,
  });
  for (const e of probe.chain) {
    if (e.kind === 'dir') continue;
    const what = e.path === dir ? 'the audit directory' : `a parent of the audit directory ${dir}/`;
    out.push(
      e.kind === 'symlink'
        ? at(
            e.path,
            'AUDIT_PATH_SYMLINK',
            `${e.path} is a symbolic link, and it is ${what}: rotor writes its audit log only into plain directories, never through a link. Replace the link with a directory (git rm ${e.path}) and keep the audit log there`,
          )
        : at(
            e.path,
            'AUDIT_PATH_NOT_PLAIN',
            `${e.path} is a ${e.kind === 'submodule' ? 'submodule' : 'file'}, and it is ${what}, which must be a plain directory: move it away (git mv ${e.path} ...)`,
          ),
    );
  }
  for (const e of probe.inside) {
    out.push(
      e.kind === 'symlink'
        ? at(
            e.path,
            'AUDIT_PATH_SYMLINK',
            `${e.path} is a symbolic link inside the audit directory ${dir}/: rotor writes its audit log only into plain files, never through a link. Remove it (git rm ${e.path})`,
          )
        : at(
            e.path,
            'AUDIT_PATH_NOT_PLAIN',
            `${e.path} is a ${e.kind === 'submodule' ? 'submodule' : 'special file'} inside the audit directory ${dir}/, which holds only plain files: remove it (git rm ${e.path})`,
          ),
    );
  }
  return out;
}

/** The first problem of auditPathProblems as one sentence, or undefined when the path is safe. */
export function unsafeAuditPath(
  dir: string,
  probe: PathProbe,
): { code: string; message: string; path: string } | undefined {
  const p = auditPathProblems(dir, probe)[0];
  return p && { code: p.code, message: p.message, path: p.file };
}
