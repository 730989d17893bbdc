/**
 * The git mirror of the audit chain in the database. With several daemons on one PostgreSQL state
 * store, the chain lives in the store's audit table (audit/pg-log.ts) and the leader's files in its
 * clone are a copy of it, which it commits and pushes (audit-publisher.ts). mirrorAudit brings the
 * files up to the database's head; after a failover the new leader's mirror writes (and so pushes)
 * what the old leader had appended but not pushed. seedAudit moves a file log into an empty table.
 */

import path from 'node:path';
import type { AuditEntry } from '../audit/entry.js';
import { AuditError } from '../audit/entry.js';
import type { AuditLog } from '../audit/log.js';
import { nodeAuditFs, verifyAuditDir, verifyError } from '../audit/log.js';
import type { PgAuditLog } from '../audit/pg-log.js';
import type { Anchor } from '../audit/verify.js';

/** Lines read from the database per appendLines call. */
const MIRROR_BATCH = 500;

/** What to do when the files are not a copy of the database's chain. */
function mend(file: AuditLog, db: PgAuditLog): string {
  return (
    `with several daemons the database's chain is the record and the files only mirror it. If ${db.place} ` +
    'never held the audit log (its table is empty), import the files into it first (seed); otherwise the ' +
    'files are another chain (another store, or a database restored from an older backup): compare the two, ' +
    `keep the files elsewhere (their git history has them), remove ${file.dir} from the clone, and the mirror ` +
    'writes it again from the database'
  );
}

/** The `hash` field of a line, if it is a JSON object with one. */
function hashOf(line: string): string | undefined {
  try {
    const v = (JSON.parse(line) as { hash?: unknown }).hash;
    return typeof v === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Appends to the file log the database's entries it does not hold yet (up to the database log's head,
 * as last read: catchUp first to go further). Refuses (AUDIT_CHAIN_BROKEN, nothing written) when the
 * files go further than the database or their last entry differs from the database's entry of that
 * seq. Resolves with the entries written.
 */
export async function mirrorAudit(db: PgAuditLog, file: AuditLog): Promise<AuditEntry[]> {
  const f = file.head;
  const d = db.head;
  if (f.seq > d.seq)
    throw new AuditError(
      'AUDIT_CHAIN_BROKEN',
      `the audit log in ${file.dir} ends at entry ${f.seq}, after the database's chain in ${db.place} (entry ${d.seq}): ${mend(file, db)}`,
    );
  if (f.seq > 0) {
    const [row] = await db.linesAfter(f.seq - 1, 1);
    if (!row || hashOf(row.line) !== f.hash)
      throw new AuditError(
        'AUDIT_CHAIN_BROKEN',
        `entry ${f.seq} of the audit log in ${file.dir} differs from entry ${f.seq} of the database's chain in ${db.place}: ${mend(file, db)}`,
      );
  }
  const written: AuditEntry[] = [];
  for (;;) {
    const rows = await db.linesAfter(file.head.seq, MIRROR_BATCH);
    if (rows.length === 0) return written;
    written.push(...(await file.appendLines(rows.map((r) => r.line))));
  }
}

/**
 * Imports the file log of `dir` (verified first: the verifier's code when it is broken) into the
 * database's empty audit table, so that the chain goes on there. The whole log is held in memory once.
 * Resolves with the database's head.
 */
export async function seedAudit(db: PgAuditLog, dir: string, fs = nodeAuditFs): Promise<Anchor> {
  const v = await verifyAuditDir(dir, { fs });
  if (!v.result.ok) throw verifyError(v.result);
  const lines: string[] = [];
  for (const name of v.files) {
    const text = (await fs.readFile(path.join(dir, name))).toString('utf8');
    for (const line of text.split('\n')) if (line !== '') lines.push(line);
  }
  return db.seed(lines);
}
