/**
 * `npm start` (scripts/demo.mjs) on the bundled example: it prints ready `rotor get` lines, and the
 * first of them, run as printed, reads demo/ticker through the reporting consumer's socket.
 */
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { ROOT, tempDir } from './helpers.js';

t.test('the demo says which socket reads which secret, and that line works', async (t) => {
  const dir = tempDir(t, 'rotor-demo-test-');
  const env = { ...process.env, ROTOR_DEMO_DIR: path.join(dir, 'demo') };
  delete env.NODE_OPTIONS;
  const demo = spawn(process.execPath, [path.join(ROOT, 'scripts/demo.mjs')], {
    cwd: ROOT,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise((resolve) => demo.once('exit', resolve));
  t.teardown(async () => {
    demo.kill('SIGINT');
    await exited;
  });
  let output = '';
  const lines = createInterface({ input: demo.stdout! });
  const commands: string[] = [];
  let tickerStarted: () => void;
  const ticker = new Promise<void>((resolve) => (tickerStarted = resolve));
  lines.on('line', (l) => {
    output += `${l}\n`;
    const m = /^ {2}(node dist\/src\/cli\/main\.js get \S+ --socket \S+)/.exec(l);
    if (m) commands.push(m[1]!);
    // The reporting consumer's socket is there (demo/ticker got version 1 before it).
    if (/consumer socket ready/.test(l) && /consumer=reporting/.test(l)) tickerStarted();
  });
  await ticker;
  t.match(output, /In another terminal, here/);
  t.equal(commands.length, 2, 'two ready rotor get lines');
  t.match(commands[0], /get demo\/ticker --socket \S+reporting\.sock$/);
  const [node, script, ...args] = commands[0]!.split(' ');
  t.equal(node, 'node');
  const r = spawnSync(process.execPath, [script!, ...args], { cwd: ROOT, env, encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /^\S{8,}\n$/, 'a value, then a newline');
});
