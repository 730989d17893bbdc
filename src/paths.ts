/** Locations inside the installed rotor package (works from src/ under the test loader and from dist/). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'schemas'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('rotor: cannot find the package root (package.json beside schemas/)');
    dir = up;
  }
}

export const PACKAGE_ROOT = findRoot();
export const SCHEMAS_DIR = path.join(PACKAGE_ROOT, 'schemas');
