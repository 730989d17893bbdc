/**
 * The JSON Schemas under schemas/ at run time. From the tsc build (and under the test loader) they are
 * read from the package beside the code; a release bundle (scripts/release.mjs) replaces this module
 * with one that has them built in, so that a single executable needs no file beside it.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | undefined;

function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'schemas'))) return (root = dir);
    const up = path.dirname(dir);
    if (up === dir) throw new Error('rotor: cannot find the package root (package.json beside schemas/)');
    dir = up;
  }
}

/** A schema by its file name (e.g. "common.schema.json"), parsed; a fresh object each call. */
export function readSchema(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path.join(packageRoot(), 'schemas', file), 'utf8')) as Record<string, unknown>;
}
