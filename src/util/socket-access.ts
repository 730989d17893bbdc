/**
 * Why connecting to a Unix socket was refused (EACCES), in words a person can act on: a directory on
 * the way that this user cannot enter, a socket of another user, or a socket of this user whose mode
 * denies writing. Connecting needs search (x) on every directory of the path and write on the socket.
 */
import { accessSync, constants, lstatSync } from 'node:fs';
import path from 'node:path';

const mode = (m: number) => `0${(m & 0o777).toString(8)}`;

export function whyDenied(socket: string): string {
  const abs = path.resolve(socket);
  const me = typeof process.getuid === 'function' ? process.getuid() : -1;
  // Each directory from the root down: the first one this user cannot search is the reason.
  const parts = abs.split(path.sep).filter(Boolean);
  let dir: string = path.sep;
  for (const part of parts.slice(0, -1)) {
    dir = path.join(dir, part);
    try {
      accessSync(dir, constants.X_OK);
    } catch {
      let owner = '';
      try {
        const st = lstatSync(dir);
        owner = ` (owner uid ${st.uid}, mode ${mode(st.mode)})`;
      } catch {
        // its parent can be read but not it: say what is known
      }
      return `the directory ${dir}${owner} cannot be entered by uid ${me}: a socket's directory must be searchable (x) by its reader`;
    }
  }
  try {
    const st = lstatSync(abs);
    if (st.uid !== me)
      return `it belongs to uid ${st.uid}, and this is uid ${me} (each consumer's socket is owned by its uid: read as that user)`;
    return `it is yours (uid ${me}) but its mode ${mode(st.mode)} does not let you write to it`;
  } catch (e) {
    return `it cannot be looked at (${(e as NodeJS.ErrnoException).code ?? 'error'})`;
  }
}
