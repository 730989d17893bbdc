/**
 * Where declarations are read from: a directory on disk or a tree of a git commit. Both list their files
 * with sizes first (so limits apply before anything is read) and then read a batch of them.
 */
import { lstat, readdir, readFile, realpath, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Problem } from './problems.js';

export interface SourceFile {
  /** Path relative to the source root, '/'-separated. */
  readonly path: string;
  readonly size: number;
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
  /** Reads files of the listing. A file that cannot be read maps to an Error. */
  readMany(paths: readonly string[]): Promise<Map<string, Buffer | Error>>;
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
          if (!inside || !st || !st.isFile()) {
            problems.push({
              file: relPath, line: 1, col: 1, severity: 'warning', code: 'SYMLINK_OUTSIDE',
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

  async readMany(paths: readonly string[]): Promise<Map<string, Buffer | Error>> {
    const out = new Map<string, Buffer | Error>();
    for (const p of paths) {
      const abs = this.real.get(p) ?? path.join(this.root, p);
      out.set(p, await readFile(abs).catch((e: Error) => e));
    }
    return out;
  }
}
