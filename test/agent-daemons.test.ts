/**
 * An agent configured with several daemons (`daemon:` a list), against two real agent API listeners
 * (test/leader-listeners.ts: each its own AgentHub and AgentValues, one signing key), one leading:
 * the agent, given the follower first, takes its job from the leader (the follower's NOT_LEADER names
 * it); when the two swap, it follows the new leader, and logs each switch once; with the daemon it took
 * values from gone, its consumer keeps reading, now from the other daemon, which answered in full.
 *
 * The two listeners serve different values for the same secret, so that what the consumer reads says
 * which daemon it came from (real daemons on one store serve the same). No sleeps: every wait is for an
 * event (a result at the hub, a values answer on `rotor-agent:values`, a log line).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { Agent } from '../agent/src/agent.js';
import { loadAgentConfig } from '../agent/src/config.js';
import type { DbEngine, SetJob } from '../agent/src/engines/types.js';
import { getSecret } from '../src/client/index.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { tempDir } from './helpers.js';
import { daemonApi, hostModel } from './leader-listeners.js';
import { applied } from './world.js';

/** A logger whose lines can be awaited and counted. */
function awaitableLog() {
  const lines: { msg: string; level: string }[] = [];
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  const log = jsonLogger(
    (l) => {
      const line = JSON.parse(l) as { msg: string; level: string };
      lines.push(line);
      for (const w of [...waiters])
        if (w.re.test(line.msg)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve();
        }
    },
    Date.now,
    'debug',
  );
  return {
    log,
    count: (re: RegExp, level?: string) => lines.filter((l) => re.test(l.msg) && (!level || l.level === level)).length,
    next: (re: RegExp) => new Promise<void>((resolve) => waiters.push({ re, resolve })),
  };
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

t.test('jobs from the leader, values from whichever daemon answers', async (t) => {
  const dir = tempDir(t, 'rotor-agent-daemons-');
  await generateKeys(path.join(dir, 'agent'));
  await generateKeys(path.join(dir, 'daemon'));
  const agentKeys = await loadKeys(path.join(dir, 'agent'));
  const daemonKeys = await loadKeys(path.join(dir, 'daemon'));
  const desired = await hostModel(dir, agentKeys, process.getuid!());
  const secret = desired.secrets.get('app/db')!.decl;

  const roleA: { leading: boolean; leader?: string } = { leading: false };
  const roleB: { leading: boolean; leader?: string } = { leading: true };
  const a = await daemonApi(t, { desired, signing: daemonKeys.signing, role: roleA, value: 'value-from-a' });
  const b = await daemonApi(t, { desired, signing: daemonKeys.signing, role: roleB, value: 'value-from-b' });
  roleA.leader = b.url;

  const socketDir = path.join(dir, 'sockets');
  const file = path.join(dir, 'agent.yaml');
  writeFileSync(
    file,
    [
      `daemon: [${a.url}, ${b.url}]`,
      'name: web-1',
      'keyDir: agent',
      `daemonSigningKey: "${daemonKeys.signingKey}"`,
      `socketDir: ${socketDir}`,
      'targets:',
      '  db:',
      '    url: redis://127.0.0.1:6379',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  const config = await loadAgentConfig(file, { env: {} });
  t.same(
    config.daemons.map((d) => d.origin),
    [a.url, b.url],
    'the follower first',
  );

  const sets: SetJob[] = [];
  const engine: DbEngine = {
    engine: 'redis',
    set: async (job) => {
      sets.push(job);
      return 'applied';
    },
    test: async () => true,
    retire: async () => {},
    close: async () => {},
  };
  const logs = awaitableLog();
  const agent = new Agent(config, {
    log: logs.log,
    wait: 1,
    backoff: { baseMs: 5, capMs: 20 },
    engines: { redis: () => engine },
    hostConsumers: { cache: false, wait: 1 },
  });
  const firstValues = applied((m) => m.full);
  const bLeads = logs.next(new RegExp(`database jobs come from the leading daemon at ${esc(b.url)}$`));
  agent.start();
  t.teardown(() => agent.stop({ graceMs: 1000 }));

  // The job of B, the leader, though A comes first in the list.
  const r1 = await b.hub.set(secret, 1, { username: 'app', password: 'pending-one' }, undefined);
  t.equal(r1.outcome, 'done', "B's job is done and reported to B");
  await bLeads;
  t.same(
    sets.map((s) => s.password),
    ['pending-one'],
    'the agent ran it once',
  );

  // The values: from A, the first of the list (a follower serves them).
  await firstValues;
  await agent.hosting;
  const sock = path.join(socketDir, 'web.sock');
  t.equal((await getSecret('app/db', { socket: sock })).value, 'value-from-a', 'the consumer reads what A sent');

  // A leads now, B follows and names it: the agent follows at once.
  const aLeads = logs.next(new RegExp(`database jobs come from the leading daemon at ${esc(a.url)}$`));
  roleB.leading = false;
  roleB.leader = a.url;
  roleA.leading = true;
  roleA.leader = undefined;
  const r2 = await a.hub.set(
    secret,
    2,
    { username: 'app', password: 'pending-two' },
    { username: 'app', password: 'x' },
  );
  t.equal(r2.outcome, 'done', "A's job is done and reported to A");
  await aLeads;
  t.same(
    sets.map((s) => s.password),
    ['pending-one', 'pending-two'],
    'the second job ran on the new leader',
  );
  t.equal(logs.count(new RegExp(`leading daemon at ${esc(b.url)}$`), 'info'), 1, "B's lead is logged once");
  t.equal(logs.count(new RegExp(`leading daemon at ${esc(a.url)}$`), 'info'), 1, "A's lead is logged once");

  // A goes away: the values come from B now, in full (B's epoch is not A's).
  const fromB = applied((m) => m.full);
  const valuesFromB = logs.next(new RegExp(`values come from the daemon at ${esc(b.url)}$`));
  await a.close();
  await fromB;
  await valuesFromB;
  t.equal(
    (await getSecret('app/db', { socket: sock })).value,
    'value-from-b',
    'the consumer keeps reading, from what B sent',
  );
  t.same(agent.host!.health(), { status: 'ok' }, 'healthy: one daemon answers');
  t.equal(logs.count(/lost the daemon/), 0, 'not stale: only one daemon of two failed');
});
