/**
 * The audit log on disk: files `YYYY-MM.jsonl` in the audit directory of a git work tree, read one at
 * a time through the verifier, and the writer that appends to them.
 *
 * The writer fails closed: `append` resolves only once the lines are written and fsynced (and the
 * directory too when a file was created), so a caller that must audit before it serves a new value
 * serves nothing when the append rejects. It never rewrites a line it acknowledged: when a write or
 * an fsync fails, it cuts the file back to its acknowledged length (or removes the file it had just
 * created) and rejects, so that a full or read-only disk leaves the log as it was and the next append
 * works once the disk does. If even that cleanup fails, it is done again before the next append, and
 * every append fails (AUDIT_WRITE_FAILED) until it succeeds: the log is usable again as soon as the
 * disk is, without reopening it.
 *
 * One process writes a directory (the daemon); appends are queued and written in call order. Appends
 * made while a write is in progress are written together with one fsync (group commit, up to
 * GROUP_ENTRIES entries; one call's entries are never split), and share its outcome (a call refused before
 * anything is written, an oversize entry or a line that does not follow the chain, fails alone).
 * appendLines writes lines sealed elsewhere (the database's chain) through the same path. Every file access
 * goes through a small AuditFs, node:fs/promises by default, so that tests can fail it.
 */
import { constants as fsConstants } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { AuditEntry, AuditInput } from './entry.js';
import { AuditError, FILE_NAME, monthFile, lineHash as sha, ZERO_HASH } from './entry.js';
import { checkInputs, sealInputs, verifyLines } from './seal.js';
import type { Anchor, ChainState, EntryLocation, VerifyResult } from './verify.js';
import { ChainVerifier } from './verify.js';

/** The part of a file handle the log uses (node's FileHandle fits). */
export interface AuditFileHandle {
  write(buffer: Uint8Array, offset: number, length: number): Promise<{ bytesWritten: number }>;
  truncate(length: number): Promise<void>;
  sync(): Promise<void>;
  close(): Promise<void>;
}

/** The file system calls the log uses (node:fs/promises fits); tests substitute one that fails. */
export interface AuditFs {
  readdir(dir: string): Promise<string[]>;
  readFile(file: string): Promise<Buffer>;
  mkdir(dir: string, options: { recursive: true }): Promise<string | undefined>;
  /** 'a' appends to an existing file, 'wx' creates a new one, 'r' opens a directory to fsync it. */
  open(file: string, flags: 'a' | 'wx' | 'r'): Promise<AuditFileHandle>;
  unlink(file: string): Promise<void>;
}

/** open()'s flags: never through a link at the last component (O_NOFOLLOW fails with ELOOP there). */
const OPEN_FLAGS = {
  a: fsConstants.O_WRONLY | fsConstants.O_APPEND | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW,
  wx: fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW,
  r: fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW,
} as const;

/**
 * node:fs/promises, opening files and directories with O_NOFOLLOW: an audit file that is a symbolic
 * link is refused (ELOOP), never followed. (The directories above it are checked by confineAuditFs.)
 */
export const nodeAuditFs: AuditFs = {
  readdir: (dir) => fsp.readdir(dir),
  readFile: async (file) => {
    const fh = await fsp.open(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
    try {
      return await fh.readFile();
    } finally {
      await fh.close();
    }
  },
  mkdir: (dir, options) => fsp.mkdir(dir, options),
  open: (file, flags) => fsp.open(file, OPEN_FLAGS[flags], 0o666),
  unlink: (file) => fsp.unlink(file),
};

function errno(e: unknown): string | undefined {
  return (e as { code?: unknown })?.code !== undefined ? String((e as { code: unknown }).code) : undefined;
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export interface ReadOptions {
  readonly fs?: AuditFs;
  readonly anchor?: Anchor;
  /** Called with each verified entry, in order (e.g. to learn the last version audited per secret). */
  readonly onEntry?: (entry: AuditEntry, at: EntryLocation) => void;
  /** How a file is named in results and errors (default: the directory joined with its name). */
  readonly label?: (name: string) => string;
}

export interface DirVerification {
  readonly result: VerifyResult;
  /** The audit files, in name order. */
  readonly files: readonly string[];
  /** Whether the directory exists. */
  readonly exists: boolean;
  /** The last file and its size in bytes. */
  readonly last?: { readonly name: string; readonly size: number };
  /** The SHA-256 of the last line: the next entry's prev. */
  readonly lineHash: string;
}

const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * Reads and verifies an audit directory, one file at a time (files `*.jsonl`, in name order; other
 * files are not part of the log). A missing directory is an empty log. Throws AUDIT_IO when a file
 * cannot be read; every problem of the content is in the result.
 */
export async function verifyAuditDir(dir: string, options: ReadOptions = {}): Promise<DirVerification> {
  const fs = options.fs ?? nodeAuditFs;
  const label = options.label ?? ((name: string) => path.join(dir, name));
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch (e) {
    if (errno(e) !== 'ENOENT')
      throw new AuditError('AUDIT_IO', `cannot list the audit directory ${dir}: ${describe(e)}`, undefined, {
        cause: e,
      });
    const v = new ChainVerifier(options);
    return { result: v.finish(), files: [], exists: false, lineHash: v.head.lineHash };
  }
  const files = names.filter((n) => n.endsWith('.jsonl')).sort();
  const v = new ChainVerifier(options);
  let last: { name: string; size: number } | undefined;
  for (const name of files) {
    let buf: Buffer;
    try {
      buf = await fs.readFile(path.join(dir, name));
    } catch (e) {
      throw new AuditError('AUDIT_IO', `cannot read the audit file ${label(name)}: ${describe(e)}`, undefined, {
        cause: e,
      });
    }
    last = { name, size: buf.length };
    let text: string;
    try {
      text = decoder.decode(buf);
    } catch {
      // Verify the lines before the first one that is not UTF-8, then report that one.
      let start = 0;
      let line = 1;
      for (;;) {
        const nl = buf.indexOf(10, start);
        const end = nl < 0 ? buf.length : nl;
        try {
          decoder.decode(buf.subarray(start, end));
        } catch {
          break;
        }
        if (nl < 0) break; // not reached: a newline byte never splits a UTF-8 sequence
        start = end + 1;
        line++;
      }
      if (!v.addFile(label(name), decoder.decode(buf.subarray(0, start))))
        v.unreadable(label(name), line, 'the line is not valid UTF-8');
      break;
    }
    if (v.addFile(label(name), text)) break;
  }
  return { result: v.finish(), files, exists: true, ...(last ? { last } : {}), lineHash: v.head.lineHash };
}

/** At most this many entries are written with one fsync, unless one call appends more. */
export const GROUP_ENTRIES = 1000;

/** One append or appendLines call: entries to seal, or lines already sealed. */
interface Call {
  readonly count: number;
  readonly inputs?: readonly AuditInput[];
  readonly lines?: readonly string[];
  readonly resolve: (entries: AuditEntry[]) => void;
  readonly reject: (e: unknown) => void;
}

/** A file an append wrote to: created by it, or appended to from `size` bytes. */
interface Touched {
  readonly file: string;
  readonly created: boolean;
  readonly size: number;
}

interface Prepared {
  readonly entry: AuditEntry;
  readonly line: string;
  readonly file: string;
}

/** The AuditError for a failed verification of a directory (file, line and seq in `error.at`). */
export function verifyError(r: Extract<VerifyResult, { ok: false }>): AuditError {
  return new AuditError(r.code, `${r.file}:${r.line}: ${r.message}`, {
    file: r.file,
    line: r.line,
    ...(r.seq !== undefined ? { seq: r.seq } : {}),
  });
}

/** The append-only, hash-chained audit log of one directory. */
export class AuditLog {
  private seq: number;
  private hash: string;
  private lineHash: string;
  private lastFile: string | undefined;
  private lastSize: number;
  private dirExists: boolean;
  private readonly pending: Call[] = [];
  private draining: Promise<void> | undefined;
  /** The files of a failed append whose undoing failed too: undone before anything else is written. */
  private undo: readonly Touched[] | undefined;
  private closed = false;

  private constructor(
    readonly dir: string,
    private readonly fs: AuditFs,
    v: DirVerification & { result: { ok: true } },
  ) {
    this.seq = v.result.head.seq;
    this.hash = v.result.head.hash;
    this.lineHash = v.lineHash;
    this.lastFile = v.last?.name;
    this.lastSize = v.last?.size ?? 0;
    this.dirExists = v.exists;
  }

  /**
   * Opens the log of a directory: reads and verifies every file, and refuses a broken chain with the
   * verifier's code (and file, line, seq in `error.at`). A missing directory is an empty log, created
   * by the first append.
   */
  static async open(dir: string, options: Omit<ReadOptions, 'label'> = {}): Promise<AuditLog> {
    const fs = options.fs ?? nodeAuditFs;
    const v = await verifyAuditDir(dir, { ...options, fs });
    if (!v.result.ok) throw verifyError(v.result);
    return new AuditLog(dir, fs, v as DirVerification & { result: { ok: true } });
  }

  /** The last entry written (seq 0 and 64 zeros for an empty log): keep it elsewhere as an anchor. */
  get head(): Anchor {
    return { seq: this.seq, hash: this.hash };
  }

  /**
   * Appends entries, in order, after those of every earlier call. Resolves with the entries as written
   * once they are durable; rejects (AUDIT_INVALID_ENTRY, AUDIT_WRITE_FAILED, AUDIT_UNUSABLE) otherwise,
   * and then none of them is in the log.
   */
  append(entries: readonly AuditInput[]): Promise<AuditEntry[]> {
    let inputs: AuditInput[];
    try {
      if (this.closed) throw new AuditError('AUDIT_UNUSABLE', 'the audit log is closed');
      inputs = checkInputs(entries);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.enqueue({ count: inputs.length, inputs });
  }

  /**
   * Appends lines sealed elsewhere (the database's chain, mirrored here: daemon/audit-mirror.ts), in
   * order, after those of every earlier call. Each must be the next entry of this log's chain (seq one
   * more than the head, prev the hash of the last line) and pass every check of the verifier, else
   * the call rejects with AUDIT_CHAIN_BROKEN and none of its lines is written. Otherwise as append:
   * written to the file of its month, durable before it resolves, undone when the write fails.
   */
  appendLines(lines: readonly string[]): Promise<AuditEntry[]> {
    if (this.closed) return Promise.reject(new AuditError('AUDIT_UNUSABLE', 'the audit log is closed'));
    if (!Array.isArray(lines) || !lines.every((l) => typeof l === 'string'))
      return Promise.reject(new AuditError('AUDIT_INVALID_ENTRY', 'appendLines takes an array of strings'));
    return this.enqueue({ count: lines.length, lines: [...lines] });
  }

  private enqueue(call: Omit<Call, 'resolve' | 'reject'>): Promise<AuditEntry[]> {
    return new Promise<AuditEntry[]>((resolve, reject) => {
      this.pending.push({ ...call, resolve, reject });
      this.draining ??= this.drain();
    });
  }

  /** Waits for the appends already made; later ones reject. */
  async close(): Promise<void> {
    this.closed = true;
    await this.draining;
  }

  /** Writes the queued calls, a group at a time, in call order. */
  private async drain(): Promise<void> {
    while (this.pending.length > 0) {
      let count = 0;
      let n = 0;
      while (n < this.pending.length && (n === 0 || count + this.pending[n]!.count <= GROUP_ENTRIES))
        count += this.pending[n++]!.count;
      const group = this.pending.splice(0, n);
      // Each call is sealed or verified after the ones before it; a call refused here fails alone.
      const ready: { call: Call; prepared: Prepared[] }[] = [];
      let state: Omit<ChainState, 'hash'> & { file: string | undefined } = {
        seq: this.seq,
        lineHash: this.lineHash,
        file: this.lastFile,
      };
      for (const call of group) {
        try {
          const prepared = this.prepare(call, state);
          const last = prepared.at(-1);
          if (last) state = { seq: last.entry.seq, lineHash: sha(last.line), file: last.file };
          ready.push({ call, prepared });
        } catch (e) {
          call.reject(e);
        }
      }
      try {
        await this.write(ready.flatMap((r) => r.prepared));
        for (const r of ready) r.call.resolve(r.prepared.map((p) => p.entry));
      } catch (e) {
        for (const r of ready) r.call.reject(e);
      }
    }
    this.draining = undefined;
  }

  /** A call's entries and lines after `from`, each with its month file. */
  private prepare(call: Call, from: Omit<ChainState, 'hash'> & { file: string | undefined }): Prepared[] {
    let sealed: { entry: AuditEntry; line: string }[];
    if (call.lines) {
      const checked = verifyLines(call.lines, { ...from, hash: ZERO_HASH }, `lines for ${this.dir}`);
      if (!checked.ok)
        throw new AuditError(
          'AUDIT_CHAIN_BROKEN',
          `line ${checked.line} of the lines to append is not the next entry of the audit log in ${this.dir} (at entry ${from.seq}): ${checked.message} [${checked.code}]`,
          undefined,
        );
      sealed = checked.entries.map((entry, i) => ({ entry, line: call.lines![i]! }));
    } else sealed = sealInputs(call.inputs ?? [], from);
    let file = from.file;
    return sealed.map(({ entry, line }) => {
      // The file of the entry's month, or the last file if the clock went back across a month.
      const month = monthFile(entry.time);
      file = file !== undefined && file > month ? file : month;
      if (!FILE_NAME.test(file))
        throw new AuditError(
          'AUDIT_INVALID_ENTRY',
          `audit entry ${entry.seq}: time ${entry.time} gives no audit file name`,
        );
      return { entry, line, file };
    });
  }

  /** Writes prepared entries (durable, or undone and rejected), and moves the head past them. */
  private async write(prepared: readonly Prepared[]): Promise<void> {
    if (prepared.length === 0) return;
    if (this.undo) {
      try {
        await this.undoAppend(this.undo);
        this.undo = undefined;
      } catch (e) {
        throw new AuditError(
          'AUDIT_WRITE_FAILED',
          `cannot append to the audit log in ${this.dir}: the bytes of an earlier failed append are still to be removed, and that failed again: ${describe(e)}`,
          undefined,
          { cause: e },
        );
      }
    }
    // Consecutive entries of one file are one write.
    const groups: { file: string; lines: string[] }[] = [];
    for (const p of prepared) {
      const g = groups.at(-1);
      if (g && g.file === p.file) g.lines.push(p.line);
      else groups.push({ file: p.file, lines: [p.line] });
    }
    const touched: Touched[] = [];
    let lastSize = this.lastSize;
    try {
      await this.ensureDir();
      for (const g of groups) {
        const created = g.file !== this.lastFile;
        const target = path.join(this.dir, g.file);
        const data = Buffer.from(g.lines.map((l) => `${l}\n`).join(''), 'utf8');
        const fh = await this.fs.open(target, created ? 'wx' : 'a');
        touched.push({ file: g.file, created, size: created ? 0 : this.lastSize });
        try {
          let off = 0;
          while (off < data.length) {
            const { bytesWritten } = await fh.write(data, off, data.length - off);
            if (!(bytesWritten > 0)) throw new Error('the write made no progress');
            off += bytesWritten;
          }
          await fh.sync();
        } finally {
          await fh.close().catch(() => undefined);
        }
        if (created) await this.syncDir(this.dir);
        lastSize = data.length + (created ? 0 : this.lastSize);
      }
    } catch (e) {
      const undoFailed = await this.undoAppend(touched).then(
        () => '',
        (u: unknown) => {
          this.undo = touched;
          return `; undoing the partial append failed too (done again before the next append): ${describe(u)}`;
        },
      );
      throw new AuditError(
        'AUDIT_WRITE_FAILED',
        `cannot append to the audit log in ${this.dir}: ${describe(e)}${undoFailed}`,
        undefined,
        { cause: e },
      );
    }
    const last = prepared.at(-1)!;
    this.seq = last.entry.seq;
    this.hash = last.entry.hash;
    this.lineHash = sha(last.line);
    this.lastFile = last.file;
    this.lastSize = lastSize;
  }

  /** Undoes a failed append: cut the files back, remove those it created (again: a file already gone is fine). */
  private async undoAppend(touched: readonly Touched[]): Promise<void> {
    for (const t of [...touched].reverse()) {
      const target = path.join(this.dir, t.file);
      if (t.created) {
        await this.fs.unlink(target).catch((e: unknown) => {
          if (errno(e) !== 'ENOENT') throw e;
        });
        await this.syncDir(this.dir);
      } else {
        const fh = await this.fs.open(target, 'a');
        try {
          await fh.truncate(t.size);
          await fh.sync();
        } finally {
          await fh.close().catch(() => undefined);
        }
      }
    }
  }

  private async ensureDir(): Promise<void> {
    if (this.dirExists) return;
    const first = await this.fs.mkdir(this.dir, { recursive: true });
    if (first !== undefined) {
      // Make every directory just created durable in its parent.
      for (let d = path.resolve(this.dir); ; d = path.dirname(d)) {
        await this.syncDir(path.dirname(d));
        if (d === path.resolve(first) || path.dirname(d) === d) break;
      }
    }
    this.dirExists = true;
  }

  private async syncDir(dir: string): Promise<void> {
    const fh = await this.fs.open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close().catch(() => undefined);
    }
  }
}
