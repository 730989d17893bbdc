/**
 * The access matrix with real Unix users: three consumers, each running as its own user (created here;
 * needs root, as in CI), try five secrets over every consumer's socket. Exactly the granted cells
 * return values; every other cell gets 403 (own socket) or cannot connect (another's socket).
 */
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { world } from './world.js';

const isRoot = process.getuid?.() === 0;
const haveUseradd = spawnSync('useradd', ['--help']).status === 0;

if (!isRoot || !haveUseradd) {
  if (process.env.ROTOR_REQUIRE_SERVICES === '1')
    t.fail('the access-matrix test needs root and useradd (it creates Unix users); CI runs as root');
  else
    t.skip(
      'the access-matrix test needs root and useradd (it creates three Unix users): run the tests as root, as .ci/run does',
    );
} else {
  const SECRETS = ['team-a/db', 'team-a/api', 'team-b/db', 'shared/tls', 'admin/root'];
  // consumer -> globs; the expected grants follow from them.
  const GRANTS: Record<string, string[]> = {
    alpha: ['team-a/*', 'shared/tls'],
    beta: ['team-b/**'],
    gamma: ['shared/*', 'team-a/api'],
  };
  const EXPECTED: Record<string, string[]> = {
    alpha: ['team-a/db', 'team-a/api', 'shared/tls'],
    beta: ['team-b/db'],
    gamma: ['team-a/api', 'shared/tls'],
  };

  t.test('3 consumers as 3 Unix users x 5 secrets: exactly the granted cells return values', async (t) => {
    const tag = randomBytes(3).toString('hex');
    const users: Record<string, { user: string; uid: number; gid: number }> = {};
    for (const c of Object.keys(GRANTS)) {
      const user = `rtr-${tag}-${c}`;
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', '--user-group', user]);
      t.teardown(() => void spawnSync('userdel', [user]));
      users[c] = {
        user,
        uid: Number(execFileSync('id', ['-u', user], { encoding: 'utf8' })),
        gid: Number(execFileSync('id', ['-g', user], { encoding: 'utf8' })),
      };
    }
    const files = {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
      'secrets.yaml': SECRETS.map((s) => `kind: Secret\nname: ${s}\npolicy: p\ngenerate: {}\n`).join('---\n'),
      'consumers.yaml': Object.entries(GRANTS)
        .map(
          ([c, globs]) =>
            `kind: Consumer\nname: ${c}\nuid: ${users[c]!.uid}\ngid: ${users[c]!.gid}\nsecrets: ${JSON.stringify(globs)}\n`,
        )
        .join('---\n'),
    };
    const w = await world(t, files);
    // The data directory stays private; the socket directory must be reachable by the consumers' users.
    const open = mkdtempSync(path.join(os.tmpdir(), 'rotor-access-'));
    chmodSync(open, 0o755);
    t.teardown(() => rmSync(open, { recursive: true, force: true }));
    const socketDir = path.join(open, 'sockets');
    const d = await w.start({ socketDir });
    t.teardown(() => d.stop());

    // The probe each user runs: every socket x every secret; prints status codes and value hashes only.
    const probe = path.join(open, 'probe.mjs');
    writeFileSync(
      probe,
      `
import http from 'node:http';
import { createHash } from 'node:crypto';
const [dir, consumers, secrets] = [process.argv[2], process.argv[3].split(','), process.argv[4].split(',')];
const get = (socketPath, p) => new Promise((resolve) => {
  const req = http.request({ socketPath, path: p, agent: false }, (res) => {
    let b = ''; res.on('data', (c) => (b += c)); res.on('end', () => {
      const body = JSON.parse(b);
      resolve({ status: res.statusCode, code: body.error?.code, hash: typeof body.value === 'string' ? createHash('sha256').update(body.value).digest('hex') : undefined });
    });
  });
  req.on('error', (e) => resolve({ status: 0, code: e.code }));
  req.end();
});
const out = {};
for (const c of consumers) for (const s of secrets) out[c + ' ' + s] = await get(dir + '/' + c + '.sock', '/v1/secrets/' + s);
process.stdout.write(JSON.stringify({ uid: process.getuid(), out }));
`,
    );
    chmodSync(probe, 0o644);
    const hash = (s: string) =>
      createHash('sha256')
        .update(String(d.served(s)!.value))
        .digest('hex');
    const consumers = Object.keys(GRANTS);
    let cells = 0;
    for (const c of consumers) {
      const { uid, gid } = users[c]!;
      // As that user, without tap's loaders (tap's process tracking adds them to NODE_OPTIONS).
      // Not spawnSync: the daemon answering the probe runs in this process.
      const r = await new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
        const child = spawn(
          '/usr/bin/env',
          ['-u', 'NODE_OPTIONS', process.execPath, probe, socketDir, consumers.join(','), SECRETS.join(',')],
          { uid, gid, env: { PATH: process.env.PATH ?? '/usr/bin:/bin' }, cwd: open },
        );
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (b: Buffer) => (stdout += b));
        child.stderr.on('data', (b: Buffer) => (stderr += b));
        child.on('close', (status) => resolve({ status, stdout, stderr }));
      });
      t.equal(r.status, 0, `the probe ran as ${users[c]!.user}: ${r.stderr.slice(0, 300)}`);
      const { uid: ran, out } = JSON.parse(r.stdout) as {
        uid: number;
        out: Record<string, { status: number; code?: string; hash?: string }>;
      };
      t.equal(ran, uid, `the probe of ${c} ran as uid ${uid}`);
      for (const via of consumers) {
        for (const s of SECRETS) {
          const cell = out[`${via} ${s}`]!;
          cells++;
          if (via !== c) {
            t.same([cell.status, cell.code], [0, 'EACCES'], `${c} cannot connect to ${via}'s socket (${s})`);
          } else if (EXPECTED[c]!.includes(s)) {
            t.same([cell.status, cell.hash], [200, hash(s)], `${c} reads ${s}: the served value`);
          } else {
            t.same([cell.status, cell.code], [403, 'ACCESS_DENIED'], `${c} is refused ${s}`);
          }
        }
      }
    }
    t.equal(cells, 45, '3 users x 3 sockets x 5 secrets');
  });
}
