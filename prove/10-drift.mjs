// Proof, part 10: drift, passwords changed by hand, across daemon kills.
//
// A throwaway Redis with password authentication enforced (test/services/redis.ts, from dist/), users
// whose passwords rotor rotates (strategy dual) through a real rotor-agent, each secret on a policy that
// never rotates on its own but checks every second that the served passwords still log in (`verify: 1s`,
// `onDrift: rotate`). Then, one incident after another: a person resets a user's password by hand
// (ACL SETUSER resetpass), so that the value every application is served no longer logs in. Every other
// incident the daemon (the CLI through prove/lib/daemon-child.mjs) is SIGKILLed, and started again on
// the same data directory: either as soon as it logs the drift (before its audit entry is written, as a
// rule), or once the `drift-detected` entry is in its audit log (the repair under way, or not begun). Each incident must be repaired by itself: a new
// version, served on the socket, that logs in. Afterwards the audit log must hold exactly one
// `drift-detected` entry per incident, each followed by one rotation with trigger `drift` before the
// next incident of the same secret; no value, hand-set password or admin password in any log.
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { auditEntries, git, makeWorld } from './lib/faults-world.mjs';
import { dist, ms } from './lib/harness.mjs';
import { nodeProcess } from './lib/node-process.mjs';

export const part = 10;
export const title = 'Drift: passwords changed by hand, across daemon kills';

const CHILD = fileURLToPath(new URL('./lib/daemon-child.mjs', import.meta.url));
const AGENT = fileURLToPath(new URL('../agent/dist/main.js', import.meta.url));
/** How long an incident may take to be found and repaired (verify every 1 s, a rotation through the agent). */
const REPAIR_MS = 60_000;

export async function run({ short, log }) {
  const { startRedis } = await dist('test/services/redis.js');
  const cleanups = [];
  const fakeT = {
    teardown: (fn) => cleanups.push(fn),
    fail: (m) => {
      throw new Error(m);
    },
    skip: (m) => {
      throw new Error(m);
    },
  };
  let server;
  try {
    server = await startRedis(fakeT);
  } catch (e) {
    if (/not installed|redis-server/.test(e.message))
      return { rows: [{ check: 'drift repaired across kills', figure: '', skip: e.message }] };
    throw e;
  }
  const users = short ? ['p10_a', 'p10_b'] : ['p10_a', 'p10_b', 'p10_c'];
  const incidents = short ? 2 : 8;
  const { generateKeys, loadKeys } = await dist('src/keys.js');
  const { freePort } = await dist('test/services/common.js');
  const { getSecret } = await dist('src/client/index.js');
  const login = (user, password) => server.login(user, password);

  const hand = [];
  for (const u of users) {
    const initial = `Initial-${randomBytes(9).toString('hex')}`;
    hand.push(initial);
    await server.createUser(u, initial);
  }

  const w = await makeWorld('drift', {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: watched\nevery: 1d\noverlap: 2s\nverify: 1s\nonDrift: rotate\n',
    'consumer.yaml': `kind: Consumer\nname: prove\nuid: ${process.getuid()}\nsecrets: ["db/**"]\n`,
  });
  const agentKeyDir = path.join(w.root, 'agent-keys');
  const agentKeys = await generateKeys(agentKeyDir);
  writeFileSync(
    path.join(w.person, 'db.yaml'),
    [
      `kind: Agent\nname: p10-agent\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
      'kind: Target\nname: cache\nengine: redis\nagent: p10-agent\n',
      ...users.map(
        (u) =>
          `kind: Secret\nname: db/${u}\npolicy: watched\ngenerate: { length: 32 }\ndatabase: { target: cache, strategy: dual, username: ${u} }\n`,
      ),
    ].join('---\n'),
  );
  git(w.person, 'add', '-A');
  git(w.person, 'commit', '-q', '-m', 'database secrets');
  git(w.person, 'push', '-q', 'origin', 'main');
  const port = await freePort();
  const agentConfig = path.join(w.root, 'agent.yaml');
  writeFileSync(
    agentConfig,
    [
      `daemon: http://127.0.0.1:${port}`,
      'name: p10-agent',
      `keyDir: ${agentKeyDir}`,
      `daemonSigningKey: "${(await loadKeys(w.dataDir)).signingKey}"`,
      'targets:',
      '  cache:',
      `    url: ${server.url}`,
      '    password: { env: P10_ADMIN_PASSWORD }',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const all = [];
  const startDaemon = () => {
    const d = nodeProcess('daemon', CHILD, [
      'daemon',
      '--repo',
      w.remote,
      '--data-dir',
      w.dataDir,
      '--socket-dir',
      w.socketDir,
      '--agent-listen',
      `127.0.0.1:${port}`,
      '--metrics-listen',
      'off',
      '--log-format',
      'json',
    ]);
    all.push(d);
    return d;
  };
  const socket = path.join(w.socketDir, 'prove.sock');
  const served = [];
  /** The version served for `secret` once it is `min` or later and its value logs in; undefined on timeout. */
  const repaired = async (secret, min, timeoutMs) => {
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      try {
        const s = await getSecret(secret, { socket, timeoutMs: 2_000 });
        if (!served.includes(String(s.value))) served.push(String(s.value));
        if (s.version >= min && (await login(s.username, String(s.value)))) return s;
      } catch {
        // the daemon is restarting, or the value is not there yet
      }
      await sleep(100);
    }
    return undefined;
  };

  let d = startDaemon();
  const agent = nodeProcess(
    'agent',
    AGENT,
    ['--config', agentConfig],
    { P10_ADMIN_PASSWORD: server.adminPassword },
    'agent started',
  );
  all.push(agent);
  const done = [];
  try {
    await d.ready;
    for (const u of users) {
      const s = await repaired(`db/${u}`, 1, REPAIR_MS);
      if (!s) throw new Error(`db/${u} did not get version 1: ${d.text().slice(-1500)}`);
    }
    for (let k = 0; k < incidents; k++) {
      const u = users[k % users.length];
      const secret = `db/${u}`;
      const before = await repaired(secret, 1, REPAIR_MS);
      const kill = k % 2 === 1 ? (k % 4 === 1 ? 'logged' : 'audited') : undefined;
      const driftEntries = () =>
        auditEntries(path.join(w.dataDir, 'repo', 'audit')).filter(
          (e) => e.event === 'drift-detected' && e.secret === secret,
        ).length;
      const entriesBefore = driftEntries();
      const since = d.lines.length;
      const password = `Hand-${randomBytes(9).toString('hex')}`;
      hand.push(password);
      const t0 = performance.now();
      await server.root('ACL', 'SETUSER', u, 'resetpass', `>${password}`);
      const refused = !(await login(u, String(before.value)));
      let detected;
      if (kill) {
        detected = await d
          .waitLine((o) => o.msg?.startsWith('drift detected') && o.secret === secret, { since, timeoutMs: REPAIR_MS })
          .catch(() => undefined);
        if (kill === 'audited') {
          const deadline = performance.now() + REPAIR_MS;
          while (driftEntries() === entriesBefore && performance.now() < deadline) await sleep(5);
        }
        d.kill('SIGKILL');
        await d.closed;
        d = startDaemon();
        await d.ready;
      }
      const after = await repaired(secret, before.version + 1, REPAIR_MS);
      done.push({
        k,
        secret,
        kill,
        refused,
        detectedAfter: detected ? detected.t - t0 : undefined,
        repairedAfter: after ? performance.now() - t0 : undefined,
        from: before.version,
        to: after?.version,
      });
      log(
        `part 10: incident ${k + 1} (${secret}${kill ? `, daemon killed once the drift was ${kill}` : ''}): ${after ? `repaired as version ${after.version} after ${ms(performance.now() - t0)}` : 'NOT repaired'}`,
      );
    }
  } finally {
    await agent.stop();
    await d.stop();
    for (const p of all) p.kill('SIGKILL');
    await Promise.all(all.map((p) => p.closed));
    for (const f of cleanups.reverse()) await f();
  }

  const rows = [];
  const entries = auditEntries(path.join(w.dataDir, 'repo', 'audit'));
  const problems = [];
  for (const u of users) {
    const secret = `db/${u}`;
    const mine = entries.filter((e) => e.secret === secret);
    const count = done.filter((x) => x.secret === secret).length;
    const drift = mine.filter((e) => e.event === 'drift-detected');
    const repairs = mine.filter((e) => e.event === 'rotated' && e.trigger === 'drift');
    if (drift.length !== count) problems.push(`${secret}: ${drift.length} drift entries for ${count} incidents`);
    if (repairs.length !== count) problems.push(`${secret}: ${repairs.length} drift rotations for ${count} incidents`);
    // drift, rotation, drift, rotation...: each incident's entry before its repair, the next after it
    const seq = mine.filter((e) => e.event === 'drift-detected' || (e.event === 'rotated' && e.trigger === 'drift'));
    if (seq.some((e, i) => e.event !== (i % 2 === 0 ? 'drift-detected' : 'rotated')))
      problems.push(`${secret}: drift entries and repairs out of order`);
  }
  const unrepaired = done.filter((x) => x.to === undefined);
  const killed = done.filter((x) => x.kill);
  rows.push({
    check: `passwords reset by hand (${incidents} incidents over ${users.length} Redis users, the daemon SIGKILLed at every other drift, once logged or once audited, and started again): each repaired by itself, the served value logging in again`,
    figure: `${done.length - unrepaired.length}/${done.length} repaired, max ${ms(Math.max(0, ...done.map((x) => x.repairedAfter ?? 0)))} after the reset (${done.map((x) => `${x.secret} v${x.from}->v${x.to ?? '-'} ${x.repairedAfter === undefined ? '-' : ms(x.repairedAfter)}${x.kill ? ` killed once ${x.kill}` : ''}`).join('; ')}); the served value refused after each reset: ${done.every((x) => x.refused) ? 'yes' : 'no'}`,
    ok: done.length === incidents && unrepaired.length === 0 && done.every((x) => x.refused),
  });
  rows.push({
    check:
      'exactly one drift-detected audit entry per incident, a kill at the drift included, each followed by one rotation with trigger drift before the next incident',
    figure: `${entries.filter((e) => e.event === 'drift-detected').length} drift entries, ${entries.filter((e) => e.event === 'rotated' && e.trigger === 'drift').length} drift rotations for ${done.length} incidents (${killed.length} with a kill at the drift, found after ${killed.map((x) => (x.detectedAfter === undefined ? '-' : ms(x.detectedAfter))).join(', ')}); ${problems.length ? problems.join('; ') : 'no problem'}`,
    ok: problems.length === 0 && killed.every((x) => x.detectedAfter !== undefined),
  });
  const logs = all.map((p) => p.text()).join('\n');
  const secrets = [...served, ...hand, server.adminPassword];
  const leaked = secrets.filter((v) => logs.includes(v)).length;
  rows.push({
    check: 'no served value, hand-set password or admin password in the daemon or agent logs',
    figure: `${secrets.length} checked, ${leaked} found`,
    ok: served.length > 0 && leaked === 0,
  });
  if (rows.every((r) => r.ok)) w.cleanup();
  else {
    for (const p of all) writeFileSync(path.join(w.root, `${p.name}-${p.instance}.log`), p.text());
    log(`part 10: kept for a post-mortem: ${w.root}`);
  }
  return { rows };
}
