import { writeStderr } from '../log.js';

/** What a command gets from the outside world: passed in, so that tests can run commands in-process. */
export interface Io {
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly env: NodeJS.ProcessEnv;
  readonly cwd: string;
  readonly now: () => number;
  /** Whether stdout is a terminal. */
  readonly isTTY: boolean;
  /** Whether stderr is a terminal (logs are text there by default); false when absent. */
  readonly stderrIsTTY?: boolean;
}

/**
 * The real outside world. stderr is written synchronously, also into a full pipe (writeStderr in
 * src/log.ts): the daemon's log lines and the commands' messages share it, in order, and none is
 * lost to a SIGKILL once written. stdout stays process.stdout (its output is asked for, not logged).
 */
export function processIo(): Io {
  return {
    stdout: (t) => process.stdout.write(t),
    stderr: writeStderr,
    env: process.env,
    cwd: process.cwd(),
    now: () => Date.now(),
    isTTY: Boolean(process.stdout.isTTY),
    stderrIsTTY: Boolean(process.stderr.isTTY),
  };
}

/** Exit codes shared by the commands. */
export const EXIT = { ok: 0, invalid: 1, usage: 2, failure: 3 } as const;
