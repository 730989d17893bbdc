// A rotor daemon in its own process, for the proofs (started by faults-world.mjs): the real
// Daemon from dist/, with the injected file-system layers of faults-fs.mjs under its state store and
// its audit log, and whatever PATH (the git wrapper) its parent gave it. Logs go to stderr (a file).
// The parent steers it over the IPC channel:
//   { id, cmd: 'faults', store?: PLAN, audit?: PLAN }  sets the plans (see faults-fs.mjs)
//   { id, cmd: 'counts' }                               the faults injected so far, by kind
//   { id, cmd: 'stop' }                                 a graceful stop (pushes what is left), then exit
// Usage: node faults-daemon.mjs '{"repo":..., "dataDir":..., "socketDir":..., "seed":1, "commitDelayMs":200,
//   "breakGlass": ["age1..."]}'
import { writeSync } from 'node:fs';
import { FaultPlan, faultyAuditFs, faultyStoreFs } from './faults-fs.mjs';

const dist = (p) => new URL(`../../dist/src/${p}`, import.meta.url).href;
const { Daemon } = await import(dist('daemon/daemon.js'));
const { jsonLogger } = await import(dist('log.js'));
const { nodeFs } = await import(dist('state/fs.js'));
const { nodeAuditFs } = await import(dist('audit/log.js'));

const cfg = JSON.parse(process.argv[2]);
const plans = {
  store: new FaultPlan('store', cfg.store, cfg.seed ?? 1),
  audit: new FaultPlan('audit', cfg.audit, (cfg.seed ?? 1) + 1),
};
const log = jsonLogger((line) => void writeSync(2, line));
const daemon = new Daemon({
  repo: cfg.repo,
  branch: cfg.branch ?? 'main',
  dataDir: cfg.dataDir,
  socketDir: cfg.socketDir,
  breakGlass: cfg.breakGlass ?? [],
  log,
  commitDelayMs: cfg.commitDelayMs ?? 200,
  storeFs: faultyStoreFs(nodeFs, plans.store),
  auditFs: faultyAuditFs(nodeAuditFs, plans.audit),
});

const reply = (id, body) =>
  new Promise((resolve) => (process.send ? process.send({ id, ...body }, undefined, {}, () => resolve()) : resolve()));
let stopping;
const stop = () => (stopping ??= daemon.stop());

try {
  await daemon.start();
} catch (e) {
  process.send?.({ type: 'failed', code: e.code ?? 'ERROR', message: e.message });
  process.exit(1);
}
process.send?.({ type: 'started' });

process.on('message', (m) => {
  void (async () => {
    try {
      if (m.cmd === 'faults') {
        if (m.store) plans.store.set(m.store);
        if (m.audit) plans.audit.set(m.audit);
        reply(m.id, { ok: true });
      } else if (m.cmd === 'counts') {
        reply(m.id, { ok: true, result: { ...plans.store.counts, ...plans.audit.counts } });
      } else if (m.cmd === 'stop') {
        await stop();
        await reply(m.id, { ok: true });
        process.exit(0);
      } else {
        reply(m.id, { ok: false, error: `unknown command ${m.cmd}` });
      }
    } catch (e) {
      reply(m.id, { ok: false, error: `${e.code ?? 'ERROR'}: ${e.message}` });
    }
  })();
});
// The parent went away: stop too.
process.on('disconnect', () => void stop().finally(() => process.exit(0)));
