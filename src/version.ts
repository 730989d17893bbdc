/**
 * rotor's version, and whether this code runs from a release bundle (a single file, the npm package's
 * or a single executable's) rather than from the tsc build beside its sources. test/packages.test.ts
 * checks VERSION against both package.json files; scripts/release.mjs defines __ROTOR_BUNDLE__.
 */
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const VERSION = '0.1.0';

declare const __ROTOR_BUNDLE__: boolean | undefined;

/** True in a release bundle: the entry point runs unconditionally, schemas are built in. */
export const BUNDLED = typeof __ROTOR_BUNDLE__ === 'boolean' && __ROTOR_BUNDLE__;

/** Whether `moduleUrl` is the program node was asked to run (`node FILE`, or a bin link to FILE). */
export function isMain(moduleUrl: string | undefined): boolean {
  if (BUNDLED) return true;
  const script = process.argv[1];
  if (!script || moduleUrl === undefined) return false;
  try {
    return realpathSync(script) === fileURLToPath(moduleUrl);
  } catch {
    return false;
  }
}
