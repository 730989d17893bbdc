/**
 * What the consumer sockets call (the consumer API's ConsumerBackend): grants as of the model in
 * force, the answers for current versions (serialized once, shared by every reader), long-poll
 * waits, read receipts, and the request counts and refusal log lines.
 *
 * One class for both places a consumer's socket lives: the daemon (values from its rotation engine)
 * and a rotor-agent on the consumer's host (values the daemon sent it); they differ only in the
 * ValueSource, the receipt book and what a newer receipt sets off.
 */
import type { Logger } from '../log.js';
import type { Served, VersionView } from '../rotation/engine.js';
import type { ConsumerBackend, CurrentView, Health } from './consumer-api.js';
import { type Access, Grants } from './grants.js';
import type { SocketsStatus } from './status.js';

export type { Served, VersionView };

/** Where the values come from: the daemon's engine, or the agent's copy of what the daemon sent. */
export interface ValueSource {
  served(name: string): Served | undefined;
  version(name: string, version: number): VersionView | undefined;
  /** ms since the epoch, or undefined when rotor does not schedule the secret. */
  nextRotationAt(name: string): number | undefined;
}

/** The version each consumer was last given as current. */
export interface ReceiptBook {
  /** Records a read; true when the consumer is on a newer version than before. */
  record(consumer: string, secret: string, version: number): boolean;
  get(consumer: string, secret: string): { readonly version: number } | undefined;
}

export interface ConsumerServiceOptions {
  readonly source: ValueSource;
  readonly receipts: ReceiptBook;
  readonly log: Logger;
  readonly now: () => number;
  /** Whether the server still runs (long-polls end when it stops). */
  readonly running: () => boolean;
  /** A consumer read a newer version than before (the daemon looks at its schedule; an agent tells the daemon). */
  readonly onNewer: (consumer: string, secret: string, version: number) => void;
  /** What /v1/health says beyond ok/stopping (an agent that lost the daemon reports stale). */
  readonly health?: () => Health;
}

export class ConsumerService implements ConsumerBackend {
  private grants = new Grants(undefined);
  private readonly waiters = new Map<string, Set<() => void>>();
  /** Consumer API requests by consumer and status. */
  private readonly requests = new Map<string, Map<number, number>>();
  private readonly answers = new Map<string, { version: number; json: string; until: number }>();
  private readonly denials = new Map<string, { lastLog: number; suppressed: number }>();

  private declaredSecrets: ReadonlySet<string> = new Set();

  constructor(private readonly o: ConsumerServiceOptions) {}

  /** Takes the grants of a newly applied model; every cached answer is dropped. */
  setModel(access: Access): void {
    this.declaredSecrets = new Set(access.secrets);
    this.grants = new Grants({ consumers: access.consumers, secrets: this.declaredSecrets });
    this.answers.clear();
  }

  get running(): boolean {
    return this.o.running();
  }

  health(): Health {
    if (!this.o.running()) return { status: 'stopping' };
    return this.o.health?.() ?? { status: 'ok' };
  }

  granted(consumer: string, name: string): boolean {
    return this.grants.granted(consumer, name);
  }

  declared(name: string): boolean {
    return this.declaredSecrets.has(name);
  }

  /** The consumers whose grants cover a secret. */
  consumersOf(name: string): readonly string[] {
    return this.grants.consumersOf(name);
  }

  readable(consumer: string): { name: string; version?: number }[] {
    return this.grants.readable(consumer).map((name) => {
      const v = this.o.source.served(name)?.version;
      return v === undefined ? { name } : { name, version: v };
    });
  }

  version(name: string, version: number) {
    return this.o.source.version(name, version);
  }

  /**
   * The consumer API's answer for a secret's current version, serialized once and shared by every
   * reader until the secret changes (dropped in onChange, on a new model, when the previous version's
   * overlap ends, and after a second so that nextRotationAt follows retries).
   */
  current(name: string): { version: number; json: string } | undefined {
    const now = this.o.now();
    const hit = this.answers.get(name);
    if (hit && now < hit.until) return hit;
    const s = this.o.source.served(name);
    if (!s) {
      this.answers.delete(name);
      return undefined;
    }
    const next = this.o.source.nextRotationAt(name);
    const view: CurrentView = {
      name,
      version: s.version,
      value: s.value,
      ...(s.username !== undefined ? { username: s.username } : {}),
      rotatedAt: s.rotatedAt,
      nextRotationAt: next === undefined ? null : new Date(next).toISOString(),
      ...(s.previous ? { previous: s.previous } : {}),
    };
    const until = Math.min(now + 1000, s.previous ? Date.parse(s.previous.validUntil) : Infinity);
    const answer = { version: s.version, json: JSON.stringify(view), until };
    if (this.answers.size > 100_000) this.answers.clear();
    this.answers.set(name, answer);
    return answer;
  }

  changed(name: string, ms: number): { promise: Promise<void>; cancel: () => void } {
    let set = this.waiters.get(name);
    if (!set) this.waiters.set(name, (set = new Set()));
    let wake!: () => void;
    const promise = new Promise<void>((resolve) => (wake = resolve));
    const timer = setTimeout(wake, ms);
    set.add(wake);
    const waiters = set;
    return {
      promise,
      cancel: () => {
        clearTimeout(timer);
        waiters.delete(wake);
        if (waiters.size === 0 && this.waiters.get(name) === waiters) this.waiters.delete(name);
      },
    };
  }

  /** A secret changed: its cached answer is dropped and its long-polls wake. */
  notify(name: string): void {
    this.answers.delete(name);
    for (const wake of this.waiters.get(name) ?? []) wake();
  }

  /** Wakes every long-poll (grants may have changed, or the daemon stops). */
  notifyAll(): void {
    for (const name of [...this.waiters.keys()]) this.notify(name);
  }

  receipt(consumer: string, name: string, version: number): void {
    // A consumer now on a newer version may complete a retireAfter: consumers secret.
    if (this.o.receipts.record(consumer, name, version)) this.o.onNewer(consumer, name, version);
  }

  /** Whether every consumer of a secret has read `version` or a newer one; undefined when it has none. */
  readByAll(name: string, version: number): boolean | undefined {
    const consumers = this.grants.consumersOf(name);
    if (consumers.length === 0) return undefined;
    return consumers.every((c) => (this.o.receipts.get(c, name)?.version ?? 0) >= version);
  }

  observe(consumer: string, status: number, code?: string, name?: string): void {
    let counts = this.requests.get(consumer);
    if (!counts) this.requests.set(consumer, (counts = new Map()));
    counts.set(status, (counts.get(status) ?? 0) + 1);
    if (status !== 403) return;
    // Refusals are logged (never a value), at most one line per consumer every 10 s with a count of the rest.
    const now = this.o.now();
    const d = this.denials.get(consumer) ?? { lastLog: -Infinity, suppressed: 0 };
    if (now - d.lastLog >= 10_000) {
      this.o.log('warn', 'consumer asked for a secret it is not granted', {
        consumer,
        secret: name,
        code,
        alsoRefusedSinceLastLine: d.suppressed,
      });
      this.denials.set(consumer, { lastLog: now, suppressed: 0 });
    } else {
      this.denials.set(consumer, { lastLog: d.lastLog, suppressed: d.suppressed + 1 });
    }
  }

  /** Consumer API requests by consumer and status (the status's sockets.requests). */
  requestCounts(): SocketsStatus['requests'] {
    const requests: { consumer: string; status: number; count: number }[] = [];
    for (const [consumer, counts] of this.requests)
      for (const [status, count] of counts) requests.push({ consumer, status, count });
    return requests;
  }
}
