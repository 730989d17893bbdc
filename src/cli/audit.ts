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
import { checkSignatures, signatureRequest } from './audit-signatures.js';
import type { Io } from './io.js';
import { EXIT } from './io.js';

export const AUDIT_FLAGS = {
  format: { type: 'string', arg: 'FORMAT', default: 'text', choices: ['text', 'json'], description: 'text or json' },
  anchor: {
    type: 'string',
    arg: 'SEQ:HASH',
    description: 'a head kept elsewhere: SEQ and the entry\'s full 64-digit hash, as --format json prints it ("head")',
  },
  'allowed-signers': {
    type: 'string',
    arg: 'FILE',
    description:
      "also check that every commit that changes the audit directory is signed (SSH signature, namespace git) by a key of FILE, an allowed-signers file as git's gpg.ssh.allowedSignersFile and ssh-keygen -Y verify read it",
  },
  since: {
    type: 'string',
    arg: 'COMMIT',
    description:
      'with --allowed-signers: check only the commits after COMMIT (the last one before audit.sign was turned on, or one checked before)',
  },
  help: HELP_FLAG,
} as const satisfies Flags;

export const AUDIT_HELP = `rotor audit: check the hash chain of a repository's audit log

Usage: rotor audit verify [DIR] [--format text|json] [--anchor SEQ:HASH]
                          [--allowed-signers FILE [--since COMMIT]]

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

Signed commits (audit: { sign: true }): with --allowed-signers FILE, verify also checks, once the
chain is intact, every commit that changes the audit directory in the history it read (HEAD, or the
audit branch), oldest first: each must carry an SSH signature for the namespace "git" that matches
the commit, made with an Ed25519 key that FILE lists (for that namespace, at the commit's time). FILE
is an allowed-signers file: one key a line, "PRINCIPALS [OPTIONS] ssh-ed25519 BASE64 [COMMENT]"; the
daemon's key is the "ssh-ed25519 ..." line that rotor keygen prints. The first commit that fails:
  - no signature                        AUDIT_COMMIT_UNSIGNED (commits from before audit.sign was
                                        turned on: check from the last of them, --since COMMIT)
  - a signature that does not match     AUDIT_SIGNATURE_INVALID (the commit was changed after it
    the commit, or is malformed, or     was signed: do not trust it)
    for another namespace
  - a good signature by a key FILE      AUDIT_SIGNER_UNKNOWN
    does not allow
  - an OpenPGP, X.509 or non-Ed25519    AUDIT_SIGNATURE_UNSUPPORTED (check those with git
    signature                           verify-commit)
It checks at most 100,000 commits (more: AUDIT_SIGNATURE_LIMIT, exit 3; use --since) and needs the
whole history (a shallow clone: AUDIT_HISTORY_MISSING, exit 3; in CI, fetch-depth: 0). A FILE that
does not parse is AUDIT_ALLOWED_SIGNERS_INVALID (exit 3). The signatures are checked in-process, the
same ones git verify-commit accepts with gpg.ssh.allowedSignersFile=FILE.

Options:
${optionsHelp(AUDIT_FLAGS)}
Output: "audit: N entries in F files, chain intact, head SEQ:HASH" (the full hash: keep it, and pass
it back as --anchor SEQ:HASH), or "FILE:LINE: error: MESSAGE [CODE]" for the first bad line, FILE
relative to the current directory. With --allowed-signers, a second line "signatures: N commits
changing DIR/ ..., all signed by keys of FILE", or "COMMIT: error: MESSAGE [CODE]" for the first
commit that fails. A directory without a log (no YYYY-MM.jsonl file) is not intact
but AUDIT_EMPTY: there is nothing to vouch for (the daemon writes the first file with its first
entry; check audit.dir).
Exit status: 0 intact, 1 broken or empty, 2 usage error, 3 the log, rotor.yaml, FILE or the history
cannot be read. With --allowed-signers, a commit not signed as FILE requires is 1 as well.

Examples:
  rotor audit verify                          # the repository you are in
  rotor audit verify --anchor 1042:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
  rotor audit verify --allowed-signers .github/allowed_signers --since 4f3934a   # signed since then
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
): Promise<{ dir: string; ref: string; fullRef: string; cleanup: () => Promise<void> } | undefined> {
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
    return { dir: target, ref: ref.replace(/^refs\/(remotes\/|heads\/)/, ''), fullRef: ref, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** Where a repository's audit log is read from (a copy of its files when it is on its own branch). */
export type AuditLogPlace =
  | {
      /** The repository (absolute) and the audit directory in it. */
      repo: string;
      auditDir: string;
      shown: string;
      logDir: string;
      branch?: string;
      /** The commits that hold the log: the checkout's HEAD, or the audit branch's ref. */
      history: string;
      cleanup: () => Promise<void>;
    }
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
    return {
      repo,
      auditDir,
      shown: path.join(repoArg, auditDir),
      logDir: path.join(repo, auditDir),
      history: 'HEAD',
      cleanup: async () => {},
    };
  // The log is on its own branch (audit.branch): read it from there, not from this checkout.
  const fromBranch = await logFromBranch(repo, branch, auditDir);
  if (!fromBranch)
    return {
      missing: `the audit log is on branch ${branch} (audit.branch in rotor.yaml), which ${repoArg} does not have: git fetch origin ${branch}`,
    };
  return {
    repo,
    auditDir,
    shown: `${fromBranch.ref}:${auditDir}`,
    logDir: fromBranch.dir,
    branch,
    history: fromBranch.fullRef,
    cleanup: fromBranch.cleanup,
  };
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
  const { repo, auditDir, shown, logDir, branch, history, cleanup } = found;
  const signing = await signatureRequest(io.cwd, repo, flags['allowed-signers'], flags.since);
  if (signing && 'code' in signing) {
    await cleanup();
    io.stderr(`rotor audit: ${signing.message} [${signing.code}]\n`);
    return EXIT.failure;
  }
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
  const sig = r.ok && signing ? await checkSignatures(signing, repo, history, auditDir) : undefined;
  const sigJson =
    sig === undefined
      ? {}
      : {
          signatures:
            'failure' in sig
              ? { ok: false, code: sig.failure.code, message: sig.failure.message }
              : sig.ok
                ? { ok: true, commits: sig.commits, range: sig.range, allowedSigners: signing!.file }
                : { ok: false, commit: sig.commit, code: sig.code, message: sig.message },
        };
  const ok = r.ok && (sig === undefined || sig.ok);
  if (flags.format === 'json') {
    io.stdout(
      `${JSON.stringify(
        r.ok
          ? { ok, dir: shown, files: r.files, entries: r.entries, head: r.head, ...sigJson }
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
    if (sig && 'failure' in sig) io.stderr(`rotor audit: ${sig.failure.message} [${sig.failure.code}]\n`);
    else if (sig?.ok)
      io.stdout(
        `signatures: ${plural(sig.commits, 'commit', 'commits')} changing ${auditDir}/ ${sig.range}, all signed by keys of ${signing!.file}\n`,
      );
    else if (sig) io.stdout(`${sig.commit}: error: ${sig.message} [${sig.code}]\n`);
  } else {
    io.stdout(`${r.file || shown}${r.line ? `:${r.line}` : ''}: error: ${r.message} [${r.code}]\n`);
  }
  if (sig && 'failure' in sig) return EXIT.failure;
  return ok ? EXIT.ok : EXIT.invalid;
}
