/** `rotor plan --base REF [--head REF] [DIR]`: what a change to the declarations does. */
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { GitError, gitText } from '../git/run.js';
import { GitTreeSource } from '../git/tree.js';
import { loadModel } from '../model/load.js';
import type { RepoSource } from '../model/source.js';
import { DirectorySource } from '../model/source.js';
import { AUDIT_FILE_READ_LIMIT, checkAppendOnly } from '../plan/append-only.js';
import { attributeChanges } from '../plan/attributes.js';
import type { PlanFormat, PlanReport } from '../plan/format.js';
import { formatPlan } from '../plan/format.js';
import { plan } from '../plan/plan.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const PLAN_FLAGS = {
  base: { type: 'string', arg: 'REF', description: 'the revision to compare against, e.g. origin/main (required)' },
  head: { type: 'string', arg: 'REF', defaultText: 'the work tree as it is', description: 'the revision to plan' },
  format: {
    type: 'string',
    arg: 'FORMAT',
    default: 'text',
    choices: ['text', 'markdown', 'json'],
    description: 'text, markdown (a pull-request comment) or json',
  },
  now: { type: 'string', arg: 'TIME', defaultText: 'now', description: 'the time to plan from, ISO 8601' },
  help: HELP_FLAG,
} as const satisfies Flags;

export const PLAN_HELP = `rotor plan: what a change to the declarations does, for pull requests

Usage: rotor plan --base REF [--head REF] [DIR] [--format text|markdown|json]

Shows what a change to the declarations in DIR (default: the current directory, inside a git work
tree) does between the commit REF and the head: declarations added, removed and changed field by
field, the next three rotation times of every affected secret, rotate-now requests, consumers that
gain or lose access, changes that need a person's attention (strategy changes, "single"
strategies, removals, .gitattributes lines that reach the audit log), and sops: secrets near or past
their policy's maxAge (from the audit log's last rotation of each), which a person rotates by
committing a new value. The head is the work tree unless --head names a commit.

It refuses (exit 1) a head with invalid declarations (a symbolic link on the audit directory's path
among them) or one that edits or deletes lines of the audit log, which is append-only.

Options:
${optionsHelp(PLAN_FLAGS)}
Exit status: 0 the change can be applied, 1 refused, 2 usage error (unknown revision, not a git work
tree).

Examples:
  rotor plan --base origin/main                                   # your work tree against main
  rotor plan --base v1.4 --head v1.5 --format json                # between two tags, for a script
  rotor plan --base "origin/$GITHUB_BASE_REF" --format markdown > plan.md    # in CI
`;

/** Bytes of the audit log `lastRotations` reads at most, newest files first. */
const REMINDER_READ_LIMIT = AUDIT_FILE_READ_LIMIT;

/**
 * Secret -> when its current version became current, from the audit log of the head: the newest
 * files first, until REMINDER_READ_LIMIT bytes were read (older rotations are then not looked at).
 */
async function lastRotations(source: RepoSource, auditDir: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const done = new Set<string>();
  const { files } = await source.list();
  const logs = [...files.values()]
    .filter((f) => f.path.startsWith(`${auditDir}/`) && f.path.endsWith('.jsonl'))
    .sort((a, b) => (a.path < b.path ? 1 : -1));
  let budget = REMINDER_READ_LIMIT;
  for (const f of logs) {
    if (f.size > budget) break;
    budget -= f.size;
    const buf = (await source.readMany([f.path], { maxBytes: f.size })).get(f.path);
    if (!(buf instanceof Buffer)) continue;
    const latest = new Map<string, number | null>();
    for (const line of buf.toString('utf8').split('\n')) {
      if (!line.includes('"created"') && !line.includes('"rotated"') && !line.includes('"purged"')) continue;
      try {
        const e = JSON.parse(line) as { event?: string; secret?: string; time?: string };
        if (!e.secret || !e.time || done.has(e.secret)) continue;
        if (e.event === 'purged') latest.set(e.secret, null);
        else if (e.event === 'created' || e.event === 'rotated') latest.set(e.secret, Date.parse(e.time));
      } catch {
        // A damaged line: `rotor audit verify` reports it; the reminder skips it.
      }
    }
    // the last word of a newer file wins over anything older
    for (const [secret, at] of latest) {
      done.add(secret);
      if (at !== null) out.set(secret, at);
    }
  }
  return out;
}

/** The commit of the first of `refs` the repository has, or undefined. */
async function firstCommit(top: string, refs: readonly string[]): Promise<string | undefined> {
  for (const ref of refs) {
    try {
      return await gitText(top, ['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`]);
    } catch {
      // not this one
    }
  }
  return undefined;
}

async function resolveCommit(top: string, ref: string): Promise<string> {
  try {
    return await gitText(top, ['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`]);
  } catch {
    throw new UsageError(
      `"${ref}" is not a commit of this repository (try: git fetch, or a branch name such as origin/main)`,
    );
  }
}

export async function planCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, PLAN_FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(PLAN_HELP);
    return EXIT.ok;
  }
  if (!flags.base)
    throw new UsageError('--base REF is required (the revision the change starts from, e.g. origin/main)');
  let now = io.now();
  if (flags.now !== undefined) {
    now = Date.parse(flags.now);
    if (Number.isNaN(now)) throw new UsageError(`--now "${flags.now}" is not an ISO 8601 time`);
  }
  const dirArg = positionals[0] ?? '.';
  const dir = path.resolve(io.cwd, dirArg);
  if (!(await stat(dir).catch(() => undefined))?.isDirectory()) throw new UsageError(`${dirArg} is not a directory`);
  let top: string;
  try {
    top = await gitText(dir, ['rev-parse', '--show-toplevel']);
  } catch (e) {
    if (e instanceof GitError) throw new UsageError(`${dirArg} is not inside a git work tree`);
    throw e;
  }
  const prefix = path
    .relative(await realpath(top), await realpath(dir))
    .split(path.sep)
    .join('/');
  const baseCommit = await resolveCommit(top, flags.base);
  const headCommit = flags.head ? await resolveCommit(top, flags.head) : null;

  const baseSource = new GitTreeSource(top, baseCommit, prefix);
  const headSource: RepoSource = headCommit ? new GitTreeSource(top, headCommit, prefix) : new DirectorySource(dir);
  const [base, head] = await Promise.all([
    loadModel(baseSource, { now, sopsValues: true }),
    loadModel(headSource, { now, sopsValues: true }),
  ]);
  const audit = await checkAppendOnly(baseSource, headSource, base.auditDir);
  // The log the reminders read: the head's, or the audit branch's when the Config keeps it on one.
  let logSource: RepoSource = headSource;
  const auditBranch = head.valid ? head.desired.config?.decl.audit?.branch : undefined;
  if (auditBranch !== undefined) {
    const ref = await firstCommit(top, [`refs/remotes/origin/${auditBranch}`, `refs/heads/${auditBranch}`]);
    if (ref) logSource = new GitTreeSource(top, ref, prefix);
    else
      io.stderr(
        `rotor plan: warning: the audit log is on branch ${auditBranch} (audit.branch), which this clone does not have: git fetch origin ${auditBranch} (in CI: fetch-depth: 0); the SOPS reminders are given without it\n`,
      );
  }
  const changes = plan(base.desired, head.desired, now, await lastRotations(logSource, head.auditDir));
  const auditFiles = [...(await baseSource.list()).files.keys(), ...(await headSource.list()).files.keys()].filter(
    (f) => f.startsWith(`${head.auditDir}/`),
  );
  const attributes = await attributeChanges(baseSource, headSource, head.auditDir, auditFiles, now);
  const report: PlanReport = {
    base: { ref: flags.base, commit: baseCommit },
    head: { ref: flags.head ?? null, commit: headCommit },
    ok: head.valid && audit.length === 0,
    problems: head.problems,
    baseErrors: base.problems.filter((p) => p.severity === 'error').length,
    audit,
    plan: { ...changes, attention: [...changes.attention, ...attributes] },
  };
  io.stdout(formatPlan(report, flags.format as PlanFormat));
  return report.ok ? EXIT.ok : EXIT.invalid;
}
