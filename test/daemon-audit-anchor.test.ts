/**
 * The remote anchors the clone's audit log (found by the proof, prove/4-tamper.mjs): entries
 * removed from or changed in the clone after the last one the state store anchors (here the
 * config-applied entry of a start) were committed at the next start and pushed as the daemon's own, and
 * a new entry took the removed one's seq. The daemon must refuse to start instead, and push nothing.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { lineHash, sealEntry } from '../src/audit/entry.js';
import { git } from './helpers.js';
import { world } from './world.js';

const FILES = {
  'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
  'p.yaml':
    'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1h\n---\nkind: Secret\nname: app/key\npolicy: monthly\ngenerate: { length: 40 }\n',
};

/** A world whose audit log ends with an entry the store does not anchor, on the remote too. */
async function prepared(t: Parameters<Parameters<typeof t.test>[1]>[0]) {
  const w = await world(t, FILES);
  const d1 = await w.start();
  await d1.rotateNow('app/key', 'once');
  await d1.stop();
  await (await w.start()).stop(); // a start writes config-applied (no store write follows it); stop pushes
  const dir = path.join(w.dataDir, 'repo', 'audit');
  const file = path.join(dir, readdirSync(dir).sort().at(-1)!);
  const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
  t.equal(JSON.parse(lines.at(-1)!).event, 'config-applied', 'the last entry is one the store does not anchor');
  const remoteLog = () => git(w.remote, 'show', `main:audit/${path.basename(file)}`);
  t.equal(remoteLog(), lines.join('\n'), 'the remote holds every entry');
  return { w, file, lines, remoteLog };
}

t.test('the last pushed entry removed from the clone: refused (AUDIT_TRUNCATED), nothing pushed', async (t) => {
  const { w, file, lines, remoteLog } = await prepared(t);
  const before = remoteLog();
  writeFileSync(file, `${lines.slice(0, -1).join('\n')}\n`);
  await t.rejects(w.start(), {
    code: 'AUDIT_TRUNCATED',
    message: /ends at entry \d+, before entry \d+, which the remote holds/,
  });
  t.equal(remoteLog(), before, 'the remote is as it was');
});

t.test(
  'the last pushed entry changed in the clone (its hash recomputed): refused (AUDIT_CHAIN_BROKEN), nothing pushed',
  async (t) => {
    const { w, file, lines, remoteLog } = await prepared(t);
    const before = remoteLog();
    const { hash: _h, ...last } = JSON.parse(lines.at(-1)!);
    const forged = sealEntry({ ...last, detail: 'forged', prev: lineHash(lines.at(-2)!) }).line;
    writeFileSync(file, `${[...lines.slice(0, -1), forged].join('\n')}\n`);
    await t.rejects(w.start(), { code: 'AUDIT_CHAIN_BROKEN', message: /differs at entry \d+, which the remote holds/ });
    t.equal(remoteLog(), before, 'the remote is as it was');
  },
);

t.test('entries written but not yet committed before a crash are still taken', async (t) => {
  const { w, file, lines } = await prepared(t);
  // As if the daemon had appended an entry and died before committing it.
  const extra = sealEntry({
    seq: lines.length + 1,
    time: new Date().toISOString(),
    event: 'config-applied',
    prev: lineHash(lines.at(-1)!),
  }).line;
  writeFileSync(file, `${[...lines, extra].join('\n')}\n`);
  const d = await w.start();
  await d.stop();
  t.match(git(w.remote, 'show', `main:audit/${path.basename(file)}`), extra, 'committed and pushed');
});
