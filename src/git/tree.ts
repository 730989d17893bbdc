/**
 * Reading a directory of a git commit without checking it out: `git ls-tree` lists it with sizes and
 * one `git cat-file --batch` process reads the blobs.
 *
 * Nothing of a commit is read without a bound: the listing is streamed and stops at MAX_ENTRIES
 * entries (or at an entry longer than MAX_RECORD bytes); a link's target is read only when the link
 * blob is at most MAX_LINK_TARGET bytes; a file only when it is within the caller's limit, checked on
 * the sizes the listing gave and again on the size cat-file announces, before its content arrives.
 */
import path from 'node:path';
import type { Problem } from '../model/problems.js';
import type { EntryKind, Listing, PathProbe, ReadOptions, RepoSource, SourceFile } from '../model/source.js';
import {
  ATTRIBUTES_FILE,
  attributeFilesAbove,
  leadingPaths,
  MAX_ENTRIES,
  PROBE_INSIDE_MAX,
  tooLarge,
} from '../model/source.js';
import { GitError, spawnGit } from './run.js';

/** A symbolic link's target is a path: longer than this (PATH_MAX on Linux) it is not read. */
export const MAX_LINK_TARGET = 4096;
/** One record of `git ls-tree` (mode, type, id, size, path): a longer one stops the listing. */
const MAX_RECORD = 8192;

export interface TreeEntry {
  /** Path relative to the listed root (the source's prefix removed). */
  path: string;
  mode: string;
  sha: string;
  /** Blob size in bytes; 0 for trees and submodules. */
  size: number;
}

/** What a git tree entry's mode says it is. */
export function kindOfMode(mode: string): EntryKind {
  return mode === '040000'
    ? 'dir'
    : mode === '120000'
      ? 'symlink'
      : mode === '160000'
        ? 'submodule'
        : mode === '100644' || mode === '100755'
          ? 'file'
          : 'other';
}

/**
 * Streams `git ls-tree -z --long ARGS` and calls `onEntry` for each entry, stopping after `limit`
 * entries. Returns whether it stopped early (more entries, or a record over MAX_RECORD bytes).
 */
export async function lsTree(
  repo: string,
  args: readonly string[],
  limit: number,
  onEntry: (e: TreeEntry) => void,
  strip = '',
): Promise<{ truncated: boolean }> {
  const full = ['--literal-pathspecs', 'ls-tree', '-z', '--long', ...args];
  let pending: Buffer = Buffer.alloc(0);
  let count = 0;
  let truncated = false;
  const r = await spawnGit(repo, full, {
    onStdout: (chunk) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let at = 0;
      for (;;) {
        const nul = pending.indexOf(0, at);
        if (nul < 0) break;
        if (count >= limit || nul - at > MAX_RECORD) {
          truncated = true;
          return false;
        }
        const rec = pending.subarray(at, nul).toString('utf8');
        at = nul + 1;
        const tab = rec.indexOf('\t');
        const [mode = '', , sha = '', size = '-'] = rec.slice(0, tab).split(/ +/);
        let rel = rec.slice(tab + 1);
        if (strip) rel = rel.slice(strip.length + 1);
        count++;
        onEntry({ path: rel, mode, sha, size: size === '-' ? 0 : Number(size) });
      }
      pending = pending.subarray(at);
      if (pending.length > MAX_RECORD) {
        truncated = true;
        return false;
      }
      return true;
    },
  });
  if (r.killed === 'stopped') return { truncated: true };
  if (r.exitCode !== 0) throw new GitError(full, r.exitCode, r.stderr, r.killed);
  return { truncated };
}

export class GitTreeSource implements RepoSource {
  readonly label: string;
  private readonly blobs = new Map<string, { sha: string; size: number }>();

  /**
   * @param repo  the git work tree (any directory inside it)
   * @param commit  a full commit id
   * @param prefix  the declarations' directory relative to the repository's top level ('' for the top)
   */
  constructor(
    private readonly repo: string,
    readonly commit: string,
    private readonly prefix: string,
  ) {
    this.label = `commit ${commit.slice(0, 12)}`;
  }

  private listing: Promise<Listing> | undefined;

  /** The commit's files (listed once: a commit does not change). */
  list(): Promise<Listing> {
    this.listing ??= this.listOnce();
    return this.listing;
  }

  private async listOnce(): Promise<Listing> {
    const args = ['-r', '--full-tree', this.commit];
    if (this.prefix) args.push('--', this.prefix);
    const entries = new Map<string, TreeEntry>();
    const { truncated } = await lsTree(
      this.repo,
      args,
      MAX_ENTRIES,
      (e) => {
        if (!e.path.split('/').some((seg) => seg.startsWith('.'))) entries.set(e.path, e);
      },
      this.prefix,
    );
    const files = new Map<string, SourceFile>();
    const problems: Problem[] = [];
    const links = [...entries.values()].filter((e) => e.mode === '120000');
    const targets = await catFiles(
      this.repo,
      links.filter((e) => e.size <= MAX_LINK_TARGET).map((e) => ({ sha: e.sha, maxBytes: MAX_LINK_TARGET })),
    );
    for (const [rel, e] of entries) {
      if (e.mode === '100644' || e.mode === '100755') {
        files.set(rel, { path: rel, size: e.size, id: e.sha });
        this.blobs.set(rel, e);
      } else if (e.mode === '120000') {
        const text = targets.get(e.sha);
        const target =
          text instanceof Buffer
            ? path.posix.normalize(path.posix.join(path.posix.dirname(rel), text.toString('utf8')))
            : undefined;
        const te = target === undefined ? undefined : entries.get(target);
        if (target !== undefined && !target.startsWith('../') && te && (te.mode === '100644' || te.mode === '100755')) {
          files.set(rel, { path: rel, size: te.size, id: te.sha });
          this.blobs.set(rel, te);
        } else {
          problems.push({
            file: rel,
            line: 1,
            col: 1,
            severity: 'warning',
            code: 'SYMLINK_OUTSIDE',
            message:
              e.size > MAX_LINK_TARGET
                ? `symbolic link with a target of ${e.size} bytes (over ${MAX_LINK_TARGET}) ignored; copy the file into the repository instead`
                : 'symbolic link leaving the repository (or to a directory) ignored; copy the file into the repository instead',
          });
        }
      }
    }
    return { files, problems, truncated };
  }

  async readMany(paths: readonly string[], options: ReadOptions): Promise<Map<string, Buffer | Error>> {
    const out = new Map<string, Buffer | Error>();
    const wanted: Array<{ sha: string; maxBytes: number }> = [];
    for (const p of paths) {
      const b = this.blobs.get(p);
      if (!b) out.set(p, new Error(`${p} is not a file of ${this.label}`));
      else if (b.size > options.maxBytes) out.set(p, tooLarge(p, b.size, options.maxBytes));
      else wanted.push({ sha: b.sha, maxBytes: options.maxBytes });
    }
    const blobs = await catFiles(this.repo, wanted);
    for (const p of paths) {
      if (out.has(p)) continue;
      const got = blobs.get(this.blobs.get(p)!.sha);
      out.set(
        p,
        got instanceof Buffer
          ? got
          : got instanceof Error
            ? new Error(`${p}: ${got.message}`)
            : new Error(`${p} could not be read from ${this.label}`),
      );
    }
    return out;
  }

  async probe(dir: string): Promise<PathProbe> {
    const full = (p: string) => (this.prefix ? `${this.prefix}/${p}` : p);
    const chainPaths = leadingPaths(dir);
    const above = attributeFilesAbove(dir);
    const found = new Map<string, TreeEntry>();
    await lsTree(
      this.repo,
      ['--full-tree', this.commit, '--', ...[...chainPaths, ...above].map(full)],
      chainPaths.length + above.length,
      (e) => found.set(e.path, e),
      this.prefix,
    );
    const attributes: string[] = [];
    const attribute = (e: TreeEntry) => {
      if (kindOfMode(e.mode) !== 'file' || attributes.length >= PROBE_INSIDE_MAX || attributes.includes(e.path)) return;
      attributes.push(e.path);
      this.blobs.set(e.path, e);
    };
    for (const p of above) if (found.has(p)) attribute(found.get(p)!);
    const chain: Array<{ path: string; kind: EntryKind }> = [];
    for (const p of chainPaths) {
      const entry = found.get(p);
      if (!entry) break;
      const kind = kindOfMode(entry.mode);
      chain.push({ path: p, kind });
      if (kind !== 'dir') break;
    }
    const inside: Array<{ path: string; kind: EntryKind }> = [];
    if (chain.length === chainPaths.length && chain.at(-1)?.kind === 'dir') {
      await lsTree(
        this.repo,
        ['-r', '--full-tree', this.commit, '--', `${full(dir)}/`],
        MAX_ENTRIES,
        (e) => {
          const kind = kindOfMode(e.mode);
          if (kind !== 'file' && inside.length < PROBE_INSIDE_MAX) inside.push({ path: e.path, kind });
          if (kind === 'file' && path.posix.basename(e.path) === ATTRIBUTES_FILE) attribute(e);
        },
        this.prefix,
      );
    }
    return { chain, inside, attributes };
  }
}

/**
 * Reads blobs by id through one `git cat-file --batch`, each at most its `maxBytes`: an object that
 * is larger (by the size cat-file announces before its content) stops the read and maps to an Error,
 * as does a missing one. Memory stays within the sum of the limits.
 */
export async function catFiles(
  repo: string,
  items: ReadonlyArray<{ sha: string; maxBytes: number }>,
): Promise<Map<string, Buffer | Error>> {
  const limits = new Map<string, number>();
  for (const { sha, maxBytes } of items) limits.set(sha, Math.min(limits.get(sha) ?? Infinity, maxBytes));
  const out = new Map<string, Buffer | Error>();
  const order = [...limits.keys()];
  if (order.length === 0) return out;
  let next = 0; // the object whose header comes next
  let header: Buffer = Buffer.alloc(0);
  let body: { sha: string; size: number; chunks: Buffer[]; got: number } | null = null;
  let over: string | undefined;
  const args = ['cat-file', '--batch'];
  const r = await spawnGit(repo, args, {
    input: `${order.join('\n')}\n`,
    onStdout: (chunk) => {
      let c: Buffer = chunk;
      while (c.length > 0) {
        if (body) {
          const need = body.size + 1 - body.got; // the content and its closing newline
          const take = c.subarray(0, need);
          body.chunks.push(take);
          body.got += take.length;
          c = c.subarray(take.length);
          if (body.got === body.size + 1) {
            out.set(body.sha, Buffer.concat(body.chunks).subarray(0, body.size));
            body = null;
          }
          continue;
        }
        const nl = c.indexOf(10);
        if (nl < 0) {
          header = Buffer.concat([header, c]);
          if (header.length > 200) return false;
          return true;
        }
        const line = Buffer.concat([header, c.subarray(0, nl)]).toString('utf8');
        header = Buffer.alloc(0);
        c = c.subarray(nl + 1);
        const sha = order[next++] ?? '';
        const [, type, size] = line.split(' ');
        if (type === 'missing' || size === undefined) {
          out.set(sha, new Error(`object ${sha.slice(0, 12)} is missing`));
          continue;
        }
        const n = Number(size);
        if (n > (limits.get(sha) ?? 0)) {
          over = sha;
          out.set(sha, tooLarge(`object ${sha.slice(0, 12)}`, n, limits.get(sha) ?? 0));
          return false; // its content is not read: the remaining objects are read by another call
        }
        body = { sha, size: n, chunks: [], got: 0 };
      }
      return true;
    },
  });
  if (over !== undefined) {
    const rest = items.filter((i) => !out.has(i.sha));
    for (const [sha, v] of await catFiles(repo, rest)) out.set(sha, v);
    return out;
  }
  if (r.exitCode !== 0) throw new GitError(args, r.exitCode, r.stderr, r.killed);
  return out;
}
