/**
 * The lease of several daemons on one PostgreSQL store (the election around it: daemon/leadership.ts).
 *
 * One row (pg-schema.ts `lease`) says who leads: a term that only grows, the holder's random id and
 * name, and when the lease was acquired, renewed and expires, all on the database's clock (now()), so
 * that the daemons' own clocks never decide. A daemon takes the lease in one transaction that locks
 * the row, checks it is free, adds one to the term, writes itself as holder and records the term in
 * `terms` (whose primary key makes two holders of one term impossible). The lease is free when nobody
 * holds it (the first start, a holder that resigned), when it expired, or when its holder is gone.
 *
 * "Gone" is a hint, never the fence. The holder takes a session advisory lock on its lease connection
 * and writes that connection's server process id as holder_pid. A SIGKILLed daemon's connections end at
 * once (the kernel closes its sockets), the server frees the lock, and the others see in pg_locks that
 * nobody holds it although the row names a holder that did: they take the lease without waiting for it
 * to expire. The hint can be wrong the other way round (the holder's lease connection dropped while the
 * process lives): the takeover is then early, and still safe, because of the fence.
 *
 * The fence: every write transaction of the leader (state records, audit entries) first runs
 * `SELECT ... FROM lease WHERE term = $term AND holder = $id FOR SHARE`. The row lock orders it against
 * a takeover's UPDATE: either the write commits before the term changes, or it sees the new term and is
 * refused. A deposed leader's late write is refused whatever it believes.
 *
 * Why a lease row and not a session advisory lock alone: a killed server process frees the lock while
 * the daemon that held it may go on acting (so two would act at once), and session locks do not survive
 * a transaction pooler. The lease connection must be a direct session (or a session pooler) for the
 * hint to be right; the fence does not depend on it.
 */
import type { PoolClient } from 'pg';
import { connectionFailed } from './pg-connect.js';
import type { PgContext } from './pg-store.js';

/** The first key of the hint lock: "rotl". The second is hashtext(schema). */
const HINT_CLASS = 0x726f746c;
/** The channel every change is announced on; the payload is "<schema> <kind> <n>". */
export const NOTIFY_CHANNEL = 'rotor';

export type TakeoverReason = 'first' | 'resigned' | 'expired' | 'gone';

/** The lease as last read (times in ms since the epoch, on the database's clock). */
export interface LeaseState {
  readonly term: number;
  readonly holder?: string;
  readonly holderName?: string;
  readonly acquiredAt?: number;
  readonly renewedAt?: number;
  readonly expiresAt?: number;
  /** The database's clock when this was read. */
  readonly now: number;
  /** Why it may be taken now; undefined while its holder holds it. */
  readonly free?: TakeoverReason;
}

/** A daemon seen on the store (its row in `daemons`). */
export interface DaemonRow {
  readonly id: string;
  readonly name: string;
  readonly role: 'leader' | 'follower' | 'candidate';
  readonly agentUrl?: string;
  readonly term?: number;
  /** Since it last wrote its row, ms (database clock). */
  readonly seenAgoMs: number;
}

export interface LeaseIdentity {
  /** Random per process: a restarted daemon is a new holder. */
  readonly id: string;
  /** For people: the host name or --name. */
  readonly name: string;
  readonly ttlMs: number;
}

interface Client {
  query<R extends Record<string, unknown>>(
    text: string,
    values?: unknown[],
  ): Promise<{ rows: R[]; rowCount: number | null }>;
  release(destroy?: boolean): void;
}

type LeaseCtx = Pick<PgContext, 'pool' | 't' | 'place' | 'error'>;

const LEASE_COLUMNS = `term::text AS term, holder, holder_name, holder_pid,
  (extract(epoch FROM acquired_at) * 1000)::float8 AS acquired_at,
  (extract(epoch FROM renewed_at) * 1000)::float8 AS renewed_at,
  (extract(epoch FROM expires_at) * 1000)::float8 AS expires_at,
  (extract(epoch FROM now()) * 1000)::float8 AS now,
  expires_at <= now() AS expired`;

interface LeaseRowSql extends Record<string, unknown> {
  term: string;
  holder: string | null;
  holder_name: string | null;
  holder_pid: number | null;
  acquired_at: number | null;
  renewed_at: number | null;
  expires_at: number | null;
  now: number;
  expired: boolean | null;
}

export class PgLease {
  /** The lease connection: the hint lock lives as long as it does. */
  private client: Client | undefined;
  private hintHeld = false;
  private readonly schema: string;

  constructor(
    private readonly ctx: LeaseCtx,
    readonly me: LeaseIdentity,
  ) {
    this.schema = ctx.t.schema.slice(1, -1).replace(/""/g, '"');
  }

  /** The lease connection, (re)connected when needed. */
  private async conn(): Promise<Client> {
    if (this.client) return this.client;
    try {
      const c = (await this.ctx.pool.connect()) as unknown as Client;
      this.client = c;
      this.hintHeld = false;
      return c;
    } catch (e) {
      throw this.ctx.error(e, 'reaching the lease');
    }
  }

  /** Runs fn on the lease connection; a failed connection is dropped (its locks go with it). */
  private async on<T>(what: string, fn: (c: Client) => Promise<T>): Promise<T> {
    const c = await this.conn();
    try {
      return await fn(c);
    } catch (e) {
      if (connectionFailed(e) || !(e as { code?: unknown })?.code) this.drop(c);
      else await c.query('ROLLBACK').catch(() => this.drop(c));
      throw this.ctx.error(e, what);
    }
  }

  /** Closes the lease connection (`only`: if it is still that one). */
  private drop(only?: Client): void {
    if (!this.client || (only && this.client !== only)) return;
    this.client.release(true);
    this.client = undefined;
    this.hintHeld = false;
  }

  /** Whether some session holds the hint lock now. */
  private hintSql(): string {
    return `EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
      AND classid = ${HINT_CLASS}::oid AND objid::bigint = (hashtext($1)::bigint + 4294967296) % 4294967296)`;
  }

  private state(r: LeaseRowSql, hinted: boolean): LeaseState {
    const holder = r.holder ?? undefined;
    const free: TakeoverReason | undefined =
      holder === undefined
        ? Number(r.term) === 0
          ? 'first'
          : 'resigned'
        : r.expired
          ? 'expired'
          : r.holder_pid !== null && !hinted
            ? 'gone'
            : undefined;
    return {
      term: Number(r.term),
      ...(holder !== undefined ? { holder } : {}),
      ...(r.holder_name !== null ? { holderName: r.holder_name } : {}),
      ...(r.acquired_at !== null ? { acquiredAt: r.acquired_at } : {}),
      ...(r.renewed_at !== null ? { renewedAt: r.renewed_at } : {}),
      ...(r.expires_at !== null ? { expiresAt: r.expires_at } : {}),
      now: r.now,
      ...(free ? { free } : {}),
    };
  }

  /** The lease as it is now, and the daemons seen in the last `seenWithinMs`. */
  async read(seenWithinMs = 60_000): Promise<{ lease: LeaseState; daemons: DaemonRow[] }> {
    return this.on('reading the lease', async (c) => {
      const { rows } = await c.query<LeaseRowSql & { hinted: boolean }>(
        `SELECT ${LEASE_COLUMNS}, ${this.hintSql()} AS hinted FROM ${this.ctx.t.lease}`,
        [this.schema],
      );
      const r = rows[0];
      if (!r) throw new Error(`${this.ctx.place}: the lease row is missing`);
      const d = await c.query<{
        id: string;
        name: string;
        role: DaemonRow['role'];
        agent_url: string | null;
        term: string | null;
        ago: number;
      }>(
        `SELECT id, name, role, agent_url, term::text AS term,
                (extract(epoch FROM now() - seen_at) * 1000)::float8 AS ago
           FROM ${this.ctx.t.daemons} WHERE seen_at > now() - $1 * interval '1 millisecond' ORDER BY name, id`,
        [seenWithinMs],
      );
      return {
        lease: this.state(r, r.hinted),
        daemons: d.rows.map((x) => ({
          id: x.id,
          name: x.name,
          role: x.role,
          ...(x.agent_url !== null ? { agentUrl: x.agent_url } : {}),
          ...(x.term !== null ? { term: Number(x.term) } : {}),
          seenAgoMs: Math.max(0, Math.round(x.ago)),
        })),
      };
    });
  }

  /** Takes the lease when it is free: the new term and why it was free, or undefined (someone holds it). */
  async acquire(): Promise<{ term: number; reason: TakeoverReason } | undefined> {
    return this.on('taking the lease', async (c) => {
      await c.query('BEGIN');
      // The row lock first, then the lease and the hint as they are once it is held, in a statement of
      // its own: read in the locking statement, the hint would be from before the wait for the lock, and
      // a daemon that took the lease meanwhile (and its hint lock) would look gone.
      await c.query(`SELECT term FROM ${this.ctx.t.lease} FOR UPDATE`);
      const { rows } = await c.query<LeaseRowSql & { hinted: boolean }>(
        `SELECT ${LEASE_COLUMNS}, ${this.hintSql()} AS hinted FROM ${this.ctx.t.lease}`,
        [this.schema],
      );
      const r = rows[0];
      const s = r && this.state(r, r.hinted);
      if (!s?.free) {
        await c.query('ROLLBACK');
        return undefined;
      }
      const pid = await this.takeHint(c);
      const up = await c.query<{ term: string }>(
        `UPDATE ${this.ctx.t.lease} SET term = term + 1, holder = $1, holder_name = $2, holder_pid = $3,
           holder_backend_start = NULL, acquired_at = now(), renewed_at = now(),
           expires_at = now() + $4 * interval '1 millisecond'
         RETURNING term::text AS term`,
        [this.me.id, this.me.name, pid ?? null, this.me.ttlMs],
      );
      const term = Number(up.rows[0]!.term);
      await c.query(`INSERT INTO ${this.ctx.t.terms} (term, holder, holder_name, how) VALUES ($1, $2, $3, $4)`, [
        term,
        this.me.id,
        this.me.name,
        s.free,
      ]);
      await c.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, `${this.schema} lease ${term}`]);
      await c.query('COMMIT');
      return { term, reason: s.free };
    });
  }

  /** Takes the hint lock on the lease connection when it is free; its server process id when held. */
  private async takeHint(c: Client): Promise<number | undefined> {
    if (!this.hintHeld) {
      const { rows } = await c.query<{ got: boolean }>(
        `SELECT pg_try_advisory_lock(${HINT_CLASS}, hashtext($1)) AS got`,
        [this.schema],
      );
      this.hintHeld = rows[0]?.got === true;
    }
    if (!this.hintHeld) return undefined;
    const { rows } = await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    return rows[0]?.pid;
  }

  /** Extends the lease of `term`; false when it is no longer this daemon's (another term began). */
  async renew(term: number): Promise<boolean> {
    return this.on('renewing the lease', async (c) => {
      const pid = await this.takeHint(c);
      const { rowCount } = await c.query(
        `UPDATE ${this.ctx.t.lease} SET renewed_at = now(), expires_at = now() + $3 * interval '1 millisecond',
           holder_pid = $4
         WHERE term = $1 AND holder = $2`,
        [term, this.me.id, this.me.ttlMs, pid ?? null],
      );
      return rowCount === 1;
    });
  }

  /** Gives the lease of `term` up at once (SIGTERM) and wakes the others; nothing when it is not ours. */
  async resign(term: number): Promise<void> {
    await this.on('giving up the lease', async (c) => {
      await c.query('BEGIN');
      const { rowCount } = await c.query(
        `UPDATE ${this.ctx.t.lease} SET holder = NULL, holder_name = NULL, holder_pid = NULL, expires_at = now()
         WHERE term = $1 AND holder = $2`,
        [term, this.me.id],
      );
      if (rowCount === 1) await c.query('SELECT pg_notify($1, $2)', [NOTIFY_CHANNEL, `${this.schema} lease ${term}`]);
      await c.query('COMMIT');
    });
    await this.releaseHint();
  }

  /** Lets the hint lock go (a deposed leader, so that its successor can take it). */
  async releaseHint(): Promise<void> {
    if (!this.hintHeld || !this.client) return;
    const c = this.client;
    await c.query('SELECT pg_advisory_unlock_all()').catch(() => this.drop(c));
    this.hintHeld = false;
  }

  /** Writes this daemon's row: its role, term and agent URL, seen now. */
  async heartbeat(role: DaemonRow['role'], term: number | undefined, agentUrl: string | undefined): Promise<void> {
    await this.on('writing the daemon row', (c) =>
      c.query(
        `INSERT INTO ${this.ctx.t.daemons} (id, name, agent_url, role, term, seen_at) VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (id) DO UPDATE SET agent_url = $3, role = $4, term = COALESCE($5, ${this.ctx.t.daemons}.term), seen_at = now()`,
        [this.me.id, this.me.name, agentUrl ?? null, role, term ?? null],
      ),
    );
  }

  /**
   * The fence of a write transaction of `term`: the lease row must still be this daemon's at that term,
   * locked FOR SHARE until the transaction ends (a takeover waits for it, or it sees the new term).
   */
  fence(term: () => number | undefined): (client: PoolClient) => Promise<void> {
    return async (client) => {
      const held = term();
      if (held === undefined) throw new Error('this daemon does not lead (it holds no term)');
      const { rows } = await client.query<{ term: string; holder: string | null }>(
        `SELECT term::text AS term, holder FROM ${this.ctx.t.lease} FOR SHARE`,
      );
      const r = rows[0];
      if (!r || Number(r.term) !== held || r.holder !== this.me.id)
        throw new Error(`the lease is at term ${r?.term ?? '?'}, not this daemon's term ${held}: another daemon leads`);
    };
  }

  /** Closes the lease connection (the hint lock goes with it). */
  close(): void {
    this.drop();
  }
}
