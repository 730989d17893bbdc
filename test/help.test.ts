/**
 * --help on every command, from the built binaries: exit 0, usage on stdout, a one-line summary, every
 * option the command's parser takes (with its default and environment variable), exit status and
 * examples. The options come from the same declarations the parsers use (src/util/args.ts), so an
 * option added without help, or a help that forgets one, fails here.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import { AGENT_FLAGS, HELP as AGENT_HELP } from '../agent/src/main.js';
import { COMMANDS, HELP } from '../src/cli/main.js';
import type { Flags } from '../src/util/args.js';
import { flagEnv, flagLabel, parse } from '../src/util/args.js';
import { ROOT, rotor } from './helpers.js';

const ROTOR = path.join(ROOT, 'dist/src/cli/main.js');
const AGENT = path.join(ROOT, 'agent/dist/main.js');

function node(script: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // env -i: no ROTOR_* of the developer's shell changes what help prints; -u NODE_OPTIONS drops tap's loaders.
    const child = spawn('/usr/bin/env', ['-i', `PATH=${process.env.PATH ?? ''}`, process.execPath, script, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The Options section as label -> text ("--data-dir DIR" -> "keys, state, ... [env ROTOR_DATA_DIR]"). */
function optionEntries(help: string): Map<string, string> {
  const entries = new Map<string, string>();
  const at = help.indexOf('\nOptions:\n');
  if (at < 0) return entries;
  let label: string | undefined;
  for (const line of help.slice(at + 10).split('\n')) {
    if (line === '') break;
    if (/^ {2}-/.test(line)) {
      const rest = line.slice(2);
      const gap = rest.search(/ {2,}/);
      label = gap < 0 ? rest : rest.slice(0, gap);
      entries.set(label, gap < 0 ? '' : rest.slice(gap).trim());
    } else if (label !== undefined) {
      entries.set(label, `${entries.get(label)} ${line.trim()}`.trim());
    }
  }
  return entries;
}

/** The checks every help passes: summary, usage, each option with its default and variable, examples. */
function checkHelp(t: Test, help: string, o: { summary: RegExp; usage: RegExp; flags: Flags; exit: RegExp }) {
  const first = help.split('\n')[0]!;
  t.match(first, o.summary, `the first line says what it does: ${first}`);
  t.match(help, o.usage, 'a usage line');
  const entries = optionEntries(help);
  const labels = Object.entries(o.flags).map(([name, spec]) => flagLabel(name, spec));
  t.same([...entries.keys()], labels, 'the Options section lists exactly the options the parser takes');
  for (const [name, spec] of Object.entries(o.flags)) {
    const text = entries.get(flagLabel(name, spec)) ?? '';
    t.ok(text.startsWith(spec.description.replace(/\s+/g, ' ')), `--${name} is described`);
    const shown = spec.defaultText ?? spec.default;
    if (shown !== undefined)
      t.ok(text.includes(`(default: ${shown.replace(/\s+/g, ' ')})`), `--${name} shows its default, ${shown}`);
    const env = flagEnv(name, spec);
    if (env) t.ok(text.endsWith(`[env ${env}]`), `--${name} shows its variable, ${env}`);
    else t.notMatch(text, /\[env /, `--${name} reads no variable and names none`);
  }
  t.match(help, o.exit, 'the exit status');
  const at = help.indexOf('\nExamples:\n');
  const examples =
    at < 0
      ? []
      : help
          .slice(at + 11)
          .split('\n\n')[0]!
          .split('\n')
          .filter((l) => /^ {2}\S/.test(l));
  t.ok(examples.length >= 1 && examples.length <= 3, `1 to 3 examples (${examples.length})`);
  t.same(
    help.split('\n').filter((l) => l.length > 104),
    [],
    'no line wider than the 104 columns the help texts are wrapped to',
  );
}

/** Every variable the help names is one the parser reads: a value set there arrives in the flag. */
function checkVariables(t: Test, flags: Flags) {
  for (const [name, spec] of Object.entries(flags)) {
    const env = flagEnv(name, spec);
    if (!env) continue;
    const value = spec.choices ? spec.choices.at(-1)! : spec.type === 'boolean' ? '1' : 'from-the-environment';
    const got = (parse([], flags, { [env]: value }, 0).flags as Record<string, unknown>)[name];
    t.same(got, spec.type === 'boolean' ? true : spec.multiple ? [value] : value, `${env} sets --${name}`);
  }
}

const SUMMARY: Record<string, RegExp> = {};
for (const name of Object.keys(COMMANDS)) SUMMARY[name] = new RegExp(`^rotor ${name}: \\S.{10,}$`);

const EXIT_STATUS = /\nExit status: \S/;

for (const [name, command] of Object.entries(COMMANDS)) {
  t.test(`rotor ${name} --help`, async (t) => {
    const r = await node(ROTOR, [name, '--help']);
    t.equal(r.code, 0, 'exit 0');
    t.equal(r.stderr, '', 'nothing on stderr');
    t.equal(r.stdout, command.help, "stdout is the command's help");
    checkHelp(t, r.stdout, {
      summary: SUMMARY[name]!,
      usage: new RegExp(`\\nUsage: rotor ${name}\\b`),
      flags: command.flags,
      exit: EXIT_STATUS,
    });
    checkVariables(t, command.flags);
    t.equal((await rotor([name, '-h'])).stdout, command.help, '-h is the same');
    t.equal((await rotor(['help', name])).stdout, command.help, 'rotor help NAME is the same');
    t.equal(
      (await rotor([name, '--help'], { env: { ROTOR_HELP: '0', ROTOR_FORMAT: 'json', ROTOR_DATA_DIR: '/nowhere' } }))
        .stdout,
      command.help,
      'the environment does not change it',
    );
  });
}

t.test('rotor audit verify --help', async (t) => {
  const r = await node(ROTOR, ['audit', 'verify', '--help']);
  t.equal(r.code, 0);
  t.equal(r.stdout, COMMANDS.audit!.help);
});

t.test('rotor-agent --help', async (t) => {
  const r = await node(AGENT, ['--help']);
  t.equal(r.code, 0, 'exit 0');
  t.equal(r.stderr, '');
  t.equal(r.stdout, AGENT_HELP);
  checkHelp(t, r.stdout, {
    summary: /^rotor-agent: \S.{10,}$/,
    usage: /\nUsage: rotor-agent --config FILE/,
    flags: AGENT_FLAGS,
    exit: /\nExit codes: 0 .*1 .*2 .*\n3 /,
  });
  checkVariables(t, AGENT_FLAGS);
});

t.test('rotor with no command, an unknown one, or --help', async (t) => {
  const none = await node(ROTOR, []);
  t.equal(none.code, 2, 'no command: exit 2');
  t.match(none.stderr, /\nCommands:\n/, 'the command list, on stderr (no command is a usage error)');
  const unknown = await node(ROTOR, ['frobnicate']);
  t.equal(unknown.code, 2, 'an unknown command: exit 2');
  t.match(unknown.stderr, /unknown command "frobnicate"[\s\S]*\nCommands:\n/, 'the command list, on stderr');
  t.equal(unknown.stdout, '');
  t.equal((await rotor(['constructor'])).code, 2, 'names of Object.prototype are not commands');
  t.equal((await rotor(['help', 'frobnicate'])).code, 2, 'rotor help UNKNOWN');
  const help = await node(ROTOR, ['--help']);
  t.equal(help.code, 0);
  t.equal(help.stdout, HELP);
  const list = HELP.slice(HELP.indexOf('Commands:'), HELP.indexOf('\n\n', HELP.indexOf('Commands:')));
  for (const name of Object.keys(COMMANDS))
    t.match(list, new RegExp(`^  ${name}\\b`, 'm'), `${name} is in the command list`);
  t.same(
    HELP.split('\n').filter((l) => l.length > 104),
    [],
    'no line wider than the 104 columns the help texts are wrapped to',
  );
});

t.test('every parser takes its flags from a declaration the help test sees', async (t) => {
  // A flag declared inline in a parse() call would escape the checks above: parse() is only ever given
  // a command's exported *_FLAGS (AGENT_FLAGS for rotor-agent), the ones in COMMANDS.
  const files = [
    ...readdirSync(path.join(ROOT, 'src/cli')).map((f) => path.join('src/cli', f)),
    'agent/src/main.ts',
  ].filter((f) => f.endsWith('.ts'));
  const calls: string[] = [];
  for (const f of files) {
    const text = readFileSync(path.join(ROOT, f), 'utf8');
    for (const m of text.matchAll(/(?<![.\w])parse\(\s*(\w+)\s*,\s*([^,]+),/g)) calls.push(`${f}: ${m[2]!.trim()}`);
    if (f !== 'src/util/args.ts') t.notMatch(text, /\bparseArgs\(/, `${f} parses through args.ts`);
  }
  const declared = new Set(['AGENT_FLAGS', ...Object.keys(COMMANDS).map((n) => `${n.toUpperCase()}_FLAGS`)]);
  t.ok(calls.length >= Object.keys(COMMANDS).length + 1, `${calls.length} parse() calls found`);
  for (const c of calls) t.ok(declared.has(c.split(': ')[1]!), `${c}: a declared *_FLAGS`);
  for (const [name, command] of Object.entries(COMMANDS))
    t.ok(Object.keys(command.flags).includes('help'), `${name} takes --help`);
});
