// Proof, part 9: recovery with a break-glass identity after the daemon's crash.
//
// A daemon (prove/lib/faults-daemon.mjs, the file store) whose store is sealed to a break-glass
// recipient too (a fresh age identity, as age-keygen makes one) rotates a set of secrets every 2 s
// while a consumer reads them all through its socket and keeps every (version, value) it is served.
// Then, again and again: after a random while the break-glass export runs beside the live daemon (it
// must not disturb it: the daemon rotates on), then the daemon is SIGKILLed at a random moment and
// `rotor state export --identity BREAK_GLASS --audit CLONE` (the real CLI, read-only) runs on what it
// left, before it starts again on the same data directory. Each export after a kill must hold, for
// every secret, a current version no older than any the consumer was served, and the very values the
// consumer was served for each version it shows (current and previous), each matching the fingerprint
// the audit log records (the export's own --audit check, run on the daemon's clone). The figures say
// how often the log held versions that snapshot.age alone lacked: what the export exists for.
// Values are held in memory only, and never printed.
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  canonicalJson,
  cli,
  declarations,
  makeWorld,
  secretNames,
  startDaemon,
  startReader,
  status,
} from './lib/faults-world.mjs';

export const part = 9;
export const title = 'Recovery: break-glass export after a crash';

export async function run({ short, log }) {
  const { generateIdentity, identityToRecipient } = await import('age-encryption');
  const identity = await generateIdentity();
  const recipient = await identityToRecipient(identity);
  const n = short ? 6 : 20;
  const rounds = short ? 3 : 12;
  const names = secretNames(n);
  const w = await makeWorld('recovery', declarations({ n, every: '2s', overlap: '1s' }));
  const identityFile = path.join(w.root, 'break-glass.txt');
  writeFileSync(identityFile, `# a break-glass identity\n${identity}\n`, { mode: 0o600 });
  chmodSync(identityFile, 0o600);
  const exportArgs = ['state', 'export', '--data-dir', w.dataDir, '--identity', identityFile];
  const clone = path.join(w.dataDir, 'repo');

  let d = await startDaemon(w, { breakGlass: [recipient] });
  const reader = startReader(w, names, { loops: 2, pauseMs: 5 });
  const outcomes = [];
  const live = [];
  const stderrs = [];
  let restarts = 0;
  let refused = 0;
  try {
    for (let r = 0; r < rounds; r++) {
      await sleep(800 + Math.floor(Math.random() * 2_200));
      // Beside the live daemon, every other round: it must run, and the daemon must rotate on.
      if (r % 2 === 0) {
        const before = await versions(w);
        const ex = await cli(exportArgs);
        stderrs.push(ex.stderr);
        const ok = ex.code === 0 && JSON.parse(ex.stdout).format === 'rotor-state-export/1';
        const on = await rotatesOn(w, before, 20_000);
        live.push({ ok, on, code: ex.code, err: ok ? '' : ex.stderr.slice(0, 300) });
      }
      await sleep(Math.floor(Math.random() * 1_000));
      d.kill();
      await d.exited;
      const seen = new Map([...reader.seen].map(([name, m]) => [name, new Map(m)]));
      const ex = await cli([...exportArgs, '--audit', clone]);
      stderrs.push(ex.stderr);
      outcomes.push(check(ex, seen, names));
      log(`part 9: round ${r + 1}: ${JSON.stringify(outcomes.at(-1).summary)}`);
      restarts++;
      try {
        d = await startDaemon(w, { breakGlass: [recipient] });
      } catch (e) {
        refused++;
        throw e;
      }
    }
  } finally {
    await reader.stop();
    await d.stop();
  }

  const rows = [];
  const bad = outcomes.filter((o) => !o.ok);
  const sum = (k) => outcomes.reduce((a, o) => a + o.summary[k], 0);
  rows.push({
    check: `after each SIGKILL (${rounds} kills, ${n} secrets rotating every 2 s), the break-glass export of what the daemon left holds every secret at a version no older than any the consumer was served, with the very values it was served (current and previous), each matching its audited fingerprint (--audit)`,
    figure: `${outcomes.length - bad.length}/${outcomes.length} exports held; ${sum('compared')} served values compared, ${sum('behind')} secrets behind what was served, ${sum('differ')} values differing, ${sum('unaudited')} current values without their audit entry${bad.length ? `; first failure: ${bad[0].why}` : ''}`,
    ok: outcomes.length === rounds && bad.length === 0 && sum('compared') > 0,
  });
  const beyond = outcomes.filter((o) => o.summary.afterSnapshot > 0).length;
  rows.push({
    check:
      'the exports read the log beyond snapshot.age: what a standard tool opening snapshot.age alone would miss (age -d on it shows the state at the last compaction)',
    figure: `${beyond}/${outcomes.length} exports had records after the snapshot (up to ${Math.max(0, ...outcomes.map((o) => o.summary.afterSnapshot))}); ${sum('torn')} torn last records ignored`,
    ok: beyond > 0,
  });
  const liveBad = live.filter((l) => !l.ok || !l.on);
  rows.push({
    check:
      'the export beside the running daemon succeeds and does not disturb it: the daemon rotates on after it, and starts again after every kill',
    figure: `${live.length - liveBad.length}/${live.length} live exports fine${liveBad.length ? ` (first: exit ${liveBad[0].code}, rotated on: ${liveBad[0].on}: ${liveBad[0].err})` : ''}; ${restarts} restarts, ${refused} refused`,
    ok: live.length > 0 && liveBad.length === 0 && refused === 0,
  });
  const daemonLog = readFileSync(d.logFile, 'utf8');
  const values = [...reader.seen.values()].flatMap((m) => [...m.values()]);
  const leaked = values.filter((v) => daemonLog.includes(v) || stderrs.some((e) => e.includes(v))).length;
  rows.push({
    check: "no served value in the daemon's log or on the export's stderr; the break-glass identity in neither",
    figure: `${values.length} values, ${leaked} found; identity found: ${daemonLog.includes(identity) || stderrs.some((e) => e.includes(identity)) ? 'yes' : 'no'}`,
    ok:
      values.length > 0 && leaked === 0 && !daemonLog.includes(identity) && !stderrs.some((e) => e.includes(identity)),
  });
  if (!rows.every((x) => x.ok)) log(`part 9: kept for a post-mortem: ${w.root}`);
  else w.cleanup();
  return { rows };
}

/** Each secret's current version, from the admin socket. */
async function versions(w) {
  const st = await status(w);
  return new Map(st.secrets.map((s) => [s.name, s.version ?? 0]));
}

/** Whether some secret moves past the versions `before` within timeoutMs (polled). */
async function rotatesOn(w, before, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const now = await versions(w).catch(() => new Map());
    for (const [name, v] of now) if (v > (before.get(name) ?? 0)) return true;
    await sleep(100);
  }
  return false;
}

/** The export `ex` against what the consumer was served (`seen`: name -> version -> canonical value). */
function check(ex, seen, names) {
  const summary = { compared: 0, behind: 0, differ: 0, unaudited: 0, afterSnapshot: 0, torn: 0 };
  if (ex.code !== 0) return { ok: false, why: `exit ${ex.code}: ${ex.stderr.slice(0, 300)}`, summary };
  let doc;
  try {
    doc = JSON.parse(ex.stdout);
  } catch {
    return { ok: false, why: 'stdout is not JSON', summary };
  }
  summary.afterSnapshot = doc.store?.recordsAfterSnapshot ?? 0;
  summary.torn = doc.store?.torn ? 1 : 0;
  const why = [];
  for (const name of names) {
    const s = doc.secrets?.[name];
    const served = seen.get(name) ?? new Map();
    const maxServed = Math.max(0, ...served.keys());
    if (!s?.current) {
      if (maxServed > 0) why.push(`${name}: no current version, ${maxServed} was served`);
      summary.behind += maxServed > 0 ? 1 : 0;
      continue;
    }
    if (s.current.version < maxServed) {
      summary.behind++;
      why.push(`${name}: current ${s.current.version} < served ${maxServed}`);
    }
    if (s.current.audited !== true) {
      summary.unaudited++;
      why.push(`${name}: current ${s.current.version} audited: ${s.current.audited}`);
    }
    for (const v of [s.current, s.previous]) {
      if (!v || !served.has(v.version)) continue;
      summary.compared++;
      if (served.get(v.version) !== canonicalJson(v.value)) {
        summary.differ++;
        why.push(`${name}: version ${v.version} differs from the value served`);
      }
    }
  }
  return { ok: why.length === 0, why: why.slice(0, 3).join('; '), summary };
}
