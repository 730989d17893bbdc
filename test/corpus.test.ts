/**
 * The corpus of bad declarations: every file of test/corpus/bad/ holds one deliberate mistake and says,
 * on its first line, which problem it must produce and where:
 *
 *   # expect: CODE LINE        or        # expect: CODE LINE:COL
 *
 * Each case is placed into a fresh copy of test/corpus/base/ (a valid repository): a `*.rotor.yaml`
 * case replaces rotor.yaml, any other case is added as bad.yaml. Then `rotor validate` runs in-process
 * and must exit 1 with an error line `FILE:LINE:COL: error: ... [CODE]` for that file.
 */
import { copyFileSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import type { Io } from '../src/cli/io.js';
import { run } from '../src/cli/main.js';
import { CODES } from '../src/model/problems.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = path.join(here, 'corpus', 'base');
const BAD = path.join(here, 'corpus', 'bad');
const NOW = Date.parse('2026-11-26T00:00:00Z');
const MIN_CASES = 110;

const HEADER = /^# expect: ([A-Z][A-Z0-9_]*) ([1-9][0-9]*)(?::([1-9][0-9]*))?\r?$/;
const CASE_NAME = /^[0-9]{3}-[a-z0-9-]+\.(rotor\.)?yaml$/;

interface Expectation {
  readonly code: string;
  readonly line: number;
  readonly col: number | undefined;
}

/** The expectation of a case file, or a message saying why its header is malformed. */
function parseHeader(file: string): Expectation | string {
  const buf = readFileSync(path.join(BAD, file));
  const nl = buf.indexOf(0x0a);
  const first = buf.subarray(0, nl < 0 ? buf.length : nl).toString('latin1');
  const m = HEADER.exec(first);
  if (!m) return `the first line must be "# expect: CODE LINE[:COL]", not ${JSON.stringify(first.slice(0, 80))}`;
  const code = m[1]!;
  if (!Object.hasOwn(CODES, code)) return `${code} is not a code of src/model/problems.ts`;
  return { code, line: Number(m[2]), col: m[3] === undefined ? undefined : Number(m[3]) };
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Runs `rotor validate` on `dir` in-process; returns the exit code and what it printed. */
async function validate(dir: string): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const io: Io = {
    stdout: (s) => {
      stdout += s;
    },
    stderr: (s) => {
      stderr += s;
    },
    env: {},
    cwd: path.dirname(dir),
    now: () => NOW,
    isTTY: false,
  };
  const code = await run(['validate', dir], io);
  return { code, stdout, stderr };
}

const files = readdirSync(BAD).sort();

t.test('the corpus has enough cases, each with a well-formed name and header', async (t) => {
  t.ok(files.length >= MIN_CASES, `at least ${MIN_CASES} cases (found ${files.length})`);
  for (const f of files) {
    t.match(f, CASE_NAME, `${f}: named NNN-slug.yaml or NNN-slug.rotor.yaml`);
    const e = parseHeader(f);
    if (typeof e === 'string') t.fail(`${f}: ${e}`);
  }
  const numbers = files.map((f) => f.slice(0, 3));
  t.same(
    numbers.filter((n, i) => numbers.indexOf(n) !== i),
    [],
    'case numbers are unique',
  );
});

t.test('the base repository is valid', async (t) => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'rotor-corpus-'));
  try {
    const dir = path.join(tmp, 'repo');
    cpSync(BASE, dir, { recursive: true });
    const r = await validate(dir);
    t.equal(r.code, 0, `validate exits 0 on the base repository\n${r.stdout}${r.stderr}`);
    t.notMatch(r.stdout, /: error: /, 'no errors');
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

t.test('every bad case is rejected with its expected problem', async (t) => {
  for (const f of files) {
    const e = parseHeader(f);
    if (typeof e === 'string') {
      t.fail(`${f}: ${e}`);
      continue;
    }
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'rotor-corpus-'));
    try {
      const dir = path.join(tmp, 'repo');
      cpSync(BASE, dir, { recursive: true });
      const target = f.endsWith('.rotor.yaml') ? 'rotor.yaml' : 'bad.yaml';
      copyFileSync(path.join(BAD, f), path.join(dir, target));
      const r = await validate(dir);
      const where = `${escapeRe(target)}:${e.line}:${e.col ?? '[0-9]+'}`;
      const want = new RegExp(`^${where}: error: .* \\[${e.code}\\]$`, 'm');
      const printed = (r.stdout + r.stderr).split('\n');
      const shown =
        printed.slice(0, 20).join('\n') + (printed.length > 21 ? `\n... (${printed.length - 21} more lines)` : '');
      const detail = `expected ${target}:${e.line}${e.col !== undefined ? `:${e.col}` : ''} ${e.code}; got:\n${shown}`;
      t.equal(r.code, 1, `${f}: validate exits 1`);
      t.match(r.stdout, want, `${f}: ${e.code} at line ${e.line}${e.col !== undefined ? `:${e.col}` : ''}`, { detail });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
});
