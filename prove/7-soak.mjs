// Part 7, the soak: `rotor daemon` (its own process, as a user runs it) with 1,000 secrets rotating
// every 10 s (each retiring its previous version 3 s later) for 10 minutes, while a consumer reads
// them through its socket without pause. No error may be logged, no request may fail, the audit log on
// the remote must verify and hold every rotation exactly once, each secret's versions without a gap.
//
// Memory, after a warm-up (the first quarter), compared between the first and the last third of the
// rest: the heap must not grow, nor the RSS. The heap is measured where it means something: the daemon
// runs with --trace-gc, and the size of the heap right after each full collection (Mark-Compact, which
// leaves only what is still referenced) is its live memory; the row compares the median of those sizes
// in the two stretches. (Heap in use sampled at random moments, the figure before, swings by tens of
// MiB with the collector's rhythm: its lowest point in a stretch depends on whether a sample happened
// to follow a full collection.) RSS is sampled from /proc every 5 s; its lowest point per stretch is
// compared. Both are also printed as a table.
// The memory rows are judged when each stretch spans at least JUDGED_STRETCH_S and, for the heap, holds
// at least MIN_COLLECTIONS full collections; otherwise they are skipped, with the reason. The short
// version (CI: 100 secrets for 40 s, stretches of 10 s) skips them. PROVE_SOAK_SECONDS=N sets the length
// of either version (e.g. to try the memory rows in 5 minutes instead of 10).
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const part = 7;
export const title = 'Soak: 1,000 secrets rotating every 10 s for 10 minutes under socket load';

/** The memory rows are judged when each compared stretch (a third of the time after the warm-up) spans at least this long. */
const JUDGED_STRETCH_S = 60;
/** ... and, for the heap, holds at least this many full collections. */
const MIN_COLLECTIONS = 3;
/** The live heap and the RSS may grow by less than this from the first to the last stretch. */
const MAX_GROWTH = 0.2;
/** A full collection in --trace-gc's output: "Mark-Compact 45.1 (60.2) -> 20.3 (58.4) MB" (sizes before and after). */
const MARK_COMPACT = /: Mark-Compact(?: \([a-z ]+\))? ([\d.]+) \(([\d.]+)\) -> ([\d.]+) \(([\d.]+)\) MB/;

const BIN = new URL('../dist/src/cli/main.js', import.meta.url).pathname;
const { verifyAuditDir } = await import(new URL('../dist/src/audit/log.js', import.meta.url).href);

const git = (cwd, ...args) =>
  execFileSync(
    'git',
    ['-c', 'user.name=prove', '-c', 'user.email=prove@rotor.invalid', '-c', 'commit.gpgsign=false', ...args],
    { cwd, stdio: 'ignore' },
  );
const delay = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function get(o) {
  return new Promise((resolve, reject) => {
    const req = request({ ...o, agent: o.agent ?? false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error('timeout')));
    req.end();
  });
}

async function sample(pid, port) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024;
  const metrics = (await get({ host: '127.0.0.1', port, path: '/metrics' })).body;
  const num = (name) => Number(new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`, 'm').exec(metrics)?.[1] ?? NaN);
  const rotations = [...metrics.matchAll(/^rotor_rotations_total\{[^}]*result="success"[^}]*\} ([0-9.e+]+)$/gm)].reduce(
    (a, m) => a + Number(m[1]),
    0,
  );
  return { rss, heap: num('nodejs_heap_size_used_bytes') / 2 ** 20, rotations };
}

export async function run({ short, log }) {
  const SECRETS = short ? 100 : 1000;
  const SECONDS = Number(process.env.PROVE_SOAK_SECONDS) || (short ? 40 : 600);
  const SAMPLE_MS = short ? 4000 : 5000;
  const root = mkdtempSync(path.join(os.tmpdir(), 'rotor-soak-'));
  let daemon;
  try {
    const work = path.join(root, 'work');
    mkdirSync(work);
    writeFileSync(path.join(work, 'rotor.yaml'), 'kind: Config\nsync: { interval: 1d }\n');
    writeFileSync(
      path.join(work, 'policy.yaml'),
      'kind: Policy\nname: soak\nevery: 10s\njitter: 5s\noverlap: 3s\nretain: 2\n',
    );
    const docs = [];
    for (let i = 0; i < SECRETS; i++)
      docs.push(`kind: Secret\nname: soak/s${String(i).padStart(4, '0')}\npolicy: soak\ngenerate: { length: 32 }\n`);
    writeFileSync(path.join(work, 'secrets.yaml'), docs.join('---\n'));
    writeFileSync(
      path.join(work, 'consumer.yaml'),
      `kind: Consumer\nname: soak\nuid: ${process.getuid()}\nsecrets: ["soak/*"]\n`,
    );
    git(work, 'init', '-q', '-b', 'main');
    git(work, 'add', '-A');
    git(work, 'commit', '-q', '-m', 'soak');
    const remote = path.join(root, 'remote.git');
    git(root, 'clone', '-q', '--bare', work, remote);
    const dataDir = path.join(root, 'data');
    execFileSync(process.execPath, [BIN, 'keygen', dataDir], { stdio: 'ignore' });
    const socketDir = path.join(root, 'sockets');
    const port = await freePort();
    const env = { ...process.env };
    delete env.NODE_OPTIONS; // not tap's loader: the daemon as a user runs it
    daemon = spawn(
      process.execPath,
      [
        '--trace-gc',
        BIN,
        'daemon',
        '--repo',
        remote,
        '--data-dir',
        dataDir,
        '--socket-dir',
        socketDir,
        '--agent-listen',
        '127.0.0.1:0',
        '--metrics-listen',
        `127.0.0.1:${port}`,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env },
    );
    // --trace-gc writes a line per collection on stdout (the daemon logs on stderr): keep the full ones.
    const collections = []; // { at (ms, this process's clock), after (MiB) }
    let gcOut = '';
    daemon.stdout.on('data', (c) => {
      gcOut += c;
      let nl;
      while ((nl = gcOut.indexOf('\n')) >= 0) {
        const m = MARK_COMPACT.exec(gcOut.slice(0, nl));
        gcOut = gcOut.slice(nl + 1);
        if (m) collections.push({ at: Date.now(), after: Number(m[3]) });
      }
    });
    let stderr = '';
    const levels = { error: 0, warn: 0 };
    const errorCodes = new Map();
    daemon.stderr.on('data', (c) => {
      stderr += c;
      let nl;
      while ((nl = stderr.indexOf('\n')) >= 0) {
        const line = stderr.slice(0, nl);
        stderr = stderr.slice(nl + 1);
        try {
          const e = JSON.parse(line);
          const level =
            typeof e.level === 'number' ? (e.level >= 50 ? 'error' : e.level >= 40 ? 'warn' : 'info') : e.level;
          if (level === 'error' || level === 'warn') {
            levels[level]++;
            const k = `${level} ${e.code ?? e.msg}`;
            errorCodes.set(k, (errorCodes.get(k) ?? 0) + 1);
          }
        } catch {
          levels.error++;
          errorCodes.set(`unparsed: ${line.slice(0, 80)}`, 1);
        }
      }
    });
    const exited = new Promise((r) => daemon.once('exit', (code, signal) => r({ code, signal })));
    const sock = path.join(socketDir, 'soak.sock');
    for (let i = 0; i < 1200 && !existsSync(sock); i++) await delay(50);
    if (!existsSync(sock)) throw new Error('the daemon did not open its consumer socket');
    log(`soak: daemon pid ${daemon.pid}, ${SECRETS} secrets, ${SECONDS} s`);

    // The consumer: 4 keep-alive connections reading random secrets without pause.
    const load = { requests: 0, failures: 0, stop: false };
    const names = Array.from({ length: SECRETS }, (_, i) => `soak/s${String(i).padStart(4, '0')}`);
    const agent = new Agent({ keepAlive: true, maxSockets: 4 });
    const readers = Array.from({ length: 4 }, async (_, k) => {
      let i = k;
      while (!load.stop) {
        i = (i * 7 + 13) % names.length;
        try {
          const r = await get({ socketPath: sock, path: `/v1/secrets/${names[i]}`, agent });
          const body = r.status === 200 ? JSON.parse(r.body) : undefined;
          if (!body || typeof body.value !== 'string' || body.value.length !== 32) load.failures++;
        } catch {
          load.failures++;
        }
        load.requests++;
      }
    });

    const samples = [];
    const t0 = Date.now();
    while (Date.now() - t0 < SECONDS * 1000) {
      await delay(SAMPLE_MS);
      const s = await sample(daemon.pid, port);
      samples.push({ t: Math.round((Date.now() - t0) / 1000), ...s, requests: load.requests });
      log(
        `soak: t=${samples.at(-1).t}s rss=${s.rss.toFixed(0)} MiB heap=${s.heap.toFixed(1)} MiB rotations=${s.rotations} requests=${load.requests}`,
      );
    }
    load.stop = true;
    await Promise.all(readers);
    agent.destroy();
    const final = await sample(daemon.pid, port);
    daemon.kill('SIGTERM');
    const exit = await exited;

    // The audit log on the remote: verifies; every version of every secret exactly once, no gap.
    const check = path.join(root, 'check');
    git(root, 'clone', '-q', remote, check);
    const v = await verifyAuditDir(path.join(check, 'audit'));
    const versions = new Map();
    let made = 0;
    let badSeq = 0;
    for (const f of readdirSync(path.join(check, 'audit')).sort()) {
      for (const line of readFileSync(path.join(check, 'audit', f), 'utf8').split('\n')) {
        if (!line) continue;
        const e = JSON.parse(line);
        if (e.event !== 'created' && e.event !== 'rotated') continue;
        made++;
        const last = versions.get(e.secret) ?? 0;
        if (e.to !== last + 1) badSeq++;
        versions.set(e.secret, e.to);
      }
    }

    // Memory: after a warm-up (the first quarter of the time), compare the first and the last third of the rest.
    const warmS = SECONDS / 4;
    const stretchS = (SECONDS - warmS) / 3;
    const inEarly = (t) => t >= warmS && t < warmS + stretchS;
    const inLate = (t) => t >= SECONDS - stretchS;
    const median = (xs) => {
      const v = [...xs].sort((a, b) => a - b);
      return v.length === 0 ? NaN : v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
    };
    const gcT = (c) => (c.at - t0) / 1000;
    const gcEarly = collections.filter((c) => inEarly(gcT(c))).map((c) => c.after);
    const gcLate = collections.filter((c) => inLate(gcT(c))).map((c) => c.after);
    const heapGrowth = median(gcLate) / median(gcEarly) - 1;
    const rssEarly = samples.filter((x) => inEarly(x.t)).map((x) => x.rss);
    const rssLate = samples.filter((x) => inLate(x.t)).map((x) => x.rss);
    const rssGrowth = Math.min(...rssLate) / Math.min(...rssEarly) - 1;
    const pct = (g) => `${g >= 0 ? '+' : ''}${(g * 100).toFixed(1)}%`;
    const tooShort =
      stretchS < JUDGED_STRETCH_S
        ? `the compared stretches span ${stretchS.toFixed(0)} s each, too short to tell a leak from the collector's rhythm (judged from ${JUDGED_STRETCH_S} s each; 150 s in the full run)`
        : undefined;
    const fewGcs =
      Math.min(gcEarly.length, gcLate.length) < MIN_COLLECTIONS
        ? `${gcEarly.length} and ${gcLate.length} full collections in the compared stretches, fewer than ${MIN_COLLECTIONS} each`
        : undefined;
    const heapSkip = tooShort ?? fewGcs;
    const heapRow = {
      check: `memory after warm-up: the live heap (its size after each full collection, --trace-gc), median of the last third vs of the first third, grows by less than ${MAX_GROWTH * 100}%`,
      figure: `${median(gcEarly).toFixed(1)} -> ${median(gcLate).toFixed(1)} MiB (${pct(heapGrowth)}; ${gcEarly.length} and ${gcLate.length} full collections, lowest ${Math.min(...gcEarly).toFixed(1)} and ${Math.min(...gcLate).toFixed(1)}, highest ${Math.max(...gcEarly).toFixed(1)} and ${Math.max(...gcLate).toFixed(1)} MiB); ${collections.length} full collections in all; heap in use at the end ${final.heap.toFixed(1)} MiB`,
      ...(heapSkip ? { skip: heapSkip } : { ok: heapGrowth < MAX_GROWTH }),
    };
    const rssRow = {
      check: `memory after warm-up: RSS, lowest of the last third vs of the first third, grows by less than ${MAX_GROWTH * 100}%`,
      figure: `${Math.min(...rssEarly).toFixed(0)} -> ${Math.min(...rssLate).toFixed(0)} MiB (${pct(rssGrowth)}; ${rssEarly.length} and ${rssLate.length} samples)`,
      ...(tooShort ? { skip: tooShort } : { ok: rssGrowth < MAX_GROWTH }),
    };
    // The heap after the last full collection before each sample, for the table.
    const liveAt = (t) => collections.filter((c) => gcT(c) <= t).at(-1)?.after;
    const table = [
      '| t (s) | RSS (MiB) | heap used (MiB) | heap after the last full collection (MiB) | rotations | socket reads |',
      '|---|---|---|---|---|---|',
      ...samples
        .filter((_, i) => samples.length <= 16 || i % Math.ceil(samples.length / 20) === 0 || i === samples.length - 1)
        .map(
          (s) =>
            `| ${s.t} | ${s.rss.toFixed(0)} | ${s.heap.toFixed(1)} | ${liveAt(s.t)?.toFixed(1) ?? '-'} | ${s.rotations} | ${s.requests} |`,
        ),
    ].join('\n');
    log(`soak: memory\n${table}`);
    const problems = [...errorCodes].map(([k, n]) => `${k} x${n}`).join('; ');
    return {
      rows: [
        {
          check: `${SECRETS} secrets, ${SECONDS} s: rotations done (audit log on the remote)`,
          figure: `${made} (${(made / SECONDS).toFixed(0)}/s), daemon exit ${exit.code ?? exit.signal}`,
          ok: made >= SECRETS * (SECONDS / 15) && exit.code === 0,
        },
        {
          check: 'audit chain verifies; versions of each secret without gap or repeat',
          figure: `${v.result.ok ? 'verifies' : v.result.code}; ${versions.size} secrets, ${badSeq} out of order`,
          ok: v.result.ok && badSeq === 0 && versions.size === SECRETS,
        },
        {
          check: 'socket reads during the soak: none failed',
          figure: `${load.requests} reads, ${load.failures} failed`,
          ok: load.failures === 0 && load.requests > 0,
        },
        {
          check: 'no error logged by the daemon (warnings counted, not judged)',
          figure: `${levels.error} errors, ${levels.warn} warnings${problems ? `: ${problems}` : ''}`,
          ok: levels.error === 0,
        },
        heapRow,
        rssRow,
      ],
      details: `The daemon's memory, sampled every ${SAMPLE_MS / 1000} s: RSS from /proc, V8 heap in use from its /metrics (it rises and falls with each collection), and the heap right after the last full collection before the sample (--trace-gc: the live memory). ${collections.length} full collections in ${SECONDS} s.\n\n${table}`,
    };
  } finally {
    if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  }
}
