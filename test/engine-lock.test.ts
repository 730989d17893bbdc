/**
 * One step of a secret at a time. The daemon may run the engine's due work again while an earlier run
 * still waits (a rotation finishing re-arms the timer at once), and `rotor rotate` may come in at any
 * moment: a secret's rotation, retirement and purge must still never overlap, or two of them read the
 * same record and the later write undoes the earlier one (a served version going back, a version
 * audited twice: seen by prove/1-faults.mjs under injected faults). Real store, real audit log; its
 * file-system layer holds a write at a gate to make the overlap certain.
 */

import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { AuditEntry, AuditFs } from '../src/audit/log.js';
import { AuditLog, nodeAuditFs } from '../src/audit/log.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { loadModel } from '../src/model/load.js';
import { DirectorySource } from '../src/model/source.js';
import { Engine } from '../src/rotation/engine.js';
import { openStore } from '../src/state/store.js';
import { tempDir } from './helpers.js';

/** An AuditFs whose writes wait at a gate while it is closed; the held write then fails (EIO) or goes on. */
function gated() {
  let closed = false;
  let arrived: () => void = () => undefined;
  let release: (fail: boolean) => void = () => undefined;
  const fs: AuditFs = {
    ...nodeAuditFs,
    open: async (file, flags) => {
      const fh = await nodeAuditFs.open(file, flags);
      return {
        write: async (buf, off, len) => {
          if (closed) {
            closed = false;
            const fail = await new Promise<boolean>((r) => {
              release = r;
              arrived();
            });
            if (fail) throw Object.assign(new Error('EIO: injected'), { code: 'EIO' });
          }
          return fh.write(buf, off, len);
        },
        truncate: (n) => fh.truncate(n),
        sync: () => fh.sync(),
        close: () => fh.close(),
      };
    },
  };
  return {
    fs,
    /** Holds the next write; resolves once a write is waiting there. */
    hold: () =>
      new Promise<void>((r) => {
        closed = true;
        arrived = r;
      }),
    release: (fail: boolean) => release(fail),
  };
}

t.test('overlapping runs and a rotate request never run two steps of one secret at once', async (t) => {
  const dir = tempDir(t, 'rotor-engine-lock-');
  mkdirSync(path.join(dir, 'repo'));
  writeFileSync(path.join(dir, 'repo', 'rotor.yaml'), 'kind: Config\n');
  writeFileSync(
    path.join(dir, 'repo', 'all.yaml'),
    'kind: Policy\nname: p\nevery: 30d\noverlap: 1s\n---\nkind: Secret\nname: app/key\npolicy: p\ngenerate: {}\n',
  );
  let clock = Date.parse('2026-11-26T00:00:00Z');
  const model = await loadModel(new DirectorySource(path.join(dir, 'repo')), { now: clock });
  await generateKeys(path.join(dir, 'keys'));
  const keys = await loadKeys(path.join(dir, 'keys'));
  const store = await openStore({
    dir: path.join(dir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
  });
  t.teardown(() => store.close());
  const gate = gated();
  const entries: AuditEntry[] = [];
  const log = await AuditLog.open(path.join(dir, 'audit'), { fs: gate.fs });
  const engine = new Engine({
    store,
    audit: {
      append: async (events) => void entries.push(...(await log.append(events))),
      get head() {
        return log.head;
      },
    },
    audited: new Map(),
    fingerprintKey: Buffer.alloc(32, 7),
    now: () => clock,
    log: () => undefined,
  });
  await engine.apply(model.desired, 'c'.repeat(40));
  await engine.runDue();
  await engine.rotateNow('app/key', 'version 2');
  clock += 2000; // version 1's overlap is over: its retirement is due

  // A rotation whose audit entry waits at the gate; meanwhile two runs of the due work (each would
  // retire version 1) and a rotate request queue up behind it.
  const held = gate.hold();
  const rotation = engine.rotateNow('app/key', 'version 3').then(
    () => 'done',
    (e: { code?: string }) => e.code,
  );
  await held;
  const runs = [engine.runDue(), engine.runDue()];
  gate.release(true); // the rotation's entry cannot be written: it fails, its pending value stays
  t.equal(await rotation, 'AUDIT_WRITE_FAILED');
  await Promise.all(runs);
  await engine.idle();

  const retired = entries.filter((e) => e.event === 'retired');
  t.same(
    retired.map((e) => e.from),
    [1],
    'version 1 retired once',
  );
  // A rotate request while a retirement runs is a rotation, not a join of the retirement.
  clock += 2000;
  await engine.runDue(); // the failed rotation's retry: version 3
  t.equal(engine.served('app/key')?.version, 3);
  clock += 2000; // version 2's retirement is due
  const held2 = gate.hold();
  const retiring = engine.runDue();
  await held2;
  const request = engine.rotateNow('app/key', 'during a retirement');
  gate.release(false);
  await Promise.all([retiring, request]);
  await engine.idle();
  const made = entries.filter((e) => e.event === 'created' || e.event === 'rotated').map((e) => e.to);
  t.same(made, [...new Set(made)], 'no version audited twice');
  t.same(
    made,
    made.map((_, i) => i + 1),
    'versions 1..N in order',
  );
  t.equal(engine.served('app/key')?.version, made.at(-1), 'the store serves the last audited version');
  t.same(made, [1, 2, 3, 4], 'the request made a version of its own');
  t.same(
    entries.filter((e) => e.event === 'retired').map((e) => e.from),
    [1, 2],
    'each previous version retired once',
  );
});
