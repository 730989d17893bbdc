/**
 * What a hostile commit can do to the daemon's clone, and to `rotor validate` / `rotor plan`:
 * - a symbolic link on the audit path (the directory, a parent, a file in it) is an error for validate
 *   and plan, is recorded as config-rejected by the daemon, is never checked out in its clone, and no
 *   byte of the audit log is written through it; a restart still works, and a revert heals it;
 * - audit.dir inside .git is an error (it used to validate, then stop the daemon at start);
 * - .gitattributes cannot change the audit log's bytes in the daemon's clone (a fresh clone of a
 *   repository with `*.jsonl text eol=crlf` starts and keeps the log byte for byte), and `rotor plan`
 *   names attribute changes that reach the audit directory;
 * - every object read from a commit is bounded: a 128 MiB link target is not read, a tree record
 *   longer than the bound stops the listing, an object over its limit is refused before it is read;
 * - every git call runs through the one hardened runner (no other spawn of git in src/ or agent/src/,
 *   and a GIT_DIR in the environment does not send rotor's reads to another repository).
 */
import { execFileSync, spawn } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { confineAuditFs } from '../src/audit/confine.js';
import { AuditLog, nodeAuditFs } from '../src/audit/log.js';
import { auditPushChannel } from '../src/daemon/daemon.js';
import { gitTail } from '../src/git/run.js';
import { catFiles, GitTreeSource, lsTree } from '../src/git/tree.js';
import { attributePatternMatches } from '../src/plan/attributes.js';
import { commitAll, git, gitInit, ROOT, rotor, tempDir } from './helpers.js';
import { world } from './world.js';

const CONFIG = 'kind: Config\nsync: { interval: 1d }\n';
const POLICY = 'kind: Policy\nname: daily\nevery: 1d\noverlap: 1h\n';
const SECRET = 'kind: Secret\nname: app/token\npolicy: daily\ngenerate: { length: 32 }\n';

type PushEvent = { ok: boolean; code?: string; pushed?: number };

/**
 * The next message on `rotor:audit-push` that succeeded (ok) or failed (!ok): a flush already under
 * way, or a retry, may publish the other kind first on a busy machine.
 */
function nextPush(ok: boolean): Promise<PushEvent> {
  return new Promise((resolve) => {
    const on = (m: unknown) => {
      if ((m as PushEvent).ok !== ok) return;
      auditPushChannel.unsubscribe(on);
      resolve(m as PushEvent);
    };
    auditPushChannel.subscribe(on);
  });
}

/** Every audit entry in a directory of YYYY-MM.jsonl files. */
function entries(dir: string): Array<Record<string, unknown>> {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.jsonl'))
    .sort()
    .flatMap((f) =>
      readFileSync(path.join(dir, f), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>),
    );
}

t.test('rotor validate refuses a link on the audit path, and audit.dir inside .git', async (t) => {
  const outside = tempDir(t, 'rotor-outside-');
  const cases: Array<{ name: string; setup: (dir: string) => void; code: string; file: string }> = [
    {
      name: 'the audit directory is a link',
      setup: (d) => symlinkSync(outside, path.join(d, 'audit')),
      code: 'AUDIT_PATH_SYMLINK',
      file: 'audit',
    },
    {
      name: 'a month file is a link',
      setup: (d) => {
        mkdirSync(path.join(d, 'audit'));
        symlinkSync(path.join(outside, 'x.jsonl'), path.join(d, 'audit', '2026-12.jsonl'));
      },
      code: 'AUDIT_PATH_SYMLINK',
      file: 'audit/2026-12.jsonl',
    },
    {
      name: 'a parent of the audit directory is a link',
      setup: (d) => {
        writeFileSync(path.join(d, 'rotor.yaml'), 'kind: Config\naudit: { dir: logs/audit }\n');
        symlinkSync(outside, path.join(d, 'logs'));
      },
      code: 'AUDIT_PATH_SYMLINK',
      file: 'logs',
    },
    {
      name: 'the audit directory is a file',
      setup: (d) => writeFileSync(path.join(d, 'audit'), 'x'),
      code: 'AUDIT_PATH_NOT_PLAIN',
      file: 'audit',
    },
    {
      name: 'audit.dir is inside .git',
      setup: (d) => writeFileSync(path.join(d, 'rotor.yaml'), 'kind: Config\naudit: { dir: .git/logs }\n'),
      code: 'AUDIT_DIR_INVALID',
      file: 'rotor.yaml',
    },
    {
      name: 'audit.dir is inside .GIT',
      setup: (d) => writeFileSync(path.join(d, 'rotor.yaml'), 'kind: Config\naudit: { dir: x/.GIT }\n'),
      code: 'AUDIT_DIR_INVALID',
      file: 'rotor.yaml',
    },
  ];
  for (const c of cases) {
    const dir = tempDir(t);
    writeFileSync(path.join(dir, 'rotor.yaml'), 'kind: Config\n');
    c.setup(dir);
    const r = await rotor(['validate', dir, '--format', 'json']);
    t.equal(r.code, 1, `${c.name}: invalid`);
    const problems = (JSON.parse(r.stdout) as { problems: Array<{ code: string; file: string; severity: string }> })
      .problems;
    t.ok(
      problems.some((p) => p.code === c.code && p.file === c.file && p.severity === 'error'),
      `${c.name}: ${c.code} at ${c.file}`,
    );
  }
  t.same(readdirSync(outside), [], 'nothing was written through a link');
});

t.test(
  'rotor plan refuses a commit that makes the audit path a link, and names attribute changes that reach the audit log',
  async (t) => {
    const dir = tempDir(t);
    gitInit(dir);
    writeFileSync(path.join(dir, 'rotor.yaml'), CONFIG);
    writeFileSync(path.join(dir, 'policies.yaml'), POLICY);
    writeFileSync(path.join(dir, 'secrets.yaml'), SECRET);
    mkdirSync(path.join(dir, 'audit'));
    writeFileSync(path.join(dir, 'audit', '2026-11.jsonl'), '');
    const base = commitAll(dir, 'base');

    rmSync(path.join(dir, 'audit'), { recursive: true });
    symlinkSync('/tmp', path.join(dir, 'audit'));
    const linked = commitAll(dir, 'audit becomes a link');
    const refused = await rotor(['plan', '--base', base, '--head', linked], { cwd: dir });
    t.equal(refused.code, 1, 'refused');
    t.match(refused.stdout, /audit:1:1: error: audit is a symbolic link.*\[AUDIT_PATH_SYMLINK\]/);

    git(dir, 'reset', '-q', '--hard', base);
    const cases: Array<[string, string, boolean]> = [
      ['.gitattributes', '*.jsonl text eol=crlf\n', true],
      ['.gitattributes', '* text=auto\n', true],
      ['.gitattributes', '*.png binary\ndocs/** -diff\n', false],
      ['audit/.gitattributes', '* ident\n', true],
      ['.gitattributes', '[attr]mine text eol=crlf\n', true],
      ['policies/.gitattributes', '*.jsonl text eol=crlf\n', false], // a sibling directory: does not reach audit/
    ];
    for (const [file, text, flagged] of cases) {
      git(dir, 'reset', '-q', '--hard', base);
      mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      writeFileSync(path.join(dir, file), text);
      const head = commitAll(dir, `attributes ${file}`);
      const r = await rotor(['plan', '--base', base, '--head', head, '--format', 'json'], { cwd: dir });
      t.equal(r.code, 0, `${file} "${text.trim()}": the plan is not refused`);
      const attention = (JSON.parse(r.stdout) as { plan: { attention: Array<{ code: string; subject: string }> } }).plan
        .attention;
      t.equal(
        attention.some((a) => a.code === 'AUDIT_ATTRIBUTES_CHANGED' && a.subject === file),
        flagged,
        `${file} "${text.trim()}": ${flagged ? 'named' : 'not named'}`,
      );
    }
    // and in the text a reviewer reads
    git(dir, 'reset', '-q', '--hard', base);
    writeFileSync(path.join(dir, '.gitattributes'), '*.jsonl text eol=crlf\n');
    const text = await rotor(['plan', '--base', base], { cwd: dir });
    t.match(
      text.stdout,
      /! \.gitattributes: added "\*\.jsonl text eol=crlf": these attributes apply to the audit log in audit\/.*\[AUDIT_ATTRIBUTES_CHANGED\]/,
      'the work tree too',
    );
  },
);

t.test('attribute patterns match as git matches them (relative to the file, ** across directories)', async (t) => {
  const yes: Array<[string, string]> = [
    ['*.jsonl', 'audit/2026-12.jsonl'],
    ['*', 'audit/x'],
    ['audit/**', 'audit/2026-12.jsonl'],
    ['/audit/*.jsonl', 'audit/2026-12.jsonl'],
    ['**/*.jsonl', 'audit/2026-12.jsonl'],
    ['2026-1?.jsonl', 'audit/2026-12.jsonl'],
    ['[0-9]*.jsonl', 'audit/2026-12.jsonl'],
  ];
  const no: Array<[string, string]> = [
    ['*.png', 'audit/2026-12.jsonl'],
    ['docs/**', 'audit/2026-12.jsonl'],
    ['audit/', 'audit/2026-12.jsonl'],
    ['/2026-12.jsonl', 'audit/2026-12.jsonl'],
    ['audit/*/x', 'audit/2026-12.jsonl'],
  ];
  for (const [p, s] of yes) t.ok(attributePatternMatches(p, s), `${p} matches ${s}`);
  for (const [p, s] of no) t.notOk(attributePatternMatches(p, s), `${p} does not match ${s}`);
  // A pattern that makes a backtracking matcher take exponential time answers at once here.
  t.notOk(attributePatternMatches(`${'*a'.repeat(500)}b`, `${'a'.repeat(2000)}`), 'a pathological pattern answers');
});

t.test(
  'a commit that makes the audit directory a link: config-rejected, never checked out, nothing written through it; restart and revert',
  async (t) => {
    const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': POLICY, 'secrets.yaml': SECRET });
    const outside = path.join(w.root, 'outside');
    mkdirSync(outside);
    const firstPush = nextPush(true);
    let d = await w.start();
    t.teardown(() => d.stop());
    t.match(await firstPush, { ok: true }, 'the first entries reached the remote');

    git(w.person, 'pull', '-q', '--rebase');
    git(w.person, 'rm', '-r', '-q', 'audit');
    symlinkSync(outside, path.join(w.person, 'audit'));
    const bad = commitAll(w.person, 'audit is a link now');
    git(w.person, 'push', '-q', 'origin', 'main');

    const refusedPush = nextPush(false);
    await d.syncNow();
    const st = d.status();
    t.equal(st.config.attempted?.commit, bad, 'the commit was attempted');
    t.not(st.config.applied?.commit, bad, 'and not applied: the last good commit stays in force');
    t.equal(st.config.held?.code, 'GIT_AUDIT_PATH_UNSAFE', 'the clone holds before it');
    const clone = path.join(w.dataDir, 'repo');
    t.ok(lstatSync(path.join(clone, 'audit')).isDirectory(), "the clone's audit directory is still a plain directory");
    const rejected = entries(path.join(clone, 'audit')).find((e) => e.event === 'config-rejected');
    t.equal(rejected?.commit, bad, 'config-rejected is audited, in the clone');
    t.same(await refusedPush, { ok: false, code: 'GIT_AUDIT_PATH_UNSAFE' }, 'the push says why it cannot go out');
    t.equal(d.status().audit.pushError?.code, 'GIT_AUDIT_PATH_UNSAFE', 'and status says it too');
    const { renderStatusPage } = await import('../src/serve/status-page.js');
    t.match(renderStatusPage(d.status(), Date.now()), /not followed.*GIT_AUDIT_PATH_UNSAFE/s, 'and the status page');
    const { metricsRegistry } = await import('../src/serve/metrics.js');
    const m = metricsRegistry(d);
    t.match(await m.registry.metrics(), /^rotor_repository_held 1$/m, 'and the metrics');
    m.close();
    const { render } = await import('../src/cli/status.js');
    const text = render(d.status() as unknown as Parameters<typeof render>[0], false);
    t.match(
      text,
      new RegExp(`the clone stays before ${bad.slice(0, 12)} \\(GIT_AUDIT_PATH_UNSAFE\\)`),
      'rotor status names the commit and the code',
    );
    t.match(
      text,
      /entries not yet pushed \(\d+ failed pushes, last GIT_AUDIT_PATH_UNSAFE/,
      'and why the entries are not pushed',
    );
    t.same(readdirSync(outside), [], 'nothing was written through the link');

    // A restart with the link still on the remote starts, and still holds.
    const good = st.config.applied?.commit;
    await d.stop();
    d = await w.start();
    t.equal(d.status().config.held?.code, 'GIT_AUDIT_PATH_UNSAFE', 'a restart starts and holds again');
    t.equal(d.status().config.applied?.commit, good, 'with the last good commit in force');
    t.ok(lstatSync(path.join(clone, 'audit')).isDirectory());
    t.same(readdirSync(outside), []);

    // The revert heals it: the clone follows again and the entries are pushed.
    git(w.person, 'revert', '--no-edit', 'HEAD');
    const fixed = git(w.person, 'rev-parse', 'HEAD');
    git(w.person, 'push', '-q', 'origin', 'main');
    const healed = nextPush(true);
    await d.syncNow();
    t.equal(d.status().config.held, undefined, 'the clone follows the remote again');
    t.equal(d.status().config.applied?.commit, fixed, 'the revert is applied');
    t.match(await healed, { ok: true }, 'the kept entries are pushed');
    const remoteLog = git(
      w.remote,
      'show',
      `main:audit/${readdirSync(path.join(clone, 'audit'))
        .filter((f) => f.endsWith('.jsonl'))
        .sort()
        .at(-1)}`,
    );
    t.match(remoteLog, new RegExp(`"event":"config-rejected".*"commit":"${bad}"`), 'the rejection reached the remote');
    t.same(readdirSync(outside), [], 'and nothing ever went through the link');
  },
);

t.test('after a restart on an invalid head, the last applied commit stays in force', async (t) => {
  const consumer = `kind: Consumer\nname: web\nuid: ${process.getuid?.() ?? 0}\nsecrets: ["app/*"]\n`;
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICY,
    'secrets.yaml': SECRET,
    'consumers.yaml': consumer,
  });
  let d = await w.start();
  t.teardown(() => d.stop());
  const good = d.status().config.applied?.commit;
  const version = d.status().secrets.find((x) => x.name === 'app/token')?.version;
  t.equal(version, 1);
  await d.stop();
  w.push('policies.yaml', 'kind: Policy\nname: daily\nevery: 1 day\n', 'a broken policy');
  const bad = git(w.remote, 'rev-parse', 'main');
  d = await w.start();
  const st = d.status();
  t.equal(st.config.applied?.commit, good, 'the last good commit is applied again');
  t.equal(st.config.attempted?.commit, bad, 'the head is attempted and rejected');
  t.equal(st.secrets.find((x) => x.name === 'app/token')?.version, 1, 'the secret is still served at its version');
  t.same(st.sockets.consumers, ['web'], 'the consumer keeps its socket');
});

t.test(
  'a fresh clone of a branch whose audit directory is a link is refused before anything is checked out',
  async (t) => {
    const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': POLICY, 'secrets.yaml': SECRET });
    const outside = path.join(w.root, 'outside');
    mkdirSync(outside);
    symlinkSync(outside, path.join(w.person, 'audit'));
    commitAll(w.person, 'audit is a link');
    git(w.person, 'push', '-q', 'origin', 'main');
    await t.rejects(w.start(), { code: 'GIT_AUDIT_PATH_UNSAFE', message: /audit is a symbolic link/ });
    t.same(readdirSync(outside), [], 'nothing written through it');
    t.notOk(readdirSync(w.dataDir).includes('repo'), 'no clone left behind');
  },
);

t.test('the audit log is written byte for byte whatever .gitattributes say, also in a fresh clone', async (t) => {
  const attributes = '*.jsonl text eol=crlf\n* ident\n';
  const w = await world(t, {
    'rotor.yaml': CONFIG,
    'policies.yaml': POLICY,
    'secrets.yaml': SECRET,
    '.gitattributes': attributes,
  });
  const first = nextPush(true);
  let d = await w.start();
  t.teardown(() => d.stop());
  t.match(await first, { ok: true });
  await d.stop();
  // the host is rebuilt: the data directory is restored, the clone made afresh
  rmSync(path.join(w.dataDir, 'repo'), { recursive: true, force: true });
  const second = nextPush(true);
  d = await w.start(); // used to fail: AUDIT_MALFORMED (the checkout had CRLF line ends)
  t.match(await second, { ok: true });
  const clone = path.join(w.dataDir, 'repo');
  const file = readdirSync(path.join(clone, 'audit'))
    .filter((f) => f.endsWith('.jsonl'))
    .sort()
    .at(-1)!;
  const onDisk = readFileSync(path.join(clone, 'audit', file));
  const committed = execFileSync('git', ['cat-file', 'blob', `main:audit/${file}`], { cwd: w.remote });
  t.notOk(onDisk.includes(13), "no CR in the clone's file");
  t.ok(committed.equals(onDisk), 'the remote holds exactly the bytes the daemon wrote');
  t.equal(
    entries(path.join(clone, 'audit')).filter((e) => e.event === 'config-applied').length,
    2,
    'both starts audited, one chain',
  );
  const verify = await rotor(['audit', 'verify', clone]);
  t.equal(verify.code, 0, 'the chain verifies');
});

t.test('the audit log never follows a link under the clone (confineAuditFs)', async (t) => {
  const root = tempDir(t);
  const clone = path.join(root, 'clone');
  const outside = path.join(root, 'outside');
  mkdirSync(clone);
  mkdirSync(outside);
  const fs = await confineAuditFs(clone, nodeAuditFs);
  symlinkSync(outside, path.join(clone, 'audit'));
  await t.rejects(
    AuditLog.open(path.join(clone, 'audit'), { fs }),
    /symbolic link/,
    'opening the log through a linked directory is refused',
  );
  await t.rejects(fs.mkdir(path.join(clone, 'audit', 'sub'), { recursive: true }), { code: 'ELOOP' });
  await t.rejects(fs.open(path.join(clone, 'audit', '2026-12.jsonl'), 'wx'), { code: 'ELOOP' });
  await t.rejects(fs.readdir(path.join(clone, 'audit')), { code: 'ELOOP' });
  rmSync(path.join(clone, 'audit'));
  mkdirSync(path.join(clone, 'audit'));
  symlinkSync(path.join(outside, 'x.jsonl'), path.join(clone, 'audit', '2026-12.jsonl'));
  await t.rejects(
    fs.open(path.join(clone, 'audit', '2026-12.jsonl'), 'a'),
    { code: 'ELOOP' },
    'a linked file is not appended to',
  );
  await t.rejects(fs.readFile(path.join(clone, 'audit', '2026-12.jsonl')), { code: 'ELOOP' }, 'nor read');
  await t.rejects(fs.open(path.join(root, 'elsewhere.jsonl'), 'wx'), { code: 'EXDEV' }, 'nothing outside the clone');
  t.same(readdirSync(outside), [], 'nothing was created outside');
  // A plain directory works, and the clone itself may be reached through a link (the operator's choice).
  rmSync(path.join(clone, 'audit'), { recursive: true });
  const viaLink = path.join(root, 'clone-link');
  symlinkSync(clone, viaLink);
  const log = await AuditLog.open(path.join(viaLink, 'audit', 'deep'), {
    fs: await confineAuditFs(viaLink, nodeAuditFs),
  });
  await log.append([{ time: '2026-12-01T00:00:00.000Z', event: 'config-applied', commit: 'a'.repeat(40) }]);
  t.equal(readdirSync(path.join(clone, 'audit', 'deep')).length, 1, 'appended in the real directory');
});

t.test('objects read from a commit are bounded before they are read', async (t) => {
  const dir = tempDir(t);
  gitInit(dir);
  writeFileSync(path.join(dir, 'rotor.yaml'), 'kind: Config\n');
  commitAll(dir, 'base');
  const hash = (input: Buffer | string) =>
    execFileSync('git', ['hash-object', '-w', '--stdin'], { cwd: dir, input }).toString().trim();
  const small = hash('kind: Config\n');
  const big = hash(Buffer.alloc(128 * 1024 * 1024, 'a')); // a 128 MiB "link target"
  const tree = (entries: string[]) =>
    execFileSync('git', ['mktree'], { cwd: dir, input: `${entries.join('\n')}\n` })
      .toString()
      .trim();
  const commitOf = (treeId: string) =>
    execFileSync('git', ['commit-tree', treeId, '-m', 'x'], {
      cwd: dir,
      env: {
        ...process.env,
        GIT_AUTHOR_NAME: 't',
        GIT_AUTHOR_EMAIL: 't@t',
        GIT_COMMITTER_NAME: 't',
        GIT_COMMITTER_EMAIL: 't@t',
      },
    })
      .toString()
      .trim();
  const withLink = commitOf(tree([`100644 blob ${small}\trotor.yaml`, `120000 blob ${big}\tbig-link.yaml`]));
  const plain = commitOf(tree([`100644 blob ${small}\trotor.yaml`]));

  // Peak memory of a process that lists each commit: the link's 128 MiB must not be read.
  const peak = async (commit: string) => {
    const script = `
      const { GitTreeSource } = await import(${JSON.stringify(pathToFileURL(path.join(ROOT, 'dist', 'src', 'git', 'tree.js')).href)});
      const l = await new GitTreeSource(${JSON.stringify(dir)}, ${JSON.stringify(commit)}, '').list();
      process.stdout.write(JSON.stringify({ rss: process.resourceUsage().maxRSS * 1024, problems: l.problems }));`;
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      let s = '';
      child.stdout.on('data', (c: Buffer) => (s += c.toString()));
      child.on('error', reject);
      child.on('close', () => resolve(s));
    });
    return JSON.parse(out) as { rss: number; problems: Array<{ code: string; message: string }> };
  };
  const baseline = await peak(plain);
  const linked = await peak(withLink);
  t.ok(
    linked.problems.some((p) => p.code === 'SYMLINK_OUTSIDE' && /over 4096/.test(p.message)),
    'the link is ignored with a warning that says why',
  );
  t.ok(
    linked.rss - baseline.rss < 48 * 1024 * 1024,
    `the link target was not read (peak RSS ${(linked.rss / 2 ** 20).toFixed(0)} MiB vs ${(baseline.rss / 2 ** 20).toFixed(0)} MiB without it)`,
  );

  // cat-file: an object over its limit is refused on its announced size; the others are read.
  const got = await catFiles(dir, [
    { sha: big, maxBytes: 1024 },
    { sha: small, maxBytes: 1024 },
  ]);
  t.match(got.get(big), { code: 'FILE_TOO_LARGE' }, 'over the limit: refused');
  t.same((got.get(small) as Buffer).toString(), 'kind: Config\n', 'the rest is read');
  const src = new GitTreeSource(dir, plain, '');
  await src.list();
  t.match(
    (await src.readMany(['rotor.yaml'], { maxBytes: 4 })).get('rotor.yaml'),
    { code: 'FILE_TOO_LARGE' },
    'readMany refuses a file over its limit',
  );

  // The tail of a large blob, in bounded memory.
  const tail = await gitTail(dir, ['cat-file', 'blob', big], 10);
  t.same([tail.tail.toString(), tail.size], ['a'.repeat(10), 128 * 1024 * 1024], 'gitTail keeps only the end');

  // A tree record longer than the bound stops the listing.
  const longName = `${'x'.repeat(9000)}.yaml`;
  const longTree = commitOf(tree([`100644 blob ${small}\trotor.yaml`, `100644 blob ${small}\t${longName}`]));
  const seen: string[] = [];
  const { truncated } = await lsTree(dir, ['-r', longTree], 100, (e) => void seen.push(e.path));
  t.ok(truncated, 'a record over 8 KiB stops the listing');
  t.notOk(seen.includes(longName), 'and is not passed on');
});

t.test('every git call goes through the hardened runner', async (t) => {
  // No other spawn of git in the program.
  const offenders: string[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = path.join(dir, name);
      if (lstatSync(p).isDirectory()) walk(p);
      else if (p.endsWith('.ts') && path.relative(ROOT, p) !== path.join('src', 'git', 'run.ts')) {
        const text = readFileSync(p, 'utf8');
        if (/(spawn|execFile|execFileSync|spawnSync|exec|execSync)\(\s*['"`]git\b/.test(text))
          offenders.push(path.relative(ROOT, p));
      }
    }
  };
  walk(path.join(ROOT, 'src'));
  walk(path.join(ROOT, 'agent', 'src'));
  t.same(offenders, [], 'git is started only by src/git/run.ts');

  // An environment that points git elsewhere does not move rotor's reads.
  const dir = tempDir(t);
  gitInit(dir);
  writeFileSync(path.join(dir, 'rotor.yaml'), CONFIG);
  writeFileSync(path.join(dir, 'policies.yaml'), POLICY);
  const base = commitAll(dir, 'base');
  writeFileSync(path.join(dir, 'secrets.yaml'), SECRET);
  const head = commitAll(dir, 'head');
  const decoy = tempDir(t);
  execFileSync('git', ['init', '-q', '--bare', decoy]);
  const saved = { GIT_DIR: process.env.GIT_DIR, GIT_INDEX_FILE: process.env.GIT_INDEX_FILE };
  process.env.GIT_DIR = decoy;
  process.env.GIT_INDEX_FILE = path.join(decoy, 'index');
  try {
    const r = await rotor(['plan', '--base', base, '--head', head, '--format', 'json'], { cwd: dir });
    t.equal(r.code, 0, r.stderr);
    t.ok(
      (JSON.parse(r.stdout) as { plan: { changes: Array<{ name: string }> } }).plan.changes.some(
        (c) => c.name === 'app/token',
      ),
      'the plan read this repository',
    );
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});
