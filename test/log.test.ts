/**
 * The logs (src/log.ts, pino): one JSON object per line with time, level and msg; field names that
 * suggest a value are redacted at any depth and in any capitalisation; levels filter; every line is
 * written before the call returns, also into a full stderr pipe, so a SIGKILL loses nothing logged,
 * and the commands' own stderr messages keep their place among the lines; and a daemon's logs, in
 * process and from the real binary, are such lines and never hold a generated value.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, openSync, writeSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { createServer, Socket } from 'node:net';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import type { Test } from 'tap';
import t from 'tap';
import { loadKeys } from '../src/keys.js';
import type { Level } from '../src/log.js';
import { jsonLogger, LEVELS, logger, pinoOptions, REDACTED, textLine, writeFdSync } from '../src/log.js';
import type { SecretRecord } from '../src/rotation/record.js';
import { openStore } from '../src/state/store.js';
import { ROOT, tempDir } from './helpers.js';
import { finishes, world } from './world.js';

interface Line {
  level: string;
  time: string;
  msg: string;
  [field: string]: unknown;
}

/** Parses log text as pino JSON lines, failing the test on anything else. */
function lines(t: Test, text: string): Line[] {
  t.ok(text === '' || text.endsWith('\n'), 'the log ends with a newline');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const o = JSON.parse(l) as Line;
      if (
        !LEVELS.includes(o.level as Level) ||
        typeof o.msg !== 'string' ||
        new Date(o.time).toISOString() !== o.time
      ) {
        t.fail(`not a rotor log line: ${l.slice(0, 300)}`);
      }
      return o;
    });
}

function collector(minLevel: Level = 'info', now?: () => number) {
  const written: string[] = [];
  const log = jsonLogger((l) => void written.push(l), now, minLevel);
  return { log, written, text: () => written.join('') };
}

t.test('one JSON object per line: level as a label, time as ISO 8601, msg, then the fields', async (t) => {
  const c = collector('info', () => Date.parse('2026-11-26T10:00:00.000Z'));
  c.log('info', 'secret rotated', { secret: 'app/db', version: 3, early: false });
  c.log('warn', 'a 100% literal %s message %d', { code: 'X' });
  t.equal(c.written.length, 2, 'one write per call, made before the call returns');
  t.equal(
    c.written[0],
    '{"level":"info","time":"2026-11-26T10:00:00.000Z","msg":"secret rotated","secret":"app/db","version":3,"early":false}\n',
  );
  const [, second] = lines(t, c.text());
  t.equal(second!.msg, 'a 100% literal %s message %d', 'a message is never a format string');
  t.equal(second!.level, 'warn');
  t.notOk('pid' in second! || 'hostname' in second!, 'no pid or hostname');

  const clock = collector();
  const before = Date.now();
  clock.log('error', 'x');
  const time = Date.parse(lines(t, clock.text())[0]!.time);
  t.ok(time >= before && time <= Date.now(), 'without a clock, the system clock');

  const fields = collector();
  fields.log('info', 'the message wins', { msg: 'a field named msg', other: undefined });
  t.same(
    JSON.parse(fields.written[0]!),
    { level: 'info', time: JSON.parse(fields.written[0]!).time, msg: 'the message wins' },
    'a msg field does not replace the message; undefined fields are left out',
  );
});

t.test('field names that suggest a value are redacted, at the top and nested, in any capitalisation', async (t) => {
  const c = collector('debug');
  const leaks = ['pw-1', 'val-2', 'tok-3', 'key-4', 'pw-5', 'pk-6', 'vals-7', 'tok-8', 'pw-9', 'plain-10'];
  const fields = {
    secret: 'app/db',
    version: 2,
    password: leaks[0],
    value: leaks[1],
    token: leaks[2],
    key: leaks[3],
    PASSWORD: leaks[4],
    PrivateKey: leaks[5],
    values: [leaks[6]],
    nested: { token: leaks[7], deeper: { Passwd: leaks[8], list: [{ plaintext: leaks[9] }], keep: 'me' } },
  };
  const original = JSON.stringify(fields);
  c.log('info', 'careless', fields);
  const text = c.text();
  for (const v of leaks) t.notOk(text.includes(v), `${v} is not in the line`);
  const [line] = lines(t, text);
  t.match(line, {
    secret: 'app/db',
    version: 2,
    password: REDACTED,
    value: REDACTED,
    token: REDACTED,
    key: REDACTED,
    PASSWORD: REDACTED,
    PrivateKey: REDACTED,
    values: REDACTED,
    nested: { token: REDACTED, deeper: { Passwd: REDACTED, list: [{ plaintext: REDACTED }], keep: 'me' } },
  });
  t.equal(JSON.stringify(fields), original, "the caller's object is left as it was");

  // pino's own redact paths, without the name walk in front of them: the documented floor.
  const written: string[] = [];
  const options = pinoOptions('info');
  const bare = pino(
    { ...options, formatters: { level: options.formatters!.level! } },
    { write: (s: string) => void written.push(s) },
  );
  bare.info(
    {
      password: 'p1',
      token: 't1',
      db: { password: 'p2', privateKey: 'k2' },
      a: { b: { value: 'v3' } },
      secret: 'kept',
    },
    'paths',
  );
  const out = written.join('');
  for (const v of ['p1', 't1', 'p2', 'k2', 'v3']) t.notOk(out.includes(`"${v}"`), `pino's redact paths hide ${v}`);
  t.match(JSON.parse(out), {
    password: REDACTED,
    db: { password: REDACTED, privateKey: REDACTED },
    a: { b: { value: REDACTED } },
    secret: 'kept',
  });
});

t.test('levels filter: below the minimum nothing is written', async (t) => {
  const seen = (min: Level) => {
    const c = collector(min);
    for (const l of LEVELS) c.log(l, `at ${l}`);
    return lines(t, c.text()).map((l) => l.level);
  };
  t.same(seen('debug'), ['debug', 'info', 'warn', 'error']);
  t.same(seen('info'), ['info', 'warn', 'error']);
  t.same(seen('warn'), ['warn', 'error']);
  t.same(seen('error'), ['error']);
  const c = collector();
  c.log('debug', 'hidden');
  t.equal(c.text(), '', 'info by default');
});

t.test('lines logged into a full stderr pipe, then a SIGKILL: every one arrives, in order', async (t) => {
  // The child's stderr is a FIFO (a pipe) that this process does not read until the child says, on
  // fd 3, that it has filled it: filler writes until EAGAIN. Then the child logs N lines through the
  // commands' logger (jsonLogger on processIo().stderr, as rotor daemon does), with a plain io.stderr
  // line every 100, and SIGKILLs itself in the same tick. The first line carries a field four times
  // what the pipe held: however soon this process starts reading after the signal, no single
  // non-blocking write can take that line, so the logger meets a full pipe every run. Each line must
  // be written before its call returns, so all arrive, whole and in order.
  const dist = (p: string) => pathToFileURL(path.join(ROOT, 'dist', 'src', p)).href;
  const N = 3000;
  const FILLER = `${'#'.repeat(63)}\n`;
  const script = `
    import { readFileSync, writeSync } from 'node:fs';
    const { jsonLogger } = await import(${JSON.stringify(dist('log.js'))});
    const { processIo } = await import(${JSON.stringify(dist('cli/io.js'))});
    const io = processIo();
    void process.stderr; // Node opens fd 2 as a stream: libuv makes the pipe non-blocking
    const flags = Number.parseInt(/^flags:\\s*([0-7]+)$/m.exec(readFileSync('/proc/self/fdinfo/2', 'utf8'))[1], 8);
    if ((flags & 0o4000) === 0) {
      writeSync(3, 'fd 2 is blocking\\n');
      process.exit(1);
    }
    let filler = 0;
    for (;;) {
      try {
        writeSync(2, ${JSON.stringify(FILLER)});
        filler++;
      } catch (e) {
        if (e.code === 'EAGAIN') break;
        throw e;
      }
    }
    writeSync(3, 'full ' + filler + '\\n');
    const log = jsonLogger(io.stderr);
    for (let i = 0; i < ${N}; i++) {
      log('info', 'line', { i, pad: 'x'.repeat(i === 0 ? 4 * filler * ${FILLER.length} : 40) });
      if (i % 100 === 0) io.stderr('rotor: plain ' + i + '\\n');
    }
    process.kill(process.pid, 'SIGKILL');`;

  const fifo = path.join(tempDir(t, 'rotor-log-'), 'stderr');
  execFileSync('mkfifo', ['-m', '0600', fifo]);
  const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const writeFd = openSync(fifo, constants.O_WRONLY); // a reader is open: does not wait
  // env -u NODE_OPTIONS: tap's loaders in NODE_OPTIONS would be inherited by the child.
  const child = spawn('/usr/bin/env', ['-u', 'NODE_OPTIONS', process.execPath, '--input-type=module', '-e', script], {
    stdio: ['ignore', 'ignore', writeFd, 'pipe'],
  });
  closeSync(writeFd);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  let said = '';
  await new Promise<void>((resolve) => {
    child.stdio[3]!.on('data', (c: Buffer) => {
      said += c.toString();
      if (said.includes('\n')) resolve();
    });
    void exited.then(() => resolve());
  });

  // Now read everything the child wrote, up to the end (the child is gone and no writer is left).
  const reader = new Socket({ fd: readFd, readable: true, writable: false });
  let text = '';
  reader.setEncoding('utf8');
  reader.on('data', (c: string) => void (text += c));
  await new Promise<void>((resolve, reject) => {
    reader.on('end', resolve);
    reader.on('error', reject);
  });
  reader.destroy();
  const r = await exited;

  t.match(said, /^full [1-9]\d*\n$/, 'the child filled its stderr pipe to EAGAIN before logging');
  const filled = Number(said.split(' ')[1]);
  t.equal(r.signal, 'SIGKILL');
  const all = text.split('\n');
  t.equal(all.pop(), '', 'what arrived ends with a newline');
  t.ok(
    all.slice(0, filled).every((l) => `${l}\n` === FILLER),
    'first the filler, whole',
  );
  const rest = all.slice(filled);
  const expected: string[] = [];
  for (let i = 0; i < N; i++) {
    expected.push(`line ${i}`);
    if (i % 100 === 0) expected.push(`rotor: plain ${i}`);
  }
  const got = rest.map((l) => {
    if (!l.startsWith('{')) return l;
    try {
      const o = JSON.parse(l) as Line;
      return `${o.msg} ${String(o.i)}`;
    } catch {
      return `a partial line of ${l.length} characters`;
    }
  });
  t.equal(got.filter((l) => l.startsWith('line ')).length, N, 'every line logged before the kill reached the reader');
  t.same(got, expected, "whole, in order, and io.stderr's own lines where they were written");
  const logged = lines(
    t,
    rest
      .filter((_, k) => got[k]!.startsWith('line '))
      .map((l) => `${l}\n`)
      .join(''),
  );
  t.equal(logged[0]?.pad, 'x'.repeat(4 * filled * FILLER.length), 'the long first line whole');
});

t.test('writeFdSync: a pipe whose reader is gone drops the text instead of throwing into the caller', async (t) => {
  const fifo = path.join(tempDir(t, 'rotor-log-'), 'gone');
  execFileSync('mkfifo', ['-m', '0600', fifo]);
  const readFd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const writeFd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  t.teardown(() => closeSync(writeFd));
  closeSync(readFd);
  t.throws(() => writeSync(writeFd, 'x\n'), { code: 'EPIPE' }, 'a plain write fails: EPIPE');
  t.doesNotThrow(() => writeFdSync(writeFd, 'a line nobody reads\n'), 'writeFdSync returns');
  const log = jsonLogger((line) => writeFdSync(writeFd, line));
  t.doesNotThrow(() => log('error', 'into the void'), 'and so does a log call');
});

const CONFIG = 'kind: Config\nsync: { interval: 1d }\n';
const FAST = 'kind: Policy\nname: fast\nevery: 2s\noverlap: 1s\n';
const SECRETS = `kind: Secret
name: demo/ticker
policy: fast
generate: { length: 24 }
---
kind: Secret
name: demo/config
policy: fast
fields: { token: { generate: { length: 30, charset: base64url } }, password: { generate: { length: 30 } }, region: { value: eu-west-1 } }
`;

t.test("a daemon's logs are pino JSON lines and hold none of the values it generated", async (t) => {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const done = finishes('demo/ticker', 3);
  const d = await w.start();
  await done;
  await d.stop();

  const keys = await loadKeys(w.dataDir);
  const store = await openStore({
    dir: path.join(w.dataDir, 'state'),
    identity: keys.identity,
    recipients: [keys.recipient],
  });
  const values: string[] = [];
  for (const [, v] of store.entries('secret/')) {
    for (const ver of (v as unknown as SecretRecord).versions) {
      if (typeof ver.value === 'string') values.push(ver.value);
      else values.push(ver.value.token!, ver.value.password!);
    }
  }
  await store.close();
  t.ok(values.length >= 5, `${values.length} values to look for`);

  const text = w.logs();
  const logged = lines(t, text);
  t.ok(
    logged.some((l) => l.msg === 'daemon started'),
    'the start is logged',
  );
  t.ok(
    logged.filter((l) => l.msg === 'secret rotated' && l.secret === 'demo/ticker').length >= 2,
    'rotations are logged, with the secret',
  );
  t.ok(
    logged.some((l) => l.msg === 'secret created' && l.secret === 'demo/config' && l.version === 1),
    "the structured secret's creation is logged",
  );
  for (const v of values) {
    for (const form of [v, Buffer.from(v).toString('base64'), Buffer.from(v).toString('hex')])
      t.notOk(text.includes(form), 'a value is not in the logs');
  }
});

/** A port on 127.0.0.1 that is taken (by a listener of this process) until `t` ends. */
async function takenPort(t: Test): Promise<number> {
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => busy.close());
  return (busy.address() as AddressInfo).port;
}

/**
 * `rotor daemon EXTRA` as a process (the built binary, with `env` added), its metrics to listen on the
 * taken `port`: its stderr, once it said that it cannot listen there (then it is SIGKILLed) or exited.
 */
async function daemonOnTakenPort(t: Test, port: number, extra: string[], env: Record<string, string>): Promise<string> {
  const w = await world(t, { 'rotor.yaml': CONFIG, 'policies.yaml': FAST, 'secrets.yaml': SECRETS });
  const args = [
    path.join(ROOT, 'dist/src/cli/main.js'),
    'daemon',
    '--repo',
    w.remote,
    '--data-dir',
    w.dataDir,
    '--socket-dir',
    path.join(w.dataDir, 'sockets'),
    '--agent-listen',
    '127.0.0.1:0',
    '--metrics-listen',
    `127.0.0.1:${port}`,
    ...extra,
  ];
  const child = spawn(
    '/usr/bin/env',
    ['-u', 'NODE_OPTIONS', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, ...args],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  const ended = new Promise<void>((resolve) => child.on('close', () => resolve()));
  child.stderr.on('data', (c: Buffer) => {
    stderr += c.toString();
    if (stderr.includes('[METRICS_LISTEN_FAILED]\n')) child.kill('SIGKILL');
  });
  await ended;
  return stderr;
}

t.test("rotor daemon --log-level and ROTOR_LOG_LEVEL filter the daemon's stderr", async (t) => {
  // The metrics port is taken: the daemon logs "listening for agents" (info), then "the daemon cannot
  // start" (error). Lines are written in order and at once, so when the error is on stderr, the info
  // line before it is there too, unless its level is filtered out.
  const port = await takenPort(t);
  const run = async (extra: string[], env: Record<string, string>) => {
    const stderr = await daemonOnTakenPort(t, port, extra, env);
    t.match(
      stderr,
      /rotor daemon: cannot listen on .* \[METRICS_LISTEN_FAILED\]\n/,
      'the daemon failed to start as arranged',
    );
    return lines(
      t,
      stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => `${l}\n`)
        .join(''),
    );
  };
  const info = await run([], {});
  t.ok(
    info.some((l) => l.level === 'info' && l.msg === 'listening for agents'),
    'info by default: the info line is there',
  );
  t.match(info.at(-1), { level: 'error', msg: 'the daemon cannot start', code: 'METRICS_LISTEN_FAILED' });
  const flag = await run(['--log-level', 'error'], {});
  t.ok(flag.length > 0 && flag.every((l) => l.level === 'error'), '--log-level error: only errors');
  t.match(flag.at(-1), { msg: 'the daemon cannot start' });
  const env = await run([], { ROTOR_LOG_LEVEL: 'warn' });
  t.ok(
    env.length > 0 && env.every((l) => l.level === 'warn' || l.level === 'error'),
    'ROTOR_LOG_LEVEL=warn: no info line',
  );
  t.match(env.at(-1), { msg: 'the daemon cannot start' });
  const both = await run(['--log-level', 'info'], { ROTOR_LOG_LEVEL: 'error' });
  t.ok(
    both.some((l) => l.msg === 'listening for agents'),
    'the command line wins over the environment',
  );
});

t.test(
  '--log-format text: the same events as lines for people, redacted alike, no field can break a line',
  async (t) => {
    let out = '';
    const log = logger(
      'text',
      (l) => void (out += l),
      () => Date.parse('2026-12-03T17:14:04.312Z'),
    );
    log('info', 'secret rotated', { secret: 'demo/ticker', version: 2, trigger: 'schedule' });
    log('warn', 'odd', { reason: 'two words\nforged INFO line', password: 'hunter2', nested: { token: 'x' } });
    const lines = out.split('\n');
    t.equal(lines[0], '2026-12-03T17:14:04.312Z INFO  secret rotated  secret=demo/ticker version=2 trigger=schedule');
    t.equal(
      lines[1],
      `2026-12-03T17:14:04.312Z WARN  odd  reason="two words\\nforged INFO line" password="${REDACTED}" nested={"token":"${REDACTED}"}`,
    );
    t.equal(lines.length, 3, 'two lines: the newline in a field is escaped');
    t.notMatch(out, /hunter2/);
    t.equal(textLine('not json'), 'not json\n', 'anything else passes through');
  },
);

t.test(
  'rotor daemon: JSON logs when stderr is not a terminal, text with --log-format text or ROTOR_LOG_FORMAT',
  async (t) => {
    const port = await takenPort(t);
    const run = (extra: string[], env: Record<string, string>) => daemonOnTakenPort(t, port, extra, env);
    t.match(
      await run([], {}),
      /^\{"level":"info","time":"[^"]+","msg":"listening for agents","address":"127\.0\.0\.1:\d+"\}$/m,
    );
    const text = /^\d{4}-\d\d-\d\dT[\d:.]+Z INFO {2}listening for agents {2}address=127\.0\.0\.1:\d+$/m;
    t.match(await run(['--log-format', 'text'], {}), text);
    t.match(await run([], { ROTOR_LOG_FORMAT: 'text' }), text);
    t.match(await run(['--log-format', 'yaml'], {}), /--log-format/, 'an unknown format is a usage error');
  },
);
