/** `rotor audit verify [DIR]`: check the hash chain of a repository's audit log. */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { jsonString } from '../audit/entry.js';
import { verifyAuditDir } from '../audit/log.js';
import type { Anchor } from '../audit/verify.js';
import { NEVER, RotorError } from '../errors.js';
import { checkBranch } from '../git/clone.js';
import { git, runGit } from '../git/run.js';
import { DEFAULT_AUDIT_DIR } from '../model/model.js';
import { LIMITS } from '../model/yaml.js';
import type { Flags } from '../util/args.js';
import { HELP_FLAG, optionsHelp, parse, UsageError } from '../util/args.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const AUDIT_FLAGS = {
  format: { type: 'string', arg: 'FORMAT', default: 'text', choices: ['text', 'json'], description: 'text or json' },
  anchor: {
    type: 'string',
    arg: 'SEQ:HASH',
    description: 'a head kept elsewhere: SEQ and the entry\'s full 64-digit hash, as --format json prints it ("head")',
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const AUDIT_HELP = `rotor audit: check the hash chain of a repository's audit log

Usage: rotor audit verify [DIR] [--format text|json] [--anchor SEQ:HASH]

Subcommands:
  verify [DIR]      check the audit log of the repository DIR (default: the current directory): the
                    files YYYY-MM.jsonl under the Config's audit.dir (default "audit"), in name order

Each line of the log is one entry that carries the SHA-256 of its own content ("hash") and of the
line before it ("prev"), and a sequence number. verify reads every line and reports the FIRST bad one:
  - an edited line                      AUDIT_HASH_MISMATCH at that line, or, if the editor also
                                        recomputed its hash, AUDIT_CHAIN_BROKEN at the line after it
  - a deleted, inserted or moved line,  AUDIT_SEQ_GAP (or AUDIT_CHAIN_BROKEN) at the first line out
    a missing or reordered file         of place
  - a line that is not a canonical      AUDIT_MALFORMED (also a cut-off last line without its newline,
    entry                               a line over 64 KiB, CRLF line endings, a file name that is not
                                        YYYY-MM.jsonl, an entry filed under an earlier month)
What it does NOT detect on its own: lines or whole files removed from the END of the log (the rest is
still a valid chain), or the end replaced by a newly computed chain (the hashes have no key: anyone can
extend a chain). Keep a head somewhere else (another clone, a ticket, the daemon's own state) and
pass it back with --anchor: then a log that ends before it is AUDIT_TRUNCATED, and one whose entry
SEQ is not that entry is AUDIT_CHAIN_BROKEN. verify checks the directory that rotor.yaml names in the
revision checked out, so a change of audit.dir deserves the same review as an edit of the log.

When rotor.yaml keeps the log on its own branch (audit.branch), verify reads it from that branch:
origin/BRANCH, else a local BRANCH (git fetch origin BRANCH first; a clone without it exits 3,
AUDIT_BRANCH_MISSING). Lines are then named BRANCH:DIR/FILE:LINE.

Options:
${optionsHelp(AUDIT_FLAGS)}
Output: "audit: N entries in F files, chain intact, head SEQ:HASH" (the full hash: keep it, and pass
it back as --anchor SEQ:HASH), or "FILE:LINE: error: MESSAGE [CODE]" for the first bad line, FILE
relative to the current directory. A directory without a log (no YYYY-MM.jsonl file) is not intact
but AUDIT_EMPTY: there is nothing to vouch for (the daemon writes the first file with its first
entry; check audit.dir).
Exit status: 0 intact, 1 broken or empty, 2 usage error, 3 the log or rotor.yaml cannot be read.

Examples:
  rotor audit verify                          # the repository you are in
  rotor audit verify /var/lib/rotor/repo --format json     # the daemon's clone, for a script
  rotor audit verify --anchor 1042:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
`;

const CONFIG_FILE = 'rotor.yaml';
/** The pattern of audit.dir in schemas/config.schema.json: a relative path without "." or ".." segments. */
const AUDIT_DIR = /^(?!(?:.*\/)?\.\.?(?:\/|$))[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;

/** rotor.yaml cannot tell where the audit log is (too large, or an audit.dir outside the repository). */
class ReadError extends RotorError {
  constructor(code: 'FILE_TOO_LARGE' | 'AUDIT_DIR_INVALID', message: string) {
    super(code, message, { retry: NEVER });
  }
}

export function parseAnchor(text: string): Anchor {
  const m = /^(\d{1,15}):([0-9a-fA-F]{64})$/.exec(text.trim());
  if (!m || Number(m[1]) < 1)
    throw new UsageError(
      `--anchor must be SEQ:HASH, a positive entry number and its full 64-digit hash, not "${text.slice(0, 100)}"`,
    );
  return { seq: Number(m[1]), hash: m[2]!.toLowerCase() };
}

/**
 * The audit directory a repository's rotor.yaml names (audit.dir of its kind: Config), or the default
 * when there is no rotor.yaml, no Config or no audit.dir. Only that file is read: the log can be
 * checked even when other declarations are broken.
 */
export async function auditDirOf(repo: string): Promise<{ dir: string; branch?: string; warning?: string }> {
  const file = path.join(repo, CONFIG_FILE);
  let text: string;
  try {
    const st = await stat(file);
    if (st.size > LIMITS.fileBytes)
      throw new ReadError('FILE_TOO_LARGE', `${CONFIG_FILE} is larger than ${LIMITS.fileBytes / 1024 / 1024} MiB`);
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return { dir: DEFAULT_AUDIT_DIR };
    throw e;
  }
  let config: Record<string, unknown> | undefined;
  try {
    const docs = parseAllDocuments(text, { uniqueKeys: false });
    for (const d of docs) {
      if (d.errors.length > 0)
        return {
          dir: DEFAULT_AUDIT_DIR,
          warning: `${CONFIG_FILE} does not parse (run rotor validate); using "${DEFAULT_AUDIT_DIR}"`,
        };
      const data: unknown = d.toJS({ maxAliasCount: LIMITS.aliasCount });
      if (typeof data === 'object' && data !== null && (data as Record<string, unknown>).kind === 'Config') {
        config = data as Record<string, unknown>;
        break;
      }
    }
  } catch {
    return {
      dir: DEFAULT_AUDIT_DIR,
      warning: `${CONFIG_FILE} does not parse (run rotor validate); using "${DEFAULT_AUDIT_DIR}"`,
    };
  }
  const audit = config?.audit;
  const dir = typeof audit === 'object' && audit !== null ? (audit as Record<string, unknown>).dir : undefined;
  const branchRaw = typeof audit === 'object' && audit !== null ? (audit as Record<string, unknown>).branch : undefined;
  let branch: string | undefined;
  if (branchRaw !== undefined) {
    try {
      if (typeof branchRaw !== 'string' || branchRaw.length > 200) throw new Error('not a branch name');
      branch = checkBranch(branchRaw);
    } catch {
      throw new ReadError(
        'AUDIT_DIR_INVALID',
        `${CONFIG_FILE}: audit.branch ${typeof branchRaw === 'string' ? jsonString(branchRaw.slice(0, 200)) : typeof branchRaw} is not a branch name (run rotor validate)`,
      );
    }
  }
  const withBranch = branch !== undefined ? { branch } : {};
  if (dir === undefined) return { dir: DEFAULT_AUDIT_DIR, ...withBranch };
  if (typeof dir !== 'string' || dir.length > 200 || !AUDIT_DIR.test(dir)) {
    throw new ReadError(
      'AUDIT_DIR_INVALID',
      `${CONFIG_FILE}: audit.dir ${typeof dir === 'string' ? jsonString(dir.slice(0, 200)) : typeof dir} is not a relative path inside the repository (run rotor validate)`,
    );
  }
  return { dir, ...withBranch };
}

/**
 * The audit log as a branch of the repository DIR holds it (audit.branch): origin/BRANCH, else the
 * local BRANCH. Its files (directly under the audit directory) are copied into a fresh directory,
 * which the verifier then reads; undefined when the repository has neither ref.
 */
async function logFromBranch(
  repo: string,
  branch: string,
  auditDir: string,
): Promise<{ dir: string; ref: string; cleanup: () => Promise<void> } | undefined> {
  let ref: string | undefined;
  for (const candidate of [`refs/remotes/origin/${branch}`, `refs/heads/${branch}`]) {
    const r = await runGit(repo, ['rev-parse', '--verify', '--quiet', `${candidate}^{commit}`]);
    if (r.exitCode === 0) {
      ref = candidate;
      break;
    }
  }
  if (ref === undefined) return undefined;
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'rotor-audit-verify-'));
  const cleanup = () => rm(tmp, { recursive: true, force: true });
  try {
    const target = path.join(tmp, ...auditDir.split('/'));
    await mkdir(target, { recursive: true });
    const listing = await git(repo, ['--literal-pathspecs', 'ls-tree', '-z', ref, '--', `${auditDir}/`]);
    for (const line of listing.toString('utf8').split('\0').filter(Boolean)) {
      const tab = line.indexOf('\t');
      const [, type, id] = line.slice(0, tab).split(' ');
      const name = line.slice(tab + 1).slice(auditDir.length + 1);
      // Plain files with plain names only: the verifier then reports a name that is not YYYY-MM.jsonl.
      if (type !== 'blob' || !/^[\w.-]{1,64}$/.test(name) || name.startsWith('.')) continue;
      await writeFile(path.join(target, name), await git(repo, ['cat-file', 'blob', id!]));
    }
    return { dir: target, ref: ref.replace(/^refs\/(remotes\/|heads\/)/, ''), cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** Where a repository's audit log is read from (a copy of its files when it is on its own branch). */
export type AuditLogPlace =
  | { shown: string; logDir: string; branch?: string; cleanup: () => Promise<void> }
  | { missing: string };

/**
 * The audit log of the repository `repoArg` (relative to the working directory): the directory that
 * its rotor.yaml names, or, with audit.branch, a copy of that branch's files (cleanup removes it);
 * `missing` when the repository lacks that branch. A warning about rotor.yaml goes to stderr.
 */
export async function auditLogOf(repoArg: string, io: Io): Promise<AuditLogPlace> {
  const repo = path.resolve(io.cwd, repoArg);
  const st = await stat(repo).catch(() => undefined);
  if (!st?.isDirectory()) throw new UsageError(`${repoArg} is not a directory`);
  const { dir: auditDir, branch, warning } = await auditDirOf(repo);
  if (warning) io.stderr(`rotor audit: ${warning}\n`);
  if (branch === undefined)
    return { shown: path.join(repoArg, auditDir), logDir: path.join(repo, auditDir), cleanup: async () => {} };
  // The log is on its own branch (audit.branch): read it from there, not from this checkout.
  const fromBranch = await logFromBranch(repo, branch, auditDir);
  if (!fromBranch)
    return {
      missing: `the audit log is on branch ${branch} (audit.branch in rotor.yaml), which ${repoArg} does not have: git fetch origin ${branch}`,
    };
  return { shown: `${fromBranch.ref}:${auditDir}`, logDir: fromBranch.dir, branch, cleanup: fromBranch.cleanup };
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

export async function auditCommand(argv: readonly string[], io: Io): Promise<number> {
  const { flags, positionals } = parse(argv, AUDIT_FLAGS, io.env, 2);
  const sub = positionals[0];
  if (flags.help) {
    io.stdout(AUDIT_HELP);
    return EXIT.ok;
  }
  if (sub === undefined) throw new UsageError('missing subcommand: use "rotor audit verify [DIR]"');
  if (sub !== 'verify') throw new UsageError(`unknown subcommand "${sub}": use "rotor audit verify [DIR]"`);
  const anchor = flags.anchor !== undefined ? parseAnchor(flags.anchor) : undefined;

  const repoArg = positionals[1] ?? '.';
  const found = await auditLogOf(repoArg, io);
  if ('missing' in found) {
    io.stderr(`rotor audit: ${found.missing} [AUDIT_BRANCH_MISSING]\n`);
    return EXIT.failure;
  }
  const { shown, logDir, branch, cleanup } = found;
  const v = await verifyAuditDir(logDir, {
    ...(anchor ? { anchor } : {}),
    label: (name) => (branch !== undefined ? `${shown}/${name}` : path.join(shown, name)),
  }).finally(cleanup);
  let r = v.result;
  if (r.ok && r.entries === 0)
    r = {
      ok: false,
      file: shown,
      line: 0,
      code: 'AUDIT_EMPTY',
      message: `no audit log here: no YYYY-MM.jsonl file in ${shown} (the daemon writes the first with its first entry; audit.dir in rotor.yaml names the directory)`,
    };
  if (flags.format === 'json') {
    io.stdout(
      `${JSON.stringify(
        r.ok
          ? { ok: true, dir: shown, files: r.files, entries: r.entries, head: r.head }
          : {
              ok: false,
              dir: shown,
              file: r.file || shown,
              line: r.line,
              ...(r.seq !== undefined ? { seq: r.seq } : {}),
              code: r.code,
              message: r.message,
            },
        null,
        2,
      )}\n`,
    );
  } else if (r.ok) {
    io.stdout(
      `${shown}: ${plural(r.entries, 'entry', 'entries')} in ${plural(r.files, 'file', 'files')}, chain intact, head ${r.head.seq}:${r.head.hash}${anchor ? `, anchor ${anchor.seq} matches` : ''}\n`,
    );
  } else {
    io.stdout(`${r.file || shown}${r.line ? `:${r.line}` : ''}: error: ${r.message} [${r.code}]\n`);
  }
  return r.ok ? EXIT.ok : EXIT.invalid;
}
