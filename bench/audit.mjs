#!/usr/bin/env node
// bench/audit: how long verifying the audit chain takes (10,000 and 100,000 entries, in memory and
// from disk), and how many entries per second the writer makes durable (one fsync per append, and
// batches of 100). Build first (npx tsc -p .). Usage: node bench/audit.mjs [--dir DIR] [--appends N]
// DIR is where the logs are written (default: the system's temporary directory); its file system
// decides the fsync figures.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const { AuditLog, lineHash, sealEntry, verifyAuditDir, verifyChain, ZERO_HASH } = await import(
  path.join(root, 'dist/src/audit/index.js')
);

const { values } = parseArgs({ options: { dir: { type: 'string' }, appends: { type: 'string', default: '300' } } });
const base = mkdtempSync(path.join(values.dir ?? os.tmpdir(), 'rotor-audit-bench-'));
const APPENDS = Number(values.appends);

const EVENTS = ['created', 'rotated', 'retired', 'rotation-failed'];
function input(i, startMs) {
  const event = EVENTS[i % EVENTS.length];
  return {
    time: new Date(startMs + i * 60_000).toISOString(),
    event,
    secret: `team-${i % 100}/secret-${i % 997}`,
    ...(event === 'rotated'
      ? { from: i, to: i + 1, fingerprint: `hmac-sha256:${Buffer.alloc(16, i % 256).toString('base64url')}` }
      : {}),
    trigger: 'schedule',
    ...(i % 10 === 0 ? { reason: `ticket ${i}: rotate after an incident` } : {}),
    commit: 'a'.repeat(40),
    stateSeq: i,
    storeId: 'store-7f3a9c',
  };
}

/** A log of n entries, one minute apart, as its month files. */
function build(n) {
  const files = new Map();
  let prev = ZERO_HASH;
  const start = Date.parse('2026-01-01T00:00:00.000Z');
  for (let i = 0; i < n; i++) {
    const { entry, line } = sealEntry({ seq: i + 1, ...input(i, start), prev });
    const f = `${entry.time.slice(0, 7)}.jsonl`;
    let lines = files.get(f);
    if (!lines) files.set(f, (lines = []));
    lines.push(`${line}\n`);
    prev = lineHash(line);
  }
  return [...files].map(([name, lines]) => ({ path: name, text: lines.join('') }));
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Median wall and CPU (user + system) milliseconds of runs of fn: CPU time is the steadier figure on a busy machine. */
async function time(fn, runs) {
  const wall = [];
  const cpu = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    await fn();
    const c = process.cpuUsage(c0);
    wall.push(performance.now() - t0);
    cpu.push((c.user + c.system) / 1000);
  }
  return { wall: median(wall), cpu: median(cpu) };
}

const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);
console.log(
  `node ${process.version}, ${os.cpus().length} CPUs, load ${os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}, logs under ${base}`,
);

try {
  for (const [n, runs] of [
    [10_000, 7],
    [100_000, 3],
  ]) {
    const files = build(n);
    const bytes = files.reduce((s, f) => s + Buffer.byteLength(f.text), 0);
    const dir = path.join(base, `log-${n}`);
    mkdirSync(dir);
    for (const f of files) writeFileSync(path.join(dir, f.path), f.text);
    let r;
    const mem = await time(() => {
      r = verifyChain(files);
    }, runs);
    if (!r.ok || r.entries !== n) throw new Error(`verify failed: ${JSON.stringify(r)}`);
    const disk = await time(async () => {
      r = (await verifyAuditDir(dir)).result;
    }, runs);
    if (!r.ok) throw new Error('verify from disk failed');
    console.log(
      `verify ${n.toLocaleString('en')} entries (${files.length} files, ${(bytes / 1024 / 1024).toFixed(1)} MiB), median of ${runs}: in memory ${fmt(mem.wall)} wall, ${fmt(mem.cpu)} CPU (${((mem.cpu * 1000) / n).toFixed(1)} µs/entry); from disk ${fmt(disk.wall)} wall, ${fmt(disk.cpu)} CPU`,
    );
  }

  // Appends: one entry per append, each awaited (an fsync each), then batches of 100.
  const dir1 = path.join(base, 'append-1');
  const log1 = await AuditLog.open(dir1);
  const start = Date.parse('2026-11-26T00:00:00.000Z');
  let t0 = performance.now();
  for (let i = 0; i < APPENDS; i++) await log1.append([input(i, start)]);
  let ms = performance.now() - t0;
  console.log(
    `append, 1 entry per append, awaited: ${APPENDS} entries in ${fmt(ms)} = ${Math.round((APPENDS * 1000) / ms)} entries/s (${(ms / APPENDS).toFixed(2)} ms per fsync'd append)`,
  );

  const dir100 = path.join(base, 'append-100');
  const log100 = await AuditLog.open(dir100);
  const BATCHES = Math.max(10, Math.round(APPENDS / 10));
  t0 = performance.now();
  for (let b = 0; b < BATCHES; b++)
    await log100.append(Array.from({ length: 100 }, (_, i) => input(b * 100 + i, start)));
  ms = performance.now() - t0;
  console.log(
    `append, batches of 100, awaited: ${BATCHES * 100} entries in ${fmt(ms)} = ${Math.round((BATCHES * 100 * 1000) / ms)} entries/s (${(ms / BATCHES).toFixed(2)} ms per batch)`,
  );

  const dirQ = path.join(base, 'append-queued');
  const logQ = await AuditLog.open(dirQ);
  t0 = performance.now();
  await Promise.all(Array.from({ length: APPENDS }, (_, i) => logQ.append([input(i, start)])));
  ms = performance.now() - t0;
  console.log(
    `append, 1 entry per append, ${APPENDS} issued at once (group commit: they share fsyncs): ${APPENDS} entries in ${fmt(ms)} = ${Math.round((APPENDS * 1000) / ms)} entries/s`,
  );

  for (const d of [dir1, dir100, dirQ]) {
    const r = (await verifyAuditDir(d)).result;
    if (!r.ok) throw new Error(`the appended log ${d} does not verify: ${JSON.stringify(r)}`);
  }
} finally {
  rmSync(base, { recursive: true, force: true });
}
