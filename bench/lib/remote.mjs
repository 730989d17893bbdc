// The benches' GitOps repository: `files` (name -> text) committed in ROOT/work and cloned bare to
// ROOT/remote.git, the remote a daemon follows. Returns the remote's path.
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export const git = (cwd, ...args) =>
  execFileSync(
    'git',
    ['-c', 'user.name=bench', '-c', 'user.email=b@rotor.invalid', '-c', 'commit.gpgsign=false', ...args],
    { cwd, stdio: 'ignore' },
  );

export function benchRemote(root, files) {
  const work = path.join(root, 'work');
  mkdirSync(work, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(work, name), text);
  git(work, 'init', '-q', '-b', 'main');
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'bench');
  const remote = path.join(root, 'remote.git');
  git(root, 'clone', '-q', '--bare', work, remote);
  return remote;
}
