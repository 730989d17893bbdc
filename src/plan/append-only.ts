/**
 * The audit log is append-only: between two revisions every file under the audit directory may only
 * grow at its end, by whole lines. Anything else (an edited, deleted or truncated line, a removed file)
 * is a violation that `rotor plan` refuses.
 */
import type { RepoSource } from '../model/source.js';

export interface AuditViolation {
  readonly file: string;
  /** The first line that differs (1-based). */
  readonly line: number;
  readonly kind: 'deleted-file' | 'edited' | 'truncated';
  readonly message: string;
}

/** Compares one audit file's two versions; undefined when `after` only appends whole lines. */
export function compareAppendOnly(file: string, before: Buffer, after: Buffer): AuditViolation | undefined {
  const n = Math.min(before.length, after.length);
  let i = 0;
  while (i < n && before[i] === after[i]) i++;
  const lineAt = (k: number) => {
    let line = 1;
    for (let j = 0; j < k; j++) if (before[j] === 10) line++;
    return line;
  };
  if (i < before.length) {
    // `after` differs from or stops inside the old content.
    if (i === after.length) {
      const line = lineAt(i);
      return {
        file,
        line,
        kind: 'truncated',
        message: `lines from ${line} on were removed from the audit log ${file}`,
      };
    }
    // Report the start of the line that changed.
    const line = lineAt(i);
    return { file, line, kind: 'edited', message: `line ${line} of the audit log ${file} was changed` };
  }
  if (after.length > before.length && before.length > 0 && before[before.length - 1] !== 10) {
    const line = lineAt(before.length);
    return {
      file,
      line,
      kind: 'edited',
      message: `line ${line} of the audit log ${file} was extended (it had no final newline)`,
    };
  }
  return undefined;
}

/**
 * The largest audit file `rotor plan` reads (a month of the log; the daemon starts a new file each
 * month). A larger one is reported as a violation it could not check, never read whole.
 */
export const AUDIT_FILE_READ_LIMIT = 256 * 1024 * 1024;

/**
 * Every violation of the append-only rule under `auditDir` between two sources. Files whose content
 * ids are the same in both (git blob ids) are equal and not read.
 */
export async function checkAppendOnly(base: RepoSource, head: RepoSource, auditDir: string): Promise<AuditViolation[]> {
  const under = (p: string) => p === auditDir || p.startsWith(`${auditDir}/`);
  const [b, h] = await Promise.all([base.list(), head.list()]);
  const files = [...b.files.keys()].filter(under).sort();
  const out: AuditViolation[] = [];
  const present = files.filter((f) => {
    const before = b.files.get(f)?.id;
    return h.files.has(f) && (before === undefined || before !== h.files.get(f)!.id);
  });
  for (const f of files) {
    if (!h.files.has(f))
      out.push({ file: f, line: 1, kind: 'deleted-file', message: `the audit log ${f} was deleted` });
  }
  const limit = { maxBytes: AUDIT_FILE_READ_LIMIT };
  const [before, after] = await Promise.all([base.readMany(present, limit), head.readMany(present, limit)]);
  for (const f of present) {
    const x = before.get(f);
    const y = after.get(f);
    if (!(x instanceof Buffer) || !(y instanceof Buffer)) {
      const why = [x, y].find((v): v is Error => v instanceof Error)?.message;
      out.push({
        file: f,
        line: 1,
        kind: 'edited',
        message: `the audit log ${f} could not be read in both revisions${why ? ` (${why})` : ''}`,
      });
      continue;
    }
    const v = compareAppendOnly(f, x, y);
    if (v) out.push(v);
  }
  return out.sort((x, y) => (x.file < y.file ? -1 : x.file > y.file ? 1 : x.line - y.line));
}
