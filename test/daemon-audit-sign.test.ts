/**
 * audit: { sign: true } end to end: the daemon signs its audit commits with its Ed25519 key, git's own
 * `git verify-commit` and `ssh-keygen -Y verify` take them with the line `rotor keygen` prints, and
 * `rotor audit verify --allowed-signers` refuses a tampered, an unsigned and a foreign-signed commit.
 * The private key appears in no log, no git argument or environment, no object of any repository and
 * no file of the data directory but signing.key. Real git: a bare remote, a person's clone.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { chmodSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { parseCommitter } from '../src/cli/daemon.js';
import { auditPushChannel } from '../src/daemon/audit-publisher.js';
import { splitSignature } from '../src/git/commit-object.js';
import { sshsigSign } from '../src/git/sshsig.js';
import { git, rotor, tempDir } from './helpers.js';
import { throwawayKey } from './lib/openssh-key.js';
import { world } from './world.js';

type T = Parameters<Parameters<typeof t.test>[1]>[0];

const POLICY = 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n';
const SECRET = 'kind: Secret\nname: app/key\npolicy: p\ngenerate: {}\n';
const SIGNED = 'kind: Config\nsync: { interval: 1d }\naudit: { sign: true }\n';

/** The `ssh-ed25519 ...` line `rotor keygen` prints for a data directory, in an allowed-signers file. */
async function allowedSigners(t: T, dataDir: string): Promise<{ file: string; line: string }> {
  const k = await rotor(['keygen', dataDir]); // the keys exist: printed again, exit 1 (KEYS_EXIST)
  const line = /^ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43} rotor-audit$/m.exec(k.stdout)?.[0];
  t.ok(line, `rotor keygen prints the ssh-ed25519 line: ${k.stdout}`);
  const file = path.join(tempDir(t), 'allowed_signers');
  writeFileSync(file, `# the rotor daemon\nrotor@localhost ${line}\n`);
  return { file, line: line! };
}

/** The daemon's commits (author rotor) on a ref, oldest first. */
function rotorCommits(repo: string, ref: string): string[] {
  return git(repo, 'log', '--reverse', '--format=%H %an', ref)
    .split('\n')
    .filter((l) => l.endsWith(' rotor'))
    .map((l) => l.split(' ')[0]!);
}

const signed = (repo: string, id: string) => /^gpgsig /m.test(git(repo, 'cat-file', 'commit', id));

function verifyCommit(repo: string, allowed: string, id: string): { ok: boolean; out: string } {
  // the real ssh-keygen (recordSpawns puts a failing one first on PATH, to see whether the daemon runs it)
  const args = ['-c', 'gpg.ssh.program=/usr/bin/ssh-keygen', '-c', `gpg.ssh.allowedSignersFile=${allowed}`];
  const r = spawnSync('git', [...args, 'verify-commit', id], {
    cwd: repo,
    encoding: 'utf8',
  });
  return { ok: r.status === 0, out: r.stderr };
}

/** The encodings of the daemon's private key that must appear nowhere. */
function keyForms(dataDir: string): { text: string[]; raw: Buffer } {
  const pem = readFileSync(path.join(dataDir, 'signing.key'), 'utf8');
  const seed = Buffer.from(createPrivateKey(pem).export({ format: 'jwk' }).d!, 'base64url');
  const body = pem.split('\n').find((l) => /^[A-Za-z0-9+/=]{40,}$/.test(l))!;
  return {
    text: [seed.toString('hex'), seed.toString('base64'), seed.toString('base64url'), body],
    raw: seed,
  };
}

function assertNoKey(t: T, forms: { text: string[]; raw: Buffer }, where: string, data: Buffer | string) {
  const buf = typeof data === 'string' ? Buffer.from(data) : data;
  const hit = forms.text.find((f) => buf.includes(f)) ?? (buf.includes(forms.raw) ? 'the raw key' : undefined);
  t.equal(hit, undefined, `no private key in ${where}`);
}

/** Every object of a repository, decompressed. */
const allObjects = (repo: string) =>
  execFileSync('git', ['cat-file', '--batch-all-objects', '--batch'], { cwd: repo, maxBuffer: 256 * 1024 * 1024 });

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath, e.name));
}

/**
 * git, ssh-keygen and gpg as the daemon starts them, recorded: a directory first on PATH holding a
 * `git` that writes its arguments and environment down and runs the real git, and an `ssh-keygen`
 * and a `gpg` that write down that they ran, and fail.
 */
function recordSpawns(t: T): { args: () => string; env: () => string; others: () => string[] } {
  const dir = tempDir(t, 'rotor-spawns-');
  const realGit = execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim();
  const write = (name: string, body: string) => {
    writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`);
    chmodSync(path.join(dir, name), 0o755);
  };
  write('git', `printf '%s\\n' "$*" >> '${dir}/git-args'\nenv >> '${dir}/git-env'\nexec '${realGit}' "$@"`);
  for (const other of ['ssh-keygen', 'gpg', 'gpg2', 'gpgsm']) write(other, `echo ran >> '${dir}/${other}.ran'\nexit 1`);
  const before = process.env.PATH;
  process.env.PATH = `${dir}:${before}`;
  t.teardown(() => {
    process.env.PATH = before;
  });
  const read = (f: string) => {
    try {
      return readFileSync(path.join(dir, f), 'utf8');
    } catch {
      return '';
    }
  };
  return {
    args: () => read('git-args'),
    env: () => read('git-env'),
    others: () => readdirSync(dir).filter((f) => f.endsWith('.ran')),
  };
}

t.test('audit.sign: every audit commit verifies with git and ssh-keygen; the key is nowhere else', async (t) => {
  const spawns = recordSpawns(t);
  const w = await world(t, { 'rotor.yaml': SIGNED, 'policy.yaml': POLICY, 'secret.yaml': SECRET });
  const { file: allowed } = await allowedSigners(t, w.dataDir);
  const d = await w.start();
  await d.rotateNow('app/key', 'first');
  await d.syncNow(); // commits what is pending before it fetches: a second commit
  await d.rotateNow('app/key', 'second');
  await d.stop();

  const commits = rotorCommits(w.remote, 'main');
  t.ok(commits.length >= 2, `the daemon pushed its audit commits (${commits.length})`);
  for (const id of commits) {
    const v = verifyCommit(w.remote, allowed, id);
    t.ok(v.ok, `git verify-commit takes ${id.slice(0, 12)}: ${v.out.trim()}`);
    t.match(v.out, /Good "git" signature for rotor@localhost with ED25519 key SHA256:/);
  }
  // ssh-keygen -Y verify on the last one, as git does it: the commit without its signature, the signature
  const raw = execFileSync('git', ['cat-file', 'commit', commits.at(-1)!], { cwd: w.remote });
  const { payload, signature } = splitSignature(raw, 'sha1');
  const sigFile = path.join(tempDir(t), 'commit.sig');
  writeFileSync(sigFile, signature!);
  const ssh = spawnSync(
    '/usr/bin/ssh-keygen',
    ['-Y', 'verify', '-f', allowed, '-I', 'rotor@localhost', '-n', 'git', '-s', sigFile],
    { input: payload, encoding: 'utf8' },
  );
  t.equal(ssh.status, 0, `ssh-keygen -Y verify: ${ssh.stdout}${ssh.stderr}`);

  // rotor audit verify --allowed-signers, in a fresh clone
  const clone = path.join(tempDir(t), 'clone');
  execFileSync('git', ['clone', '-q', w.remote, clone]);
  const v = await rotor(['audit', 'verify', clone, '--allowed-signers', allowed]);
  t.equal(v.code, 0, v.stdout + v.stderr);
  t.match(
    v.stdout,
    new RegExp(`\\nsignatures: ${commits.length} commits changing audit/ in its whole history, all signed by keys of `),
  );
  t.match(
    w.logs(),
    /"msg":"audit commits are signed","signingKey":"SHA256:/,
    'the daemon says so, with the fingerprint',
  );

  // the key: in no log, git argument or environment, repository object, or other file of the data directory
  const forms = keyForms(w.dataDir);
  t.ok(spawns.args().includes('hash-object'), 'the recorder saw the signing calls');
  assertNoKey(t, forms, 'the logs', w.logs());
  assertNoKey(t, forms, "git's arguments", spawns.args());
  assertNoKey(t, forms, "git's environment", spawns.env());
  assertNoKey(t, forms, "this process's arguments and environment", JSON.stringify([process.argv, process.env]));
  assertNoKey(t, forms, "the remote's objects", allObjects(w.remote));
  assertNoKey(t, forms, "the daemon's clone's objects", allObjects(path.join(w.dataDir, 'repo')));
  for (const f of filesUnder(w.dataDir).filter((f) => path.basename(f) !== 'signing.key'))
    assertNoKey(t, forms, path.relative(w.dataDir, f), readFileSync(f));
  for (const f of filesUnder(w.remote)) assertNoKey(t, forms, `remote ${path.relative(w.remote, f)}`, readFileSync(f));
  assertNoKey(t, forms, 'the output of rotor audit verify', v.stdout + v.stderr);
  t.same(spawns.others(), [], 'neither ssh-keygen nor gpg was run');
  t.equal(statSync(path.join(w.dataDir, 'signing.key')).mode & 0o777, 0o600);
});

t.test(
  'audit.sign turned on: commits before it stay unsigned, the daemon signs from the change on; rotor audit verify finds each bad commit',
  async (t) => {
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': POLICY,
      'secret.yaml': SECRET,
    });
    const { file: allowed, line } = await allowedSigners(t, w.dataDir);
    const d = await w.start();
    const pushed = pushedOnce();
    await d.rotateNow('app/key', 'before signing');
    await pushed; // the daemon's commits so far are on the remote, unsigned
    w.push('rotor.yaml', SIGNED, 'sign the audit commits');
    const switchCommit = git(w.person, 'rev-parse', 'HEAD');
    await d.syncNow(); // applied: audit.sign from the next audit commit on
    await d.rotateNow('app/key', 'after signing');
    await d.stop();

    const commits = rotorCommits(w.remote, 'main');
    const before = commits.filter((id) => isAncestor(w.remote, id, switchCommit));
    const after = commits.filter((id) => !before.includes(id));
    t.ok(before.length >= 1, 'the daemon committed before the change');
    t.ok(after.length >= 1, 'and after it');
    t.ok(
      before.every((id) => !signed(w.remote, id)),
      'audit.sign off: unsigned, as before',
    );
    for (const id of after) t.ok(verifyCommit(w.remote, allowed, id).ok, `${id.slice(0, 12)}: signed and verified`);

    const clone = path.join(tempDir(t), 'clone');
    execFileSync('git', ['clone', '-q', w.remote, clone]);
    const verify = (...extra: string[]) => rotor(['audit', 'verify', clone, '--allowed-signers', allowed, ...extra]);
    const unsigned = await verify();
    t.equal(unsigned.code, 1);
    t.match(
      unsigned.stdout,
      new RegExp(
        `\\n${before[0]}: error: commit ${before[0]} \\(committer rotor <rotor@localhost>\\) changes audit/ and is not signed\\. .*--since COMMIT.* \\[AUDIT_COMMIT_UNSIGNED\\]\\n$`,
      ),
      'the oldest unsigned commit is named, with what to do',
    );
    const since = await verify('--since', switchCommit);
    t.equal(since.code, 0, since.stdout + since.stderr);
    t.match(
      since.stdout,
      `signatures: ${after.length} commit${after.length === 1 ? '' : 's'} changing audit/ after ${switchCommit}, all signed`,
    );
    const json = await verify('--since', switchCommit, '--format', 'json');
    t.match(JSON.parse(json.stdout), { ok: true, signatures: { ok: true, commits: after.length } });

    // What the checks refuse, one commit at a time: the clone's HEAD (the daemon's last commit) rewritten.
    const head = git(clone, 'rev-parse', 'HEAD');
    t.equal(head, after.at(-1));
    const raw = execFileSync('git', ['cat-file', 'commit', head], { cwd: clone });
    const { payload } = splitSignature(raw, 'sha1');
    const rewrite = async (object: Buffer, code: string, message: RegExp) => {
      const id = execFileSync('git', ['hash-object', '-t', 'commit', '-w', '--stdin'], { cwd: clone, input: object })
        .toString()
        .trim();
      git(clone, 'update-ref', 'refs/heads/main', id);
      const r = await verify('--since', switchCommit);
      t.equal(r.code, 1, `${code}: exit 1`);
      t.match(r.stdout, new RegExp(`^\\S+: \\d+ entries .*chain intact.*\\n${id}: error: .*\\[${code}\\]\\n$`), code);
      t.match(r.stdout, message);
      const j = JSON.parse((await verify('--since', switchCommit, '--format', 'json')).stdout);
      t.match(j, { ok: false, signatures: { ok: false, commit: id, code } });
      git(clone, 'update-ref', 'refs/heads/main', head);
    };
    // tampered: the message changed after signing, the signature kept
    await rewrite(
      Buffer.from(raw.toString('latin1').replace('rotor: audit entries', 'rotor: audit entrieZ'), 'latin1'),
      'AUDIT_SIGNATURE_INVALID',
      /does not match the signed content.*do not trust this commit/,
    );
    // unsigned: the same commit without its signature
    await rewrite(payload, 'AUDIT_COMMIT_UNSIGNED', /is not signed/);
    // signed by another key
    const other = throwawayKey();
    const foreign = Buffer.concat([
      payload.subarray(0, payload.indexOf('\n\n') + 1),
      Buffer.from(
        sshsigSign(payload, other)
          .trimEnd()
          .split('\n')
          .map((l, i) => `${i === 0 ? 'gpgsig ' : ' '}${l}\n`)
          .join(''),
      ),
      payload.subarray(payload.indexOf('\n\n') + 1),
    ]);
    t.ok(verifyCommit(clone, allowed, head).ok, 'the original still verifies');
    await rewrite(foreign, 'AUDIT_SIGNER_UNKNOWN', /is signed by the key SHA256:\S+, which .* does not list/);
    // the daemon's key listed only for another namespace: not allowed for git
    writeFileSync(allowed, `rotor@localhost namespaces="file" ${line}\n`);
    const ns = await verify('--since', switchCommit);
    t.equal(ns.code, 1);
    t.match(ns.stdout, /lists \(line 1\) but not for the namespace "git".*\[AUDIT_SIGNER_UNKNOWN\]/);
    writeFileSync(allowed, `rotor@localhost ${line}\n`);

    // inputs that stop the check (exit 3): a bad allowed-signers file, a shallow clone; usage errors (exit 2)
    const bad = path.join(tempDir(t), 'bad_signers');
    writeFileSync(bad, `# ok\nrotor@localhost ssh-ed25519 not-base64!\n`);
    const badFile = await rotor(['audit', 'verify', clone, '--allowed-signers', bad]);
    t.equal(badFile.code, 3);
    t.match(badFile.stderr, /bad_signers:2: the ssh-ed25519 key is not valid base64 \[AUDIT_ALLOWED_SIGNERS_INVALID\]/);
    const shallow = path.join(tempDir(t), 'shallow');
    execFileSync('git', ['clone', '-q', '--depth=1', `file://${w.remote}`, shallow]);
    const sh = await rotor(['audit', 'verify', shallow, '--allowed-signers', allowed]);
    t.equal(sh.code, 3, sh.stdout + sh.stderr);
    t.match(sh.stderr, /shallow clone.*fetch-depth: 0.*\[AUDIT_HISTORY_MISSING\]/);
    t.equal((await rotor(['audit', 'verify', clone, '--since', 'HEAD'])).code, 2, '--since needs --allowed-signers');
    const noCommit = await verify('--since', 'no-such-commit');
    t.equal(noCommit.code, 2);
    t.match(noCommit.stderr, /--since no-such-commit is not a commit/);
  },
);

t.test('audit.branch with audit.sign and --committer: the branch, its first commit included, is signed', async (t) => {
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\naudit: { branch: rotor-audit, sign: true }\n',
    'policy.yaml': POLICY,
    'secret.yaml': SECRET,
  });
  const { file: allowed } = await allowedSigners(t, w.dataDir);
  const d = await w.start({ committer: parseCommitter('rotor <rotor-bot@example.com>') });
  await d.rotateNow('app/key', 'one');
  await d.stop();
  const all = git(w.remote, 'rev-list', '--reverse', 'rotor-audit').split('\n');
  t.ok(all.length >= 2, 'the first commit and the entries');
  for (const id of all) t.ok(verifyCommit(w.remote, allowed, id).ok, `${id.slice(0, 12)} verifies`);
  t.same(
    [...new Set(git(w.remote, 'log', '--format=%an <%ae>|%cn <%ce>', 'rotor-audit').split('\n'))],
    ['rotor <rotor-bot@example.com>|rotor <rotor-bot@example.com>'],
    'author and committer from --committer',
  );
  const clone = path.join(tempDir(t), 'clone');
  execFileSync('git', ['clone', '-q', w.remote, clone]);
  const v = await rotor(['audit', 'verify', clone, '--allowed-signers', allowed]);
  t.equal(v.code, 0, v.stdout + v.stderr);
  const touching = Number(git(w.remote, 'rev-list', '--count', 'rotor-audit', '--', 'audit/'));
  t.ok(touching >= 1);
  t.match(v.stdout, new RegExp(`^origin/rotor-audit:audit: .*\\nsignatures: ${touching} commits? changing audit/`));

  t.same(parseCommitter(' Rotor Bot <bot@example.com> '), { name: 'Rotor Bot', email: 'bot@example.com' });
  for (const bad of ['bot@example.com', 'a <b', 'a <b> c', '<b@c>', 'a\n<b@c>'])
    t.throws(() => parseCommitter(bad), { message: /--committer must be "NAME <EMAIL>"/ }, bad);
});

/** Resolves after the daemon's next push that sent commits. */
function pushedOnce(): Promise<void> {
  return new Promise((resolve) => {
    const on = (m: unknown) => {
      if ((m as { ok: boolean; pushed?: number }).ok && ((m as { pushed?: number }).pushed ?? 0) > 0) {
        auditPushChannel.unsubscribe(on);
        resolve();
      }
    };
    auditPushChannel.subscribe(on);
  });
}

function isAncestor(repo: string, a: string, b: string): boolean {
  return spawnSync('git', ['merge-base', '--is-ancestor', a, b], { cwd: repo }).status === 0;
}
