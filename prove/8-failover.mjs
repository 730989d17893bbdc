// Proof, part 8: several daemons on one PostgreSQL store, and their failover.
//
// Three `rotor daemon` processes (prove/lib/daemon-child.mjs: the CLI in-process, able to SIGKILL
// itself at a rotation step boundary), each with its own data directory holding copies of one key set,
// one bare git remote, one throwaway PostgreSQL (bench/lib/pg-server.mjs: scram-sha-256). Each daemon
// reaches the server through a TCP proxy of its own, here, which can cut it off (the sockets stay open,
// the bytes are dropped, as in a partition). A secret rotates every 2 s; a consumer reads on every
// daemon's socket all along and keeps each value it is served, per version. Then, one after the other:
//   1. the leader SIGKILLed: how long until another logs "leading", and until it rotates again;
//   2. the leader SIGTERMed (it resigns): how long until another leads;
//   3. the leader hung (SIGSTOP), continued later (SIGCONT): another leads once the lease ran out, and
//      the hung one steps down and writes nothing;
//   4. the leader cut off from PostgreSQL: it steps down before its lease could end, another leads;
//      after the partition heals its late writes are refused;
//   5. PostgreSQL restarted: rotations pause, then resume by themselves;
//   6. the leader SIGKILLed at each step boundary of a rotation; another finishes what it began;
//   7. the same for a database secret: a PostgreSQL role's password set through rotor-agent, which has
//      the three daemons' URLs (`daemon:` a list) and finds the new leader for its jobs; the leader is
//      killed after each step of a rotation (set and retire included), another finishes it, and the value
//      each daemon serves as current logs in to PostgreSQL while the retired one no longer does.
// A killed daemon is restarted, as a follower. Afterwards, over the whole run: versions 1..N, each
// audited once, in the database's chain, which verifies and which the remote holds; a version was
// only ever served with one value, the one whose fingerprint its audit entry records; every value of the
// database secret logged in when it was first served as current; one holder per term, terms 1..K, and
// each term led by the daemon the terms table names.
// Times are measured here (performance.now, at the arrival of the log line) and compared with the targets.

import { randomBytes } from 'node:crypto';
import { cpSync, renameSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { auditVersions, canonicalJson, fingerprintOf, git, makeWorld, remoteAudit } from './lib/faults-world.mjs';
import { dist, ms } from './lib/harness.mjs';
import { nodeProcess } from './lib/node-process.mjs';

export const part = 8;
export const title = 'Several daemons: failover';

const CHILD = fileURLToPath(new URL('./lib/daemon-child.mjs', import.meta.url));
const AGENT = fileURLToPath(new URL('../agent/dist/main.js', import.meta.url));
const SECRET = 'demo/ticker';
/** A database secret (strategy alternate over two PostgreSQL roles), rotated only when asked. */
const DB_SECRET = 'db/app';
const DB_USERS = ['p8_blue', 'p8_green'];
/** How long a database rotation may take to finish, its retire included, once another daemon leads. */
const DB_SETTLE_MS = 60_000;
const NAMES = ['d0', 'd1', 'd2'];
/** The targets (lease 15 s, renewed every 2 s, polled every 1 s, margin 3 s; rotation every 2 s). */
const KILL_ROTATES_MS = 5_000;
const TERM_LEADS_MS = 3_000;
const HUNG_LEADS_MS = 20_000;
const CUT_LEADS_MS = 20_000;
/** The cut-off leader's lease ends no earlier than 15 s after its last renewal, itself at most ~2 s before the cut. */
const CUT_STEPS_DOWN_MS = 13_000;
const RESTART_RESUMES_MS = 30_000;
const FENCED = /STATE_FENCED|AUDIT_FENCED/;

export async function run({ short, log }) {
  let pg;
  try {
    const { benchPostgres } = await import('../bench/lib/pg-server.mjs');
    pg = await benchPostgres();
  } catch (e) {
    if (/not installed/.test(e.message))
      return { rows: [{ check: 'failover of several daemons', figure: '', skip: e.message }] };
    throw e;
  }
  const w = await makeWorld('failover', {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml':
      'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n---\nkind: Policy\nname: asked\nevery: 1d\noverlap: 1s\n',
    'secrets.yaml': `kind: Secret\nname: ${SECRET}\npolicy: fast\ngenerate: { length: 24 }\n`,
    'consumer.yaml': `kind: Consumer\nname: app\nuid: ${process.getuid()}\nsecrets: ["demo/*", "db/*"]\n`,
  });
  const schema = `p8_${Date.now().toString(36)}`;
  const proxies = [];
  const all = []; // every daemon process started, for the logs
  const slots = []; // the live process of d0, d1, d2
  let reader;
  let agent;
  try {
    // The database secret: its agent's keys and declarations, and the roles it rotates.
    const { generateKeys, loadKeys } = await dist('src/keys.js');
    const { freePort } = await dist('test/services/common.js');
    const agentKeyDir = path.join(w.root, 'agent-keys');
    const agentKeys = await generateKeys(agentKeyDir);
    writeFileSync(
      path.join(w.person, 'db.yaml'),
      [
        `kind: Agent\nname: p8-agent\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n`,
        'kind: Target\nname: pg\nengine: postgres\nagent: p8-agent\n',
        `kind: Secret\nname: ${DB_SECRET}\npolicy: asked\ngenerate: { length: 32 }\ndatabase: { target: pg, strategy: alternate, usernames: ${JSON.stringify(DB_USERS)} }\n`,
      ].join('---\n'),
    );
    git(w.person, 'add', '-A');
    git(w.person, 'commit', '-q', '-m', 'a database secret');
    git(w.person, 'push', '-q', 'origin', 'main');
    const adminPassword = `Admin-${randomBytes(12).toString('hex')}`;
    await pg.query(`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${adminPassword}'`);
    await pg.query('CREATE ROLE p8_owner NOLOGIN');
    for (const u of DB_USERS) {
      await pg.query(`CREATE ROLE ${u} LOGIN IN ROLE p8_owner`);
      // PostgreSQL 16+: a CREATEROLE admin alters only roles it has ADMIN OPTION on.
      if (pg.version >= 16) await pg.query(`GRANT ${u} TO rotor_admin WITH ADMIN OPTION`);
    }
    const login = loginCheck(pg);
    const { callAdmin } = await dist('src/cli/admin-client.js');
    const agentPorts = [await freePort(), await freePort(), await freePort()];

    const dirs = NAMES.map((n) => {
      const dataDir = path.join(w.root, n);
      cpSync(w.dataDir, dataDir, { recursive: true });
      return { dataDir, sockets: path.join(w.root, `${n}-sockets`) };
    });
    for (let i = 0; i < 3; i++) proxies.push(await tcpProxy(pg.host, pg.port));

    const start = (i, env = {}) => {
      const url = `postgres://rotor_state@127.0.0.1:${proxies[i].port}/rotor?schema=${schema}`;
      const d = nodeProcess(
        NAMES[i],
        CHILD,
        [
          'daemon',
          '--repo',
          w.remote,
          '--data-dir',
          dirs[i].dataDir,
          '--socket-dir',
          dirs[i].sockets,
          '--agent-listen',
          `127.0.0.1:${agentPorts[i]}`,
          '--metrics-listen',
          'off',
          '--log-format',
          'json',
          '--state',
          url,
          '--name',
          NAMES[i],
        ],
        { ...pg.env, ...env },
      );
      d.slot = i;
      all.push(d);
      slots[i] = d;
      return d;
    };
    const marks = () => new Map(slots.map((d) => [d, d.lines.length]));
    /** The first of `among` to log "leading" after `since` (a marks() map): { d, line }. */
    const nextLeader = async (among, since, timeoutMs) => {
      const got = await Promise.any(
        among.map((d) =>
          d.waitLine((o) => o.msg === 'leading', { since: since.get(d) ?? 0, timeoutMs }).then((line) => ({ d, line })),
        ),
      ).catch(() => undefined);
      if (!got) throw new Error(`no daemon led within ${ms(timeoutMs)}: ${tails(among)}`);
      return got;
    };
    const rotated = (o) => o.secret === SECRET && (o.msg === 'secret rotated' || o.msg === 'secret created');

    // ---- the cluster: d0 leads, d1 and d2 follow ----
    const d0 = start(0);
    await d0.waitLine((o) => o.msg === 'leading', { timeoutMs: 60_000 });
    let leader = d0;
    await Promise.all([start(1), start(2)].map((d) => d.ready));
    await leader.waitLine(rotated, { timeoutMs: 30_000 });
    // The agent near the database, with the three daemons' URLs; it creates version 1 of the database secret.
    const agentConfig = path.join(w.root, 'agent.yaml');
    writeFileSync(
      agentConfig,
      [
        `daemon: [${agentPorts.map((p) => `http://127.0.0.1:${p}`).join(', ')}]`,
        'name: p8-agent',
        `keyDir: ${agentKeyDir}`,
        `daemonSigningKey: "${(await loadKeys(w.dataDir)).signingKey}"`,
        'targets:',
        '  pg:',
        `    url: postgres://rotor_admin@${pg.host}:${pg.port}/postgres`,
        '    password: { env: P8_ADMIN_PASSWORD }',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    agent = nodeProcess(
      'agent',
      AGENT,
      ['--config', agentConfig],
      { P8_ADMIN_PASSWORD: adminPassword },
      'agent started',
    );
    all.push(agent);
    /** The database secret's status, once it is current at `min` or later, nothing pending, its predecessor's retire audited. */
    const dbSettled = async (min, timeoutMs) => {
      const deadline = performance.now() + timeoutMs;
      let last = 'no answer yet';
      for (;;) {
        const d = currentLeader(slots);
        if (d) {
          try {
            const st = await callAdmin(path.join(dirs[d.slot].dataDir, 'admin.sock'), 'GET', '/v1/status');
            const s = st.secrets.find((x) => x.name === DB_SECRET);
            last = `${d.name}: ${JSON.stringify(s)}`;
            if (
              s?.version >= min &&
              !s.pending &&
              (s.version === 1 || (await retireAudited(pg, schema, s.version - 1)))
            )
              return { version: s.version, d };
          } catch (e) {
            last = `${d.name}: ${e.code ?? e.message}`;
          }
        }
        if (performance.now() > deadline)
          throw new Error(`${DB_SECRET} did not settle at version ${min} within ${ms(timeoutMs)}: ${last}`);
        await sleep(100);
      }
    };
    await dbSettled(1, DB_SETTLE_MS);
    reader = startReader(slots, dirs, login);
    log(`part 8: three daemons up, ${leader.name} leads; schema ${schema}`);

    /** The first rotation logged by any live daemon after `since` (a marks() map): { d, line }. */
    const nextRotation = async (since, timeoutMs = 30_000, among = slots) => {
      const got = await Promise.any(
        among.map((d) => d.waitLine(rotated, { since: since.get(d) ?? 0, timeoutMs }).then((line) => ({ d, line }))),
      ).catch(() => undefined);
      if (!got) throw new Error(`no daemon rotated within ${ms(timeoutMs)}: ${tails(slots)}`);
      return got;
    };
    /** Waits until a daemon rotates again, and takes it as the leader. */
    const settle = async (since = marks()) => {
      leader = (await nextRotation(since)).d;
    };
    const others = (d) => slots.filter((x) => x !== d);
    /**
     * Restarts slot i's daemon, as a follower; resolves once it started. A daemon that refuses to start
     * is counted (the row below fails) and started again with its clone moved aside, so that the run
     * can measure the rest.
     */
    const refused = [];
    let restarts = 0;
    const restart = async (i) => {
      restarts++;
      const d = start(i);
      const ok = await d.ready.then(
        () => true,
        () => false,
      );
      if (ok) return d;
      const line = d.lines.find((l) => l.o.msg === 'the daemon cannot start');
      refused.push({
        name: d.name,
        code: line?.o.code ?? `exit ${await d.exited}`,
        reason: line?.o.reason ?? d.text(),
      });
      log(`part 8: ${d.name} refused to start again: ${line?.o.code}; its clone moved aside`);
      renameSync(path.join(dirs[i].dataDir, 'repo'), path.join(dirs[i].dataDir, `repo.refused-${refused.length}`));
      const again = start(i);
      await again.ready;
      return again;
    };
    const rows = [];

    // ---- 1. SIGKILL ----
    const kills = [];
    for (let r = 0; r < (short ? 1 : 5); r++) {
      const old = leader;
      const since = marks();
      const t0 = performance.now();
      old.kill('SIGKILL');
      const { d, line } = await nextLeader(others(old), since, 30_000);
      const rot = await nextRotation(since, 30_000, others(old));
      kills.push({ lead: line.t - t0, rotate: rot.line.t - t0, term: line.o.term, because: line.o.because });
      leader = rot.d;
      await old.closed;
      await restart(old.slot);
      log(
        `part 8: SIGKILL ${old.name}: ${d.name} leads after ${ms(line.t - t0)}, ${rot.d.name} rotates after ${ms(rot.line.t - t0)}`,
      );
    }
    const killMax = Math.max(...kills.map((k) => k.rotate));
    rows.push({
      check: `leader SIGKILLed (${kills.length}x): another leads and rotates again within ${ms(KILL_ROTATES_MS)}`,
      figure: `leads after max ${ms(Math.max(...kills.map((k) => k.lead)))}, rotates after max ${ms(killMax)} (${kills.map((k) => `${ms(k.lead)}/${ms(k.rotate)} ${k.because}`).join('; ')})`,
      ok: kills.length > 0 && killMax <= KILL_ROTATES_MS,
    });

    // ---- 2. SIGTERM ----
    const terms = [];
    for (let r = 0; r < (short ? 1 : 3); r++) {
      const old = leader;
      const since = marks();
      const t0 = performance.now();
      old.kill('SIGTERM');
      const { d, line } = await nextLeader(others(old), since, 30_000);
      terms.push({ lead: line.t - t0, because: line.o.because, code: await old.exited });
      await old.closed;
      await restart(old.slot);
      await settle(since);
      log(`part 8: SIGTERM ${old.name}: ${d.name} leads after ${ms(line.t - t0)}`);
    }
    const termMax = Math.max(...terms.map((k) => k.lead));
    rows.push({
      check: `leader SIGTERMed (${terms.length}x): it resigns, exits 0, and another leads within ${ms(TERM_LEADS_MS)}`,
      figure: `leads after max ${ms(termMax)} (${terms.map((k) => `${ms(k.lead)} ${k.because}, exit ${k.code}`).join('; ')})`,
      ok: terms.length > 0 && termMax <= TERM_LEADS_MS && terms.every((k) => k.code === 0),
    });

    // ---- 3. hung (SIGSTOP, then SIGCONT) ----
    if (short) {
      rows.push({
        check: `leader hung (SIGSTOP): another leads within ${ms(HUNG_LEADS_MS)}; continued, it steps down and writes nothing`,
        figure: '',
        skip: 'in the full version only (it waits for a lease to run out)',
      });
    } else {
      const old = leader;
      const since = marks();
      const t0 = performance.now();
      old.kill('SIGSTOP');
      const { d, line } = await nextLeader(others(old), since, 40_000);
      const lead = line.t - t0;
      await settle(since);
      const before = old.lines.length;
      const tc = performance.now();
      old.kill('SIGCONT');
      const down = await old
        .waitLine((o) => o.msg === 'no longer leading', { since: before, timeoutMs: 15_000 })
        .catch(() => undefined);
      await settle(); // the new leader rotates on, after the old one woke
      await settle();
      const after = old.lines.slice(before);
      const wrote = after.filter((l) => rotated(l.o)).length;
      const fenced = after.filter((l) => FENCED.test(l.raw)).length;
      const held = await pgTerms(pg, schema);
      const oldTerm = held.filter((r) => r.holder_name === old.name).at(-1)?.term;
      const newTerm = line.o.term;
      log(`part 8: SIGSTOP ${old.name}: ${d.name} leads after ${ms(lead)}; continued, stepped down: ${Boolean(down)}`);
      rows.push({
        check: `leader hung (SIGSTOP): another leads within ${ms(HUNG_LEADS_MS)}; continued (SIGCONT), it steps down ("no longer leading") and rotates nothing`,
        figure: `leads after ${ms(lead)} (${line.o.because}, term ${newTerm} after ${old.name}'s ${oldTerm}); continued: ${down ? `stepped down after ${ms(down.t - tc)} (${down.o.because})` : 'did not step down'}, ${wrote} rotations logged, ${fenced} fenced writes refused`,
        ok: lead <= HUNG_LEADS_MS && Boolean(down) && wrote === 0 && oldTerm !== undefined && newTerm > oldTerm,
      });
    }

    // ---- 4. cut off from PostgreSQL ----
    if (short) {
      rows.push({
        check: `leader cut off from PostgreSQL: it steps down before its lease ends, another leads within ${ms(CUT_LEADS_MS)}; healed, its writes are refused`,
        figure: '',
        skip: 'in the full version only (it waits for a lease to run out)',
      });
    } else {
      const old = leader;
      const since = marks();
      const before = old.lines.length;
      const t0 = performance.now();
      proxies[old.slot].cut();
      const downP = old.waitLine((o) => o.msg === 'no longer leading', { since: before, timeoutMs: 30_000 });
      const { d, line } = await nextLeader(others(old), since, 90_000);
      const down = await downP.catch(() => undefined);
      await settle(since);
      const th = performance.now();
      const reset = proxies[old.slot].heal();
      const back = await old
        .waitLine((o) => o.msg === 'the lease can be read again', { since: before, timeoutMs: 30_000 })
        .catch(() => undefined);
      await settle();
      await settle();
      const after = old.lines.slice(before);
      const wrote = after.filter((l) => rotated(l.o)).length;
      const fenced = after.filter((l) => FENCED.test(l.raw)).length;
      const stillLeads = after.some((l) => l.o.msg === 'leading');
      const lead = line.t - t0;
      const downAt = down ? down.t - t0 : undefined;
      log(
        `part 8: cut ${old.name} off: stepped down after ${downAt === undefined ? '-' : ms(downAt)}, ${d.name} leads after ${ms(lead)}`,
      );
      rows.push({
        check: `leader cut off from PostgreSQL (a partition): it steps down before its lease can end (${ms(CUT_STEPS_DOWN_MS)} after the cut) and before another leads, within ${ms(CUT_LEADS_MS)}; healed, it follows and its late writes are refused`,
        figure: `stepped down after ${downAt === undefined ? 'never' : `${ms(downAt)} (${down.o.because})`}; ${d.name} leads after ${ms(lead)}; healed (${reset} stale connections reset): ${back ? `reads the lease again after ${ms(back.t - th)}` : 'did not read the lease again'}, ${wrote} rotations logged, ${fenced} fenced writes refused`,
        ok:
          downAt !== undefined &&
          downAt < CUT_STEPS_DOWN_MS &&
          downAt < lead &&
          lead <= CUT_LEADS_MS &&
          Boolean(back) &&
          wrote === 0 &&
          !stillLeads,
      });
    }

    // ---- 5. PostgreSQL restarted ----
    if (short) {
      rows.push({
        check: 'PostgreSQL restarted: rotations pause, then resume by themselves',
        figure: '',
        skip: 'in the full version only',
      });
    } else {
      await settle();
      const since = marks();
      const t0 = performance.now();
      await pg.restart({ pauseMs: 3_000 });
      const up = performance.now();
      const first = await Promise.any(
        slots.map((d) =>
          d.waitLine(rotated, { since: since.get(d), timeoutMs: RESTART_RESUMES_MS + 30_000 }).then((l) => ({ d, l })),
        ),
      ).catch(() => undefined);
      if (first) leader = currentLeader(slots) ?? first.d;
      // The followers catch up too: each serves the leader's newest version (bounded poll).
      const caught = first ? await reader.allServe(first.l.o.version, 20_000) : false;
      const alive = slots.every((d) => d.exitCode() === null);
      const resumed = first ? first.l.t - up : undefined;
      log(
        `part 8: PostgreSQL restarted (down ${ms(up - t0)}); rotations resumed ${resumed === undefined ? 'never' : `after ${ms(resumed)}`}`,
      );
      rows.push({
        check: `PostgreSQL restarted (fast shutdown, 3 s down): rotations resume by themselves within ${ms(RESTART_RESUMES_MS)} of its return, every daemon serves the new version, none exits`,
        figure: `down ${ms(up - t0)}; first rotation ${resumed === undefined ? 'never' : `${ms(resumed)} after it was back (${first.d.name}, version ${first.l.o.version})`}; every daemon serves it: ${caught ? 'yes' : 'no'}; daemons alive: ${slots.filter((d) => d.exitCode() === null).length}/3`,
        ok: resumed !== undefined && resumed <= RESTART_RESUMES_MS && caught && alive,
      });
      await settle();
    }

    // ---- 6. SIGKILL at each step boundary ----
    const steps = short ? ['created', 'audited'] : ['created', 'audited', 'finished', 'created', 'audited', 'finished'];
    const stepKills = [];
    for (const step of steps) {
      const old = leader;
      const since = marks();
      old.send({ cmd: 'kill-at', step, nth: 1, secret: SECRET });
      const killed = await old.waitLine((o) => o.msg === 'prove: killed at a step boundary', {
        since: since.get(old),
        timeoutMs: 30_000,
      });
      const t0 = killed.t;
      // The others' lines only: the killed one may have finished a rotation between the arming and the kill.
      const { line } = await nextLeader(others(old), since, 30_000);
      const rot = await nextRotation(since, 30_000, others(old));
      const signal = await old.exited;
      stepKills.push({
        step,
        lead: line.t - t0,
        because: line.o.because,
        rotate: rot.line.t - t0,
        version: rot.line.o.version,
        signal,
      });
      leader = rot.d;
      await old.closed;
      await restart(old.slot);
      log(`part 8: killed ${old.name} after step ${step}: ${rot.d.name} rotates after ${ms(rot.line.t - t0)}`);
    }
    const stepMax = Math.max(...stepKills.map((k) => k.rotate));
    rows.push({
      check: `leader SIGKILLed at a rotation step boundary (${[...new Set(steps)].join(', ')}; ${steps.length} kills): another leads and rotates on within ${ms(KILL_ROTATES_MS)}`,
      figure: `rotates after max ${ms(stepMax)} (${stepKills.map((k) => `${k.step}: leads after ${ms(k.lead)} ${k.because}, rotates after ${ms(k.rotate)}, v${k.version}`).join('; ')})`,
      ok:
        stepKills.length === steps.length &&
        stepMax <= KILL_ROTATES_MS &&
        stepKills.every((k) => k.signal === 'SIGKILL'),
    });

    // ---- 7. a database secret, the leader SIGKILLed at each step boundary ----
    const dbSteps = short ? ['set', 'retired'] : ['created', 'set', 'audited', 'finished', 'retire-applied', 'retired'];
    const dbKills = [];
    for (const step of dbSteps) {
      await settle();
      const from = (await dbSettled(1, DB_SETTLE_MS)).version;
      // Asked of the leader; should leadership have moved meanwhile (NOT_LEADER), asked again of the new one.
      let old;
      let killed;
      let since;
      for (let attempt = 0; !killed; attempt++) {
        old = currentLeader(slots) ?? leader;
        since = marks();
        old.send({ cmd: 'kill-at', step, nth: 1, secret: DB_SECRET });
        const killedP = old.waitLine((o) => o.msg === 'prove: killed at a step boundary', {
          since: since.get(old),
          timeoutMs: DB_SETTLE_MS,
        });
        const asked = callAdmin(path.join(dirs[old.slot].dataDir, 'admin.sock'), 'POST', '/v1/rotate', {
          name: DB_SECRET,
          reason: `prove: the leader killed after ${step}`,
        }).then(
          () => undefined,
          (e) => e,
        );
        const first = await Promise.race([killedP, asked]);
        if (first instanceof Error && /NOT_LEADER/.test(`${first.code} ${first.message}`) && attempt < 3) {
          old.send({ cmd: 'kill-at' });
          killedP.catch(() => undefined);
          await settle();
          continue;
        }
        killed = await killedP;
      }
      const { line } = await nextLeader(others(old), since, 30_000);
      const done = await dbSettled(from + 1, DB_SETTLE_MS);
      const settledAfter = performance.now() - killed.t;
      await old.exited;
      await old.closed;
      await restart(old.slot);
      const everywhere = await reader.allServe(done.version, 20_000, DB_SECRET);
      const prev = reader.valueOf(DB_SECRET, done.version - 1);
      const retiredRefused = prev ? !(await login(prev.username, prev.value)) : false;
      dbKills.push({
        step,
        lead: line.t - killed.t,
        settled: settledAfter,
        version: done.version,
        everywhere,
        retiredRefused,
        by: done.d.name,
      });
      leader = done.d;
      log(
        `part 8: killed ${old.name} after ${DB_SECRET}'s step ${step}: version ${done.version} finished and retired by ${done.d.name} ${ms(settledAfter)} after the kill`,
      );
    }
    const dbMax = Math.max(...dbKills.map((k) => k.settled));
    rows.push({
      check: `database secret (a PostgreSQL role's password through rotor-agent, which has the three daemons' URLs): the leader SIGKILLed after each step (${dbSteps.join(', ')}); another finishes the rotation and its retire, every daemon serves it, the retired value no longer logs in`,
      figure: `finished and retired max ${ms(dbMax)} after the kill (${dbKills.map((k) => `${k.step}: leads after ${ms(k.lead)}, v${k.version} by ${k.by} after ${ms(k.settled)}${k.everywhere ? '' : ', NOT served everywhere'}${k.retiredRefused ? '' : ', RETIRED VALUE STILL LOGS IN'}`).join('; ')})`,
      ok: dbKills.length === dbSteps.length && dbKills.every((k) => k.everywhere && k.retiredRefused),
    });
    rows.push({
      check: `every value of ${DB_SECRET} a consumer was served as current (on any daemon) logged in to PostgreSQL when it was first served`,
      figure: `${reader.logins.ok} logged in, ${reader.logins.refused.length} refused${reader.logins.refused.length ? ` (${reader.logins.refused.slice(0, 3).join('; ')})` : ''}, ${reader.logins.errors} not checked (the server unreachable)`,
      ok: reader.logins.ok >= dbSteps.length + 1 && reader.logins.refused.length === 0 && reader.logins.errors === 0,
    });

    const codes = {};
    for (const r of refused) codes[r.code] = (codes[r.code] ?? 0) + 1;
    rows.push({
      check:
        'every killed or stopped daemon starts again by itself, as a follower, with its data directory as it was left',
      figure: `${restarts} restarts, ${refused.length} refused to start${
        refused.length
          ? ` (${Object.entries(codes)
              .map(([k, v]) => `${k} ${v}`)
              .join(', ')}; first: ${refused[0].name}: ${refused[0].reason.slice(0, 300)})`
          : ''
      }`,
      ok: restarts > 0 && refused.length === 0,
    });

    // ---- the end: stop everything (the followers first, the leader last: it pushes last) ----
    await settle();
    await reader.stop();
    await agent.stop();
    const leaderNow = currentLeader(slots) ?? leader;
    for (const d of slots.filter((x) => x !== leaderNow)) await d.stop();
    await leaderNow.stop();
    rows.push(...(await invariants({ pg, schema, w, dirs, all, reader, secrets: [adminPassword] })));
    return { rows };
  } finally {
    await reader?.stop();
    agent?.kill('SIGKILL');
    for (const d of all) d.kill('SIGKILL');
    await Promise.all(all.map((d) => d.closed));
    for (const p of proxies) p.close();
    await pg.stop();
    // ROTOR_PROVE_KEEP=1 keeps the world, with every daemon's log (dN-I.log: the Ith start of dN).
    for (const d of all) writeFileSync(path.join(w.root, `${d.name}-${d.instance}.log`), d.text());
    w.cleanup();
  }
}

/** The checks over the whole run, with every daemon stopped. */
async function invariants({ pg, schema, w, dirs, all, reader, secrets }) {
  const rows = [];
  const lines = await stateQuery(pg, `SELECT seq::int AS seq, line FROM ${schema}.audit ORDER BY seq`);
  const held = await stateQuery(
    pg,
    `SELECT term::int AS term, holder, holder_name, how FROM ${schema}.terms ORDER BY term`,
  );

  // Versions 1..N, one audit entry each.
  const entries = lines.map((r) => JSON.parse(r.line));
  const versions = auditVersions(entries);
  const madeOf = (secret) =>
    entries.filter((e) => e.secret === secret && (e.event === 'created' || e.event === 'rotated'));
  const made = madeOf(SECRET);
  const dbMade = madeOf(DB_SECRET);
  const seqGaps = lines.filter((r, i) => r.seq !== i + 1).length;
  rows.push({
    check: "versions 1..N of each secret with no gap or duplicate in the database's audit chain, one entry per version",
    figure: `${made.length} versions of ${SECRET}, ${dbMade.length} of ${DB_SECRET}, ${entries.length} entries; ${versions.problems.length} problems${versions.problems.length ? ` (${versions.problems.slice(0, 3).join('; ')})` : ''}; ${seqGaps} seq gaps`,
    ok:
      made.length >= 3 &&
      dbMade.length >= 2 &&
      versions.problems.length === 0 &&
      seqGaps === 0 &&
      versions.last.get(SECRET) === made.length &&
      versions.last.get(DB_SECRET) === dbMade.length,
  });

  // The chain verifies, in the database and on the remote, which holds all of it.
  const { verifyLines } = await dist('src/audit/seal.js');
  const { GENESIS } = await dist('src/audit/verify.js');
  const checked = verifyLines(
    lines.map((r) => r.line),
    GENESIS,
    'the audit table',
  );
  const remote = await remoteAudit(w);
  const same =
    remote.entries.length === entries.length &&
    remote.entries.every((e, i) => JSON.stringify(e) === JSON.stringify(entries[i]));
  rows.push({
    check: 'the chain in the database verifies; the remote holds the same chain, which verifies',
    figure: `database: ${checked.ok ? 'verifies' : `fails: ${checked.reason ?? checked.code ?? JSON.stringify(checked).slice(0, 120)}`}; remote: ${remote.entries.length} entries, ${remote.verified.ok ? 'verifies' : 'does not verify'}, ${same ? 'the same' : 'NOT the same'}`,
    ok: checked.ok && remote.verified.ok && same,
  });

  // Every value served: one per version, the one its audit entry fingerprints.
  const { loadKeys } = await dist('src/keys.js');
  const { openPostgresStore } = await dist('src/state/postgres.js');
  const keys = await loadKeys(dirs[0].dataDir);
  const store = await openPostgresStore(
    { url: `postgres://rotor_state@${pg.host}:${pg.port}/rotor?schema=${schema}`, env: pg.env },
    { identity: keys.identity, recipients: [keys.recipient], onWarning: () => undefined },
  );
  let key;
  try {
    key = Buffer.from(store.get('meta/fingerprint-key'), 'base64');
  } finally {
    await store.close();
  }
  let servedValues = 0;
  let twice = 0;
  let wrong = 0;
  const wrongAt = []; // where each value without its audited fingerprint was first served (no value shown)
  for (const [version, values] of reader.served) {
    if (values.size > 1) twice++;
    for (const value of values) {
      servedValues++;
      const e = versions.byVersion.get(version);
      if (!e || e.fingerprint !== fingerprintOf(key, canonicalJson(value))) {
        wrong++;
        wrongAt.push(`${version} by ${reader.where.get(`${version} ${value}`)}`);
      }
    }
  }
  const logs = all.map((d) => d.text()).join('\n');
  const leaked = [...reader.served.values(), secrets].flatMap((s) => [...s]).filter((v) => logs.includes(v)).length;
  rows.push({
    check:
      'every value a consumer was served (both secrets, on all three daemons) is the only value of its version and has its audited fingerprint; no value or password in a log (daemons and agent)',
    figure: `${reader.stats.reads} reads (${reader.stats.byDaemon.join('/')} on d0/d1/d2, ${reader.stats.errors} refused while a daemon was down or starting), ${reader.served.size} versions, ${servedValues} values; ${twice} versions with two values, ${wrong} without their fingerprint${wrongAt.length ? ` (${wrongAt.slice(0, 3).join('; ')})` : ''}, ${leaked} in a log`,
    ok:
      reader.served.size > 0 &&
      twice === 0 &&
      wrong === 0 &&
      leaked === 0 &&
      !logs.includes(pg.password) &&
      reader.stats.byDaemon.every((n) => n > 0),
  });

  // Terms 1..K, each with one holder, led by the daemon the table names, and by no other.
  const led = new Map(); // term -> names that logged "leading" in it
  for (const d of all)
    for (const l of d.lines)
      if (l.o.msg === 'leading') led.set(l.o.term, [...(led.get(l.o.term) ?? []), `${d.name}#${d.instance}`]);
  const consecutive = held.every((r, i) => r.term === i + 1);
  const mismatched = held.filter((r) => {
    const who = led.get(r.term) ?? [];
    return who.length !== 1 || who[0].split('#')[0] !== r.holder_name;
  });
  const doubles = [...led].filter(([, who]) => who.length > 1);
  const how = {};
  for (const r of held) how[r.how] = (how[r.how] ?? 0) + 1;
  rows.push({
    check:
      'terms table: terms 1..K, each held by one daemon, which alone logged "leading" in it (never two leaders in one term)',
    figure: `${held.length} terms (${Object.entries(how)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}); ${mismatched.length} terms whose logs disagree with the table, ${doubles.length} led twice`,
    ok: held.length >= 3 && consecutive && mismatched.length === 0 && doubles.length === 0,
  });
  return rows;
}

/** The daemon that logged "leading" last without "no longer leading" after it, among the live ones. */
function currentLeader(slots) {
  let best;
  for (const d of slots) {
    if (d.exitCode() !== null) continue;
    const i = d.lines.findLastIndex((l) => l.o.msg === 'leading' || l.o.msg === 'no longer leading');
    if (i >= 0 && d.lines[i].o.msg === 'leading' && (!best || d.lines[i].o.term > best.term))
      best = { d, term: d.lines[i].o.term };
  }
  return best?.d;
}

/** Whether `username` logs in to the proof's PostgreSQL with `password`: true, false (refused), or throws. */
function loginCheck(pg) {
  return async (username, password) => {
    const pgm = (await import('pg')).default;
    const c = new pgm.Client({
      host: pg.host,
      port: pg.port,
      user: username,
      password,
      database: 'postgres',
      connectionTimeoutMillis: 10_000,
    });
    c.on('error', () => undefined);
    try {
      await c.connect();
      await c.query('SELECT 1');
      return true;
    } catch (e) {
      if (['28P01', '28000'].includes(e.code)) return false;
      throw e;
    } finally {
      await c.end().catch(() => undefined);
    }
  };
}

/** The rows of `sql` (with `params`), asked of the proof's database as the daemons' role. */
async function stateQuery(pg, sql, params = []) {
  const pgm = (await import('pg')).default;
  const c = new pgm.Client({
    host: pg.host,
    port: pg.port,
    user: 'rotor_state',
    password: pg.password,
    database: 'rotor',
  });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows;
  } finally {
    await c.end();
  }
}

/** Whether the database's audit chain holds the retire of `secret`'s version `from`. */
async function retireAudited(pg, schema, from, secret = DB_SECRET) {
  const rows = await stateQuery(
    pg,
    `SELECT 1 FROM ${schema}.audit WHERE line::jsonb->>'event' = 'retired' AND line::jsonb->>'secret' = $1 AND (line::jsonb->>'from')::int = $2`,
    [secret, from],
  );
  return rows.length > 0;
}

const pgTerms = (pg, schema) =>
  stateQuery(pg, `SELECT term::int AS term, holder_name, how FROM ${schema}.terms ORDER BY term`);

function tails(ds) {
  return ds.map((d) => `${d.name}: ${d.text().slice(-600)}`).join(' | ');
}

/**
 * A TCP proxy to HOST:PORT that can cut its connections off as a partition would: while cut, the
 * sockets stay open and every byte either way is dropped, and a close on one side is not passed on (the
 * server keeps the session, its locks with it). heal() forwards again; the connections that lived
 * through the cut are reset (their streams lost bytes: as TCP gives up after its retransmissions).
 */
async function tcpProxy(host, port) {
  const pairs = new Set();
  let cut = false;
  const server = net.createServer((c) => {
    const s = net.connect(port, host);
    const pair = { c, s, cutSeen: cut };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      c.destroy();
      s.destroy();
    };
    c.on('data', (d) => (cut ? void (pair.cutSeen = true) : s.write(d)));
    s.on('data', (d) => (cut ? void (pair.cutSeen = true) : c.write(d)));
    const end = () => {
      if (cut) pair.cutSeen = true;
      else drop();
    };
    c.on('close', end);
    s.on('close', end);
    c.on('error', () => undefined);
    s.on('error', () => undefined);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    cut() {
      cut = true;
      for (const p of pairs) p.cutSeen = true;
    },
    /** Forwards again; returns how many connections were reset. */
    heal() {
      cut = false;
      let n = 0;
      for (const p of [...pairs]) {
        if (!p.cutSeen) continue;
        n++;
        pairs.delete(p);
        p.c.destroy();
        p.s.destroy();
      }
      return n;
    },
    close() {
      for (const p of pairs) {
        p.c.destroy();
        p.s.destroy();
      }
      server.close();
    },
  };
}

/**
 * A consumer reading both secrets on every live daemon's socket in turn, until stopped: every value it
 * is served (current and previous), per secret and version. A value of the database secret served as
 * current for the first time is tried at once: it must log in (`login`).
 */
function startReader(slots, dirs, login) {
  const served = new Map(); // "secret@version" -> Set(value)
  const users = new Map(); // "secret@version" -> the username served with it
  const latest = new Map([
    [SECRET, [0, 0, 0]],
    [DB_SECRET, [0, 0, 0]],
  ]);
  const stats = { reads: 0, errors: 0, byDaemon: [0, 0, 0] };
  const logins = { ok: 0, refused: [], errors: 0 };
  const tried = new Set();
  let stopped = false;
  let getSecret;
  const where = new Map(); // "secret@version value" -> the first read that served it: daemon, time, current or previous
  const keep = (secret, version, value, username, i, as) => {
    const key = `${secret}@${version}`;
    served.set(key, (served.get(key) ?? new Set()).add(value));
    if (username !== undefined) users.set(key, username);
    const k = `${key} ${value}`;
    if (!where.has(k)) where.set(k, `${slots[i]?.name}#${slots[i]?.instance} as ${as} at ${new Date().toISOString()}`);
  };
  /** The first time a value is served as current, it logs in (a few tries if the server cannot be reached). */
  const tryLogin = async (version, username, value, i) => {
    const k = `${version} ${value}`;
    if (tried.has(k)) return;
    tried.add(k);
    for (let attempt = 0; ; attempt++) {
      try {
        if (await login(username, value)) logins.ok++;
        else logins.refused.push(`v${version} (${username}) served by ${slots[i]?.name}#${slots[i]?.instance}`);
        return;
      } catch {
        if (attempt >= 20) {
          logins.errors++;
          return;
        }
        await sleep(250);
      }
    }
  };
  const loop = (async () => {
    ({ getSecret } = await dist('src/client/index.js'));
    while (!stopped) {
      for (let i = 0; i < 3 && !stopped; i++) {
        if (!slots[i] || slots[i].exitCode() !== null) continue;
        for (const secret of [SECRET, DB_SECRET]) {
          try {
            const s = await getSecret(secret, { socket: path.join(dirs[i].sockets, 'app.sock'), timeoutMs: 2_000 });
            stats.reads++;
            stats.byDaemon[i]++;
            keep(secret, s.version, s.value, s.username, i, 'current');
            if (s.previous) keep(secret, s.previous.version, s.previous.value, s.previous.username, i, 'previous');
            const l = latest.get(secret);
            l[i] = Math.max(l[i], s.version);
            if (secret === DB_SECRET) await tryLogin(s.version, s.username, s.value, i);
          } catch {
            stats.errors++;
          }
        }
      }
      await sleep(20);
    }
  })();
  return {
    served,
    where,
    stats,
    logins,
    /** The value and username served for `secret`'s `version` (the first, should there be two). */
    valueOf(secret, version) {
      const key = `${secret}@${version}`;
      const value = served.get(key)?.values().next().value;
      return value === undefined ? undefined : { value, username: users.get(key) };
    },
    /** Whether every daemon has served `secret` at `version` or newer, polling up to timeoutMs. */
    async allServe(version, timeoutMs, secret = SECRET) {
      const deadline = performance.now() + timeoutMs;
      while (performance.now() < deadline) {
        if (latest.get(secret).every((v) => v >= version)) return true;
        await sleep(100);
      }
      return false;
    },
    async stop() {
      stopped = true;
      await loop;
    },
  };
}
