/**
 * The remote's copy of the audit log as an anchor for the clone's. At start the daemon commits whatever
 * its clone's audit directory holds (entries written before a crash), so entries removed or changed
 * there after the last one the state store anchors would be committed and pushed as if the daemon had
 * written that (found by the proof harness, prove/4-tamper.mjs). The remote's last entry must be in
 * the clone's log, unchanged: the daemon checks it with the entry read here.
 */

import { FILE_NAME, MAX_LINE_BYTES } from '../audit/entry.js';
import type { Anchor } from '../audit/verify.js';
import { git, gitTail } from '../git/run.js';

const HEX64 = /^[0-9a-f]{64}$/;

/**
 * The last entry (seq and hash) of the audit log committed at `commit`, or undefined when there is none
 * or its last line cannot be read as an entry (the verification of the clone's log, which holds the
 * same lines, then says what is wrong).
 */
export async function committedAuditHead(
  repoDir: string,
  commit: string,
  auditDir: string,
): Promise<Anchor | undefined> {
  const listing = (
    await git(repoDir, ['--literal-pathspecs', 'ls-tree', '-z', '--name-only', commit, '--', `${auditDir}/`])
  ).toString('utf8');
  const last = listing
    .split('\0')
    .filter((p) => FILE_NAME.test(p.slice(auditDir.length + 1)))
    .sort()
    .at(-1);
  if (last === undefined) return undefined;
  // Only the end of the file is kept, whatever its size: the last line is all that is needed.
  const { tail } = await gitTail(repoDir, ['cat-file', 'blob', `${commit}:${last}`], MAX_LINE_BYTES + 2);
  const line = tail.toString('utf8').trimEnd().split('\n').at(-1) ?? '';
  try {
    const e = JSON.parse(line) as { seq?: unknown; hash?: unknown };
    return Number.isSafeInteger(e.seq) && (e.seq as number) >= 1 && typeof e.hash === 'string' && HEX64.test(e.hash)
      ? { seq: e.seq as number, hash: e.hash }
      : undefined;
  } catch {
    return undefined;
  }
}
