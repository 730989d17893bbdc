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
//
// All along, the daemon's webhooks (Config notify:) deliver every rotation to a receiver here that
// answers 500 to a random third of the deliveries, and checks each signature with the key (a secret of
// its own, read through the consumer socket). Afterwards, with the receiver answering 200, every
// rotation in the audit log must have been delivered and acknowledged at least once, across every kill,
// the first acknowledgement of each version in order per secret, every signature valid, no value in a
// body. Values are held in memory only, and never printed.
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  auditEntries,
  canonicalJson,
  cli,
  declarations,
  makeWorld,
  secretNames,
  startDaemon,
  startReader,
  status,
} from './lib/faults-world.mjs';
import { dist } from './lib/harness.mjs';

export const part = 9;
export const title = 'Recovery: break-glass export after a crash';

export async function run({ short, log }) {
  const { generateIdentity, identityToRecipient } = await import('age-encryption');
  const identity = await generateIdentity();
  const recipient = await identityToRecipient(identity);
  const n = short ? 6 : 20;
  const rounds = short ? 3 : 12;
  const names = secretNames(n);
  const hooks = await receiver();
  const decl = declarations({ n, every: '2s', overlap: '1s' });
  const w = await makeWorld('recovery', {
    ...decl,
    'rotor.yaml': `${decl['rotor.yaml']}notify:\n  - name: proof\n    url: http://127.0.0.1:${hooks.port}/hook\n    events: [rotated]\n    secret: keys/hook\n`,
    'policy.yaml': `${decl['policy.yaml']}---\nkind: Policy\nname: still\nevery: 1d\noverlap: 1h\n`,
    'secrets.yaml': `${decl['secrets.yaml']}---\nkind: Secret\nname: keys/hook\npolicy: still\ngenerate: { length: 32 }\n`,
    'consumer.yaml': decl['consumer.yaml'].replace('secrets: ["load/**"]', 'secrets: ["load/**", "keys/**"]'),
  });
  const identityFile = path.join(w.root, 'break-glass.txt');
  writeFileSync(identityFile, `# a break-glass identity\n${identity}\n`, { mode: 0o600 });
  chmodSync(identityFile, 0o600);
  const exportArgs = ['state', 'export', '--data-dir', w.dataDir, '--identity', identityFile];
  const clone = path.join(w.dataDir, 'repo');

  let d = await startDaemon(w, { breakGlass: [recipient] });
  const { getSecret } = await dist('src/client/index.js');
  hooks.key = String((await getSecret('keys/hook', { socket: path.join(w.socketDir, 'prove.sock') })).value);
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
    // The receiver answers 200 from now on: every rotation audited must arrive.
    hooks.flaky = false;
    await reader.stop();
    const rotatedOf = () =>
      auditEntries(path.join(clone, 'audit')).filter((e) => e.event === 'rotated' && names.includes(e.secret));
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline && rotatedOf().some((e) => !hooks.acked.has(`${e.secret}@${e.to}`))) await sleep(200);
  } finally {
    await reader.stop();
    await d.stop();
    hooks.close();
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
  const audited = auditEntries(path.join(clone, 'audit')).filter(
    (e) => e.event === 'rotated' && names.includes(e.secret),
  );
  const missing = audited.filter((e) => !hooks.acked.has(`${e.secret}@${e.to}`));
  const unordered = [...hooks.firstAcks].filter(([, tos]) => tos.some((to, i) => i > 0 && to <= tos[i - 1]));
  const bodies = hooks.bodies.join('\n');
  const inBody = [...reader.seen.values()].flatMap((m) => [...m.values()]).filter((v) => bodies.includes(v));
  rows.push({
    check: `webhooks across the ${rounds} kills, the receiver answering 500 to a third of the deliveries: every rotation in the audit log delivered and acknowledged at least once, the first acknowledgements in order per secret, every signature valid, no value in a body`,
    figure: `${audited.length} rotations audited, ${missing.length} never acknowledged${missing.length ? ` (first: ${missing[0].secret} v${missing[0].to})` : ''}; ${hooks.stats.requests} requests, ${hooks.stats.refused} answered 500, ${hooks.stats.acked} acknowledged, ${hooks.stats.acked - hooks.acked.size} of them again (at least once); ${unordered.length} secrets out of order; ${hooks.stats.badSignature} bad signatures; ${inBody.length + (bodies.includes(hooks.key) ? 1 : 0)} values in a body`,
    ok:
      audited.length > 0 &&
      missing.length === 0 &&
      unordered.length === 0 &&
      hooks.stats.badSignature === 0 &&
      hooks.stats.refused > 0 &&
      inBody.length === 0 &&
      !bodies.includes(hooks.key),
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

/**
 * The webhook receiver: answers 500 to a random third of the deliveries while `flaky`, 200 to the rest;
 * checks each signature with `key` (any v1 of the header); keeps every acknowledged (secret, version),
 * the order of first acknowledgements per secret, and every body (to look for values in).
 */
async function receiver() {
  const { verifySignature } = await dist('src/notify/sign.js');
  const hooks = {
    key: undefined,
    flaky: true,
    acked: new Set(),
    firstAcks: new Map(),
    bodies: [],
    stats: { requests: 0, early: 0, refused: 0, acked: 0, badSignature: 0 },
  };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      hooks.stats.requests++;
      const body = Buffer.concat(chunks).toString('utf8');
      hooks.bodies.push(body);
      if (hooks.key === undefined) {
        // Before the key was read through the socket: refused, so that it comes again.
        hooks.stats.early++;
        res.writeHead(503).end();
        return;
      }
      if (!verifySignature(req.headers['x-rotor-signature'], body, hooks.key, Date.now() / 1000)) {
        hooks.stats.badSignature++;
        res.writeHead(400).end();
        return;
      }
      if (hooks.flaky && Math.random() < 1 / 3) {
        hooks.stats.refused++;
        res.writeHead(500).end();
        return;
      }
      const e = JSON.parse(body);
      const k = `${e.secret}@${e.to}`;
      hooks.stats.acked++;
      if (!hooks.acked.has(k)) {
        hooks.acked.add(k);
        hooks.firstAcks.set(e.secret, [...(hooks.firstAcks.get(e.secret) ?? []), e.to]);
      }
      res.writeHead(200).end();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  hooks.port = server.address().port;
  hooks.close = () => server.close();
  return hooks;
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
