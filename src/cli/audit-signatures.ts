/**
 * `rotor audit verify --allowed-signers FILE [--since COMMIT]`: the signature part, which audit.ts
 * runs once the chain is intact (src/git/verify-signatures.ts does the checking).
 */
import path from 'node:path';
import { type AllowedSigner, AllowedSignersError, readAllowedSigners } from '../git/allowed-signers.js';
import {
  resolveCommit,
  SignatureCheckError,
  type SignatureResult,
  verifyAuditSignatures,
} from '../git/verify-signatures.js';
import { UsageError } from '../util/args.js';

/** What the command was asked to check, read before the chain is: a bad FILE or COMMIT stops it at once. */
export interface SignatureRequest {
  readonly allowed: readonly AllowedSigner[];
  /** FILE as given, for messages. */
  readonly file: string;
  readonly since?: { readonly given: string; readonly id: string };
}

/** A problem that stops the check before it starts (exit 3): its message and code. */
export interface SignatureProblem {
  readonly message: string;
  readonly code: string;
}

export async function signatureRequest(
  cwd: string,
  repo: string,
  file: string | undefined,
  since: string | undefined,
): Promise<SignatureRequest | SignatureProblem | undefined> {
  if (file === undefined) {
    if (since !== undefined) throw new UsageError('--since COMMIT goes with --allowed-signers FILE');
    return undefined;
  }
  let allowed: AllowedSigner[];
  try {
    allowed = await readAllowedSigners(path.resolve(cwd, file));
  } catch (e) {
    if (!(e instanceof AllowedSignersError)) throw e;
    return { message: `${file}${e.line ? `:${e.line}` : ''}: ${e.message}`, code: e.code };
  }
  if (since === undefined) return { allowed, file };
  if (since.startsWith('-') || since.length > 256)
    throw new UsageError(`--since must name a commit, not "${since.slice(0, 100)}"`);
  const id = await resolveCommit(repo, since);
  if (!id) throw new UsageError(`--since ${since} is not a commit of ${repo} (git fetch first?)`);
  return { allowed, file, since: { given: since, id } };
}

export type SignatureOutcome =
  | (SignatureResult & { readonly range: string })
  | { readonly ok: false; readonly failure: SignatureProblem };

/** Checks the commits that change `auditDir` in the history of `ref`. */
export async function checkSignatures(
  req: SignatureRequest,
  repo: string,
  ref: string,
  auditDir: string,
): Promise<SignatureOutcome> {
  try {
    const r = await verifyAuditSignatures({
      repo,
      ref,
      auditDir,
      allowed: req.allowed,
      allowedFile: req.file,
      ...(req.since ? { since: req.since.id } : {}),
    });
    return { ...r, range: req.since ? `after ${req.since.given}` : 'in its whole history' };
  } catch (e) {
    if (!(e instanceof SignatureCheckError)) throw e;
    return { ok: false, failure: { message: e.message, code: e.code } };
  }
}
