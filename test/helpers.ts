/** Shared test helpers: temporary repositories, running the CLI in-process. */
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import type { Io } from '../src/cli/io.js';
import { run } from '../src/cli/main.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const FIXED_NOW = Date.parse('2026-11-26T00:00:00Z');

/** A temporary directory, removed when the test ends. */
export function tempDir(t: Test, prefix = 'rotor-test-'): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A copy of a directory of the project (e.g. test/corpus/base) in a temporary directory. */
export function copyFixture(t: Test, rel: string): string {
  const dir = tempDir(t);
  cpSync(path.join(ROOT, rel), dir, { recursive: true });
  return dir;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `rotor ARGS` in-process with a fixed clock and captured output. */
export async function rotor(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; now?: number } = {},
): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const io: Io = {
    stdout: (s) => void (stdout += s),
    stderr: (s) => void (stderr += s),
    env: opts.env ?? {},
    cwd: opts.cwd ?? ROOT,
    now: () => opts.now ?? FIXED_NOW,
    isTTY: false,
  };
  const code = await run(args, io);
  return { code, stdout, stderr };
}

import { execFileSync } from 'node:child_process';

const GIT_ENV = {
  ...process.env,
  GIT_AUTHOR_NAME: 'rotor test',
  GIT_AUTHOR_EMAIL: 'test@rotor.invalid',
  GIT_COMMITTER_NAME: 'rotor test',
  GIT_COMMITTER_EMAIL: 'test@rotor.invalid',
  GIT_CONFIG_NOSYSTEM: '1',
  HOME: ROOT,
};

export function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', args, { cwd, env: GIT_ENV, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** A new git repository on branch main. */
export function gitInit(dir: string): void {
  git(dir, 'init', '-q', '-b', 'main');
  git(dir, 'config', 'commit.gpgsign', 'false');
}

export function commitAll(dir: string, message: string): string {
  git(dir, 'add', '-A');
  git(dir, 'commit', '-q', '--allow-empty', '-m', message);
  return git(dir, 'rev-parse', 'HEAD');
}

import { execFile } from 'node:child_process';

/** git without blocking the event loop (for tests where several clones work at once); rejects with git's stderr. */
export function gitAsync(cwd: string, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'git',
      args,
      { cwd, env: GIT_ENV, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`git ${args.join(' ')} failed: ${stderr.trim()}`, { cause: err }));
        else resolve(stdout.trim());
      },
    );
  });
}

/** A new bare repository on branch main, keeping a reflog of every update of its branches. */
export function gitInitBare(dir: string): void {
  git(path.dirname(dir), 'init', '-q', '--bare', '-b', 'main', dir);
  git(dir, 'config', 'core.logAllRefUpdates', 'always');
}
