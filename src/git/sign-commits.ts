/**
 * Signing the daemon's audit commits (the Config's `audit.sign`). git makes each commit unsigned
 * (`git commit`, `git fast-import`, `git rebase`, `git commit-tree`: rotor's git calls never sign,
 * src/git/run.ts), and signCommits() then writes the signed commit beside it: the same object with a
 * `gpgsig` header holding an SSH signature (src/git/sshsig.ts) over the unsigned object, which is
 * what `git commit -S` makes with `gpg.format=ssh`. The caller moves its ref to the signed commit,
 * whose tree, parents (signed in turn), author, committer and message are those of the unsigned one.
 *
 * The signature is made in this process with the daemon's Ed25519 key: the key is in no file git or
 * ssh-keygen reads, on no command line, in no environment. What git is given is the signed commit
 * objects (public), written with one `git hash-object --stdin-paths` whatever their number, from
 * files in a private directory inside the repository's git directory that is removed afterwards.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { addSignature, commitId, type ObjectFormat, parentsOf, splitSignature, withParents } from './commit-object.js';
import { GitError, LOCAL_TIMEOUT_MS, runGit } from './run.js';

/** Makes the armored SSH signature of a commit object (the daemon's key, in-process). */
export type CommitSigner = (payload: Buffer) => string;

/** A commit object larger than this is not read (rotor's are a few hundred bytes; messages are at most 64 KiB). */
const MAX_COMMIT = 1024 * 1024;

async function must(cwd: string, args: string[], input?: string | Buffer): Promise<Buffer> {
  const r = await runGit(cwd, args, { timeoutMs: LOCAL_TIMEOUT_MS, ...(input !== undefined ? { input } : {}) });
  if (r.exitCode !== 0) throw new GitError(args, r.exitCode, r.stderr, r.killed);
  return r.stdout;
}

/** The repository's object format and its git directory (asked once per directory: one git call less when it counts, between a fetch and a push). */
const facts = new Map<string, { format: ObjectFormat; gitDir: string }>();
async function repoFacts(cwd: string): Promise<{ format: ObjectFormat; gitDir: string }> {
  const known = facts.get(cwd);
  if (known) return known;
  const [format = '', gitDir = ''] = (await must(cwd, ['rev-parse', '--show-object-format', '--absolute-git-dir']))
    .toString('utf8')
    .trim()
    .split('\n');
  const found = { format: format === 'sha256' ? ('sha256' as const) : ('sha1' as const), gitDir };
  if (facts.size > 64) facts.clear();
  facts.set(cwd, found);
  return found;
}

/** The raw objects of `ids` (commits), in order, with one `git cat-file --batch`. */
export async function readCommitObjects(cwd: string, ids: readonly string[]): Promise<Buffer[]> {
  const out = await must(cwd, ['cat-file', '--batch'], ids.map((id) => `${id}\n`).join(''));
  const objects: Buffer[] = [];
  let at = 0;
  for (const id of ids) {
    const nl = out.indexOf(0x0a, at);
    const head = out.subarray(at, nl < 0 ? out.length : nl).toString('utf8');
    const m = /^([0-9a-f]{40,64}) commit (\d{1,9})$/.exec(head);
    if (nl < 0 || !m || Number(m[2]) > MAX_COMMIT)
      throw new GitError(['cat-file', '--batch'], 0, `${id} is not a commit of at most 1 MiB: ${head.slice(0, 200)}`);
    const size = Number(m[2]);
    objects.push(out.subarray(nl + 1, nl + 1 + size));
    at = nl + 1 + size + 1;
  }
  return objects;
}

/**
 * Signs the commits `ids`, oldest first: each becomes the same commit with the daemon's signature,
 * and a parent that is one of the earlier `ids` becomes that one's signed commit. With `onlyUnsigned`,
 * a commit that has a signature already and whose parents are unchanged is kept as it is. Returns the
 * new ids (in order; equal to the old where nothing changed). Writes the objects; moves no ref.
 */
export async function signCommits(
  cwd: string,
  ids: readonly string[],
  signer: CommitSigner,
  opts: { onlyUnsigned?: boolean } = {},
): Promise<string[]> {
  if (ids.length === 0) return [];
  const { format, gitDir } = await repoFacts(cwd);
  const objects = await readCommitObjects(cwd, ids);
  const renamed = new Map<string, string>();
  const out: string[] = [];
  const written: Buffer[] = [];
  ids.forEach((id, i) => {
    const raw = objects[i]!;
    const moved = parentsOf(raw).some((p) => renamed.has(p));
    const split = splitSignature(raw, format);
    if (opts.onlyUnsigned && split.signature !== undefined && !moved) {
      out.push(id);
      return;
    }
    const payload = moved ? withParents(split.payload, renamed) : split.payload;
    const signed = addSignature(payload, signer(payload), format);
    const signedId = commitId(format, signed);
    renamed.set(id, signedId);
    out.push(signedId);
    written.push(signed);
  });
  if (written.length > 0) await writeObjects(cwd, gitDir, format, written);
  return out;
}

/** Writes commit objects into the repository with one `git hash-object`, checking the ids git gives them. */
async function writeObjects(cwd: string, gitDir: string, format: ObjectFormat, objects: Buffer[]): Promise<void> {
  const dir = path.join(gitDir, `rotor-sign-${randomBytes(6).toString('hex')}`);
  await mkdir(dir, { mode: 0o700 });
  try {
    const files = objects.map((_, i) => path.join(dir, `${i}`));
    await Promise.all(objects.map((o, i) => writeFile(files[i]!, o, { mode: 0o600, flag: 'wx' })));
    const args = ['hash-object', '-t', 'commit', '-w', '--no-filters', '--stdin-paths'];
    const ids = (await must(cwd, args, files.map((f) => `${f}\n`).join(''))).toString('utf8').trim().split('\n');
    const expected = objects.map((o) => commitId(format, o));
    if (ids.length !== expected.length || ids.some((id, i) => id !== expected[i]))
      throw new GitError(args, 0, `git wrote the signed commits as ${ids.join(' ')}, not ${expected.join(' ')}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
