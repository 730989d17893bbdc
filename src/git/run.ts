/**
 * Running git: the read-only queries that `rotor plan` needs (`git`, `gitText`) and, for the daemon's
 * clone (repo.ts), `runGit`, which reports the exit status instead of throwing and takes an
 * environment, a time limit and an output limit.
 */
import { execFile } from 'node:child_process';

/** At most this much of git's stderr is kept in an error. */
const MAX_STDERR = 8 * 1024;

export interface GitRunOptions {
  /** The complete environment of the git process (default: this process's, without terminal prompts). */
  env?: NodeJS.ProcessEnv;
  /** Kill git (SIGKILL) after this many milliseconds (default: no limit). */
  timeoutMs?: number;
  /** Largest stdout (and stderr) accepted, in bytes; git is killed beyond it (default 256 MiB). */
  maxBuffer?: number;
  /** Written to git's standard input, which is then closed (it is closed at once without it). */
  input?: string | Buffer;
}

export interface GitResult {
  /** git's exit status; -1 when it was killed (time limit, output limit) or could not start. */
  exitCode: number;
  stdout: Buffer;
  stderr: string;
  /** Why git did not exit by itself, when it did not. */
  killed?: 'timeout' | 'maxBuffer' | 'spawn' | 'signal';
}

/**
 * Removes the user-info part of URLs (`https://user:token@host` -> `https://***@host`), after any
 * "://". Not anchored on the scheme: a regex that scans a scheme from every word start
 * (/\b[a-z][a-z0-9+.-]*:\/\//) is quadratic on text such as "a.a.a.a..." from a remote.
 */
export function redactUrls(text: string): string {
  return text.replace(/:\/\/[^/@\s'"]+@/g, '://***@');
}

/** The git sub-command of an argument list (skipping `-c key=value`, `-C dir` and other global options). */
function subcommand(args: readonly string[]): string {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-c' || a === '-C') i++;
    else if (!a.startsWith('-')) return a;
  }
  return args[0] ?? '';
}

function keepTail(text: string, max: number): string {
  return text.length <= max ? text : `...${text.slice(text.length - max)}`;
}

export class GitError extends Error {
  readonly code = 'GIT_FAILED';
  readonly args: readonly string[];
  readonly stderr: string;
  constructor(args: readonly string[], readonly exitCode: number, stderr: string, readonly killed?: GitResult['killed']) {
    const err = keepTail(redactUrls(stderr), MAX_STDERR);
    const lines = err.trim().split('\n');
    const first = lines.find((l) => /^(fatal|error):/.test(l)) ?? lines[0] ?? '';
    const why = killed === 'timeout' ? 'timed out' : killed === 'maxBuffer' ? 'produced too much output' : killed === 'spawn' ? 'could not start' : killed === 'signal' ? 'killed by a signal' : `exit ${exitCode}`;
    super(`git ${subcommand(args)} failed (${why}): ${first}`);
    this.name = 'GitError';
    this.args = args.map(redactUrls);
    this.stderr = err;
  }
}

const DEFAULT_ENV = (): NodeJS.ProcessEnv => ({ ...process.env, GIT_TERMINAL_PROMPT: '0' });

/** Runs git and reports how it ended; never rejects. */
export function runGit(cwd: string, args: readonly string[], opts: GitRunOptions = {}): Promise<GitResult> {
  return new Promise((resolve) => {
    const child = execFile(
      'git',
      [...args],
      {
        cwd,
        env: opts.env ?? DEFAULT_ENV(),
        encoding: 'buffer',
        maxBuffer: opts.maxBuffer ?? 256 * 1024 * 1024,
        timeout: opts.timeoutMs ?? 0,
        killSignal: 'SIGKILL',
        windowsHide: true,
      },
      (err, stdout, stderr) => {
        const out = { stdout: stdout ?? Buffer.alloc(0), stderr: keepTail((stderr ?? Buffer.alloc(0)).toString('utf8'), 4 * MAX_STDERR) };
        if (!err) return resolve({ exitCode: 0, ...out });
        const e = err as NodeJS.ErrnoException & { code?: unknown; killed?: boolean; signal?: string | null };
        if (typeof e.code === 'number') return resolve({ exitCode: e.code, ...out });
        const killed: GitResult['killed'] =
          e.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER' ? 'maxBuffer' : typeof e.code === 'string' ? 'spawn' : e.killed ? 'timeout' : 'signal';
        resolve({ exitCode: -1, ...out, stderr: out.stderr || e.message, killed });
      },
    );
    child.stdin?.on('error', () => {}); // git may exit before reading all of it: its exit status tells
    child.stdin?.end(opts.input);
  });
}

export async function git(cwd: string, args: readonly string[], opts: GitRunOptions = {}): Promise<Buffer> {
  const r = await runGit(cwd, args, opts);
  if (r.exitCode !== 0) throw new GitError(args, r.exitCode, r.stderr, r.killed);
  return r.stdout;
}

export async function gitText(cwd: string, args: readonly string[], opts: GitRunOptions = {}): Promise<string> {
  return (await git(cwd, args, opts)).toString('utf8').trim();
}
