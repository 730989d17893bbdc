/**
 * Bounded concurrency of jobs: jobs of different secrets run concurrently (at most `limit`), jobs of one
 * secret in the order they arrived. Changes tells waiters when the scheduler's state changed (a job
 * done, a stop), so that the loops sleep on events, not on timers.
 */
import type { Job, Result } from 'rotor/internal';

/** Wakes everyone waiting at the next change. */
export class Changes {
  #waiters: (() => void)[] = [];

  /** Resolves at the next notify(), or when `signal` aborts. */
  wait(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.#waiters.push(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  notify(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }
}

export interface PumpOptions {
  /** How many jobs run at once, across secrets. */
  readonly limit: number;
  /** Runs one job; must not reject. */
  readonly run: (job: Job) => Promise<Result>;
  /** Receives each job's result, after the job left the running set and before the next job starts. */
  readonly done: (job: Job, result: Result) => void;
}

export class Pump {
  readonly #o: PumpOptions;
  /** Jobs waiting, per secret, in arrival order. */
  readonly #queues = new Map<string, Job[]>();
  /** Secrets with a job running. */
  readonly #busy = new Set<string>();
  readonly #running = new Set<Promise<void>>();
  #active = 0;
  #queued = 0;
  #halted = false;

  constructor(options: PumpOptions) {
    this.#o = options;
  }

  /** Jobs running. */
  get active(): number {
    return this.#active;
  }

  /** Jobs waiting to start. */
  get queued(): number {
    return this.#queued;
  }

  /** Whether fewer jobs are running and waiting than the limit (the agent polls only then). */
  get hasRoom(): boolean {
    return this.#active + this.#queued < this.#o.limit;
  }

  /** The running jobs, each settling when its result was handed to `done`. */
  running(): Promise<void>[] {
    return [...this.#running];
  }

  /** Queues a job behind the others of its secret, and starts what can start. */
  push(job: Job): void {
    let q = this.#queues.get(job.secret);
    if (!q) this.#queues.set(job.secret, (q = []));
    q.push(job);
    this.#queued++;
    this.#pump();
  }

  /** Starts nothing more; running jobs go on. */
  halt(): void {
    this.#halted = true;
  }

  /** Takes out every job that has not started, and returns them. */
  dropQueued(): Job[] {
    const dropped = [...this.#queues.values()].flat();
    this.#queues.clear();
    this.#queued = 0;
    return dropped;
  }

  /** Starts queued jobs while there is room: the head of each secret's queue whose secret is not busy. */
  #pump(): void {
    if (this.#halted) return;
    for (const [secret, q] of this.#queues) {
      if (this.#active >= this.#o.limit) return;
      if (this.#busy.has(secret)) continue;
      const job = q.shift()!;
      if (q.length === 0) this.#queues.delete(secret);
      this.#queued--;
      this.#busy.add(secret);
      this.#active++;
      const running: Promise<void> = this.#o.run(job).then((result) => {
        this.#running.delete(running);
        this.#busy.delete(secret);
        this.#active--;
        this.#o.done(job, result);
        this.#pump();
      });
      this.#running.add(running);
    }
  }
}
