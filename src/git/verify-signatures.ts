/**
 * `rotor audit verify --allowed-signers FILE`: every commit that touches the audit directory, in the
 * history of a ref (after `since`, when given), must carry an SSH signature (src/git/sshsig.ts) in the
 * namespace "git", that verifies over the commit, made by a key of the allowed-signers file
 * (src/git/allowed-signers.ts) allowed for that namespace at the commit's time. Checked here, in this
 * process, oldest commit first; the first that fails is reported with a stable code:
 *
 *   AUDIT_COMMIT_UNSIGNED        no signature
 *   AUDIT_SIGNATURE_INVALID      a signature that does not parse, is for another namespace, or does not
 *                                match the commit (the commit was changed after it was signed)
 *   AUDIT_SIGNATURE_UNSUPPORTED  a key type other than Ed25519 (git verify-commit checks those)
 *   AUDIT_SIGNER_UNKNOWN         a good signature by a key the file does not allow
 *
 * Bounded: at most MAX_SIGNED_COMMITS commits (more is AUDIT_SIGNATURE_LIMIT: pass `since`), commit
 * objects of at most 1 MiB, signatures of at most 8 KiB; the objects are streamed from one
 * `git cat-file --batch` and git is stopped at the first failure.
 */
import { RotorError } from '../errors.js';
import type { AllowedSigner } from './allowed-signers.js';
import { matchPatternList } from './allowed-signers.js';
import { committerOf, committerTime, type ObjectFormat, splitSignature } from './commit-object.js';
import { GitError, runGit, spawnGit } from './run.js';
import {
  MAX_ARMORED_SIGNATURE,
  parseSshsig,
  SSHSIG_BEGIN,
  SSHSIG_NAMESPACE_GIT,
  SshsigError,
  shown,
  sshFingerprint,
  sshsigProblem,
} from './sshsig.js';

/** The most commits one verification checks (about 2 minutes of work on a slow machine). */
export const MAX_SIGNED_COMMITS = 100_000;
const MAX_COMMIT = 1024 * 1024;
/** The check reads the whole history of the audit directory: a long time limit, not the local one. */
const TIMEOUT_MS = 15 * 60_000;

export type SignatureCode =
  | 'AUDIT_COMMIT_UNSIGNED'
  | 'AUDIT_SIGNATURE_INVALID'
  | 'AUDIT_SIGNATURE_UNSUPPORTED'
  | 'AUDIT_SIGNER_UNKNOWN';

export type SignatureResult =
  | { readonly ok: true; readonly commits: number }
  | { readonly ok: false; readonly commit: string; readonly code: SignatureCode; readonly message: string };

/** The history cannot be checked: not a git repository, a shallow clone, too many commits. */
export class SignatureCheckError extends RotorError {
  constructor(code: 'AUDIT_HISTORY_MISSING' | 'AUDIT_SIGNATURE_LIMIT', message: string, cause?: unknown) {
    super(code, message, cause !== undefined ? { cause } : {});
  }
}

export interface VerifySignaturesOptions {
  /** A directory of the repository. */
  readonly repo: string;
  /** The commit whose history is checked (HEAD, refs/remotes/origin/BRANCH...). */
  readonly ref: string;
  readonly auditDir: string;
  /** Only commits after this one (`since..ref`). */
  readonly since?: string;
  readonly allowed: readonly AllowedSigner[];
  /** Where the allowed signers came from, for messages. */
  readonly allowedFile: string;
  readonly maxCommits?: number;
}

async function gitLines(repo: string, args: string[], maxBuffer = 64 * 1024 * 1024): Promise<string[]> {
  const r = await runGit(repo, args, { maxBuffer, timeoutMs: TIMEOUT_MS });
  if (r.exitCode !== 0) throw new GitError(args, r.exitCode, r.stderr, r.killed);
  return r.stdout.toString('utf8').split('\n').filter(Boolean);
}

/** The commit `rev` names in `repo`, or undefined. */
export async function resolveCommit(repo: string, rev: string): Promise<string | undefined> {
  const r = await runGit(repo, ['rev-parse', '--verify', '--quiet', '--end-of-options', `${rev}^{commit}`]);
  return r.exitCode === 0 ? r.stdout.toString('utf8').trim() : undefined;
}

/** Checks the signatures of the commits that touch `auditDir` in the history of `ref`. */
export async function verifyAuditSignatures(o: VerifySignaturesOptions): Promise<SignatureResult> {
  const max = o.maxCommits ?? MAX_SIGNED_COMMITS;
  const facts = await runGit(o.repo, ['rev-parse', '--show-object-format', '--is-shallow-repository']);
  if (facts.exitCode !== 0)
    throw new SignatureCheckError(
      'AUDIT_HISTORY_MISSING',
      `${o.repo} is not a git repository: signatures are checked in a clone (git clone, then rotor audit verify in it)`,
    );
  const [format = 'sha1', shallow] = facts.stdout.toString('utf8').trim().split('\n');
  if (shallow === 'true')
    throw new SignatureCheckError(
      'AUDIT_HISTORY_MISSING',
      `${o.repo} is a shallow clone: the commits before its cut cannot be checked. Fetch the whole history (git fetch --unshallow; in CI, fetch-depth: 0)`,
    );
  const range = o.since ? `${o.since}..${o.ref}` : o.ref;
  const ids = await gitLines(
    o.repo,
    [
      '--literal-pathspecs',
      'rev-list',
      '--reverse',
      `--max-count=${max + 1}`,
      '--end-of-options',
      range,
      '--',
      `${o.auditDir}/`,
    ],
    (max + 1) * 66,
  );
  if (ids.length > max)
    throw new SignatureCheckError(
      'AUDIT_SIGNATURE_LIMIT',
      `more than ${max} commits touch ${o.auditDir}/ in ${range}: check them in parts with --since COMMIT (a commit checked before)`,
    );
  if (ids.length === 0) return { ok: true, commits: 0 };
  let failure: SignatureResult | undefined;
  let checked = 0;
  let pending: Buffer = Buffer.alloc(0);
  let want: { id: string; size: number } | undefined;
  const check = (id: string, raw: Buffer): SignatureResult | undefined =>
    checkCommit(id, raw, format === 'sha256' ? 'sha256' : 'sha1', o);
  const r = await spawnGit(o.repo, ['cat-file', '--batch'], {
    input: ids.map((id) => `${id}\n`).join(''),
    timeoutMs: TIMEOUT_MS,
    onStdout: (chunk) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      for (;;) {
        if (!want) {
          const nl = pending.indexOf(0x0a);
          if (nl < 0) {
            if (pending.length > 200) failure = bad(ids[checked]!, 'git printed an unexpected header');
            return failure === undefined;
          }
          const head = pending.subarray(0, nl).toString('utf8');
          const m = /^([0-9a-f]{40,64}) commit (\d{1,12})$/.exec(head);
          if (!m || m[1] !== ids[checked]) {
            failure = bad(ids[checked]!, `git could not read it (${shown(head)})`);
            return false;
          }
          if (Number(m[2]) > MAX_COMMIT) {
            failure = bad(m[1]!, `the commit object is ${m[2]} bytes long (at most ${MAX_COMMIT} are checked)`);
            return false;
          }
          want = { id: m[1]!, size: Number(m[2]) };
          pending = pending.subarray(nl + 1);
        }
        if (pending.length < want.size + 1) return true;
        failure = check(want.id, Buffer.from(pending.subarray(0, want.size)));
        if (failure) return false;
        pending = pending.subarray(want.size + 1);
        want = undefined;
        checked++;
      }
    },
  });
  if (failure) return failure;
  if (r.exitCode !== 0 || checked !== ids.length)
    throw new GitError(
      ['cat-file', '--batch'],
      r.exitCode,
      r.stderr || `read ${checked} of ${ids.length} commits`,
      r.killed,
    );
  return { ok: true, commits: checked };
}

function bad(commit: string, why: string): SignatureResult {
  return {
    ok: false,
    commit,
    code: 'AUDIT_SIGNATURE_INVALID',
    message: `commit ${commit} cannot be checked: ${why}`,
  };
}

function checkCommit(
  id: string,
  raw: Buffer,
  format: ObjectFormat,
  o: VerifySignaturesOptions,
): SignatureResult | undefined {
  const fail = (code: SignatureCode, message: string): SignatureResult => ({ ok: false, commit: id, code, message });
  const who = committerOf(raw);
  const { payload, signature } = splitSignature(raw, format);
  if (signature === undefined)
    return fail(
      'AUDIT_COMMIT_UNSIGNED',
      `commit ${id} (committer ${who}) changes ${o.auditDir}/ and is not signed. Commits made before audit.sign was turned on are not signed: check from the last of them with --since COMMIT. Otherwise someone else changed the audit log, or a daemon without audit.sign: find out who (git show ${id.slice(0, 12)})`,
    );
  if (signature.length > MAX_ARMORED_SIGNATURE)
    return fail(
      'AUDIT_SIGNATURE_INVALID',
      `commit ${id} (committer ${who}) has a signature of ${signature.length} bytes (at most ${MAX_ARMORED_SIGNATURE})`,
    );
  if (!signature.startsWith(SSHSIG_BEGIN))
    return fail(
      'AUDIT_SIGNATURE_UNSUPPORTED',
      `commit ${id} (committer ${who}) is signed, but not with an SSH key (an OpenPGP or X.509 signature?): rotor checks SSH signatures (gpg.format=ssh); check it with git verify-commit`,
    );
  let parsed: ReturnType<typeof parseSshsig>;
  try {
    parsed = parseSshsig(signature);
  } catch (e) {
    if (!(e instanceof SshsigError)) throw e;
    return fail('AUDIT_SIGNATURE_INVALID', `commit ${id} (committer ${who}) has a malformed signature: ${e.message}`);
  }
  if (parsed.keyType !== 'ssh-ed25519')
    return fail(
      'AUDIT_SIGNATURE_UNSUPPORTED',
      `commit ${id} (committer ${who}) is signed with a ${shown(parsed.keyType)} key; rotor checks Ed25519 (ssh-ed25519) signatures, as the daemon makes them: check it with git verify-commit`,
    );
  const problem = sshsigProblem(parsed, payload, SSHSIG_NAMESPACE_GIT);
  if (problem)
    return fail(
      'AUDIT_SIGNATURE_INVALID',
      `commit ${id} (committer ${who}) has a signature that does not hold: ${problem}. The commit was changed after it was signed, or the signature was made for something else: do not trust this commit or what follows it`,
    );
  const fingerprint = sshFingerprint(parsed.publicKey);
  const listed = o.allowed.filter((a) => a.key.equals(parsed.publicKey) && !a.certAuthority);
  if (listed.length === 0)
    return fail(
      'AUDIT_SIGNER_UNKNOWN',
      `commit ${id} (committer ${who}) is signed by the key ${fingerprint}, which ${o.allowedFile} does not list. If it is the daemon's key, add it (a principal, then the line "rotor keygen DATA_DIR" prints); otherwise someone else signed a change of the audit log: find out who`,
    );
  const when = committerTime(raw);
  const allowed = listed.find(
    (a) =>
      (a.namespaces === undefined || matchPatternList(a.namespaces, SSHSIG_NAMESPACE_GIT)) &&
      (a.validAfter === undefined || (when !== undefined && when >= a.validAfter)) &&
      (a.validBefore === undefined || (when !== undefined && when <= a.validBefore)),
  );
  if (!allowed)
    return fail(
      'AUDIT_SIGNER_UNKNOWN',
      `commit ${id} (committer ${who}) is signed by the key ${fingerprint}, which ${o.allowedFile} lists (line ${listed.map((a) => a.line).join(', ')}) but not for the namespace "git" at the commit's time (namespaces, valid-after, valid-before)`,
    );
  return undefined;
}
