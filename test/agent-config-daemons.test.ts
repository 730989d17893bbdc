/**
 * The agent configuration's `daemon:` as one URL or a list of them (several daemons on one store): the
 * forms accepted, and each problem with its code, line and column (an empty list, a bad URL inside a
 * list, the same daemon twice, http:// beside https://, tls: with http:// daemons).
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import type { AgentConfigProblem } from '../agent/src/config.js';
import { AGENT_CONFIG_CODES, AgentConfigError, loadAgentConfig } from '../agent/src/config.js';
import { generateKeys } from '../src/keys.js';
import { tempDir } from './helpers.js';

async function setup(t: Test) {
  const dir = tempDir(t, 'rotor-agent-daemons-');
  await generateKeys(path.join(dir, 'keys'));
  const daemon = await generateKeys(path.join(dir, 'daemon'));
  let n = 0;
  /** The configuration with `daemonLines` (and `tls`) at the top; its file. */
  const write = (daemonLines: string, tls = '') => {
    const text = `${daemonLines}\n${tls}name: web-1\nkeyDir: keys\ndaemonSigningKey: "${daemon.signingKey}"\n`;
    const file = path.join(dir, `agent-${++n}.yaml`);
    writeFileSync(file, text, { mode: 0o600 });
    return { file, text };
  };
  return { write };
}

async function problemsOf(t: Test, file: string): Promise<AgentConfigProblem[]> {
  const e = await loadAgentConfig(file, { env: {} }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(e instanceof AgentConfigError, 'the configuration is refused');
  return (e as AgentConfigError).problems;
}

/** Line and column (1-based) of the first `needle` in `text`. */
function at(text: string, needle: string): { line: number; col: number } {
  const i = text.indexOf(needle);
  if (i < 0) throw new Error(`${needle} is not in the text`);
  const before = text.slice(0, i);
  return { line: before.split('\n').length, col: i - before.lastIndexOf('\n') };
}

function expectProblem(
  t: Test,
  problems: readonly AgentConfigProblem[],
  code: string,
  where: { line: number; col: number },
  message: RegExp,
): void {
  const p = problems.find((x) => x.code === code);
  if (!t.ok(p, `${code} is reported (got ${problems.map((x) => x.code).join(', ')})`)) return;
  t.same({ line: p!.line, col: p!.col }, where, `${code} at ${where.line}:${where.col}`);
  t.match(p!.message, message, `${code}: ${p!.message}`);
}

t.test('daemon: one URL or a list of them', async (t) => {
  const s = await setup(t);
  const one = await loadAgentConfig(s.write('daemon: http://127.0.0.1:7700').file, { env: {} });
  t.same(
    one.daemons.map((d) => d.href),
    ['http://127.0.0.1:7700/'],
    'one URL: a list of one',
  );
  const flow = await loadAgentConfig(s.write('daemon: [http://10.0.0.1:7700, http://10.0.0.2:7700]').file, {
    env: {},
  });
  t.same(
    flow.daemons.map((d) => d.origin),
    ['http://10.0.0.1:7700', 'http://10.0.0.2:7700'],
    'a flow list, in its order',
  );
  const block = await loadAgentConfig(
    s.write(
      'daemon:\n  - https://rotor-b.internal:7700\n  - https://rotor-a.internal:7700/',
      'tls: { pin: "sha256/6KkETUIWc7Plf+XjinHv9qSL1AiNP08DCBXwLaIpmYc=" }\n',
    ).file,
    { env: {} },
  );
  t.same(
    block.daemons.map((d) => d.origin),
    ['https://rotor-b.internal:7700', 'https://rotor-a.internal:7700'],
    'a block list of https:// daemons, a trailing slash allowed',
  );
  t.same(block.tls?.pins, ['sha256/6KkETUIWc7Plf+XjinHv9qSL1AiNP08DCBXwLaIpmYc='], 'tls: applies to them all');
});

t.test('daemon: the problems of a list, each at its place', async (t) => {
  const s = await setup(t);

  const empty = s.write('daemon: []');
  expectProblem(t, await problemsOf(t, empty.file), 'SCHEMA_RANGE', at(empty.text, '[]'), /daemon is an empty list/);

  const bad = s.write('daemon:\n  - http://10.0.0.1:7700\n  - ftp://10.0.0.2:7700\n  - http://10.0.0.3:7700/agent');
  const badProblems = await problemsOf(t, bad.file);
  expectProblem(
    t,
    badProblems,
    'AGENT_CONFIG_DAEMON_URL',
    at(bad.text, 'ftp://'),
    /^daemon\.1 must start with http:\/\/ or https:\/\//,
  );
  const path2 = badProblems.filter((p) => p.code === 'AGENT_CONFIG_DAEMON_URL');
  t.same(
    path2.map((p) => [p.line, p.col]),
    [
      [3, 5],
      [4, 5],
    ],
    'each bad URL of the list, at its own line',
  );
  t.match(path2[1]!.message, /^daemon\.2 is the address of the daemon's --agent-listen.*without a path/);

  const dup = s.write('daemon: [http://10.0.0.1:7700, http://10.0.0.2:7700, "HTTP://10.0.0.1:7700/"]');
  expectProblem(
    t,
    await problemsOf(t, dup.file),
    'AGENT_CONFIG_DAEMON_DUPLICATE',
    at(dup.text, '"HTTP://'),
    /^daemon\.2 is http:\/\/10\.0\.0\.1:7700 again \(daemon\.0\)/,
  );

  const mixed = s.write('daemon:\n  - https://10.0.0.1:7700\n  - http://10.0.0.2:7700');
  expectProblem(
    t,
    await problemsOf(t, mixed.file),
    'AGENT_CONFIG_DAEMON_MIXED',
    at(mixed.text, 'http://'),
    /^daemon\.1 is http:\/\/10\.0\.0\.2:7700 and https:\/\/10\.0\.0\.1:7700 is listed too: all daemons are https:\/\//,
  );

  const clear = s.write('daemon: [http://10.0.0.1:7700, http://10.0.0.2:7700]', 'tls: { ca: ca.crt }\n');
  expectProblem(
    t,
    await problemsOf(t, clear.file),
    'AGENT_CONFIG_TLS_CLEAR',
    at(clear.text, 'tls:'),
    /tls is for an https:\/\/ daemon, and the daemons are http:\/\//,
  );

  const typed = s.write('daemon: { url: http://10.0.0.1:7700 }');
  expectProblem(
    t,
    await problemsOf(t, typed.file),
    'SCHEMA_TYPE',
    at(typed.text, '{ url'),
    /^daemon must be a URL \(http:\/\/HOST:PORT or https:\/\/HOST:PORT\) or a list of them, not a mapping/,
  );
  const item = s.write('daemon: [http://10.0.0.1:7700, 7700]');
  expectProblem(
    t,
    await problemsOf(t, item.file),
    'SCHEMA_TYPE',
    at(item.text, '7700]'),
    /^daemon\.1 must be a URL \(http:\/\/HOST:PORT\), not a number/,
  );
  const many = s.write(`daemon: [${Array.from({ length: 17 }, (_, i) => `http://10.0.0.${i + 1}:7700`).join(', ')}]`);
  expectProblem(t, await problemsOf(t, many.file), 'SCHEMA_RANGE', at(many.text, '['), /more than 16 daemons/);
});

t.test('the daemon codes are listed with the configuration codes', async (t) => {
  for (const code of ['AGENT_CONFIG_DAEMON_URL', 'AGENT_CONFIG_DAEMON_DUPLICATE', 'AGENT_CONFIG_DAEMON_MIXED'])
    t.ok(Object.hasOwn(AGENT_CONFIG_CODES, code), code);
});
