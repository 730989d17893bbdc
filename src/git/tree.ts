/**
 * Reading a directory of a git commit without checking it out: `git ls-tree` lists it with sizes and
 * one `git cat-file --batch` process reads the blobs.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import type { Listing, RepoSource, SourceFile } from '../model/source.js';
import { MAX_ENTRIES } from '../model/source.js';
import type { Problem } from '../model/problems.js';
import { GitError, git } from './run.js';

interface TreeEntry {
  mode: string;
  sha: string;
  size: number;
}

export class GitTreeSource implements RepoSource {
  readonly label: string;
  private readonly blobs = new Map<string, string>();

  /**
   * @param repo  the git work tree (any directory inside it)
   * @param commit  a full commit id
   * @param prefix  the declarations' directory relative to the repository's top level ('' for the top)
   */
  constructor(private readonly repo: string, readonly commit: string, private readonly prefix: string) {
    this.label = `commit ${commit.slice(0, 12)}`;
  }

  async list(): Promise<Listing> {
    const args = ['ls-tree', '-r', '-z', '--long', '--full-tree', this.commit];
    if (this.prefix) args.push('--', this.prefix);
    const out = await git(this.repo, args);
    const entries = new Map<string, TreeEntry>();
    let truncated = false;
    for (const rec of out.toString('utf8').split('\0')) {
      if (!rec) continue;
      if (entries.size >= MAX_ENTRIES) {
        truncated = true;
        break;
      }
      const tab = rec.indexOf('\t');
      const [mode, , sha, size] = rec.slice(0, tab).split(/ +/);
      let rel = rec.slice(tab + 1);
      if (this.prefix) rel = rel.slice(this.prefix.length + 1);
      if (rel.split('/').some((seg) => seg.startsWith('.'))) continue;
      entries.set(rel, { mode: mode!, sha: sha!, size: size === '-' ? 0 : Number(size) });
    }
    const files = new Map<string, SourceFile>();
    const problems: Problem[] = [];
    const links = [...entries].filter(([, e]) => e.mode === '120000');
    const targets = await catFiles(this.repo, links.map(([, e]) => e.sha));
    for (const [rel, e] of entries) {
      if (e.mode === '100644' || e.mode === '100755') {
        files.set(rel, { path: rel, size: e.size });
        this.blobs.set(rel, e.sha);
      } else if (e.mode === '120000') {
        const target = path.posix.normalize(path.posix.join(path.posix.dirname(rel), targets.get(e.sha)?.toString('utf8') ?? ''));
        const te = entries.get(target);
        if (!target.startsWith('../') && te && (te.mode === '100644' || te.mode === '100755')) {
          files.set(rel, { path: rel, size: te.size });
          this.blobs.set(rel, te.sha);
        } else {
          problems.push({
            file: rel, line: 1, col: 1, severity: 'warning', code: 'SYMLINK_OUTSIDE',
            message: 'symbolic link leaving the repository (or to a directory) ignored; copy the file into the repository instead',
          });
        }
      }
    }
    return { files, problems, truncated };
  }

  async readMany(paths: readonly string[]): Promise<Map<string, Buffer | Error>> {
    const shas = paths.map((p) => this.blobs.get(p));
    const blobs = await catFiles(this.repo, shas.filter((s): s is string => s !== undefined));
    const out = new Map<string, Buffer | Error>();
    paths.forEach((p, i) => out.set(p, blobs.get(shas[i] ?? '') ?? new Error(`${p} is not a file of ${this.label}`)));
    return out;
  }
}

/** Reads blobs by id through one `git cat-file --batch`. */
export async function catFiles(repo: string, shas: readonly string[]): Promise<Map<string, Buffer>> {
  const unique = [...new Set(shas)];
  const out = new Map<string, Buffer>();
  if (unique.length === 0) return out;
  const child = spawn('git', ['cat-file', '--batch'], { cwd: repo, stdio: ['pipe', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  const errs: Buffer[] = [];
  child.stdout.on('data', (c: Buffer) => chunks.push(c));
  child.stderr.on('data', (c: Buffer) => errs.push(c));
  child.stdin.end(unique.join('\n') + '\n');
  const code = await new Promise<number>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c) => resolve(c ?? 1));
  });
  if (code !== 0) throw new GitError(['cat-file', '--batch'], code, Buffer.concat(errs).toString());
  const buf = Buffer.concat(chunks);
  let at = 0;
  while (at < buf.length) {
    const nl = buf.indexOf(10, at);
    const header = buf.subarray(at, nl).toString();
    const [sha, type, size] = header.split(' ');
    if (type === 'missing' || size === undefined) {
      at = nl + 1;
      continue;
    }
    const n = Number(size);
    out.set(sha!, buf.subarray(nl + 1, nl + 1 + n));
    at = nl + 1 + n + 1;
  }
  return out;
}
