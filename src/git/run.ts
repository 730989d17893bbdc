/**
 * The one place where rotor runs git. Every call, the daemon's clone and `rotor plan`'s reads alike,
 * goes through spawnGit() here, which gives it:
 *
 * - overrides (`-c ...`) that a user's, system or repository configuration cannot change: no hooks, no
 *   fsmonitor, no signing, no auto-stash, no submodule recursion, no line-ending or filter conversion
 *   switched on by configuration, no symbolic links materialised on checkout (`core.symlinks=false`:
 *   a link committed to the repository is checked out as a small file holding its target), a fixed
 *   identity for commits;
 * - a cleaned environment: nothing that points git at another repository, index or identity, no
 *   prompts, editors or pagers, untranslated messages;
 * - a time limit and an output limit (git is killed past either), or a streaming reader that may stop
 *   git early (`onStdout` returning false), so that no answer of git is read without a bound.
 *
 * Errors are GitError (code GIT_FAILED) with git's stderr, URL credentials removed.
 */
import { spawn } from 'node:child_process';
import { BACKOFF, NEVER, RotorError } from '../errors.js';

/** At most this much of git's stderr is kept in an error. */
const MAX_STDERR = 8 * 1024;
/** Local git calls are killed after this long unless the caller says otherwise. */
export const LOCAL_TIMEOUT_MS = 60_000;
/** Largest stdout a collecting call accepts unless the caller says otherwise. */
export const DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024;

export interface GitIdentity {
  readonly name: string;
  readonly email: string;
}

export const DEFAULT_AUTHOR: GitIdentity = Object.freeze({ name: 'rotor', email: 'rotor@localhost' });

export interface GitRunOptions {
  /** Kill git (SIGKILL) after this many milliseconds (default LOCAL_TIMEOUT_MS; 0: no limit). */
  timeoutMs?: number;
  /** Largest stdout accepted, in bytes; git is killed beyond it (default DEFAULT_MAX_OUTPUT). */
  maxBuffer?: number;
  /** Written to git's standard input, which is then closed (it is closed at once without it). */
  input?: string | Buffer;
  /** The committer (and with `asAuthor`, the author) of commits git makes (default DEFAULT_AUTHOR). */
  identity?: GitIdentity;
  /** Also set the author of commits to `identity`. */
  asAuthor?: boolean;
}

export interface GitResult {
  /** git's exit status; -1 when it was killed (time limit, output limit) or could not start. */
  exitCode: number;
  stdout: Buffer;
  stderr: string;
  /** Why git did not exit by itself, when it did not. */
  killed?: 'timeout' | 'maxBuffer' | 'spawn' | 'signal' | 'stopped';
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

/** The sub-commands that talk to a remote: their failures may be the network's, and are retried with backoff. */
const NETWORK_SUBCOMMANDS: ReadonlySet<string> = new Set(['clone', 'fetch', 'push', 'ls-remote']);

/**
 * A git call that failed. Retried with backoff when it talked to a remote or timed out; any other
 * failure is git refusing this repository's content or state, which trying again does not change.
 */
export class GitError extends RotorError {
  declare readonly code: 'GIT_FAILED';
  readonly args: readonly string[];
  readonly stderr: string;
  constructor(
    args: readonly string[],
    readonly exitCode: number,
    stderr: string,
    readonly killed?: GitResult['killed'],
  ) {
    const err = keepTail(redactUrls(stderr), MAX_STDERR);
    const lines = err.trim().split('\n');
    const first = lines.find((l) => /^(fatal|error):/.test(l)) ?? lines[0] ?? '';
    const why =
      killed === 'timeout'
        ? 'timed out'
        : killed === 'maxBuffer'
          ? 'produced too much output'
          : killed === 'spawn'
            ? 'could not start'
            : killed === 'signal'
              ? 'killed by a signal'
              : killed === 'stopped'
                ? 'stopped early'
                : `exit ${exitCode}`;
    const sub = subcommand(args);
    super('GIT_FAILED', `git ${sub} failed (${why}): ${first}`, {
      retry: NETWORK_SUBCOMMANDS.has(sub) || killed === 'timeout' ? BACKOFF : NEVER,
    });
    this.args = args.map(redactUrls);
    this.stderr = err;
  }
}

/** Settings that a user's, system or repository configuration must not change for rotor's git calls. */
const SETTINGS = [
  'core.hooksPath=/dev/null', // no hooks of any kind (the repository's or a global hooks path)
  'core.fsmonitor=false',
  'core.autocrlf=false',
  'core.safecrlf=false',
  'core.symlinks=false', // a committed link is checked out as a file holding its target, never as a link
  'core.quotePath=false',
  'core.pager=cat',
  'color.ui=false',
  'commit.gpgSign=false',
  'push.gpgSign=false',
  'tag.gpgSign=false',
  'log.showSignature=false',
  'merge.verifySignatures=false',
  'rebase.autoStash=false',
  'rebase.autoSquash=false',
  'rebase.updateRefs=false',
  'rebase.backend=merge',
  'rerere.enabled=false',
  'submodule.recurse=false',
  'fetch.recurseSubmodules=false',
  'push.recurseSubmodules=no',
  'push.followTags=false',
  'advice.detachedHead=false',
] as const;

/** The `-c` arguments that come before every git command rotor runs. */
export function hardenedArgs(identity: GitIdentity = DEFAULT_AUTHOR): string[] {
  return [...SETTINGS, `user.name=${identity.name}`, `user.email=${identity.email}`].flatMap((s) => ['-c', s]);
}

/**
 * Variables that would point git at another repository, index, identity or attributes, or run an external
 * diff. (Configuration passed in the environment, GIT_CONFIG_COUNT and the like, stays: operators pass
 * credentials that way, and the `-c` overrides above take precedence over it.)
 */
const STRIPPED_ENV = [
  'GIT_DIR',
  'GIT_WORK_TREE',
  'GIT_INDEX_FILE',
  'GIT_OBJECT_DIRECTORY',
  'GIT_ALTERNATE_OBJECT_DIRECTORIES',
  'GIT_COMMON_DIR',
  'GIT_NAMESPACE',
  'GIT_PREFIX',
  'GIT_QUARANTINE_PATH',
  'GIT_REFLOG_ACTION',
  'GIT_AUTHOR_NAME',
  'GIT_AUTHOR_EMAIL',
  'GIT_AUTHOR_DATE',
  'GIT_COMMITTER_NAME',
  'GIT_COMMITTER_EMAIL',
  'GIT_COMMITTER_DATE',
  'GIT_LITERAL_PATHSPECS',
  'GIT_GLOB_PATHSPECS',
  'GIT_NOGLOB_PATHSPECS',
  'GIT_ICASE_PATHSPECS',
  'GIT_EXTERNAL_DIFF',
  'GIT_DIFF_OPTS',
  'GIT_ATTR_SOURCE',
];

/** The environment of every git process: this process's, cleaned (see STRIPPED_ENV), without prompts. */
export function hardenedEnv(identity: GitIdentity = DEFAULT_AUTHOR, asAuthor = false): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const k of STRIPPED_ENV) delete env[k];
  Object.assign(env, {
    GIT_TERMINAL_PROMPT: '0', // fail instead of asking for a user name or password
    GCM_INTERACTIVE: 'never', // Git Credential Manager: no dialogs
    GIT_EDITOR: ':',
    GIT_SEQUENCE_EDITOR: ':',
    GIT_MERGE_AUTOEDIT: 'no',
    GIT_PAGER: 'cat',
    LC_ALL: 'C', // stable, untranslated messages to classify
    GIT_COMMITTER_NAME: identity.name,
    GIT_COMMITTER_EMAIL: identity.email,
  });
  if (asAuthor) Object.assign(env, { GIT_AUTHOR_NAME: identity.name, GIT_AUTHOR_EMAIL: identity.email });
  return env;
}

export interface SpawnGitOptions extends Omit<GitRunOptions, 'maxBuffer'> {
  /**
   * Receives stdout as it arrives. Returning false stops git (killed: 'stopped'): the caller has read
   * all it wants, or more than it accepts.
   */
  // biome-ignore lint/suspicious/noConfusingVoidType: a callback that returns nothing goes on reading
  onStdout: (chunk: Buffer) => boolean | void;
}

/**
 * Runs git with the hardened configuration and environment and streams its stdout to `onStdout`;
 * never rejects: the result says how git ended (its stdout field is empty: the caller has it).
 */
export function spawnGit(cwd: string, args: readonly string[], opts: SpawnGitOptions): Promise<GitResult> {
  return new Promise((resolve) => {
    const identity = opts.identity ?? DEFAULT_AUTHOR;
    let killed: GitResult['killed'];
    let stderr = '';
    let settled = false;
    const done = (r: GitResult) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      resolve(r);
    };
    const child = spawn('git', [...hardenedArgs(identity), ...args], {
      cwd,
      env: hardenedEnv(identity, opts.asAuthor ?? false),
      stdio: ['pipe', 'pipe', 'pipe'],
      windowsHide: true,
    });
    const stop = (why: NonNullable<GitResult['killed']>) => {
      if (killed) return;
      killed = why;
      child.kill('SIGKILL');
    };
    const timeoutMs = opts.timeoutMs ?? LOCAL_TIMEOUT_MS;
    const timer = timeoutMs > 0 ? setTimeout(() => stop('timeout'), timeoutMs) : undefined;
    child.stdout.on('data', (c: Buffer) => {
      if (killed) return;
      if (opts.onStdout(c) === false) stop('stopped');
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr = keepTail(stderr + c.toString('utf8'), 4 * MAX_STDERR);
    });
    child.on('error', (e) => {
      killed ??= 'spawn';
      done({ exitCode: -1, stdout: Buffer.alloc(0), stderr: stderr || e.message, killed });
    });
    child.on('close', (code, signal) => {
      if (!killed && code === null) killed = signal ? 'signal' : undefined;
      done({ exitCode: killed ? -1 : (code ?? -1), stdout: Buffer.alloc(0), stderr, ...(killed ? { killed } : {}) });
    });
    child.stdin.on('error', () => {}); // git may exit before reading all of it: its exit status tells
    child.stdin.end(opts.input);
  });
}

/** Runs git and collects its stdout (at most `maxBuffer` bytes); never rejects. */
export async function runGit(cwd: string, args: readonly string[], opts: GitRunOptions = {}): Promise<GitResult> {
  const max = opts.maxBuffer ?? DEFAULT_MAX_OUTPUT;
  const chunks: Buffer[] = [];
  let size = 0;
  let over = false;
  const r = await spawnGit(cwd, args, {
    ...opts,
    onStdout: (c) => {
      size += c.length;
      if (size > max) {
        over = true;
        return false;
      }
      chunks.push(c);
      return true;
    },
  });
  return { ...r, stdout: Buffer.concat(chunks), ...(over ? { killed: 'maxBuffer' as const, exitCode: -1 } : {}) };
}

export async function git(cwd: string, args: readonly string[], opts: GitRunOptions = {}): Promise<Buffer> {
  const r = await runGit(cwd, args, opts);
  if (r.exitCode !== 0) throw new GitError(args, r.exitCode, r.stderr, r.killed);
  return r.stdout;
}

export async function gitText(cwd: string, args: readonly string[], opts: GitRunOptions = {}): Promise<string> {
  return (await git(cwd, args, opts)).toString('utf8').trim();
}

/**
 * The last `maxBytes` bytes of what git prints (a blob, say), whatever its size: memory stays bounded,
 * the time by the time limit. `size` is the whole output's length.
 */
export async function gitTail(
  cwd: string,
  args: readonly string[],
  maxBytes: number,
  opts: Omit<GitRunOptions, 'maxBuffer'> = {},
): Promise<{ tail: Buffer; size: number }> {
  let keep: Buffer[] = [];
  let kept = 0;
  let size = 0;
  const r = await spawnGit(cwd, args, {
    ...opts,
    onStdout: (c) => {
      size += c.length;
      keep.push(c);
      kept += c.length;
      if (kept > 2 * maxBytes) {
        const all = Buffer.concat(keep);
        keep = [all.subarray(all.length - maxBytes)];
        kept = maxBytes;
      }
    },
  });
  if (r.exitCode !== 0) throw new GitError(args, r.exitCode, r.stderr, r.killed);
  const all = Buffer.concat(keep);
  return { tail: all.length > maxBytes ? all.subarray(all.length - maxBytes) : all, size };
}
