/**
 * The audit log in the PostgreSQL state store: with several daemons on one store, the hash chain lives
 * in the table `audit` (state/pg-schema.ts: seq, hash, line, term), and the files of the git clone are
 * a mirror of it (daemon/audit-mirror.ts). A row's `line` is exactly the line the file log writes for
 * that entry (without the newline) and `hash` its `hash` field, so the files, the rows and every
 * verifier agree byte for byte.
 *
 * It lives here, not in src/state: it seals and verifies entries (entry.ts, verify.ts, log.ts), and the
 * layers keep `state` and `audit` apart. What it needs of the store (a pool, the table names, the
 * fence) is the small structural PgAuditDeps, which a PgStore's `context` gives.
 *
 * Reading: open and catchUp read pages of rows in one REPEATABLE READ READ ONLY transaction and run
 * them through the file log's ChainVerifier (every rule but the month file; the same codes:
 * AUDIT_SEQ_GAP for a missing or moved row, AUDIT_HASH_MISMATCH for an edited line, AUDIT_CHAIN_BROKEN
 * ...), and check the columns seq and hash against the line.
 *
 * Writing: as AuditLog.append (the same normalizing and sealing, group commit: calls made while a
 * transaction is in flight go together, in order), in one transaction: the fence first, then one
 * INSERT of the group, then pg_notify('rotor', '<schema> audit <last seq>'), then COMMIT with
 * synchronous_commit on. A fence that throws, or a seq already taken (another writer appended), is
 * AUDIT_FENCED: never retried, and every later append and seed is refused with it (a deposed leader
 * opens the log again).
 *
 * A COMMIT whose answer is lost (the connection failed) may have committed: the append rejects with
 * AUDIT_WRITE_FAILED (retried) and its lines are remembered. The next write transaction, after the
 * fence, reads the rows after the head: rows that are exactly lines of such an append are adopted (the
 * head moves past them; the caller, told it failed, appends its events again, so the log may hold them
 * twice: an audit log may say more, never less); no rows: it goes on from the head; any other row:
 * another writer (AUDIT_FENCED). Unlike the state store (state/pg-store.ts), which deletes such rows,
 * the audit log never deletes a row: a follower or the git mirror may already have read it.
 *
 * The log does not own the pool: close() waits for the appends in flight and ends nothing.
 */
import type { PoolClient } from 'pg';
import { connectionFailed, sqlstate } from '../util/pg-errors.js';
import type { AuditEntry, AuditInput } from './entry.js';
import { AuditError, lineHash, MAX_LINE_BYTES } from './entry.js';
import { GROUP_ENTRIES } from './log.js';
import { checkInputs, sealInputs, verifyLines } from './seal.js';
import type { Anchor, ChainState } from './verify.js';
import { ChainVerifier, GENESIS } from './verify.js';

/** What the log needs of the PostgreSQL state store (a PgStore's `context`, and the term). */
export interface PgAuditDeps {
  readonly pool: { connect(): Promise<PoolClient> };
  /** The qualified table names (state/pg-schema.ts `qualified`): the schema and the audit table. */
  readonly t: { readonly schema: string; readonly audit: string };
  /** Where the store is, for messages (never a password). */
  readonly place: string;
  /** Runs first in every write transaction; throwing refuses the write (AUDIT_FENCED). */
  readonly fence?: ((client: PoolClient) => Promise<void>) | undefined;
  /** The leader's term, written in each row (0 when there is none). */
  readonly term: () => number | undefined;
  /** Told when rows of an append whose COMMIT failed are found committed and adopted. */
  readonly warn?: (message: string) => void;
}

/** Rows fetched per query, and the bytes of lines a page starts within. */
const PAGE_ROWS = 1000;
const PAGE_BYTES = 8 * 1024 * 1024;
/** One INSERT carries at most this many bytes of lines (but always at least one call). */
const GROUP_BYTES = 8 * 1024 * 1024;
const noop = (): void => undefined;

interface Row {
  seq: string;
  hash: string;
  len: number;
  line: string | null;
}

interface Sealed {
  readonly entry: AuditEntry;
  readonly line: string;
}

interface Call {
  readonly inputs: readonly AuditInput[];
  readonly bytes: number;
  resolve(entries: AuditEntry[]): void;
  reject(e: unknown): void;
}

function describe(e: unknown): string {
  const m = e instanceof Error ? e.message.split('\n', 1)[0]! : 'error';
  const code = sqlstate(e);
  const text = code ? `${code}: ${m}` : m;
  return text.length > 300 ? `${text.slice(0, 300)}...` : text;
}

/** Whether a failed COMMIT may have committed all the same (the connection failed, not the statement). */
function outcomeUnknown(e: unknown): boolean {
  return sqlstate(e) === undefined || connectionFailed(e);
}

export class PgAuditLog {
  private state: ChainState;
  private readonly pending: Call[] = [];
  private queue: Promise<void> = Promise.resolve();
  private flushScheduled = false;
  /** Lines of appends whose COMMIT outcome is unknown, by seq (see the top of this file). */
  private unknown = new Map<number, Set<string>>();
  private fenced: AuditError | undefined;
  private closed = false;

  private constructor(
    private readonly deps: PgAuditDeps,
    state: ChainState,
  ) {
    this.state = state;
  }

  /** Reads and verifies the whole chain in the table (refused with the verifier's codes); onEntry sees each entry. */
  static async open(deps: PgAuditDeps, onEntry?: (e: AuditEntry) => void): Promise<PgAuditLog> {
    const log = new PgAuditLog(deps, GENESIS);
    const entries = await log.catchUpNow(onEntry !== undefined);
    if (onEntry) for (const e of entries) onEntry(e);
    return log;
  }

  /**
   * Writable again after a fence: this daemon leads again (a new term), and has caught up (catchUp)
   * with what the others appended meanwhile.
   */
  resume(): Promise<void> {
    return this.exclusive(async () => {
      this.fenced = undefined;
    });
  }

  /** Where the table is, for messages. */
  get place(): string {
    return this.deps.place;
  }

  /** The last entry (seq 0 and 64 zeros when the table is empty). */
  get head(): Anchor {
    return { seq: this.state.seq, hash: this.state.hash };
  }

  /**
   * Appends entries after those of every earlier call, as AuditLog.append; resolves with the entries
   * once committed. Rejects with AUDIT_INVALID_ENTRY, AUDIT_WRITE_FAILED (retried; nothing of it is
   * acknowledged), AUDIT_FENCED or AUDIT_UNUSABLE (closed).
   */
  append(entries: readonly AuditInput[]): Promise<AuditEntry[]> {
    let inputs: AuditInput[];
    try {
      if (this.closed) throw new AuditError('AUDIT_UNUSABLE', 'the audit log is closed');
      if (this.fenced) throw this.fenced;
      inputs = checkInputs(entries);
    } catch (e) {
      return Promise.reject(e);
    }
    const bytes = inputs.reduce((n, i) => n + JSON.stringify(i).length + 200, 0);
    return new Promise<AuditEntry[]>((resolve, reject) => {
      this.pending.push({ inputs, bytes, resolve, reject });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        void this.exclusive(() => this.flush());
      }
    });
  }

  /** Reads and verifies the rows after the head, moves the head past them and returns their entries. */
  catchUp(): Promise<AuditEntry[]> {
    if (this.closed) return Promise.reject(new AuditError('AUDIT_UNUSABLE', 'the audit log is closed'));
    return this.exclusive(() => this.catchUpNow(true));
  }

  /**
   * The lines of the entries after `seq` up to the head (at most `max`), in order, as the table holds
   * them: for the git mirror, whose AuditLog.appendLines verifies them again. The head's row must still
   * carry the head's hash (AUDIT_CHAIN_BROKEN otherwise: the table was rewritten).
   */
  async linesAfter(seq: number, max: number): Promise<{ seq: number; line: string }[]> {
    if (!Number.isSafeInteger(seq) || seq < 0) throw new TypeError('linesAfter: seq is a non-negative integer');
    if (!Number.isSafeInteger(max) || max < 1) throw new TypeError('linesAfter: max is a positive integer');
    const head = this.state;
    if (seq >= head.seq) return [];
    const rows = await this.read('reading the audit table', async (client) => {
      const { rows } = await client.query<Row>(
        // ORDER BY a.seq, the number: the output column seq is text ('10' before '9').
        `SELECT seq::text AS seq, hash, octet_length(line) AS len,
                CASE WHEN octet_length(line) <= $4 THEN line END AS line
           FROM ${this.deps.t.audit} a WHERE a.seq > $1 AND a.seq <= $2 ORDER BY a.seq LIMIT $3`,
        [seq, head.seq, max, MAX_LINE_BYTES],
      );
      return rows;
    });
    return rows.map((row, i) => {
      const at = seq + i + 1;
      if (Number(row.seq) !== at || row.line === null)
        throw this.broken(at, row.line === null ? 'AUDIT_MALFORMED' : 'AUDIT_SEQ_GAP', 'the row is missing or damaged');
      if (at === head.seq && row.hash !== head.hash)
        throw this.broken(
          at,
          'AUDIT_CHAIN_BROKEN',
          'its hash is not the one this daemon read: the table was rewritten',
        );
      return { seq: at, line: row.line };
    });
  }

  /**
   * Imports a file log's lines verbatim into an empty table, so that the chain continues in the
   * database (a deployment moving to several daemons): verified first (the verifier's codes), then
   * written in one fenced transaction. Refused when the table is not empty. Resolves with the head.
   */
  seed(lines: readonly string[]): Promise<Anchor> {
    if (this.closed) return Promise.reject(new AuditError('AUDIT_UNUSABLE', 'the audit log is closed'));
    return this.exclusive(async () => {
      if (this.fenced) throw this.fenced;
      if (this.state.seq !== 0)
        throw new AuditError(
          'AUDIT_INVALID_ENTRY',
          `the audit table in ${this.deps.place} already holds ${this.state.seq} entries: only an empty one is seeded`,
        );
      const checked = verifyLines(lines, GENESIS, 'the file log to import');
      if (!checked.ok)
        throw new AuditError(
          checked.code,
          `the file log to import into ${this.deps.place}: line ${checked.line}: ${checked.message}`,
          { file: checked.file, line: checked.line, ...(checked.seq !== undefined ? { seq: checked.seq } : {}) },
        );
      if (lines.length === 0) return this.head;
      const sealed = checked.entries.map((entry, i) => ({ entry, line: lines[i]! }));
      await this.writeTx('seeding the audit table', async (client) => {
        const { rows } = await client.query(`SELECT 1 FROM ${this.deps.t.audit} LIMIT 1`);
        if (rows.length > 0) throw this.fence('seeding the audit table: another writer appended to it first');
        for (let i = 0; i < sealed.length; i += PAGE_ROWS) await this.insert(client, sealed.slice(i, i + PAGE_ROWS));
        return sealed;
      });
      return this.head;
    });
  }

  /** Waits for the appends already made; later ones reject. The pool is the store's: not ended. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
  }

  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task);
    this.queue = run.then(noop, noop);
    return run;
  }

  private broken(seq: number, code: AuditError['code'], why: string): AuditError {
    const where = `${this.deps.place}, table audit`;
    return new AuditError(code, `${where}: entry ${seq}: ${why}`, { file: where, line: seq, seq });
  }

  /** Marks the log fenced (once) and returns the error every later write gets. */
  private fence(message: string): AuditError {
    this.fenced ??= new AuditError(
      'AUDIT_FENCED',
      `${message}; this daemon appends nothing more to the audit table in ${this.deps.place}`,
    );
    return this.fenced;
  }

  private async read<T>(what: string, body: (client: PoolClient) => Promise<T>): Promise<T> {
    let client: PoolClient;
    try {
      client = await this.deps.pool.connect();
    } catch (e) {
      throw new AuditError('AUDIT_IO', `${what} in ${this.deps.place} failed: ${describe(e)}`, undefined, { cause: e });
    }
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const out = await body(client);
      await client.query('COMMIT');
      client.release();
      return out;
    } catch (e) {
      client.release(true);
      if (e instanceof AuditError) throw e;
      throw new AuditError('AUDIT_IO', `${what} in ${this.deps.place} failed: ${describe(e)}`, undefined, { cause: e });
    }
  }

  /**
   * Reads and verifies every row after `from` (or at most `limit` rows), page by page, on `client`.
   * Returns the entries (when `keep`) and the chain state after the last row.
   */
  private async readChain(
    client: PoolClient,
    from: ChainState,
    keep: boolean,
    limit = Number.MAX_SAFE_INTEGER,
  ): Promise<{ entries: Sealed[]; state: ChainState }> {
    const where = `${this.deps.place}, table audit`;
    let last: Sealed | undefined;
    const entries: Sealed[] = [];
    const read: { entry?: AuditEntry } = {};
    const v = new ChainVerifier({ from, onEntry: (e) => void (read.entry = e) });
    let seq = from.seq;
    while (seq - from.seq < limit) {
      const { rows } = await client.query<Row>(
        `SELECT seq::text AS seq, hash, len, CASE WHEN len <= $3 THEN line END AS line
           FROM (SELECT seq, hash, line, octet_length(line) AS len,
                        sum(octet_length(line)) OVER (ORDER BY seq) AS upto
                   FROM ${this.deps.t.audit} WHERE seq > $1 ORDER BY seq LIMIT $2) page
          WHERE upto - len < $4
          ORDER BY page.seq`,
        [seq, Math.min(PAGE_ROWS, limit - (seq - from.seq)), MAX_LINE_BYTES, PAGE_BYTES],
      );
      if (rows.length === 0) break;
      for (const row of rows) {
        const at = seq + 1;
        if (row.line === null)
          throw this.broken(at, 'AUDIT_MALFORMED', `the line is ${row.len} bytes, more than ${MAX_LINE_BYTES}`);
        read.entry = undefined;
        const failure = v.addLine(where, at, row.line);
        if (failure)
          throw new AuditError(failure.code, `${where}: row ${row.seq}: ${failure.message}`, {
            file: where,
            line: at,
            ...(failure.seq !== undefined ? { seq: failure.seq } : {}),
          });
        const entry = read.entry as AuditEntry | undefined;
        if (!entry) throw this.broken(at, 'AUDIT_MALFORMED', 'the line could not be read');
        if (row.seq !== String(entry.seq))
          throw this.broken(at, 'AUDIT_SEQ_GAP', `the row's seq is ${row.seq}: rows were renumbered`);
        if (row.hash !== entry.hash)
          throw this.broken(at, 'AUDIT_HASH_MISMATCH', "the row's hash column differs from its line's hash");
        last = { entry: Object.freeze(entry), line: row.line };
        if (keep) entries.push(last);
        seq = at;
      }
    }
    const state = last ? { seq: last.entry.seq, hash: last.entry.hash, lineHash: lineHash(last.line) } : from;
    return { entries, state };
  }

  private async catchUpNow(keep: boolean): Promise<AuditEntry[]> {
    const { entries, state } = await this.read('reading the audit table', (client) =>
      this.readChain(client, this.state, keep),
    );
    this.advance(state);
    return entries.map((s) => s.entry);
  }

  /** Moves the head; what was unknown at or below it is settled. */
  private advance(state: ChainState): void {
    this.state = state;
    for (const seq of this.unknown.keys()) if (seq <= state.seq) this.unknown.delete(seq);
  }

  /** Writes the waiting calls (up to GROUP_ENTRIES entries and GROUP_BYTES) in one transaction. */
  private async flush(): Promise<void> {
    this.flushScheduled = false;
    let count = 0;
    let bytes = 0;
    let n = 0;
    while (
      n < this.pending.length &&
      (n === 0 ||
        (count + this.pending[n]!.inputs.length <= GROUP_ENTRIES && bytes + this.pending[n]!.bytes <= GROUP_BYTES))
    ) {
      count += this.pending[n]!.inputs.length;
      bytes += this.pending[n++]!.bytes;
    }
    const group = this.pending.splice(0, n);
    if (this.pending.length > 0) {
      this.flushScheduled = true;
      void this.exclusive(() => this.flush());
    }
    if (group.length === 0) return;
    const ready: { call: Call; sealed: Sealed[] }[] = [];
    try {
      if (this.fenced) throw this.fenced;
      await this.writeTx('appending to the audit table', async (client) => {
        // Sealed here, after the check of unknown outcomes may have moved the head.
        let from: ChainState = this.state;
        for (const call of group) {
          try {
            const sealed = sealInputs(call.inputs, from);
            const last = sealed.at(-1);
            if (last) from = { seq: last.entry.seq, hash: last.entry.hash, lineHash: lineHash(last.line) };
            ready.push({ call, sealed });
          } catch (e) {
            call.reject(e);
          }
        }
        const all = ready.flatMap((r) => r.sealed);
        if (all.length > 0) await this.insert(client, all);
        return all;
      });
    } catch (e) {
      for (const c of group) c.reject(e); // (a call refused when sealed is rejected already)
      return;
    }
    for (const r of ready) r.call.resolve(r.sealed.map((s) => s.entry));
  }

  private async insert(client: PoolClient, rows: readonly Sealed[]): Promise<void> {
    const term = this.deps.term() ?? 0;
    if (!Number.isSafeInteger(term) || term < 0) throw new TypeError('the term is a non-negative integer');
    await client.query(
      `INSERT INTO ${this.deps.t.audit} (seq, hash, line, term)
         SELECT s, h, l, $4::bigint FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u (s, h, l)`,
      [rows.map((r) => r.entry.seq), rows.map((r) => r.entry.hash), rows.map((r) => r.line), term],
    );
  }

  /**
   * One write transaction: the fence, the check of unknown outcomes, `body` (which returns the rows it
   * inserted, in order), the notification, COMMIT. The head moves past the rows once committed.
   */
  private async writeTx(what: string, body: (client: PoolClient) => Promise<readonly Sealed[]>): Promise<void> {
    const { place } = this.deps;
    let client: PoolClient;
    try {
      client = await this.deps.pool.connect();
    } catch (e) {
      throw new AuditError('AUDIT_WRITE_FAILED', `${what} in ${place} failed: ${describe(e)}`, undefined, {
        cause: e,
      });
    }
    let committing = false;
    let rows: readonly Sealed[] = [];
    try {
      await client.query('BEGIN; SET LOCAL synchronous_commit = on');
      if (this.deps.fence) await this.runFence(client, what);
      if (this.unknown.size > 0) await this.settle(client);
      rows = await body(client);
      const last = rows.at(-1);
      if (last) {
        const schema = this.deps.t.schema.replace(/^"(.*)"$/, '$1').replace(/""/g, '"');
        await client.query("SELECT pg_notify('rotor', $1)", [`${schema} audit ${last.entry.seq}`]);
      }
      committing = true;
      await client.query('COMMIT');
      client.release();
    } catch (e) {
      client.release(true); // closed: the server rolls back whatever was not committed
      if (e instanceof AuditError) throw e;
      if (committing && outcomeUnknown(e))
        for (const r of rows) {
          const lines = this.unknown.get(r.entry.seq) ?? new Set<string>();
          this.unknown.set(r.entry.seq, lines.add(r.line));
        }
      if (sqlstate(e) === '23505')
        throw this.fence(
          `${what}: another writer appended entry ${this.state.seq + 1} first (only the leader appends)`,
        );
      throw new AuditError(
        'AUDIT_WRITE_FAILED',
        `${what} in ${place} failed${committing ? ' at COMMIT (it may have committed: checked before the next append)' : ''}: ${describe(e)}`,
        undefined,
        { cause: e },
      );
    }
    const last = rows.at(-1);
    if (last) this.advance({ seq: last.entry.seq, hash: last.entry.hash, lineHash: lineHash(last.line) });
    this.unknown.clear(); // anything unknown was settled in this transaction, which committed
  }

  private async runFence(client: PoolClient, what: string): Promise<void> {
    try {
      await this.deps.fence!(client);
    } catch (e) {
      const code = (e as { code?: unknown })?.code;
      if (code === 'STATE_IO' || (sqlstate(e) === undefined && connectionFailed(e)))
        throw new AuditError('AUDIT_WRITE_FAILED', `${what} (the fence) failed: ${describe(e)}`, undefined, {
          cause: e,
        });
      throw this.fence(`${what}: the fence refused it (${describe(e)})`);
    }
  }

  /**
   * In a write transaction, after the fence: rows after the head must be exactly lines of appends whose
   * COMMIT failed (adopted: the head moves past them), else another writer appended (AUDIT_FENCED).
   */
  private async settle(client: PoolClient): Promise<void> {
    const top = Math.max(...this.unknown.keys());
    const { entries, state } = await this.readChain(client, this.state, true, top - this.state.seq + 1).catch(
      (e: unknown) => {
        if (e instanceof AuditError && e.code !== 'AUDIT_FENCED')
          throw this.fence(`the rows after entry ${this.state.seq} are not this daemon's (${e.message})`);
        throw e;
      },
    );
    if (entries.length === 0) return;
    for (const { entry, line } of entries)
      if (!this.unknown.get(entry.seq)?.has(line))
        throw this.fence(`entry ${entry.seq} of the audit table was written by another writer`);
    this.advance(state);
    this.deps.warn?.(
      `${this.deps.place}: ${entries.length} audit entr${entries.length === 1 ? 'y' : 'ies'} of an append whose COMMIT failed had been committed after all; kept (that append was reported as failed)`,
    );
  }
}
