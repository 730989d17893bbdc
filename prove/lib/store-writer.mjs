// The child of the store-kill proof (prove/4-tamper.mjs): opens the state store in DIR and writes the
// sequence of store-writes.mjs from where the store stands, with four concurrent writers (so that batches
// share fsyncs, as the daemon's do), until it is killed. Every step is reported on fd 3 with a
// synchronous write before the next step happens, so that what the parent reads after the SIGKILL is
// exactly what the child had done:
//   open            about to open the store
//   warn KIND       a repair on opening (torn, compaction, creation, other)
//   ready C         opened; the store's counter is C
//   start N         write N is about to be submitted
//   ack N           write N was acknowledged (durable)
// It starts (loads its modules) ahead of time and touches nothing before a byte arrives on stdin, so
// that the parent can start the next child while the current one runs.
// Usage: node store-writer.mjs DIR IDENTITY_FILE RECIPIENT
import { readFileSync, writeSync } from 'node:fs';
import { dist } from './harness.mjs';
import { opsFor } from './store-writes.mjs';

const [dir, identityFile, recipient] = process.argv.slice(2);
const out = (s) => {
  for (;;) {
    try {
      writeSync(3, s);
      return;
    } catch (e) {
      if (e.code !== 'EAGAIN') throw e;
    }
  }
};
const { openStore } = await dist('src/state/store.js');
const identity = readFileSync(identityFile, 'utf8').trim();
await new Promise((resolve) => process.stdin.once('data', resolve));
process.stdin.pause();
const kind = (m) =>
  /incomplete record/.test(m)
    ? 'torn'
    : /compaction was interrupted/.test(m)
      ? 'compaction'
      : /finished creating/.test(m)
        ? 'creation'
        : 'other';
out('open\n');
const store = await openStore({
  dir,
  identity,
  recipients: [recipient],
  compactAfter: { records: 25 },
  onWarning: (m) => out(`warn ${kind(m)}\n`),
});
const counter = store.get('counter') ?? 0;
out(`ready ${counter}\n`);
let next = counter + 1;
async function writer() {
  for (;;) {
    const n = next++;
    out(`start ${n}\n`);
    await store.write(opsFor(n));
    out(`ack ${n}\n`);
  }
}
for (let w = 0; w < 4; w++) {
  writer().catch((e) => {
    out(`error ${String(e?.code ?? e?.message ?? e).split('\n')[0]}\n`);
    process.exit(3);
  });
}
