/**
 * The status page in a real browser (headless Chromium through playwright-core): a daemon runs on the
 * bundled example repository (policies/), creates its secrets and rotates some (`rotor rotate` and a
 * `rotate.request` commit); the page must list every declared secret, draw the timeline, load nothing
 * from anywhere, and break no rule of its Content-Security-Policy. The full-page screenshot goes to
 * test-output/status-page.png (and, with ROTOR_UPDATE_SCREENSHOT=1, docs/status-page.png for docs/operations.md).
 */
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import t from 'tap';
import { loadKeys } from '../src/keys.js';
import { loadModel } from '../src/model/load.js';
import { DirectorySource } from '../src/model/source.js';
import { sealSops } from '../src/sops/write.js';
import { commitAll, git, ROOT } from './helpers.js';
import { needService } from './services/common.js';
import { world } from './world.js';

const CHROMIUM = '/usr/bin/chromium';
const EXAMPLE = path.join(ROOT, 'policies');

/** Every file of the example repository, by its path inside it. */
function exampleFiles(): Record<string, string> {
  const files: Record<string, string> = {};
  for (const rel of readdirSync(EXAMPLE, { recursive: true, encoding: 'utf8' })) {
    if (statSync(path.join(EXAMPLE, rel)).isFile())
      files[rel.split(path.sep).join('/')] = readFileSync(path.join(EXAMPLE, rel), 'utf8');
  }
  return files;
}

const H = 3600_000;

t.test('the status page of the bundled example in headless Chromium', async (t) => {
  if (
    !needService(
      t,
      'chromium',
      existsSync(CHROMIUM),
      "apt-get install chromium (Debian's package puts it at /usr/bin/chromium)",
    )
  )
    return;
  const declared = await loadModel(new DirectorySource(EXAMPLE), { now: Date.now() });
  t.ok(declared.valid, 'the example is valid');
  const names = [...declared.desired!.secrets.keys()].sort();
  t.ok(names.length >= 10, `the example declares ${names.length} secrets`);

  // The daemon's clock starts three hours back and is moved forward twice, so that the timeline
  // shows the example's history spread out: version 1 of everything, a `rotor rotate` an hour later,
  // a rotate.request commit an hour after that. demo/ticker rotates every 10 s on its own.
  let offset = -3 * H;
  const files = exampleFiles();
  const w = await world(t, files);
  // The example's SOPS file is encrypted to a throwaway key: encrypt its value to this daemon's key,
  // as npm start does (and as a person adding the daemon's recipient would with sops updatekeys).
  const { recipient } = await loadKeys(w.dataDir);
  w.push(
    'secrets/stripe.enc.yaml',
    await sealSops({ apiKey: 'sk_test_example_only_not_a_real_key' }, [recipient]),
    'encrypt the example SOPS file to the daemon',
  );
  const d = await w.start({
    socketDir: path.join(w.root, 'sockets'),
    metricsListen: '127.0.0.1:0',
    agentListen: '127.0.0.1:0',
    now: () => Date.now() + offset,
  });
  t.teardown(() => d.stop());
  offset += H;
  await d.rotateNow('payments/webhook-signing', 'status page test');
  offset += H;
  const secretsFile = 'payments/secrets.yaml';
  const requested = files[secretsFile]!.replace(/request: "([^"]+)"/, 'request: "$1-again"');
  t.not(requested, files[secretsFile], 'the example has a rotate.request to change');
  // As a person would: commit, then pull --rebase and push until the daemon's own audit pushes (the
  // ticker's, every 10 s) are not in between.
  git(w.person, 'pull', '-q', '--rebase');
  writeFileSync(path.join(w.person, secretsFile), requested);
  commitAll(w.person, 'rotate payments/session-key');
  for (let attempt = 1; ; attempt++) {
    try {
      git(w.person, 'pull', '-q', '--rebase');
      git(w.person, 'push', '-q', 'origin', 'main');
      break;
    } catch (e) {
      if (attempt >= 5) throw e;
    }
  }
  await d.syncNow();
  offset = 0;
  const status = d.status();
  t.equal(status.secrets.find((s) => s.name === 'payments/webhook-signing')?.version, 2, 'rotated by rotor rotate');
  t.equal(status.secrets.find((s) => s.name === 'payments/session-key')?.version, 2, 'rotated by the request commit');
  const stripe = status.secrets.find((s) => s.name === 'payments/stripe-key');
  t.equal(stripe?.version, 1, 'the sops: secret has its value from the SOPS file');
  t.notOk(stripe?.failing, 'and is not failing');

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  t.teardown(() => browser.close());
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const requests: string[] = [];
  const problems: string[] = [];
  page.on('request', (r) => void requests.push(r.url()));
  page.on(
    'console',
    (m) => void (m.type() === 'error' || m.type() === 'warning' ? problems.push(m.text()) : undefined),
  );
  page.on('pageerror', (e) => void problems.push(e.message));
  const res = await page.goto(`http://${d.metricsAddress}/`, { waitUntil: 'load' });
  t.equal(res?.status(), 200);

  const rows = await page.$$eval('table.secrets tbody tr', (trs) =>
    trs.map((tr) => tr.querySelector('td .name')?.textContent ?? ''),
  );
  t.same([...rows].sort(), names, 'the table lists every secret the example declares');
  const version = (name: string) =>
    page.$eval(`table.secrets tr[data-secret="${name}"] td.num`, (td) => td.textContent);
  t.equal(await version('payments/webhook-signing'), 'v2');
  t.equal(await version('payments/session-key'), 'v2');
  t.equal(
    await page.locator('table.secrets tr[data-secret="payments/db-app"] .badge').first().textContent(),
    'rotating',
    'a database secret waits for its agent',
  );
  t.equal(
    await page.locator('table.secrets tr[data-secret="payments/db-app"] td').nth(5).textContent(),
    'in progress',
    'its next rotation is the one in progress',
  );
  t.match(await page.locator('tr[data-agent="db-host-1"]').textContent(), /never seen/);

  t.equal(await page.locator('svg.timeline').count(), 1, 'an SVG timeline');
  const marks = await page.$$eval('svg.timeline .ev', (els) =>
    els.map((e) => ({ kind: e.getAttribute('class'), title: e.querySelector('title')?.textContent ?? '' })),
  );
  const generated = status.secrets.filter((s) => s.version !== undefined).length;
  t.ok(
    marks.length >= generated + 2,
    `${marks.length} marks: a version 1 of each generated secret and the two rotations at least`,
  );
  t.ok(
    marks.some(
      (m) =>
        m.kind === 'ev ev-rotated' &&
        /payments\/webhook-signing rotated v1 → v2 \(cli: status page test\)/.test(m.title),
    ),
    'the rotor rotate, with its tooltip',
  );
  t.ok(
    marks.some((m) => m.kind === 'ev ev-rotated' && /payments\/session-key rotated v1 → v2 \(request: /.test(m.title)),
    'the rotate.request commit',
  );
  t.equal(marks.filter((m) => m.kind === 'ev ev-created').length, generated, 'a version 1 of each generated secret');
  const box = await page.locator('svg.timeline').boundingBox();
  t.ok(box && box.width > 600 && box.height > 100, 'the timeline is drawn at a readable size');

  t.ok(requests.length >= 1, 'the page was requested');
  t.same(
    requests.filter((u) => new URL(u).hostname !== '127.0.0.1'),
    [],
    'no request left localhost',
  );
  t.same(requests, [`http://${d.metricsAddress}/`], 'the page loads nothing besides itself');
  t.same(problems, [], 'no console error (a Content-Security-Policy violation would be one)');

  const html = await page.content();
  for (const s of status.secrets) {
    for (let v = 1; v <= (s.version ?? 0); v++) {
      const value = d.version(s.name, v)?.value;
      for (const x of value === undefined ? [] : typeof value === 'string' ? [value] : Object.values(value)) {
        if (x.length >= 8) t.notOk(html.includes(x), `no value of ${s.name} v${v} in the page`);
      }
    }
  }

  mkdirSync(path.join(ROOT, 'test-output'), { recursive: true });
  const shot = path.join(ROOT, 'test-output', 'status-page.png');
  await page.screenshot({ path: shot, fullPage: true });
  // The documentation's picture is refreshed on request only (it would change with every run's times).
  if (process.env.ROTOR_UPDATE_SCREENSHOT === '1') {
    mkdirSync(path.join(ROOT, 'docs'), { recursive: true });
    copyFileSync(shot, path.join(ROOT, 'docs', 'status-page.png'));
  }
  t.ok(
    statSync(shot).size > 10_000,
    `screenshot saved: ${path.relative(ROOT, shot)}${process.env.ROTOR_UPDATE_SCREENSHOT === '1' ? ' and docs/status-page.png' : ''}`,
  );
});
