#!/usr/bin/env node
// bench/rotate: N secrets all due at once (N = 100 and 10,000, in the same run) are rotated by the
// daemon (engine, encrypted store, audit log), and the audit entries committed and pushed to a bare
// remote. Prints the total time per N and the cost of one durable store write in each store after the
// run (median of 200 single-key puts). Targets: 10,000 in under 10 s (20 s with the state store on
// PostgreSQL); the write cost at 10,000 secrets within 1.5 times that at 100.
// Usage: npm run bench:rotate [-- --backend file|postgres|both] (file, the default: the store in
// DATA_DIR/state; postgres: rotor daemon --state on a throwaway durable PostgreSQL, bench/lib/pg-server.mjs;
// both: the two in one run)
import { execFileSync } from 'node:child_process';
import diagnostics_channel from 'node:diagnostics_channel';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { benchRemote } from './lib/remote.mjs';

const dist = (p) => new URL(`../dist/src/${p}`, import.meta.url).href;
const { Daemon } = await import(dist('daemon/daemon.js'));
const { generateKeys, loadKeys } = await import(dist('keys.js'));
const { openStore } = await import(dist('state/store.js'));
const { openPostgresStore, postgresStoreBackend } = await import(dist('state/postgres.js'));
const { values } = parseArgs({ options: { backend: { type: 'string', default: 'file' } } });
const BACKENDS = values.backend === 'both' ? ['file', 'postgres'] : [values.backend];
if (!BACKENDS.every((b) => b === 'file' || b === 'postgres')) throw new Error('--backend file, postgres or both');
const pgServer = BACKENDS.includes('postgres')
  ? await (await import('./lib/pg-server.mjs')).benchPostgres()
  : undefined;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function scenario(n, backend) {
  const pgConfig = backend === 'postgres' && { url: pgServer.url(`rotate_${n}`), env: pgServer.env };
  const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-rotate-'));
  try {
    const docs = [];
    for (let i = 0; i < n; i++)
      docs.push(`kind: Secret\nname: team-${i % 100}/secret-${i}\npolicy: monthly\ngenerate: { length: 32 }\n`);
    const remote = benchRemote(root, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: monthly\nevery: 30d\noverlap: 1d\n',
      'secrets.yaml': docs.join('---\n'),
    });
    const dataDir = path.join(root, 'data');
    await generateKeys(dataDir);
    let clock = Date.now();
    const log = (level, msg, f) => {
      if (process.env.BENCH_DEBUG) console.error(level, msg, JSON.stringify(f));
    };
    const d = new Daemon({
      repo: remote,
      branch: 'main',
      dataDir,
      breakGlass: [],
      log,
      now: () => clock,
      commitDelayMs: 200,
      ...(pgConfig && { stateBackend: postgresStoreBackend(pgConfig) }),
    });
    const t0 = performance.now();
    await d.start(); // every secret is new: version 1 for all, at once
    const created = performance.now() - t0;
    // A month later every secret is due at once.
    let finished = 0;
    const done = new Promise((resolve) => {
      diagnostics_channel.channel('rotor:rotation').subscribe(function on(m) {
        if (m.step === 'finished' && ++finished === n) {
          diagnostics_channel.channel('rotor:rotation').unsubscribe(on);
          resolve();
        }
      });
    });
    const t1 = performance.now();
    clock += 31 * 86_400_000;
    await d.syncNow(); // re-arms the timer against the new clock
    await done;
    await d.stop(); // commits and pushes the audit entries
    const rotated = performance.now() - t1;
    const audited = Number(
      execFileSync('git', ['-C', remote, 'show', `main:audit/${new Date(clock).toISOString().slice(0, 7)}.jsonl`], {
        maxBuffer: 256 * 1024 * 1024,
      })
        .toString()
        .split('\n')
        .filter(Boolean).length,
    );
    // The cost of one durable write in this store, now holding n secrets.
    const keys = await loadKeys(dataDir);
    const keyOptions = { identity: keys.identity, recipients: [keys.recipient] };
    const store = pgConfig
      ? await openPostgresStore(pgConfig, keyOptions)
      : await openStore({ dir: path.join(dataDir, 'state'), ...keyOptions });
    const costs = [];
    for (let i = 0; i < 200; i++) {
      const s = performance.now();
      await store.write([{ op: 'put', key: 'bench/probe', value: { i, pad: 'x'.repeat(200) } }]);
      costs.push(performance.now() - s);
    }
    await store.close();
    return { n, backend, created, rotated, audited, write: median(costs) };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

console.log(
  `rotor daemon, N secrets all due at once (node ${process.version}, ${os.cpus().length} cpus, load ${os.loadavg()[0].toFixed(1)})`,
);
try {
  for (const backend of BACKENDS) {
    const small = await scenario(100, backend);
    const large = await scenario(10_000, backend);
    const where = backend === 'file' ? 'state store in files' : `state store on PostgreSQL ${pgServer.version}`;
    console.log(`${where}:`);
    for (const r of [small, large]) {
      console.log(
        `  N=${String(r.n).padEnd(6)} version 1 for all: ${(r.created / 1000).toFixed(2)} s   a rotation of all, audited, committed and pushed: ${(r.rotated / 1000).toFixed(2)} s   (${r.audited} audit lines on the remote this month)`,
      );
    }
    console.log(
      `  one durable store write: ${small.write.toFixed(3)} ms at 100 secrets, ${large.write.toFixed(3)} ms at 10,000: ratio ${(large.write / small.write).toFixed(2)} (target <= 1.5)`,
    );
    const target = backend === 'file' ? 10 : 20;
    console.log(
      `  target: all 10,000 rotated in under ${target} s: ${large.rotated < target * 1000 ? 'met' : 'NOT met'}`,
    );
  }
} finally {
  await pgServer?.stop();
}
