/**
 * The SSH signature format (src/git/sshsig.ts), commit signatures (src/git/commit-object.ts,
 * sign-commits.ts) and allowed-signers files (src/git/allowed-signers.ts), checked against OpenSSH's
 * ssh-keygen and git's own `git commit -S` / `git verify-commit` with throwaway keys.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { matchPatternList, parseAllowedSigners } from '../src/git/allowed-signers.js';
import { addSignature, committerTime, splitSignature } from '../src/git/commit-object.js';
import { signCommits } from '../src/git/sign-commits.js';
import {
  ed25519Blob,
  parseSshsig,
  SshsigError,
  sshFingerprint,
  sshPublicKeyLine,
  sshsigProblem,
  sshsigSign,
} from '../src/git/sshsig.js';
import { gitInit, tempDir } from './helpers.js';
import { throwawayKey, writeOpensshKey } from './lib/openssh-key.js';

const SSH_KEYGEN = '/usr/bin/ssh-keygen';
t.ok(existsSync(SSH_KEYGEN), 'ssh-keygen is installed (openssh-client; .ci/run installs it)');

/** git with a fixed identity and dates, and no user or system configuration. */
function git(cwd: string, args: string[], input?: string): string {
  const home = path.join(cwd, '..');
  return execFileSync('git', args, {
    cwd,
    input,
    encoding: 'utf8',
    env: {
      ...process.env,
      HOME: home,
      GIT_CONFIG_NOSYSTEM: '1',
      GIT_AUTHOR_NAME: 'rotor',
      GIT_AUTHOR_EMAIL: 'rotor@localhost',
      GIT_COMMITTER_NAME: 'rotor',
      GIT_COMMITTER_EMAIL: 'rotor@localhost',
      GIT_AUTHOR_DATE: '1764115200 +0000',
      GIT_COMMITTER_DATE: '1764115200 +0000',
    },
  }).trim();
}

t.test('an SSHSIG signature is byte for byte what ssh-keygen -Y sign makes, and ssh-keygen verifies it', async (t) => {
  const dir = tempDir(t);
  const key = throwawayKey();
  const keyFile = path.join(dir, 'key');
  writeOpensshKey(keyFile, key);
  t.equal(
    execFileSync(SSH_KEYGEN, ['-y', '-f', keyFile], { encoding: 'utf8' }).split(' ').slice(0, 2).join(' '),
    sshPublicKeyLine(key, ''),
    'the public key line is what ssh-keygen derives from the key',
  );
  const message = Buffer.from('tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\nhello, git\n');
  const msgFile = path.join(dir, 'msg');
  writeFileSync(msgFile, message);
  execFileSync(SSH_KEYGEN, ['-q', '-Y', 'sign', '-n', 'git', '-f', keyFile, msgFile], { stdio: 'ignore' });
  const theirs = readFileSync(`${msgFile}.sig`, 'utf8');
  const ours = sshsigSign(message, key);
  t.equal(ours, theirs, 'the same bytes (Ed25519 is deterministic)');

  // ssh-keygen -Y verify takes ours, with the printed line in an allowed-signers file
  const allowed = path.join(dir, 'allowed_signers');
  writeFileSync(allowed, `rotor@localhost ${sshPublicKeyLine(key, 'rotor-audit')}\n`);
  writeFileSync(path.join(dir, 'ours.sig'), ours);
  const verify = (sigFile: string, namespace = 'git') =>
    spawnSync(SSH_KEYGEN, ['-Y', 'verify', '-f', allowed, '-I', 'rotor@localhost', '-n', namespace, '-s', sigFile], {
      input: message,
      encoding: 'utf8',
    });
  const ok = verify(path.join(dir, 'ours.sig'));
  t.equal(ok.status, 0, ok.stderr);
  t.match(ok.stdout, /Good "git" signature for rotor@localhost with ED25519 key SHA256:/);
  t.match(ok.stdout, sshFingerprint(ed25519Blob(key)), 'the same fingerprint as ssh-keygen');
  t.not(verify(path.join(dir, 'ours.sig'), 'file').status, 0, 'another namespace is refused by ssh-keygen');

  // and ours verifies what ssh-keygen made, also with sha256
  t.equal(sshsigProblem(parseSshsig(theirs), message), undefined);
  const msg256 = path.join(dir, 'msg256');
  writeFileSync(msg256, message);
  execFileSync(SSH_KEYGEN, ['-q', '-Y', 'sign', '-n', 'git', '-O', 'hashalg=sha256', '-f', keyFile, msg256], {
    stdio: 'ignore',
  });
  const sha256 = parseSshsig(readFileSync(`${msg256}.sig`, 'utf8'));
  t.equal(sha256.hashAlgorithm, 'sha256');
  t.equal(sshsigProblem(sha256, message), undefined, 'a sha256 signature verifies');
});

t.test('a signature that does not hold is named, and a malformed one refused without a crash', async (t) => {
  const key = throwawayKey();
  const message = Buffer.from('the signed content\n');
  const sig = sshsigSign(message, key);
  t.equal(sshsigProblem(parseSshsig(sig), message), undefined);
  t.match(sshsigProblem(parseSshsig(sig), Buffer.from('the signed contenT\n')), /does not match/);
  t.match(sshsigProblem(parseSshsig(sshsigSign(message, key, 'file')), message), /namespace "file", not "git"/);
  const other = parseSshsig(sshsigSign(message, throwawayKey()));
  t.equal(sshsigProblem(other, message), undefined, 'another key makes a good signature...');
  t.not(other.publicKey.toString('hex'), ed25519Blob(key).toString('hex'), '...with another key in it');

  const body = sig.split('\n').slice(1, -2).join('');
  const raw = Buffer.from(body, 'base64');
  const armor = (b: Buffer) =>
    `-----BEGIN SSH SIGNATURE-----\n${b
      .toString('base64')
      .match(/.{1,70}/g)!
      .join('\n')}\n-----END SSH SIGNATURE-----\n`;
  const bad = [
    ['not armored', 'hello'],
    ['not base64', '-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n'],
    ['cut short', armor(raw.subarray(0, raw.length - 10))],
    ['trailing bytes', armor(Buffer.concat([raw, Buffer.from([0])]))],
    ['a length past the end', armor(Buffer.concat([raw.subarray(0, 10), Buffer.from([0xff, 0xff, 0xff, 0xff])]))],
    ['another magic', armor(Buffer.concat([Buffer.from('SSHSIH'), raw.subarray(6)]))],
    ['too long', `-----BEGIN SSH SIGNATURE-----\n${'A'.repeat(9000)}\n-----END SSH SIGNATURE-----\n`],
  ] as const;
  for (const [what, text] of bad) t.throws(() => parseSshsig(text), SshsigError, what);
  // a signature with its bytes flipped parses (or not) but never verifies
  for (let i = 0; i < raw.length; i += 7) {
    const flipped = Buffer.from(raw);
    flipped[i] = flipped[i]! ^ 0x01;
    let problem: string | undefined;
    try {
      problem = sshsigProblem(parseSshsig(armor(flipped)), message);
    } catch (e) {
      if (!(e instanceof SshsigError)) throw e;
      problem = e.message;
    }
    if (problem === undefined) t.fail(`byte ${i} flipped still verifies`);
  }
});

t.test('a commit signed in-process is the commit git commit -S makes, and git verify-commit takes it', async (t) => {
  const root = tempDir(t);
  const repo = path.join(root, 'repo');
  mkdirSync(repo);
  gitInit(repo);
  const key = throwawayKey();
  const keyFile = path.join(root, 'key');
  writeOpensshKey(keyFile, key);
  writeFileSync(path.join(repo, 'a.txt'), 'a\n');
  git(repo, ['add', 'a.txt']);
  git(repo, ['-c', 'gpg.format=ssh', '-c', `user.signingKey=${keyFile}`, 'commit', '-q', '-S', '-m', 'signed by git']);
  const bySsh = git(repo, ['rev-parse', 'HEAD']);
  const unsigned = git(repo, ['commit-tree', 'HEAD^{tree}', '-m', 'signed by git']);
  t.not(unsigned, bySsh);
  const [ours] = await signCommits(repo, [unsigned], (p) => sshsigSign(p, key));
  t.equal(ours, bySsh, 'the same commit object, byte for byte');

  const allowed = path.join(root, 'allowed_signers');
  writeFileSync(allowed, `rotor@localhost ${sshPublicKeyLine(key, 'rotor-audit')}\n`);
  const out = git(repo, ['-c', `gpg.ssh.allowedSignersFile=${allowed}`, 'verify-commit', '-v', ours!]);
  t.match(out, /tree /);
  const raw = execFileSync('git', ['cat-file', 'commit', ours!], { cwd: repo });
  const split = splitSignature(raw, 'sha1');
  t.equal(
    split.payload.toString(),
    `${git(repo, ['cat-file', 'commit', unsigned])}\n`,
    'the payload is the unsigned commit',
  );
  t.match(split.signature, /^-----BEGIN SSH SIGNATURE-----\n/);
  t.same(addSignature(split.payload, split.signature!, 'sha1'), raw, 'adding it back gives the commit');
  t.equal(committerTime(raw), 1764115200);

  // a chain: the child's parent becomes the signed parent; already signed commits may be kept
  const child = git(repo, ['commit-tree', 'HEAD^{tree}', '-p', unsigned, '-m', 'child']);
  const chain = await signCommits(repo, [unsigned, child], (p) => sshsigSign(p, key));
  t.equal(chain[0], ours);
  t.equal(git(repo, ['rev-parse', `${chain[1]}^`]), ours, 'the signed child has the signed parent');
  for (const id of chain) git(repo, ['-c', `gpg.ssh.allowedSignersFile=${allowed}`, 'verify-commit', id!]);
  const again = await signCommits(repo, chain as string[], () => t.fail('nothing to sign') as never, {
    onlyUnsigned: true,
  });
  t.same(again, chain, 'signed commits are kept as they are');
  t.equal(git(repo, ['rev-parse', 'HEAD']), bySsh, 'no ref moved');
  t.notOk(
    readdirSync(path.join(repo, '.git')).some((f) => f.startsWith('rotor-sign')),
    'no file left in the git directory',
  );
});

t.test('allowed-signers files: the ssh-keygen format, options, and errors with their line', async (t) => {
  const key = throwawayKey();
  const keyLine = sshPublicKeyLine(key, 'rotor-audit');
  const signers = parseAllowedSigners(
    [
      '# the daemon',
      '',
      `rotor@localhost ${keyLine}`,
      `"ops team",*@example.com namespaces="git,file",valid-after="20260101",valid-before="203001011200Z" ${keyLine}`,
      `ca@example.com cert-authority ${keyLine}`,
      '  ',
    ].join('\n'),
  );
  t.equal(signers.length, 3);
  t.same(
    signers.map((s) => [s.line, s.principals, s.keyType, s.certAuthority]),
    [
      [3, 'rotor@localhost', 'ssh-ed25519', false],
      [4, '"ops team",*@example.com', 'ssh-ed25519', false],
      [5, 'ca@example.com', 'ssh-ed25519', true],
    ],
  );
  t.ok(signers[0]!.key.equals(ed25519Blob(key)));
  t.same(signers[1]!.namespaces, ['git', 'file']);
  t.equal(signers[1]!.validBefore, Date.UTC(2030, 0, 1, 12) / 1000);
  t.ok(matchPatternList(['g*'], 'git'));
  t.ok(matchPatternList(['file', 'g?t'], 'git'));
  t.notOk(matchPatternList(['*', '!git'], 'git'));
  t.notOk(matchPatternList(['file'], 'git'));

  for (const [text, line, message] of [
    [`p ssh-ed25519`, 1, /expected: principals/],
    [`# x\np ssh-ed25519 !!!!`, 2, /not valid base64/],
    [`p ssh-rsa ${keyLine.split(' ')[1]}`, 1, /not a ssh-rsa key/],
    [`p nonsense=1 ${keyLine}`, 1, /unknown option/],
    [`p valid-after="yesterday" ${keyLine}`, 1, /not a time/],
    [`p "unterminated ${keyLine}`, 1, /expected: principals/],
    [`p namespaces="git" not-a-type AAAA`, 1, /no key/],
  ] as const) {
    t.throws(() => parseAllowedSigners(text), { code: 'AUDIT_ALLOWED_SIGNERS_INVALID', line, message }, text);
  }
});
