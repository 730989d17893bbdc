/** rotor status against a running daemon (in-process, over its admin socket). */
import path from 'node:path';
import t from 'tap';
import { statusCommand } from '../src/cli/status.js';
import { getSecret } from '../src/client/index.js';
import { generateKeys, loadKeys } from '../src/keys.js';
import { rotor, tempDir } from './helpers.js';
import { step, world } from './world.js';

t.test(
  'rotor status: secrets, consumers behind, failing rotations, agents, config; JSON; colours only on a terminal',
  async (t) => {
    const keys = tempDir(t, 'rotor-status-');
    await generateKeys(keys);
    const a = await loadKeys(keys);
    const uid = process.getuid!();
    const w = await world(t, {
      'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
      'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
      'secrets.yaml':
        'kind: Secret\nname: app/token\npolicy: p\ngenerate: {}\n---\nkind: Secret\nname: app/db\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [blue, green] }\n',
      'db.yaml': `kind: Agent\nname: db-host\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host\n`,
      'consumers.yaml': `kind: Consumer\nname: web\nuid: ${uid}\nsecrets: ["app/*"]\n---\nkind: Consumer\nname: worker\nuid: ${uid}\nsecrets: ["app/token"]\n`,
    });
    // No agent runs: the database secret's first version times out and fails.
    const failed = step('app/db', 'failed');
    // The daemon's clock stands still (injected): the ages, next rotations and retries it reports are
    // exact however long the test takes on a busy machine. The agent job's timeout is a real timer.
    const NOW = Date.parse('2026-11-26T10:00:00.000Z');
    const d = await w.start({
      socketDir: path.join(w.root, 'sockets'),
      agentListen: '127.0.0.1:0',
      agentJobTimeoutMs: 100,
      now: () => NOW,
    });
    t.teardown(() => d.stop());
    await failed;
    await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'web.sock') });
    await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'worker.sock') });
    await d.rotateNow('app/token', 'status test');
    await getSecret('app/token', { socket: path.join(w.root, 'sockets', 'web.sock') });

    const r = await rotor(['status', '--data-dir', w.dataDir]);
    t.equal(r.code, 1, 'exit 1: a rotation is failing');
    t.match(r.stdout, /^SECRET\s+VER\s+AGE\s+NEXT\s+STATE\s+STRATEGY\s+TARGET\s+CONSUMERS/m);
    t.match(
      r.stdout,
      /^app\/token\s+2\s+0s\s+in 30d\s+ok\s+generate\s+-\s+web@2, worker@1\*$/m,
      'rotated just now, next in 30 days; the worker is still on version 1',
    );
    t.match(
      r.stdout,
      /^app\/db\s+-\s+-\s+in 1s\s+failing: AGENT_TIMEOUT \(1x\)\s+alternate\s+pg \(postgres\)\s+web$/m,
      'failed once; its retry is due 1 s after the failure, on the daemon clock',
    );
    t.match(r.stdout, /AGENTS {2}\(listening on 127\.0\.0\.1:\d+\)\n {2}db-host: never seen/);
    t.match(r.stdout, /CONFIG {2}applied [0-9a-f]{12} at /);
    t.notOk(r.stdout.includes('\x1b['), 'no colours when piped');
    const json = JSON.parse((await rotor(['status', '--json', '--data-dir', w.dataDir])).stdout);
    t.match(
      json.secrets.find((s: { name: string }) => s.name === 'app/db'),
      { failing: { error: 'AGENT_TIMEOUT' }, strategy: 'alternate', target: 'pg' },
    );
    let tty = '';
    await statusCommand(['--data-dir', w.dataDir], {
      stdout: (s) => void (tty += s),
      stderr: () => undefined,
      env: {},
      cwd: w.root,
      now: () => NOW,
      isTTY: true,
    });
    t.match(tty, /\x1b\[31mapp\/db/, 'a failing secret in red on a terminal');
    const none = await rotor(['status', '--data-dir', path.join(w.root, 'nowhere')]);
    t.equal(none.code, 1);
    t.match(none.stderr, /DAEMON_NOT_RUNNING/);
    t.notOk(r.stdout.includes(String(d.served('app/token')!.value)), 'no value in the status');
  },
);
