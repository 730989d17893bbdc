/**
 * Where declarations are read from: a directory on disk or a tree of a git commit. Both list their files
 * with sizes first (so limits apply before anything is read) and then read a batch of them.
 */
import { constants } from 'node:fs';
import { lstat, open, readdir, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import { NEVER, RotorError } from '../errors.js';
import type { Problem } from './problems.js';

export interface SourceFile {
  /** Path relative to the source root, '/'-separated. */
  readonly path: string;
  readonly size: number;
  /** The content's id where the source knows it without reading (a git blob id): equal ids, equal bytes. */
  readonly id?: string;
}

/** What an entry of a source is. Links are never followed to say it. */
export type EntryKind = 'file' | 'dir' | 'symlink' | 'submodule' | 'other';

/** What lies on and under one path of a source (see RepoSource.probe). */
export interface PathProbe {
  /** Each leading path of the probed one ('a', 'a/b', 'a/b/c') that exists, shortest first, with its kind. */
  readonly chain: ReadonlyArray<{ readonly path: string; readonly kind: EntryKind }>;
  /** Entries under the probed path that are neither files nor directories (at most PROBE_INSIDE_MAX). */
  readonly inside: ReadonlyArray<{ readonly path: string; readonly kind: EntryKind }>;
  /**
   * The `.gitattributes` files that apply to paths under the probed one (at the root, at each leading
   * path, under it), as plain files; readMany() reads them.
   */
  readonly attributes: readonly string[];
}

export const ATTRIBUTES_FILE = '.gitattributes';

/** Where a `.gitattributes` can apply to `dir`: at the root and at each leading path of it. */
export function attributeFilesAbove(dir: string): string[] {
  return ['', ...leadingPaths(dir)].map((p) => (p ? `${p}/${ATTRIBUTES_FILE}` : ATTRIBUTES_FILE));
}

/** Entries probe() reports under a path at most; it stops looking there. */
export const PROBE_INSIDE_MAX = 20;

export interface ReadOptions {
  /** Files larger than this map to an Error (code FILE_TOO_LARGE) instead of being read. */
  readonly maxBytes: number;
}

export interface Listing {
  readonly files: ReadonlyMap<string, SourceFile>;
  /** Warnings from listing (symbolic links skipped). */
  readonly problems: readonly Problem[];
  /** True when the listing stopped at MAX_ENTRIES. */
  readonly truncated: boolean;
}

export interface RepoSource {
  /** For messages: "directory policies" or "commit 1a2b3c4". */
  readonly label: string;
  list(): Promise<Listing>;
  /** Reads files of the listing, each bounded by `maxBytes`. A file that cannot be read maps to an Error. */
  readMany(paths: readonly string[], options: ReadOptions): Promise<Map<string, Buffer | Error>>;
  /**
   * What is at `dir` (a '/'-separated path relative to the root) and at each of its parents, and the
   * entries under it that are not files or directories, dot-entries included: the audit directory must
   * be a plain directory all the way down (src/model/audit-path.ts).
   */
  probe(dir: string): Promise<PathProbe>;
}

/** The error for a file over a read limit (FILE_TOO_LARGE): the file must be made smaller. */
export function tooLarge(file: string, size: number, maxBytes: number): Error {
  const message = `${file} is ${size} bytes, over the limit of ${maxBytes} bytes`;
  return new RotorError('FILE_TOO_LARGE', message, { retry: NEVER });
}

/** The leading paths of a '/'-separated path: 'a/b/c' -> ['a', 'a/b', 'a/b/c']. */
export function leadingPaths(p: string): string[] {
  const segs = p.split('/').filter(Boolean);
  return segs.map((_, i) => segs.slice(0, i + 1).join('/'));
}

/** Entries (files and directories) a listing visits before it gives up. */
export const MAX_ENTRIES = 100_000;
const MAX_DEPTH = 32;

/** A directory on disk. Dot-entries (.git, .github) are skipped; symbolic links are followed only to files inside the root. */
export class DirectorySource implements RepoSource {
  readonly label: string;
  private readonly real = new Map<string, string>();
  constructor(private readonly root: string) {
    this.label = `directory ${root}`;
  }

  async list(): Promise<Listing> {
    const files = new Map<string, SourceFile>();
    const problems: Problem[] = [];
    const rootReal = await realpath(this.root);
    let entries = 0;
    let truncated = false;
    const walk = async (rel: string, depth: number): Promise<void> => {
      if (truncated) return;
      let names: string[];
      try {
        names = (await readdir(path.join(this.root, rel))).sort();
      } catch {
        return;
      }
      for (const name of names) {
        if (name.startsWith('.')) continue;
        if (++entries > MAX_ENTRIES) {
          truncated = true;
          return;
        }
        const relPath = rel ? `${rel}/${name}` : name;
        const abs = path.join(this.root, relPath);
        let st = await lstat(abs).catch(() => undefined);
        if (!st) continue;
        if (st.isSymbolicLink()) {
          const target = await realpath(abs).catch(() => undefined);
          const inside = target !== undefined && (target === rootReal || target.startsWith(rootReal + path.sep));
          st = target ? await stat(target).catch(() => undefined) : undefined;
          if (!inside || !st?.isFile()) {
            problems.push({
              file: relPath,
              line: 1,
              col: 1,
              severity: 'warning',
              code: 'SYMLINK_OUTSIDE',
              message: `symbolic link ${inside ? 'to a directory' : 'leaving the repository'} ignored; copy the file into the repository instead`,
            });
            continue;
          }
          this.real.set(relPath, target!);
        }
        if (st.isDirectory()) {
          if (depth < MAX_DEPTH) await walk(relPath, depth + 1);
        } else if (st.isFile()) {
          files.set(relPath, { path: relPath, size: st.size });
        }
      }
    };
    await walk('', 0);
    return { files, problems, truncated };
  }

  async readMany(paths: readonly string[], options: ReadOptions): Promise<Map<string, Buffer | Error>> {
    const out = new Map<string, Buffer | Error>();
    for (const p of paths) {
      const abs = this.real.get(p) ?? path.join(this.root, p);
      out.set(p, await readBounded(abs, p, options.maxBytes).catch((e: Error) => e));
    }
    return out;
  }

  async probe(dir: string): Promise<PathProbe> {
    const chain: Array<{ path: string; kind: EntryKind }> = [];
    for (const p of leadingPaths(dir)) {
      const st = await lstat(path.join(this.root, p)).catch(() => undefined);
      if (!st) break;
      chain.push({ path: p, kind: kindOf(st) });
      if (!st.isDirectory()) break;
    }
    const inside: Array<{ path: string; kind: EntryKind }> = [];
    const attributes: string[] = [];
    for (const p of attributeFilesAbove(dir)) {
      if ((await lstat(path.join(this.root, p)).catch(() => undefined))?.isFile()) attributes.push(p);
    }
    if (chain.length > 0 && chain.at(-1)!.path === dir && chain.at(-1)!.kind === 'dir') {
      let visited = 0;
      const walk = async (rel: string, depth: number): Promise<void> => {
        const names = (await readdir(path.join(this.root, rel)).catch(() => [] as string[])).sort();
        for (const name of names) {
          if (inside.length >= PROBE_INSIDE_MAX || ++visited > MAX_ENTRIES) return;
          const p = `${rel}/${name}`;
          const st = await lstat(path.join(this.root, p)).catch(() => undefined);
          if (!st) continue;
          const kind = kindOf(st);
          if (kind === 'dir' && depth < MAX_DEPTH) await walk(p, depth + 1);
          else if (kind !== 'file' && kind !== 'dir') inside.push({ path: p, kind });
          else if (kind === 'file' && name === ATTRIBUTES_FILE && rel !== dir) attributes.push(p);
        }
      };
      await walk(dir, 0);
    }
    return { chain, inside, attributes };
  }
}

function kindOf(st: { isFile(): boolean; isDirectory(): boolean; isSymbolicLink(): boolean }): EntryKind {
  return st.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
}

/** Reads a regular file of at most `maxBytes` (checked on the open file, so a file that grows is cut off). */
async function readBounded(abs: string, label: string, maxBytes: number): Promise<Buffer> {
  const fh = await open(abs, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new RotorError('EINVAL', `${label} is not a regular file`, { retry: NEVER });
    if (st.size > maxBytes) throw tooLarge(label, st.size, maxBytes);
    const buf = Buffer.alloc(Math.min(st.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > maxBytes) throw tooLarge(label, n, maxBytes);
      if (n === buf.length) break;
    }
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}
