/**
 * The signature check of `rotor audit verify --allowed-signers` (src/git/verify-signatures.ts) on
 * hand-made commits in a real repository: what it cannot check, what is too large, the limits, and
 * the allowed-signers options (namespaces, validity, cert-authority).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { parseAllowedSigners } from '../src/git/allowed-signers.js';
import { addSignature } from '../src/git/commit-object.js';
import { signCommits } from '../src/git/sign-commits.js';
import { sshPublicKeyLine, sshsigSign } from '../src/git/sshsig.js';
import { SignatureCheckError, verifyAuditSignatures } from '../src/git/verify-signatures.js';
import { commitAll, git, gitInit, tempDir } from './helpers.js';
import { throwawayKey } from './lib/openssh-key.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

/** A repository with one commit that adds audit/2026-11.jsonl, signed with `key`. */
async function repoWithSignedCommit(t: T) {
  const dir = path.join(tempDir(t), 'repo');
  mkdirSync(path.join(dir, 'audit'), { recursive: true });
  gitInit(dir);
  writeFileSync(path.join(dir, 'rotor.yaml'), 'kind: Config\n');
  commitAll(dir, 'declarations'); // does not touch audit/
  writeFileSync(path.join(dir, 'audit', '2026-11.jsonl'), '{"seq":1}\n');
  const unsigned = commitAll(dir, 'rotor: audit entries');
  const key = throwawayKey();
  const [signed] = await signCommits(dir, [unsigned], (p) => sshsigSign(p, key));
  git(dir, 'update-ref', 'refs/heads/main', signed!);
  const allowed = parseAllowedSigners(`rotor@localhost ${sshPublicKeyLine(key, '')}\n`);
  const check = (o: Partial<Parameters<typeof verifyAuditSignatures>[0]> = {}) =>
    verifyAuditSignatures({ repo: dir, ref: 'HEAD', auditDir: 'audit', allowed, allowedFile: 'allowed', ...o });
  /** Replaces HEAD by `object` (a commit), returns its id. */
  const replaceHead = (object: Buffer) => {
    const id = execFileSync('git', ['hash-object', '-t', 'commit', '-w', '--literally', '--stdin'], {
      cwd: dir,
      input: object,
    })
      .toString()
      .trim();
    git(dir, 'update-ref', 'refs/heads/main', id);
    return id;
  };
  const payload = execFileSync('git', ['cat-file', 'commit', unsigned], { cwd: dir });
  return { dir, key, allowed, check, replaceHead, payload, signed: signed! };
}

t.test('a good history passes; commits that do not touch the audit directory are not asked', async (t) => {
  const { check } = await repoWithSignedCommit(t);
  t.same(await check(), { ok: true, commits: 1 });
});

t.test('signatures rotor cannot check, and ones too large', async (t) => {
  const { check, replaceHead, payload } = await repoWithSignedCommit(t);
  const pgp = '-----BEGIN PGP SIGNATURE-----\n\niQEzBAABCAAdFiEE\n-----END PGP SIGNATURE-----\n';
  let id = replaceHead(addSignature(payload, pgp, 'sha1'));
  t.match(await check(), {
    ok: false,
    commit: id,
    code: 'AUDIT_SIGNATURE_UNSUPPORTED',
    message: /not with an SSH key/,
  });
  const huge = `-----BEGIN SSH SIGNATURE-----\n${'QUFB\n'.repeat(2000)}-----END SSH SIGNATURE-----\n`;
  id = replaceHead(addSignature(payload, huge, 'sha1'));
  t.match(await check(), { ok: false, commit: id, code: 'AUDIT_SIGNATURE_INVALID', message: /at most 8192/ });
  const garbage = '-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n';
  id = replaceHead(addSignature(payload, garbage, 'sha1'));
  t.match(await check(), { ok: false, commit: id, code: 'AUDIT_SIGNATURE_INVALID', message: /malformed/ });
  const big = Buffer.concat([payload, Buffer.alloc(1024 * 1024 + 10, 0x61)]);
  id = replaceHead(big);
  t.match(await check(), { ok: false, commit: id, code: 'AUDIT_SIGNATURE_INVALID', message: /at most 1048576/ });
});

t.test('an RSA signature made by git commit -S is named unsupported', async (t) => {
  const { dir, check } = await repoWithSignedCommit(t);
  const keyFile = path.join(path.dirname(dir), 'rsa');
  execFileSync('/usr/bin/ssh-keygen', ['-q', '-t', 'rsa', '-b', '2048', '-N', '', '-f', keyFile]);
  writeFileSync(path.join(dir, 'audit', '2026-11.jsonl'), '{"seq":1}\n{"seq":2}\n');
  git(dir, 'add', '-A');
  git(dir, '-c', 'gpg.format=ssh', '-c', `user.signingKey=${keyFile}`, 'commit', '-q', '-S', '-m', 'by a person');
  t.match(await check(), {
    ok: false,
    commit: git(dir, 'rev-parse', 'HEAD'),
    code: 'AUDIT_SIGNATURE_UNSUPPORTED',
    message: /ssh-rsa key; rotor checks Ed25519/,
  });
});

t.test("the allowed-signers file's options: namespaces, validity, cert-authority", async (t) => {
  const { check, key } = await repoWithSignedCommit(t);
  const line = sshPublicKeyLine(key, '');
  const with_ = (options: string) => check({ allowed: parseAllowedSigners(`p ${options} ${line}\n`) });
  t.match(await with_('namespaces="file"'), {
    ok: false,
    code: 'AUDIT_SIGNER_UNKNOWN',
    message: /not for the namespace "git"/,
  });
  t.match(await with_('namespaces="file,g*"'), { ok: true });
  t.match(await with_('namespaces="*,!git"'), { ok: false, code: 'AUDIT_SIGNER_UNKNOWN' });
  t.match(await with_('valid-after="29990101"'), {
    ok: false,
    code: 'AUDIT_SIGNER_UNKNOWN',
    message: /at the commit's time/,
  });
  t.match(await with_('valid-before="20000101Z"'), { ok: false, code: 'AUDIT_SIGNER_UNKNOWN' });
  t.match(await with_('valid-after="20000101Z",valid-before="29991231Z"'), { ok: true });
  t.match(await with_('cert-authority'), { ok: false, code: 'AUDIT_SIGNER_UNKNOWN', message: /does not list/ });
});

t.test('the limits: the number of commits, a shallow clone, a directory that is no repository', async (t) => {
  const { dir, check, key } = await repoWithSignedCommit(t);
  for (let i = 2; i <= 3; i++) {
    writeFileSync(path.join(dir, 'audit', '2026-11.jsonl'), `{"seq":${i}}\n`);
    const id = commitAll(dir, `entry ${i}`);
    const [s] = await signCommits(dir, [id], (p) => sshsigSign(p, key));
    git(dir, 'update-ref', 'refs/heads/main', s!);
  }
  t.same(await check(), { ok: true, commits: 3 });
  await t.rejects(check({ maxCommits: 2 }), {
    code: 'AUDIT_SIGNATURE_LIMIT',
    message: /more than 2 commits .*--since/,
  });
  t.same(await check({ maxCommits: 2, since: git(dir, 'rev-parse', 'HEAD~2') }), { ok: true, commits: 2 });
  const shallow = path.join(path.dirname(dir), 'shallow');
  execFileSync('git', ['clone', '-q', '--depth=1', `file://${dir}`, shallow]);
  await t.rejects(check({ repo: shallow }), SignatureCheckError);
  await t.rejects(check({ repo: shallow }), { code: 'AUDIT_HISTORY_MISSING', message: /shallow/ });
  const plain = tempDir(t);
  await t.rejects(check({ repo: plain }), { code: 'AUDIT_HISTORY_MISSING', message: /not a git repository/ });
});

t.test('what a commit says is printed without control characters', async (t) => {
  const { check, replaceHead, payload } = await repoWithSignedCommit(t);
  const forged = Buffer.from(
    payload.toString('latin1').replace(/^committer [^<]*</m, 'committer \x1b[2Jevil\x07 <'),
    'latin1',
  );
  const id = replaceHead(forged);
  const r = await check();
  t.match(r, { ok: false, commit: id, code: 'AUDIT_COMMIT_UNSIGNED', message: /committer \?\[2Jevil\? </ });
  t.notOk(/[\x00-\x1f]/.test((r as { message: string }).message), 'no control character in the message');
});
