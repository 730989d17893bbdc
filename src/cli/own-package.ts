/**
 * The npm tarball of the rotor that runs, for `rotor init` to vendor into a new repository. The single
 * executable carries it (an asset); an installed release package makes it again from its own files
 * (the same bytes as the release's: src/util/tarball.ts is deterministic); a source checkout has none
 * (`npm run release` makes one).
 */
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { TarFile } from '../util/tarball.js';
import { packTarball } from '../util/tarball.js';
import { BUNDLED } from '../version.js';

/** The asset name scripts/release.mjs gives the tarball inside the rotor executable. */
export const TARBALL_ASSET = 'rotor.tgz';

interface SeaModule {
  isSea(): boolean;
  getAsset(key: string): ArrayBuffer;
}

/** node:sea, where this is a release bundle on a Node that has it (20.12 and later). */
function seaModule(): SeaModule | undefined {
  try {
    return typeof require === 'function' ? (require('node:sea') as SeaModule) : undefined;
  } catch {
    return undefined;
  }
}

/** Every file of an installed package directory, as the tarball holds them (bin targets executable). */
export async function packageFiles(dir: string): Promise<TarFile[]> {
  const manifest = JSON.parse(await readFile(path.join(dir, 'package.json'), 'utf8')) as {
    bin?: Record<string, string>;
  };
  const bins = new Set(Object.values(manifest.bin ?? {}).map((b) => path.posix.normalize(b)));
  const files: TarFile[] = [];
  const walk = async (rel: string) => {
    for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (p !== 'node_modules') await walk(p);
      } else if (e.isFile()) {
        files.push({ path: p, bytes: await readFile(path.join(dir, p)), executable: bins.has(p) });
      }
    }
  };
  await walk('');
  return files;
}

/** This rotor's own tarball, or undefined when it runs from a source checkout. */
export async function ownTarball(): Promise<Buffer | undefined> {
  if (!BUNDLED) return undefined;
  const sea = seaModule();
  if (sea?.isSea()) return Buffer.from(sea.getAsset(TARBALL_ASSET));
  // An installed release package: this file is dist/rotor.cjs in it.
  if (typeof __filename !== 'string') return undefined;
  return packTarball(await packageFiles(path.dirname(path.dirname(__filename))));
}
