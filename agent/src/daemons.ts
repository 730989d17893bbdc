/**
 * Several daemons (the configuration's `daemon:` list): which one the agent talks to, and when to wait.
 *
 * Several rotor daemons may run on one store; one leads. Only the leader hands out database jobs and
 * takes their results: a follower answers those routes with 503 NOT_LEADER and, when it knows it, the
 * leader's agent API URL (`leader`). Every daemon serves the values long-poll and the receipts.
 *
 * - Jobs and results (one DaemonList): the agent talks to the daemon it believes leads. A NOT_LEADER
 *   answer naming a daemon of the list moves it there; any other failure (no hint, a hint outside the
 *   list, the connection refused or timed out, a certificate refused) moves it to the next daemon of
 *   the list, round robin.
 * - Values and receipts (another DaemonList): the agent stays with one daemon while it answers, and
 *   moves to the next on a failure. Another daemon has another epoch, so its first answer is full.
 * - Rounds: the next daemon is tried at once; the backoff comes only after a full round of failures
 *   (as many failures in a row as there are daemons), so a NOT_LEADER ping-pong between two daemons
 *   that disagree still waits. With one daemon every failure backs off, as before. A round in which a
 *   daemon answered NOT_LEADER is a cluster that is up and choosing or announcing its leader (a
 *   follower learns of a new one within about a second): its backoff grows only to ELECTION_CAP_MS, so
 *   that an agent which met a few failovers in a row is not left waiting out the full cap (30 s) while
 *   a new leader has a job for it. Rounds where no daemon answered at all grow to the full cap.
 *
 * Every daemon signs with the same key (daemonSigningKey): they share the data directory's keys.
 */
import type { Logger } from 'rotor/internal';
import { isNotLeader } from './errors.js';
import { backoffMs, type Retry } from './loops.js';

export class DaemonList {
  readonly #urls: readonly URL[];
  readonly #log: Logger;
  readonly #said: string;
  #at = 0;
  /** The origin of the daemon that last answered (logged when it changes). */
  #answered: string | undefined;

  constructor(urls: readonly URL[], log: Logger, said: string) {
    if (urls.length === 0) throw new RangeError('the daemon list is empty');
    this.#urls = urls;
    this.#log = log;
    this.#said = said;
  }

  get size(): number {
    return this.#urls.length;
  }

  /** The daemon to talk to now. */
  get current(): URL {
    return this.#urls[this.#at]!;
  }

  /** `url` answered: logged once each time another daemon than before answers (with several daemons). */
  answered(url: URL): void {
    if (this.#answered === url.origin) return;
    this.#answered = url.origin;
    if (this.#urls.length > 1) this.#log('info', `${this.#said} ${url.origin}`, { daemon: url.origin });
  }

  /**
   * An exchange with `url` failed with `e`: the list moves to the leader a NOT_LEADER answer named, when
   * it is one of the list, else to the daemon after `url`. Nothing moves when another exchange already
   * moved the list away from `url`.
   */
  failed(url: URL, e: unknown): void {
    if (this.current.origin !== url.origin) return;
    const hint = leaderOf(e);
    const named = hint === undefined ? -1 : this.#urls.findIndex((u) => u.origin === hint);
    this.#at = named >= 0 && named !== this.#at ? named : (this.#at + 1) % this.#urls.length;
  }
}

/** The origin of the leader a NOT_LEADER answer names, if it names one that parses. */
function leaderOf(e: unknown): string | undefined {
  if (!isNotLeader(e) || e.leader === undefined) return undefined;
  try {
    return new URL(e.leader).origin;
  } catch {
    return undefined;
  }
}

/** The longest wait after a round in which a daemon answered NOT_LEADER (see the header). */
export const ELECTION_CAP_MS = 2_000;

/** The failures of one loop in a row: try the next daemon at once, back off after a full round. */
export class Rounds {
  #misses = 0;
  #rounds = 0;
  /** A daemon of this round answered NOT_LEADER. */
  #heard = false;

  constructor(
    private readonly list: DaemonList,
    private readonly retry: Retry,
  ) {}

  /** An exchange went through. */
  ok(): void {
    this.#misses = 0;
    this.#rounds = 0;
    this.#heard = false;
  }

  /**
   * An exchange failed with `e` (the list already moved on): undefined to try list.current at once,
   * else the delay to wait first.
   */
  failed(e: unknown): number | undefined {
    if (isNotLeader(e)) this.#heard = true;
    if (++this.#misses < this.list.size) return undefined;
    this.#misses = 0;
    const heard = this.#heard;
    this.#heard = false;
    const backoff = this.retry.backoff;
    return backoffMs(this.#rounds++, heard ? { ...backoff, capMs: Math.min(backoff.capMs, ELECTION_CAP_MS) } : backoff);
  }

  /** Waits out a delay of failed(). */
  sleep(delayMs: number, signal: AbortSignal): Promise<void> {
    return this.retry.sleep(delayMs, signal);
  }
}
