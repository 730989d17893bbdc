/**
 * Secrets rotated by a person (`sops:`): the daemon opens the SOPS file of each applied commit with its
 * own age identity; a changed value becomes the next version with the policy's overlap; past `maxAge`
 * the secret is overdue (status, metrics); a file it cannot open keeps the current version and says
 * why; a value SOPS left in clear is not served (SOPS_VALUE_CLEARTEXT), and rotor validate and plan
 * refuse it; `rotor plan` reminds. The SOPS files are written by src/sops-write.ts and read back by
 * src/sops.ts, the reader checked against files the real `sops` tool wrote (test/agent-config.test.ts).
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { generateX25519Identity, identityToRecipient } from 'age-encryption';
import t from 'tap';
import { verifyAuditDir } from '../src/audit/log.js';
import { loadKeys } from '../src/keys.js';
import { openSops, sopsValueState } from '../src/sops/index.js';
import { sealSops } from '../src/sops/write.js';
import { git, rotor, tempDir } from './helpers.js';
import { finishes, world } from './world.js';

const CONFIG = 'kind: Config\nsync: { interval: 1d }\n';
const POLICY = 'kind: Policy\nname: manual\nevery: 90d\noverlap: 1h\nmaxAge: 45d\n';
const SECRET =
  'kind: Secret\nname: payments/stripe\npolicy: manual\nsops: { file: secrets/stripe.enc.yaml, key: stripe.apiKey }\n';
const DAY = 86_400_000;

async function sealed(value: string, recipients: string[]) {
  return sealSops({ stripe: { apiKey: value, account: 'acct_example' } }, recipients);
}

t.test('the writer makes files the reader opens, and the MAC catches an edit', async (t) => {
  const id = await generateX25519Identity();
  const text = await sealed('sk_live_one', [await identityToRecipient(id)]);
  const doc = await openSops(text, id);
  t.equal(doc.get('stripe.apiKey')?.value, 'sk_live_one');
  t.notMatch(text, /sk_live_one/, 'the value is not in the file in clear');
  const lines = text.split('\n');
  const i = lines.findIndex((l) => l.includes('account:'));
  const other = await sealed('sk_live_two', [await identityToRecipient(id)]);
  lines[i] = other.split('\n').find((l) => l.includes('account:'))!; // a value from another file
  await t.rejects(openSops(lines.join('\n'), id), { code: 'SOPS_MAC_MISMATCH' });
});

t.test('a person rotates a sops secret by committing; overlap, audit, overdue, unreadable files', async (t) => {
  let now = Date.parse('2026-11-01T00:00:00Z');
  const person = await generateX25519Identity();
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICY,
    'secrets.yaml': SECRET,
    'secrets/stripe.enc.yaml': '',
  });
  const daemon = (await loadKeys(w.dataDir)).recipient;
  const recipients = [await identityToRecipient(person), daemon];
  w.push('secrets/stripe.enc.yaml', await sealed('sk_live_first', recipients), 'the first key');

  const d = await w.start({ now: () => now });
  t.teardown(() => d.stop());
  let s = d.served('payments/stripe');
  t.equal(s?.version, 1);
  t.equal(s?.value, 'sk_live_first', 'version 1 is the value in the file');

  // A person edits the file (as `sops secrets/stripe.enc.yaml` would) and commits.
  now += 10 * DAY;
  const rotated = finishes('payments/stripe', 1);
  w.push('secrets/stripe.enc.yaml', await sealed('sk_live_second', recipients), 'rotate the stripe key');
  await d.syncNow();
  await rotated;
  s = d.served('payments/stripe');
  t.equal(s?.version, 2, 'the changed value is the next version');
  t.equal(s?.value, 'sk_live_second');
  t.equal(s?.previous?.value, 'sk_live_first', 'the previous value is served during the overlap');
  t.equal(s?.previous?.validUntil, new Date(now + 3600_000).toISOString(), "the policy's overlap applies");

  // A commit that re-encrypts the same value (new data key, new IVs) is not a new version.
  w.push('secrets/stripe.enc.yaml', await sealed('sk_live_second', recipients), 're-encrypt, same value');
  await d.syncNow();
  t.equal(d.served('payments/stripe')?.version, 2, 'the same value again makes no version');

  // A file the daemon cannot open (encrypted to the person only): the current version stays, status says why.
  w.push(
    'secrets/stripe.enc.yaml',
    await sealed('sk_live_third', [await identityToRecipient(person)]),
    'forgot the daemon',
  );
  await d.syncNow();
  t.equal(d.served('payments/stripe')?.version, 2, 'an unreadable file keeps the current version');
  let st = d.status().secrets.find((x) => x.name === 'payments/stripe')!;
  t.equal(st.failing?.error, 'SOPS_NO_MATCHING_KEY', 'status says why');
  t.equal(st.source, 'sops');
  // Fixing it clears the failure and the value becomes version 3.
  const third = finishes('payments/stripe', 1);
  w.push('secrets/stripe.enc.yaml', await sealed('sk_live_third', recipients), 'add the daemon back');
  await d.syncNow();
  await third;
  st = d.status().secrets.find((x) => x.name === 'payments/stripe')!;
  t.equal(st.version, 3);
  t.notOk(st.failing, 'no failure once the file opens');

  // rotor rotate cannot rotate it: a person does.
  await t.rejects(d.rotateNow('payments/stripe', 'test'), { code: 'SECRET_NOT_ROTATABLE' });

  // Past maxAge (45d) it is overdue in status and metrics.
  t.equal(st.overdue, false);
  now += 46 * DAY;
  st = d.status().secrets.find((x) => x.name === 'payments/stripe')!;
  t.equal(st.overdue, true, 'overdue past maxAge');
  t.equal(st.nextRotationAt, undefined, 'no scheduled rotation: a person rotates it');

  await d.stop();
  // The audit log: created, rotated (trigger commit), the failure once, rotated again; no value in it.
  const check = path.join(tempDir(t), 'check');
  execFileSync('git', ['clone', '-q', w.remote, check]);
  const v = await verifyAuditDir(path.join(check, 'audit'));
  t.ok(v.result.ok, 'the audit chain verifies');
  const text = readdirSync(path.join(check, 'audit'))
    .map((f) => readFileSync(path.join(check, 'audit', f), 'utf8'))
    .join('');
  const entries = text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { event: string; secret?: string; to?: number; trigger?: string; detail?: string });
  const mine = entries.filter((e) => e.secret === 'payments/stripe');
  t.same(
    mine.map((e) => [e.event, e.to, e.trigger]),
    [
      ['created', 1, 'new'],
      ['rotated', 2, 'commit'],
      ['rotation-failed', undefined, undefined],
      ['rotated', 3, 'commit'],
    ],
  );
  t.match(mine[2]!.detail, /^SOPS_NO_MATCHING_KEY: /);
  for (const secret of ['sk_live_first', 'sk_live_second', 'sk_live_third']) {
    t.notOk(text.includes(secret), `no value in the audit log (${secret.slice(8)})`);
    t.notOk(w.logs().includes(secret), `no value in the logs (${secret.slice(8)})`);
  }
});

t.test('rotor plan reminds of a sops secret near or past maxAge', async (t) => {
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICY,
    'secrets.yaml': SECRET,
    'secrets/stripe.enc.yaml': '',
  });
  const daemon = (await loadKeys(w.dataDir)).recipient;
  w.push('secrets/stripe.enc.yaml', await sealed('sk_live_first', [daemon]), 'the first key');
  const created = Date.parse('2026-10-01T00:00:00Z');
  const d = await w.start({ now: () => created });
  await d.stop();
  git(w.person, 'pull', '-q', '--rebase'); // the daemon's audit commits
  const plan = (now: string) => rotor(['plan', '--base', 'HEAD', '--now', now, '--format', 'json'], { cwd: w.person });
  const quiet = JSON.parse((await plan('2026-10-10T00:00:00Z')).stdout);
  t.same(quiet.plan.reminders, [], 'no reminder well before maxAge');
  const soon = JSON.parse((await plan('2026-11-08T00:00:00Z')).stdout);
  t.same(
    soon.plan.reminders.map((r: { secret: string; overdue: boolean; dueAt: string }) => [r.secret, r.overdue, r.dueAt]),
    [['payments/stripe', false, '2026-11-15T00:00:00.000Z']],
    'a reminder in the last quarter of maxAge',
  );
  const late = await rotor(['plan', '--base', 'HEAD', '--now', '2026-12-01T00:00:00Z'], { cwd: w.person });
  t.equal(late.code, 0, 'a reminder does not refuse the change');
  t.match(
    late.stdout,
    /Rotate by hand \(sops: secrets\):\n {2}! payments\/stripe: overdue since 2026-11-15 \(maxAge 45d; current value since 2026-10-01\)\. Edit secrets\/stripe\.enc\.yaml with sops and commit.* \[SOPS_OVERDUE\]/,
  );
  const md = await rotor(['plan', '--base', 'HEAD', '--now', '2026-12-01T00:00:00Z', '--format', 'markdown'], {
    cwd: w.person,
  });
  t.match(md.stdout, /#### ⏰ Rotate by hand\n\n- \*\*payments\/stripe\*\*: overdue since 2026-11-15/);
});

t.test('with audit.branch, rotor plan reads the last rotations from the audit branch', async (t) => {
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\naudit: { branch: rotor-audit }\n',
    'policies.yaml': POLICY,
    'secrets.yaml': SECRET,
    'secrets/stripe.enc.yaml': '',
  });
  const daemon = (await loadKeys(w.dataDir)).recipient;
  w.push('secrets/stripe.enc.yaml', await sealed('sk_live_first', [daemon]), 'the first key');
  const d = await w.start({ now: () => Date.parse('2026-10-01T00:00:00Z') });
  await d.stop();
  git(w.person, 'fetch', '-q', 'origin'); // origin/rotor-audit, as actions/checkout with fetch-depth: 0 has it
  const plan = () =>
    rotor(['plan', '--base', 'HEAD', '--now', '2026-11-08T00:00:00Z', '--format', 'json'], { cwd: w.person });
  const soon = await plan();
  t.same(
    JSON.parse(soon.stdout).plan.reminders.map((r: { secret: string; dueAt: string }) => [r.secret, r.dueAt]),
    [['payments/stripe', '2026-11-15T00:00:00.000Z']],
    'the reminder, from the entry on the audit branch',
  );
  t.equal(soon.stderr, '');
  git(w.person, 'update-ref', '-d', 'refs/remotes/origin/rotor-audit');
  const blind = await plan();
  t.same(JSON.parse(blind.stdout).plan.reminders, [], 'without the branch, no reminder...');
  t.match(
    blind.stderr,
    /the audit log is on branch rotor-audit \(audit\.branch\), which this clone does not have: git fetch origin rotor-audit/,
    '...and a warning that says why',
  );
});

t.test('the reader tells values SOPS left in clear from encrypted ones, with a key and without', async (t) => {
  const id = await generateX25519Identity();
  const me = [await identityToRecipient(id)];
  const suffix = await sealSops(
    {
      stripe: {
        apiKey_unencrypted: 'sk_clear_suffix',
        apiKey: 'sk_enc',
        nested_unencrypted: { deep: 'sk_clear_deep' },
      },
    },
    me,
  );
  t.match(
    suffix,
    /apiKey_unencrypted: sk_clear_suffix/,
    'the writer leaves an _unencrypted key in clear, as sops does',
  );
  const doc = await openSops(suffix, id);
  t.match(doc.get('stripe.apiKey_unencrypted'), { value: 'sk_clear_suffix', encrypted: false });
  t.match(
    doc.get('stripe.nested_unencrypted.deep'),
    { value: 'sk_clear_deep', encrypted: false },
    'a suffix on any key of the path',
  );
  t.match(doc.get('stripe.apiKey'), { value: 'sk_enc', encrypted: true });
  t.equal(sopsValueState(suffix, 'stripe.apiKey_unencrypted'), 'clear');
  t.equal(sopsValueState(suffix, 'stripe.nested_unencrypted.deep'), 'clear');
  t.equal(sopsValueState(suffix, 'stripe.apiKey'), 'encrypted');
  t.equal(sopsValueState(suffix, 'stripe.nope'), 'missing');
  t.equal(sopsValueState(suffix, 'stripe'), 'not-a-value');

  const regex = await sealSops({ stripe: { apiKey: 'sk_clear_regex', account: 'acct' } }, me, new Date(), {
    unencryptedRegex: '^apiKey$',
  });
  t.match(regex, /unencrypted_regex: \^apiKey\$/);
  t.match((await openSops(regex, id)).get('stripe.apiKey'), { value: 'sk_clear_regex', encrypted: false });
  t.equal(sopsValueState(regex, 'stripe.apiKey'), 'clear');
  t.equal(sopsValueState(regex, 'stripe.account'), 'encrypted');

  t.equal(
    sopsValueState('stripe:\n  apiKey: sk_plain\n', 'stripe.apiKey'),
    'clear',
    'a file without sops metadata holds its values in clear',
  );
  t.equal(sopsValueState('{"stripe": {"apiKey": "sk_plain"}}', 'stripe.apiKey', { format: 'json' }), 'clear');
  t.throws(() => sopsValueState('a: [', 'a'), { code: 'SOPS_NOT_SOPS' });
});

t.test(
  'a value SOPS left in clear is not served (SOPS_VALUE_CLEARTEXT); validate and plan refuse it too',
  async (t) => {
    const now = Date.parse('2026-11-01T00:00:00Z');
    const w = await world(t, {
      'rotor.yaml': CONFIG,
      'policies.yaml': POLICY,
      'secrets.yaml': SECRET,
      'secrets/stripe.enc.yaml': '',
    });
    const recipients = [(await loadKeys(w.dataDir)).recipient];
    w.push('secrets/stripe.enc.yaml', await sealed('sk_live_first', recipients), 'the first key');
    const d = await w.start({ now: () => now, socketDir: path.join(w.root, 'sockets'), metricsListen: '127.0.0.1:0' });
    t.teardown(() => d.stop());
    t.equal(d.served('payments/stripe')?.version, 1);

    // A person re-encrypts the file with a rule that leaves apiKey in clear (sops --unencrypted-regex).
    const CLEAR = 'sk_live_in_clear_0123456789';
    w.push(
      'secrets/stripe.enc.yaml',
      await sealSops({ stripe: { apiKey: CLEAR, account: 'acct_example' } }, recipients, new Date(), {
        unencryptedRegex: '^apiKey$',
      }),
      'oops: apiKey left in clear',
    );
    await d.syncNow();
    const s = d.served('payments/stripe');
    t.equal(s?.version, 1, 'the current version stays');
    t.equal(s?.value, 'sk_live_first', 'and is still what is served');
    const st = d.status().secrets.find((x) => x.name === 'payments/stripe')!;
    t.equal(st.failing?.error, 'SOPS_VALUE_CLEARTEXT', 'status says why');
    const metrics = await (await fetch(`http://${d.metricsAddress!}/metrics`)).text();
    t.match(metrics, /^rotor_secrets_failing 1$/m, 'the metrics count it failing');
    t.match(metrics, /^rotor_secret_failing\{secret="payments\/stripe"\} 1$/m, 'and name it');
    t.notOk(JSON.stringify(d.status()).includes(CLEAR), 'not in the status');
    t.notOk(metrics.includes(CLEAR), 'nor in the metrics');

    // rotor validate and rotor plan, on the person's clone, say the same, where sops.key is.
    const validate = await rotor(['validate', w.person]);
    t.equal(validate.code, 1, 'rotor validate exits 1');
    t.match(
      validate.stdout,
      /secrets\.yaml:4:\d+: error: "stripe\.apiKey" in secrets\/stripe\.enc\.yaml is stored in clear, not encrypted by sops .* \[SOPS_VALUE_CLEARTEXT\]/,
    );
    const plan = await rotor(['plan', '--base', 'HEAD~1', '--now', '2026-11-02T00:00:00Z'], { cwd: w.person });
    t.equal(plan.code, 1, 'rotor plan exits 1');
    t.match(plan.stdout, /SOPS_VALUE_CLEARTEXT/);
    const planJson = JSON.parse(
      (
        await rotor(['plan', '--base', 'HEAD~1', '--now', '2026-11-02T00:00:00Z', '--format', 'json'], {
          cwd: w.person,
        })
      ).stdout,
    );
    t.match(
      planJson.problems.filter((p: { severity: string }) => p.severity === 'error'),
      [{ file: 'secrets.yaml', line: 4, severity: 'error', code: 'SOPS_VALUE_CLEARTEXT' }],
      'the one error of the plan',
    );
    for (const out of [validate.stdout, validate.stderr, plan.stdout, plan.stderr])
      t.notOk(out.includes(CLEAR), 'no value in what the commands print');

    // Encrypted again (with a new value): version 2, the failure cleared.
    const fixed = finishes('payments/stripe', 1);
    w.push('secrets/stripe.enc.yaml', await sealed('sk_live_second', recipients), 'encrypt apiKey, new value');
    await d.syncNow();
    await fixed;
    t.equal(d.served('payments/stripe')?.version, 2);
    t.notOk(d.status().secrets.find((x) => x.name === 'payments/stripe')!.failing, 'no failure once it is encrypted');
    t.equal((await rotor(['validate', w.person])).code, 0, 'and rotor validate is content');

    await d.stop();
    const check = path.join(tempDir(t), 'check');
    execFileSync('git', ['clone', '-q', w.remote, check]);
    const text = readdirSync(path.join(check, 'audit'))
      .map((f) => readFileSync(path.join(check, 'audit', f), 'utf8'))
      .join('');
    const mine = text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { event: string; secret?: string; to?: number; detail?: string })
      .filter((e) => e.secret === 'payments/stripe');
    t.same(
      mine.map((e) => [e.event, e.to]),
      [
        ['created', 1],
        ['rotation-failed', undefined],
        ['rotated', 2],
      ],
    );
    t.match(
      mine[1]!.detail,
      /^SOPS_VALUE_CLEARTEXT: "stripe\.apiKey" in secrets\/stripe\.enc\.yaml is stored in clear/,
    );
    t.notOk(text.includes(CLEAR), 'no value in the audit log');
    t.notOk(w.logs().includes(CLEAR), 'nor in the logs');
    t.match(w.logs(), /"code":"SOPS_VALUE_CLEARTEXT"/, 'the logs say it with its code');
  },
);
