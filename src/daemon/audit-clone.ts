/**
 * The clones a daemon opens at start, and its audit log there: the declarations' clone (entries left
 * uncommitted by a crash committed first), the audit branch's clone when the log is kept on one (made on
 * the remote when it is not there yet), and the audit log, checked against what the remote holds.
 * Returns them with the index of the log (what daemon.ts anchors the state store with).
 */
import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { confineAuditFs } from '../audit/confine.js';
import type { AuditEntry } from '../audit/entry.js';
import { AuditError } from '../audit/entry.js';
import type { AuditFs } from '../audit/log.js';
import { AuditLog, nodeAuditFs } from '../audit/log.js';
import { ensureAuditBranch } from '../git/audit-branch.js';
import type { GitRepo } from '../git/repo.js';
import { GitRepoError, openRepo } from '../git/repo.js';
import type { Logger } from '../log.js';
import { auditDirShapeProblem } from '../model/audit-path.js';
import type { LoadResult } from '../model/model.js';
import { DEFAULT_AUDIT_DIR } from '../model/model.js';
import { committedAuditHead } from './audit-anchor.js';
import type { AuditSigning } from './audit-signing.js';
import type { RepoSync } from './sync.js';

export interface OpenedClones {
  /** The declarations' clone, opened with the audit directory in force. */
  readonly repo: GitRepo;
  /** Where the log is committed: `repo`, or the audit branch's clone. */
  readonly auditRepo: GitRepo;
  readonly synced: Awaited<ReturnType<GitRepo['sync']>>;
  /** The remote's head and what it declares. */
  readonly head: string;
  readonly first: LoadResult;
  readonly auditDir: string;
  readonly auditBranch: string | undefined;
  readonly audit: AuditLog;
  readonly auditPath: string;
  /** The log's file system, confined to plain directories of the clone. */
  readonly auditFs: AuditFs;
  readonly index: AuditIndex;
}

export async function openClones(o: {
  readonly repo: string;
  readonly branch: string;
  readonly dataDir: string;
  readonly log: Logger;
  readonly auditFs?: AuditFs;
  /** The sync loads commits through the daemon's clone: told of each clone as it is opened; returns it. */
  readonly sync: RepoSync;
  readonly onRepo: (repo: GitRepo) => GitRepo;
  /** The state is in PostgreSQL, the audit chain in the database: the clones are put back at the remote's. */
  readonly shared?: boolean;
  /** audit.sign: told of the Config here until the daemon applies one; the clones sign with its signer. */
  readonly signing?: AuditSigning;
  /** The author and committer of the audit commits (default DEFAULT_AUTHOR). */
  readonly author?: { readonly name: string; readonly email: string };
}): Promise<OpenedClones> {
  const { dataDir, log, sync, signing } = o;
  const repoOptions = {
    url: o.repo,
    dir: path.join(dataDir, 'repo'),
    branch: o.branch,
    onWarning: (w: { code: string; message: string }) => log('warn', w.message, { code: w.code }),
    ...(signing ? { signer: signing.signer } : {}),
    ...(o.author ? { author: o.author } : {}),
  };
  let repo = o.onRepo(await openRepo(repoOptions));
  // Audit entries written just before a crash are durable in the clone but not yet committed:
  // commit them first (under the audit directory the clone's own commit declares), in the clone of
  // the audit branch too when the log is kept on one.
  const local = await sync.load(await repo.head());
  if (local.valid) signing?.follow(local.desired.config?.decl);
  const localDir = usableAuditDir(local);
  const localBranch = auditBranchOf(local);
  if (localDir !== 'audit') repo = o.onRepo(await openRepo({ ...repoOptions, auditDir: localDir }));
  // With the state on PostgreSQL the record is the chain in the database, and the files only mirror
  // it: what a killed leader left in its clone (written, maybe committed, not pushed) is in the
  // database, and other leaders may have pushed the same entries since, so rebasing it would conflict.
  // The clone is put back at the remote's; the leader's mirror writes the rest from the database.
  if (o.shared) await repo.resetToRemote();
  else if ((await lstat(path.join(repo.dir, localDir)).catch(() => undefined))?.isDirectory())
    await repo.commitAudit([localDir], 'rotor: audit entries written before a restart');
  const auditClone = path.join(dataDir, 'audit-repo');
  if (
    !o.shared &&
    localBranch &&
    (await lstat(path.join(auditClone, localDir)).catch(() => undefined))?.isDirectory()
  ) {
    const leftover = await openRepo({ ...repoOptions, dir: auditClone, branch: localBranch, auditDir: localDir });
    await leftover.commitAudit([localDir], 'rotor: audit entries written before a restart');
  }
  const synced = await repo.sync(); // sync fetches
  const head = synced.remoteHead;
  sync.noteHeld(synced);
  const first = await sync.load(head);
  if (first.valid) signing?.follow(first.desired.config?.decl);
  const auditDir = first.valid ? first.auditDir : localDir;
  const auditBranch = first.valid ? auditBranchOf(first) : localBranch;
  if (auditDir !== localDir) repo = o.onRepo(await openRepo({ ...repoOptions, auditDir }));

  // Where the log is committed: the declarations' clone, or a clone of the audit branch (made on the
  // remote from the declarations' audit directory when it is not there yet).
  let auditRepo = repo;
  let auditRemoteHead = head;
  if (auditBranch !== undefined) {
    if (auditBranch === repo.branch)
      throw new GitRepoError(
        'GIT_BAD_ARGUMENT',
        `audit.branch "${auditBranch}" is the declarations' branch: name another branch, or remove audit.branch to keep the log beside the declarations`,
      );
    const created = await ensureAuditBranch({
      url: repo.url,
      from: repo.branch,
      branch: auditBranch,
      auditDir: auditDir,
      scratch: dataDir,
      author: repo.author,
      networkTimeoutMs: 120_000,
      ...(signing?.signer() ? { signer: signing.signer()! } : {}),
    });
    if (created) log('info', 'made the audit branch on the remote', { branch: auditBranch, from: repo.branch });
    auditRepo = await openRepo({
      ...repoOptions,
      dir: auditClone,
      branch: auditBranch,
      auditDir: auditDir,
    });
    if (o.shared) await auditRepo.resetToRemote();
    const s = await auditRepo.sync();
    if (s.held) throw s.held;
    auditRemoteHead = s.remoteHead;
  }

  // The audit log anchors the store: it must not be older than the last generation the log records.
  const auditPath = path.join(auditRepo.dir, auditDir);
  // Every read and write of the log is confined to plain directories of the clone (no link followed).
  const auditFs = await confineAuditFs(auditRepo.dir, o.auditFs ?? nodeAuditFs);
  const index = newAuditIndex();
  // The remote anchors the clone's log too: its last entry must be there, unchanged. Otherwise entries
  // were removed or changed in the clone (and the commit above took that for entries to push).
  const pushed = await committedAuditHead(auditRepo.dir, auditRemoteHead, auditDir);
  let pushedHash: string | undefined;
  const audit = await AuditLog.open(auditPath, {
    onEntry: (e) => {
      index.add(e);
      if (e.seq === pushed?.seq) pushedHash = e.hash;
    },
    fs: auditFs,
  });
  if (pushed && pushedHash !== pushed.hash) {
    const where =
      pushedHash === undefined
        ? `ends at entry ${audit.head.seq}, before entry ${pushed.seq}`
        : `differs at entry ${pushed.seq}`;
    throw new AuditError(
      pushedHash === undefined ? 'AUDIT_TRUNCATED' : 'AUDIT_CHAIN_BROKEN',
      `the audit log ${auditPath} ${where}, which the remote holds (commit ${auditRemoteHead}): entries were removed or changed in the clone. Nothing of it was pushed; compare with the remote (git -C ${auditRepo.dir} diff ${auditRemoteHead} -- ${auditDir}) and restore them`,
    );
  }
  return { repo, auditRepo, synced, head, first, auditDir, auditBranch, audit, auditPath, auditFs, index };
}

export type AuditIndex = ReturnType<typeof newAuditIndex>;

/** The audit branch a model names (a valid one only). */
function auditBranchOf(m: LoadResult): string | undefined {
  return m.valid ? m.desired.config?.decl.audit?.branch : undefined;
}

/** The audit directory a model names, when it can be one; else the default (its commit is rejected anyway). */
function usableAuditDir(m: { valid: boolean; auditDir: string }): string {
  return m.valid || auditDirShapeProblem(m.auditDir) === undefined ? m.auditDir : DEFAULT_AUDIT_DIR;
}

const NOTIFIED = new Set(['rotated', 'rotation-failed', 'config-rejected', 'drift-detected']);
const NOTIFY_TAIL = 10_000;

/** What the audit log says at start: the last version made current per secret, and the store's anchor. */
export function newAuditIndex() {
  const index = {
    audited: new Map<string, number>(),
    stateSeq: undefined as number | undefined,
    storeId: undefined as string | undefined,
    /** The commit of the last config-applied entry. */
    lastApplied: undefined as string | undefined,
    /** The last entries webhooks report (src/notify), at least the last NOTIFY_TAIL: replayed past the queue's cursor. */
    notifyTail: [] as AuditEntry[],
    /** The last drift-detected entry of each secret (drift.ts: was an incident read back audited?). */
    lastDrift: new Map<string, { from?: number; detail?: string }>(),
    add(e: AuditEntry) {
      if (e.event === 'drift-detected' && e.secret) index.lastDrift.set(e.secret, { from: e.from, detail: e.detail });
      if (NOTIFIED.has(e.event)) {
        index.notifyTail.push(e);
        // Trimmed in bulk (amortised O(1) per entry over a long log, where shift() would be O(NOTIFY_TAIL)).
        if (index.notifyTail.length >= 2 * NOTIFY_TAIL) index.notifyTail.splice(0, NOTIFY_TAIL);
      }
      if (e.event === 'config-applied' && e.commit) index.lastApplied = e.commit;
      if ((e.event === 'created' || e.event === 'rotated') && e.secret && e.to !== undefined)
        index.audited.set(e.secret, e.to);
      if (e.event === 'purged' && e.secret) index.audited.delete(e.secret);
      if (e.stateSeq !== undefined) index.stateSeq = Math.max(index.stateSeq ?? 0, e.stateSeq);
      if (e.storeId !== undefined) index.storeId = e.storeId;
    },
  };
  return index;
}
