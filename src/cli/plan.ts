/** `rotor plan --base REF [--head REF] [DIR]`: what a change to the declarations does. */
import { realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { loadModel } from '../model/load.js';
import type { RepoSource } from '../model/source.js';
import { DirectorySource } from '../model/source.js';
import { GitTreeSource } from '../git/tree.js';
import { GitError, gitText } from '../git/run.js';
import { checkAppendOnly } from '../plan/append-only.js';
import { plan } from '../plan/plan.js';
import type { PlanFormat, PlanReport } from '../plan/format.js';
import { formatPlan } from '../plan/format.js';
import { parse, UsageError } from './args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const PLAN_HELP = `Usage: rotor plan --base REF [--head REF] [DIR] [--format text|markdown|json]

Shows what a change to the declarations in DIR (default: the current directory, inside a git work tree)
does between the commit REF and the head: declarations added, removed and changed field by field, the
next three rotation times of every affected secret, rotate-now requests, consumers that gain or lose
access, and changes that need a person's attention (strategy changes, "single" strategies, removals).
The head is the work tree unless --head names a commit.

It refuses (exit 1) a head with invalid declarations or one that edits or deletes lines of the audit
log, which is append-only.

Options:
  --base REF        the revision to compare against, e.g. origin/main            [ROTOR_BASE]
  --head REF        the revision to plan (default: the work tree as it is)       [ROTOR_HEAD]
  --format FORMAT   text (default), markdown (a pull-request comment) or json    [ROTOR_FORMAT]
  --now TIME        the time to plan from, ISO 8601 (default: now)                [ROTOR_NOW]
  -h, --help        show this help

Exit status: 0 the change can be applied, 1 refused, 2 usage error (unknown revision, not a git work tree).

In CI:  rotor plan --base "origin/$GITHUB_BASE_REF" --format markdown > plan.md
`;

const FLAGS = {
  base: { type: 'string' },
  head: { type: 'string' },
  format: { type: 'string', default: 'text', choices: ['text', 'markdown', 'json'] },
  now: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

async function resolveCommit(top: string, ref: string): Promise<string> {
  try {
    return await gitText(top, ['rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`]);
  } catch {
    throw new UsageError(`"${ref}" is not a commit of this repository (try: git fetch, or a branch name such as origin/main)`);
  }
}

export async function planCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, FLAGS, io.env, 1);
  if (flags.help) {
    io.stdout(PLAN_HELP);
    return EXIT.ok;
  }
  if (!flags.base) throw new UsageError('--base REF is required (the revision the change starts from, e.g. origin/main)');
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
  const prefix = path.relative(await realpath(top), await realpath(dir)).split(path.sep).join('/');
  const baseCommit = await resolveCommit(top, flags.base);
  const headCommit = flags.head ? await resolveCommit(top, flags.head) : null;

  const baseSource = new GitTreeSource(top, baseCommit, prefix);
  const headSource: RepoSource = headCommit ? new GitTreeSource(top, headCommit, prefix) : new DirectorySource(dir);
  const [base, head] = await Promise.all([loadModel(baseSource, { now }), loadModel(headSource, { now })]);
  const audit = await checkAppendOnly(baseSource, headSource, base.auditDir);
  const report: PlanReport = {
    base: { ref: flags.base, commit: baseCommit },
    head: { ref: flags.head ?? null, commit: headCommit },
    ok: head.valid && audit.length === 0,
    problems: head.problems,
    baseErrors: base.problems.filter((p) => p.severity === 'error').length,
    audit,
    plan: plan(base.desired, head.desired, now),
  };
  io.stdout(formatPlan(report, flags.format as PlanFormat));
  return report.ok ? EXIT.ok : EXIT.invalid;
}
