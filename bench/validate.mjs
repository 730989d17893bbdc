#!/usr/bin/env node
// bench/validate: the time and peak memory of `rotor validate` on a generated repository of 10,000
// secrets (with policies, targets, agents and consumers that match), and on hostile files.
// Targets: under 1.5 s and under 300 MB for 10,000 secrets; each hostile file refused in
// under a second. Usage: npm run bench:validate [-- --secrets N --runs R]
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = path.join(root, 'dist/src/cli/main.js');
const { values } = parseArgs({
  options: { secrets: { type: 'string', default: '10000' }, runs: { type: 'string', default: '5' } },
});
const SECRETS = Number(values.secrets);
const RUNS = Number(values.runs);
const TEAMS = 100;
const ENGINES = [
  ['postgres', 'alternate'],
  ['mysql', 'dual'],
  ['mariadb', 'dual'],
  ['redis', 'dual'],
  ['mongodb', 'alternate'],
  ['mssql', 'alternate'],
];

function agentKeys(i) {
  // Valid-looking distinct keys: the signing key is base64 of 32 bytes; the recipient must pass the
  // bech32 checksum, so reuse one real recipient (the loader does not require distinct recipients).
  const key = Buffer.alloc(32, 0);
  key.writeUInt32BE(i + 1, 0);
  return {
    signingKey: `ed25519:${key.toString('base64')}`,
    recipient: 'age1fsr2ptuq2f0pmk8q4hv2zhsyc9jlcvxaaaygvetxveakz87h298qwpeds6',
  };
}

function generate(dir, secrets) {
  writeFileSync(
    path.join(dir, 'rotor.yaml'),
    'kind: Config\naudit: { dir: audit, push: true }\nsync: { interval: 30s }\n',
  );
  const docs = [];
  for (let p = 0; p < 20; p++) {
    docs.push(
      p % 2
        ? `kind: Policy\nname: policy-${p}\ncron: "0 ${p % 24} * * ${p % 7}"\ntimezone: Europe/Berlin\nwindow: { start: "01:00", end: "05:00" }\noverlap: 24h\nretain: 3\n`
        : `kind: Policy\nname: policy-${p}\nevery: ${10 + p}d\njitter: 10m\noverlap: 24h\nmaxAge: ${30 + p}d\n`,
    );
  }
  writeFileSync(path.join(dir, 'policies.yaml'), docs.join('---\n'));
  const infra = [];
  for (let a = 0; a < 10; a++) {
    const k = agentKeys(a);
    infra.push(`kind: Agent\nname: agent-${a}\nsigningKey: "${k.signingKey}"\nrecipient: "${k.recipient}"\n`);
  }
  for (let tg = 0; tg < TEAMS; tg++) {
    infra.push(`kind: Target\nname: db-${tg}\nengine: ${ENGINES[tg % ENGINES.length][0]}\nagent: agent-${tg % 10}\n`);
  }
  writeFileSync(path.join(dir, 'infra.yaml'), infra.join('---\n'));
  const perTeam = Math.ceil(secrets / TEAMS);
  let n = 0;
  for (let tm = 0; tm < TEAMS; tm++) {
    const tdir = path.join(dir, 'teams', `team-${tm}`);
    mkdirSync(tdir, { recursive: true });
    const out = [];
    for (let i = 0; i < perTeam && n < secrets; i++, n++) {
      const name = `team-${tm}/secret-${i}`;
      if (i === 0) {
        const [engine, strategy] = ENGINES[tm % ENGINES.length];
        const who = strategy === 'alternate' ? `usernames: [u${tm}_a, u${tm}_b]` : `username: u${tm}`;
        out.push(
          `kind: Secret\nname: ${name}\npolicy: policy-${n % 20}\ngenerate: { length: 32, charset: alphanumeric }\ndatabase: { target: db-${tm}, ${who} }\n`,
        );
        void engine;
      } else if (i % 10 === 1) {
        out.push(
          `kind: Secret\nname: ${name}\npolicy: policy-${n % 20}\nfields:\n  token: { generate: { length: 40, charset: base64url } }\n  region: { value: eu-west-1 }\n`,
        );
      } else {
        out.push(
          `kind: Secret\nname: ${name}\ndescription: generated secret ${n}\npolicy: policy-${n % 20}\ngenerate: { length: 48, charset: alphanumeric }\n`,
        );
      }
    }
    writeFileSync(path.join(tdir, 'secrets.yaml'), out.join('---\n'));
    writeFileSync(
      path.join(tdir, 'consumers.yaml'),
      [0, 1, 2, 3, 4]
        .map(
          (c) =>
            `kind: Consumer\nname: team-${tm}-app-${c}\nuid: ${10000 + tm * 10 + c}\nsecrets: ["team-${tm}/*", "team-${(tm + 1) % TEAMS}/secret-${c}"]\n`,
        )
        .join('---\n'),
    );
  }
}

const MAXRSS =
  'data:text/javascript,process.on("exit",()=>process.stderr.write("\\nmaxrss="+process.resourceUsage().maxRSS+"\\n"))';

function measure(dir) {
  const start = process.hrtime.bigint();
  const r = spawnSync(process.execPath, ['--import', MAXRSS, bin, 'validate', dir], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
  });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  const rss = Number(/maxrss=(\d+)/.exec(r.stderr)?.[1] ?? NaN) / 1024;
  return { ms, rss, status: r.status, last: r.stdout.trim().split('\n').pop(), first: r.stdout.split('\n')[0] };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const tmp = mkdtempSync(path.join(os.tmpdir(), 'rotor-bench-'));
try {
  const repo = path.join(tmp, 'repo');
  mkdirSync(repo);
  generate(repo, SECRETS);
  const runs = Array.from({ length: RUNS }, () => measure(repo));
  const bad = runs.find((r) => r.status !== 0);
  if (bad) throw new Error(`validate failed on the generated repository: ${bad.first}`);
  console.log(
    `rotor validate, ${SECRETS} secrets, ${TEAMS * 5} consumers, ${TEAMS} targets, 20 policies (${RUNS} runs; node ${process.version}, ${os.cpus().length} cpus)`,
  );
  console.log(`  ${runs[0].last}`);
  console.log(
    `  wall time   median ${median(runs.map((r) => r.ms)).toFixed(0)} ms   max ${Math.max(...runs.map((r) => r.ms)).toFixed(0)} ms   (target < 1500 ms)`,
  );
  console.log(
    `  peak RSS    median ${median(runs.map((r) => r.rss)).toFixed(0)} MB    max ${Math.max(...runs.map((r) => r.rss)).toFixed(0)} MB    (target < 300 MB)`,
  );
  const empty = path.join(tmp, 'empty');
  mkdirSync(empty);
  writeFileSync(path.join(empty, 'rotor.yaml'), 'kind: Config\n');
  const baseline = median(Array.from({ length: RUNS }, () => measure(empty).ms));
  console.log(`  baseline    ${baseline.toFixed(0)} ms for a repository with only rotor.yaml (process start-up)`);

  console.log('hostile files (each alone beside a rotor.yaml):');
  const hostile = {
    'alias bomb (9^10 nodes)': (f) => {
      const lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
      for (let i = 1; i < 10; i++) {
        const p = String.fromCharCode(96 + i);
        const c = String.fromCharCode(97 + i);
        lines.push(`${c}: &${c} [${Array(9).fill(`*${p}`).join(',')}]`);
      }
      writeFileSync(f, `kind: Policy\nname: bomb\n${lines.join('\n')}\n`);
    },
    '50 MiB file': (f) => {
      writeFileSync(f, 'kind: Policy\n');
      truncateSync(f, 50 * 1024 * 1024);
    },
    '100,000 documents': (f) => writeFileSync(f, 'a: 1\n---\n'.repeat(100_000)),
    '200,000 nested [': (f) => writeFileSync(f, `a: ${'['.repeat(200_000)}${']'.repeat(200_000)}\n`),
  };
  for (const [label, make] of Object.entries(hostile)) {
    const dir = path.join(tmp, label.replace(/\W+/g, '-'));
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'rotor.yaml'), 'kind: Config\n');
    make(path.join(dir, 'x.yaml'));
    const r = measure(dir);
    const code = /\[([A-Z_0-9]+)\]/.exec(r.first)?.[1] ?? '?';
    console.log(
      `  ${label.padEnd(26)} exit ${r.status}  ${code.padEnd(24)} ${r.ms.toFixed(0).padStart(5)} ms  ${r.rss.toFixed(0).padStart(4)} MB`,
    );
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
