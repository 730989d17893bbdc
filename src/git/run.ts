/** Running git for the read-only queries that `rotor plan` needs. */
import { execFile } from 'node:child_process';

export class GitError extends Error {
  readonly code = 'GIT_FAILED';
  constructor(readonly args: readonly string[], readonly exitCode: number, readonly stderr: string) {
    super(`git ${args[0]} failed (exit ${exitCode}): ${stderr.trim().split('\n')[0] ?? ''}`);
    this.name = 'GitError';
  }
}

export function git(cwd: string, args: readonly string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile('git', [...args], { cwd, encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const code = typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1;
        reject(new GitError(args, code, stderr.toString()));
      } else resolve(stdout);
    });
  });
}

export async function gitText(cwd: string, args: readonly string[]): Promise<string> {
  return (await git(cwd, args)).toString('utf8').trim();
}
