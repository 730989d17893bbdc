/** rotor keygen and the daemon's key loading. */
import { execFileSync } from 'node:child_process';
import { sign, verify } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Decrypter, Encrypter } from 'age-encryption';
import t from 'tap';
import { loadKeys, parseSigningKey } from '../src/keys.js';
import { rotor, tempDir } from './helpers.js';

t.test('keygen makes private keys only their owner can read and prints the public halves', async (t) => {
  const dir = path.join(tempDir(t), 'data');
  const r = await rotor(['keygen', dir]);
  t.equal(r.code, 0, r.stderr);
  const m =
    /^recipient: "(age1[02-9ac-hj-np-z]{58})"\nsigningKey: "(ed25519:[A-Za-z0-9+/]{43}=)"\n(ssh-ed25519 (AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43}) rotor-audit)\n$/.exec(
      r.stdout,
    );
  t.ok(m, r.stdout);
  t.equal(statSync(dir).mode & 0o777, 0o700);
  for (const f of ['identity.age', 'signing.key'])
    t.equal(statSync(path.join(dir, f)).mode & 0o777, 0o600, `${f} is 0600`);

  const keys = await loadKeys(dir);
  t.equal(keys.recipient, m![1]);
  t.equal(keys.signingKey, m![2]);
  // The identity works with age: encrypt to the printed recipient, decrypt with Debian's age.
  const e = new Encrypter();
  e.addRecipient(keys.recipient);
  const file = path.join(dir, 'x.age');
  writeFileSync(file, await e.encrypt('hello'));
  t.equal(execFileSync('age', ['-d', '-i', path.join(dir, 'identity.age'), file], { encoding: 'utf8' }), 'hello');
  const d = new Decrypter();
  d.addIdentity(keys.identity);
  t.equal(await d.decrypt(readFileSync(file), 'text'), 'hello');
  // The signing key verifies with the printed public key.
  const sig = sign(null, Buffer.from('msg'), keys.signing);
  t.ok(verify(null, Buffer.from('msg'), parseSigningKey(keys.signingKey), sig));
  // The OpenSSH line is the same key: its last 32 bytes are the signingKey's, and ssh-keygen reads it.
  t.equal(Buffer.from(m![4]!, 'base64').subarray(19).toString('base64'), keys.signingKey.slice('ed25519:'.length));
  const pub = path.join(dir, 'audit.pub');
  writeFileSync(pub, `${m![3]}\n`);
  t.match(
    execFileSync('ssh-keygen', ['-l', '-f', pub], { encoding: 'utf8' }),
    /^256 SHA256:\S+ rotor-audit \(ED25519\)/,
  );
});

t.test('keygen never replaces keys; the daemon refuses missing or exposed keys and says what to do', async (t) => {
  const dir = tempDir(t);
  const made = await rotor(['keygen', dir]);
  t.equal(made.code, 0);
  const before = readFileSync(path.join(dir, 'identity.age'), 'utf8');
  const again = await rotor(['keygen', dir]);
  t.equal(again.code, 1);
  t.match(again.stderr, /keys exist in .*kept \(never replaced\); their public halves: \[KEYS_EXIST\]/);
  t.equal(again.stdout, made.stdout, 'the public halves are printed again');
  t.match(again.stdout, /^recipient: "age1[a-z0-9]+"\nsigningKey: "ed25519:/);
  t.equal(readFileSync(path.join(dir, 'identity.age'), 'utf8'), before);

  chmodSync(path.join(dir, 'signing.key'), 0o644);
  await t.rejects(loadKeys(dir), { code: 'KEYS_PERMISSIONS', message: /chmod 600/ });
  await t.rejects(loadKeys(tempDir(t)), { code: 'KEYS_MISSING', message: /rotor keygen/ });

  const usage = await rotor(['keygen']);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /DIR is required/);
});
