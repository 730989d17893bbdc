/**
 * A drift incident survives a change of leader: two `rotor daemon` processes on one PostgreSQL store
 * (the built CLI), a real `rotor-agent` process listing both, and a database secret on a policy with
 * `verify: 1s` and `onDrift: alert` whose role lives on the same throwaway PostgreSQL (password
 * authentication enforced). Its password is changed by hand: the leader opens the incident (one
 * `drift-detected` entry, kept in the state store under drift/NAME). The leader is stopped (SIGTERM);
 * the other daemon takes the lead, reads the incident from the store, and its own checks, still
 * refused, are the same incident: the same time of the first refused check, no second "drift detected"
 * (which is what it logs, at error, when it opens one and audits it). No password in any log.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as pause } from 'node:timers/promises';
import pg from 'pg';
import type { Test } from 'tap';
import t from 'tap';
import { callAdmin } from '../src/cli/admin-client.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { ROOT, tempDir } from './helpers.js';
import { pgPlace } from './lib/pg-store.js';
import { freePort } from './services/common.js';
import { daemonProcess, world } from './world.js';

const POLL_MS = 100;
/** Generous: a loaded machine; the waits end on the event, not on this. */
const WAIT_MS = 120_000;
const ADMIN_PASSWORD = `Admin-${Math.random().toString(36).slice(2)}X9`;
const NAME = 'db/watch';
const AGENT_BIN = path.join(ROOT, 'agent', 'dist', 'main.js');

/** Polls `probe` until it returns something, or WAIT_MS passed (then undefined). */
async function until<T>(probe: () => Promise<T | undefined> | T | undefined): Promise<T | undefined> {
  const end = Date.now() + WAIT_MS;
  for (;;) {
    const v = await Promise.resolve(probe()).catch(() => undefined);
    if (v !== undefined || Date.now() > end) return v;
    await pause(POLL_MS);
  }
}

/** rotor-agent (agent/dist) as a process; its stderr (the JSON log) collected; SIGTERMed when the test ends. */
function spawnAgent(t: Test, args: readonly string[], env: Record<string, string>) {
  // env -u NODE_OPTIONS: tap's loaders in NODE_OPTIONS would be inherited by the child.
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, AGENT_BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr!.on('data', (c: Buffer) => void (log += c.toString()));
  const exit = new Promise((resolve) => child.on('exit', resolve));
  t.teardown(async () => {
    if (child.exitCode !== null) return;
    child.kill('SIGTERM');
    await Promise.race([exit, pause(20_000, undefined, { ref: false })]);
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  return { log: () => log };
}

const p = await pgPlace(t);

if (p) {
  t.test('a drift incident is taken up by the next leader: one incident, one entry', async (t) => {
    const srv = p.srv;
    await srv.query(`CREATE ROLE rotor_admin LOGIN CREATEROLE PASSWORD '${ADMIN_PASSWORD}'`);
    await srv.query('CREATE ROLE app_owner NOLOGIN');
    for (const r of ['watch_a', 'watch_b']) await srv.query(`CREATE ROLE ${r} LOGIN IN ROLE app_owner`);
    const change = (user: string, password: string) =>
      srv.query(`ALTER ROLE ${pg.escapeIdentifier(user)} PASSWORD ${pg.escapeLiteral(password)}`);

    const keysRoot = tempDir(t, 'rotor-drift-leader-');
    const keyDir = path.join(keysRoot, 'agent');
    await generateKeys(keyDir);
    const agentKeys = await loadKeys(keyDir);
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: watch\nevery: 30d\noverlap: 1d\nverify: 1s\nonDrift: alert\n',
      'agent.yaml': `kind: Agent\nname: db-host\nsigningKey: "${agentKeys.signingKey}"\nrecipient: ${agentKeys.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host\n`,
      'secrets.yaml': `kind: Secret\nname: ${NAME}\npolicy: watch\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [watch_a, watch_b] }\n`,
    });
    const url = p.url(p.schema());
    const names = ['d0', 'd1'] as const;
    const ports = [await freePort(), await freePort()];
    const dirs = names.map((n) => {
      const dataDir = path.join(w.root, n);
      mkdirSync(dataDir, { mode: 0o700 });
      for (const f of readdirSync(w.dataDir)) copyFileSync(path.join(w.dataDir, f), path.join(dataDir, f));
      return { dataDir, sockets: path.join(w.root, `${n}-sockets`) };
    });
    const start = (i: number) =>
      daemonProcess(
        t,
        [
          '--repo',
          w.remote,
          '--data-dir',
          dirs[i]!.dataDir,
          '--socket-dir',
          dirs[i]!.sockets,
          '--agent-listen',
          `127.0.0.1:${ports[i]}`,
          '--metrics-listen',
          'off',
          '--state',
          url,
          '--name',
          names[i]!,
        ],
        { name: names[i]!, env: { PGPASSWORD: p.password } },
      );
    type Status = {
      secrets: { name: string; version?: number; failing?: { error: string }; drift?: { since: string } }[];
    };
    const secretOn = async (i: number) =>
      (
        (await callAdmin(path.join(dirs[i]!.dataDir, 'admin.sock'), 'GET', '/v1/status')) as unknown as Status
      ).secrets.find((s) => s.name === NAME);

    const d0 = start(0);
    await d0.waitFor(/"msg":"leading"/);
    await d0.ready;
    const d1 = start(1);
    await d1.ready;
    const agentConfig = path.join(keysRoot, 'agent-config.yaml');
    writeFileSync(
      agentConfig,
      [
        `daemon: [http://127.0.0.1:${ports[0]}, http://127.0.0.1:${ports[1]}]`,
        'name: db-host',
        `keyDir: ${keyDir}`,
        `daemonSigningKey: "${(await loadKeys(w.dataDir)).signingKey}"`,
        'targets:',
        '  pg:',
        `    url: postgres://rotor_admin@127.0.0.1:${srv.port}/postgres`,
        '    password: { env: DB_ADMIN_PASSWORD }',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const agent = spawnAgent(t, ['--config', agentConfig], { DB_ADMIN_PASSWORD: ADMIN_PASSWORD });
    const diag = () => ({
      d0: d0.stderr().slice(-3000),
      d1: d1.stderr().slice(-3000),
      agent: agent.log().slice(-3000),
    });
    /** The refused logins the agent reported so far. */
    const refusals = () =>
      agent
        .log()
        .split('\n')
        .filter((l) => /verify: the current credential: refused/.test(l)).length;

    const v1 = await until(async () => ((await secretOn(0))?.version === 1 ? true : undefined));
    if (!v1) return t.fail('version 1 was not made', diag());
    await until(() => (/verify: the current credential: ok/.test(agent.log()) ? true : undefined));
    t.notOk((await secretOn(0))?.failing, 'no drift yet');
    const hand = `ByHand-${Math.random().toString(36).slice(2)}Q7`;
    // Both users' passwords changed by hand (one of them is the one served at version 1).
    for (const user of ['watch_a', 'watch_b']) await change(user, hand);
    const opened = await until(async () => {
      const s = await secretOn(0);
      return s?.failing?.error === 'DRIFT_DETECTED' ? s : undefined;
    });
    if (!opened) return t.fail('the leader did not find the drift', diag());
    const since = opened.drift!.since;
    await d0.waitFor(/"msg":"drift detected/); // its log arrives through a pipe, maybe after the status
    t.equal((d0.stderr().match(/"msg":"drift detected/g) ?? []).length, 1, 'd0 opened the incident once');

    // The leader resigns; d1 takes the lead and reads the incident from the store.
    t.equal(await d0.stop(), 0, 'd0 stops cleanly');
    await d1.waitFor(/"msg":"leading"/);
    const before = refusals();
    // Two more refused logins reported after d0 is gone, then a third: the agent is handed a check only
    // after d1 has handled the one before, so d1 has handled at least one refused check of its own.
    const handled = await until(() => (refusals() >= before + 3 ? true : undefined));
    if (!handled) return t.fail('d1 did not check', diag());
    t.notMatch(d1.stderr(), /"msg":"drift detected/, 'd1 opened no new incident (no second drift-detected entry)');
    const s1 = await secretOn(1);
    t.equal(s1?.failing?.error, 'DRIFT_DETECTED', 'd1 shows the secret failing with DRIFT_DETECTED');
    t.equal(s1?.drift?.since, since, 'the same incident: since the first refused check, on d0');
    t.equal(s1?.version, 1, 'onDrift: alert: not rotated');
    const everything = d0.stderr() + d1.stderr() + agent.log();
    t.notOk(everything.includes(hand) || everything.includes(ADMIN_PASSWORD), 'no password in any log');
  });
}
