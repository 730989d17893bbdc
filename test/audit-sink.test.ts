/**
 * The audit sink failing under a running daemon (in-process, real git repositories): the audit log's
 * file-system layer (DaemonOptions.auditFs) made read-only (EROFS) and then full (ENOSPC). While it
 * fails, rotations wait (the value served does not change), `rotor status` and `rotor rotate` say why
 * with the code and the errno, and the log says it once per cause; once the layer works again the
 * pending rotation happens by itself, without a restart. And an audit commit that git failed is
 * committed and pushed by the retry, without waiting for another audit entry. And the state store's
 * layer (DaemonOptions.storeFs) failing the same way.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { AuditFs } from '../src/audit/log.js';
import { nodeAuditFs, verifyAuditDir } from '../src/audit/log.js';
import type { StoreFs } from '../src/state/fs.js';
import { nodeFs } from '../src/state/fs.js';
import { git, rotor } from './helpers.js';
import { finishes, world } from './world.js';

/** Polls `ready` every 50 ms until it holds or `ms` passed (a deadline, not a timing assertion). */
async function until(ready: () => boolean | Promise<boolean>, ms = 20_000): Promise<boolean> {
  for (const deadline = Date.now() + ms; ; await new Promise((r) => setTimeout(r, 50))) {
    if (await ready()) return true;
    if (Date.now() > deadline) return false;
  }
}

const CONFIG = 'kind: Config\nsync: { interval: 1d }\n';
const POLICY = 'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1d\n';
const SECRET = 'kind: Secret\nname: app/key\npolicy: monthly\ngenerate: {}\n';

/** An AuditFs that behaves like a read-only mount or a full disk while `state.mode` says so. */
function sink(state: { mode: 'ok' | 'readonly' | 'full' }): AuditFs {
  const fail = (code: string, syscall: string, file: string) =>
    Object.assign(new Error(`${code}: injected, ${syscall} '${file}'`), { code });
  return {
    ...nodeAuditFs,
    open: async (file, flags) => {
      if (state.mode === 'readonly' && flags !== 'r') throw fail('EROFS', 'open', file);
      const fh = await nodeAuditFs.open(file, flags);
      return {
        write: async (buf, off, len) => {
          if (state.mode === 'full') {
            if (len > 1) await fh.write(buf, off, Math.floor(len / 2));
            throw fail('ENOSPC', 'write', file);
          }
          return fh.write(buf, off, len);
        },
        truncate: (n) => fh.truncate(n),
        sync: () => fh.sync(),
        close: () => fh.close(),
      };
    },
    unlink: async (file) => {
      if (state.mode === 'readonly') throw fail('EROFS', 'unlink', file);
      return nodeAuditFs.unlink(file);
    },
  };
}

t.test(
  'while the audit log cannot be written, rotations wait and the daemon says why; then it resumes by itself',
  async (t) => {
    const w = await world(t, { 'rotor.yaml': CONFIG, 'policy.yaml': POLICY, 'secrets.yaml': SECRET });
    const state: { mode: 'ok' | 'readonly' | 'full' } = { mode: 'ok' };
    const d = await w.start({ auditFs: sink(state) });
    t.teardown(() => d.stop());
    t.equal(d.served('app/key')?.version, 1);
    const v1 = d.served('app/key')!.value;

    for (const [mode, errno] of [
      ['readonly', 'EROFS'],
      ['full', 'ENOSPC'],
    ] as const) {
      const before = d.served('app/key')!.version;
      state.mode = mode;
      const err = await d.rotateNow('app/key', `${mode} test`).then(
        () => undefined,
        (e: unknown) => e,
      );
      t.match(err, { code: 'AUDIT_WRITE_FAILED' }, `${mode}: the rotation fails closed`);
      const cli = await rotor(['rotate', 'app/key', '--reason', 'again', '--data-dir', w.dataDir]);
      t.not(cli.code, 0, `${mode}: rotor rotate fails`);
      t.match(cli.stderr, /\[AUDIT_WRITE_FAILED\]/, `${mode}: rotor rotate names the code, not INTERNAL`);
      t.equal(d.served('app/key')!.version, before, `${mode}: no new value is served`);

      const st = d.status();
      t.match(
        st.audit,
        { failing: { code: 'AUDIT_WRITE_FAILED', errno } },
        `${mode}: status() says why, with the errno`,
      );
      t.match(
        st.secrets.find((s) => s.name === 'app/key'),
        { failing: { error: 'AUDIT_WRITE_FAILED' } },
      );
      const text = await rotor(['status', '--data-dir', w.dataDir]);
      t.equal(text.code, 1, `${mode}: rotor status exits 1`);
      t.match(
        text.stdout,
        new RegExp(`audit log: cannot be written since \\S+ \\(AUDIT_WRITE_FAILED, ${errno}\\): rotations are paused`),
        `${mode}: the text table says why`,
      );
      const json = JSON.parse((await rotor(['status', '--json', '--data-dir', w.dataDir])).stdout);
      t.match(json.audit.failing, { code: 'AUDIT_WRITE_FAILED', errno }, `${mode}: and --json`);
      const lines = w
        .logs()
        .split('\n')
        .filter((l) => l.includes(`"errno":"${errno}"`) && l.includes('the audit log cannot be written'));
      t.equal(lines.length, 1, `${mode}: one log line for the cause, however many tries`);
      t.notOk(
        w
          .logs()
          .split('\n')
          .some((l) => l.includes('rotation step failed') && l.includes('AUDIT_WRITE_FAILED')),
        'no line per secret and retry',
      );

      // The disk works again: the pending rotation happens by itself (the daemon's own retry).
      const resumed = finishes('app/key', 1);
      state.mode = 'ok';
      await resumed;
      await new Promise((r) => setImmediate(r)); // the rotation ends just after its 'finished' step; a rotateNow before that would join it
      t.equal(d.served('app/key')!.version, before + 1, `${mode}: rotated once, without a restart`);
      t.notOk(d.status().audit.failing, `${mode}: status is clear`);
      t.notOk(d.status().secrets.find((s) => s.name === 'app/key')?.failing);
      t.match(w.logs(), /the audit log can be written again: rotations resume/);
    }
    t.not(d.served('app/key')!.value, v1);
    await d.stop();
    const v = await verifyAuditDir(path.join(w.dataDir, 'repo', 'audit'));
    t.match(v.result, { ok: true }, 'the chain verifies: nothing partial was left behind');
  },
);

t.test('an audit commit that git failed is retried by itself, without waiting for another entry', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policy.yaml': POLICY, 'secrets.yaml': SECRET });
  // A git wrapper first on PATH (the daemon runs git by name) fails `git commit` while a flag file exists.
  const bin = path.join(w.root, 'bin');
  mkdirSync(bin);
  const flag = path.join(w.root, 'fail-commit');
  const real = execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim();
  writeFileSync(
    path.join(bin, 'git'),
    `#!/bin/sh\nfor a in "$@"; do case "$a" in commit) [ -e ${JSON.stringify(flag)} ] && { echo "fatal: injected" >&2; exit 128; };; esac; done\nexec ${JSON.stringify(real)} "$@"\n`,
  );
  chmodSync(path.join(bin, 'git'), 0o755);
  const PATH = process.env.PATH;
  process.env.PATH = `${bin}:${PATH}`;
  t.teardown(() => void (process.env.PATH = PATH));

  const d = await w.start();
  t.teardown(() => d.stop());
  const onRemote = () => {
    const last = git(w.remote, 'ls-tree', '--name-only', 'main', 'audit/').split('\n').filter(Boolean).at(-1);
    return last ? git(w.remote, 'show', `main:${last}`).split('\n').length : 0;
  };
  const written = async () =>
    ((await verifyAuditDir(path.join(w.dataDir, 'repo', 'audit'))).result as { entries: number }).entries;
  const pushed = async () =>
    onRemote() === (await written()) && !d.status().audit.commitPending && d.status().audit.pushFailures === 0;
  t.ok(await until(pushed), 'the first entries are on the remote');
  writeFileSync(flag, '');
  await d.rotateNow('app/key', 'commit fails');
  t.ok(await until(() => w.logs().includes('audit commit or push failed')), 'the commit of its entry failed');
  rmSync(flag);
  // No further entry is written (the policy is monthly, sync daily): only the flush's own retry can commit it.
  t.ok(await until(pushed), 'the entry reached the remote by itself');
});

t.test('the state store failing (DaemonOptions.storeFs): the same pause, one log line, and resumption', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policy.yaml': POLICY, 'secrets.yaml': SECRET });
  let full = false;
  const storeFs: StoreFs = {
    ...nodeFs,
    open: async (file, mode) => {
      const f = await nodeFs.open(file, mode);
      return {
        ...f,
        read: (b, p) => f.read(b, p),
        write: async (data, position) => {
          if (full) throw Object.assign(new Error(`ENOSPC: injected, write '${file}'`), { code: 'ENOSPC' });
          return f.write(data, position);
        },
        sync: () => f.sync(),
        truncate: (n) => f.truncate(n),
        size: () => f.size(),
        close: () => f.close(),
      };
    },
  };
  const d = await w.start({ storeFs });
  t.teardown(() => d.stop());
  full = true;
  await t.rejects(
    d.rotateNow('app/key', 'store full'),
    { code: 'STATE_IO' },
    'rotor rotate fails (and, with nothing stored, is not retried)',
  );
  // A rotate request in the repository makes the secret due: its rotation is retried until it can be stored.
  w.push('secrets.yaml', `${SECRET}rotate: { request: "r1", reason: "the store is full" }\n`, 'rotate app/key');
  await d.syncNow();
  t.equal(d.served('app/key')?.version, 1, 'no new value');
  t.match(d.status().store, { failing: { code: 'STATE_IO', errno: 'ENOSPC' } }, 'status() says why');
  t.match(
    d.status().secrets.find((s) => s.name === 'app/key'),
    { failing: { error: 'STATE_IO' } },
  );
  t.equal(
    w
      .logs()
      .split('\n')
      .filter((l) => l.includes('the state store cannot be written')).length,
    1,
    'one log line',
  );
  const resumed = finishes('app/key', 1);
  full = false;
  await resumed;
  t.equal(d.served('app/key')?.version, 2, 'rotated by itself once the store can be written');
  t.notOk(d.status().store.failing);
});

t.test('a flaky store (one failed write now and then) is one log line, not one per blip', async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policy.yaml': POLICY, 'secrets.yaml': SECRET });
  let failNext = false;
  const storeFs: StoreFs = {
    ...nodeFs,
    open: async (file, mode) => {
      const f = await nodeFs.open(file, mode);
      return {
        ...f,
        read: (b, p) => f.read(b, p),
        write: async (data, position) => {
          if (failNext) {
            failNext = false;
            throw Object.assign(new Error(`EIO: injected, write '${file}'`), { code: 'EIO' });
          }
          return f.write(data, position);
        },
        sync: () => f.sync(),
        truncate: (n) => f.truncate(n),
        size: () => f.size(),
        close: () => f.close(),
      };
    },
  };
  const d = await w.start({ storeFs });
  t.teardown(() => d.stop());
  for (let i = 0; i < 5; i++) {
    failNext = true;
    await t.rejects(d.rotateNow('app/key', `blip ${i}`), { code: 'STATE_IO' });
    await d.rotateNow('app/key', `after blip ${i}`);
  }
  t.equal(d.served('app/key')?.version, 6, 'every rotation after a blip worked');
  const lines = w.logs().split('\n');
  t.equal(lines.filter((l) => l.includes('the state store cannot be written')).length, 1, 'one line for five blips');
  t.equal(lines.filter((l) => l.includes('the state store can be written again')).length, 1);
});
