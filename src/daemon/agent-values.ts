/**
 * The daemon's side of the consumers that run on agents' hosts (a Consumer with `agent:`): which
 * agent hosts which consumers, the values long-poll of each agent (src/protocol/values.ts), and the
 * read receipts agents send back.
 *
 * An agent is sent only what the consumers declared on it may read, sealed to it. Changes are counted
 * by one sequence number: each secret remembers the number of its last change and the model the
 * number it was applied at, so an agent's cursor says exactly what it has seen; a long-poll waits
 * until a secret of its own changes. Nothing here is stored: after a restart every agent gets a full
 * answer (its cursor is of another epoch).
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../log.js';
import type { Desired } from '../model/model.js';
import type { HostedConsumer, Receipt, SecretCopy, ValuesAnswer, ValuesPayload } from '../protocol/values.js';
import { ValuesSealer } from '../protocol/values.js';
import type { Engine } from '../rotation/engine.js';
import type { ConsumerService } from '../serve/consumer-service.js';
import { accessOf, Grants } from '../serve/grants.js';
import { rateLimited } from '../serve/limits.js';

interface Hosted {
  readonly recipient: string;
  readonly consumers: readonly HostedConsumer[];
  readonly grants: Grants;
  /** Declared secrets some consumer of this agent may read, in name order. */
  readonly secrets: readonly string[];
}

export interface AgentValuesOptions {
  readonly engine: Pick<Engine, 'served' | 'version' | 'nextRotationAt'>;
  readonly consumers: Pick<ConsumerService, 'receipt'>;
  readonly log: Logger;
}

export class AgentValues {
  readonly epoch = randomBytes(12).toString('base64url');
  private readonly sealer = new ValuesSealer();
  private seq = 0;
  private modelSeq = 0;
  private hosted = new Map<string, Hosted>();
  /** secret -> agents whose consumers may read it. */
  private readers = new Map<string, string[]>();
  private readonly changedAt = new Map<string, number>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly once = rateLimited(10_000);

  constructor(private readonly o: AgentValuesOptions) {}

  /** Takes the consumers of a newly applied model; every agent gets a full answer next. */
  setModel(desired: Desired): void {
    const hosted = new Map<string, Hosted>();
    const readers = new Map<string, string[]>();
    for (const [agent, a] of desired.agents) {
      const mine = (_c: string, on?: string) => on === agent;
      const consumers = [...desired.consumers.values()]
        .filter(({ decl }) => decl.agent === agent)
        .map(({ decl }) => ({
          name: decl.name,
          uid: decl.uid,
          ...(decl.gid !== undefined ? { gid: decl.gid } : {}),
          secrets: decl.secrets,
        }));
      const grants = new Grants(accessOf(desired, mine));
      const secrets = [...desired.secrets.keys()]
        .filter((s) => consumers.some((c) => grants.granted(c.name, s)))
        .sort();
      for (const s of secrets) {
        let list = readers.get(s);
        if (!list) readers.set(s, (list = []));
        list.push(agent);
      }
      hosted.set(agent, { recipient: a.decl.recipient, consumers, grants, secrets });
    }
    this.hosted = hosted;
    this.readers = readers;
    this.modelSeq = ++this.seq;
    for (const name of [...this.changedAt.keys()]) if (!desired.secrets.has(name)) this.changedAt.delete(name);
    for (const agent of this.waiters.keys()) this.wake(agent);
  }

  /** A secret changed (a rotation, a retirement): the agents whose consumers read it are woken. */
  changed(name: string): void {
    const agents = this.readers.get(name);
    if (!agents) return;
    this.changedAt.set(name, ++this.seq);
    for (const agent of agents) this.wake(agent);
  }

  /** Ends every long-poll (the daemon stops). */
  close(): void {
    for (const agent of this.waiters.keys()) this.wake(agent);
  }

  private wake(agent: string): void {
    for (const w of this.waiters.get(agent) ?? []) w();
  }

  /**
   * The values long-poll of `agent`: the changes after `after` of `epoch`, or everything when that
   * cursor cannot say what the agent has; waits up to `waitMs` for a change when there is none.
   */
  async take(
    agent: string,
    cursor: { epoch?: string; after?: number },
    waitMs: number,
    closed?: Promise<void>,
  ): Promise<ValuesAnswer> {
    const deadline = Date.now() + waitMs;
    let isClosed = false;
    void closed?.then(() => (isClosed = true));
    for (;;) {
      const h = this.hosted.get(agent);
      if (!h) throw new Error(`agent "${agent}" is not declared`); // the listener checked; a commit removed it since
      const full = cursor.epoch !== this.epoch || cursor.after === undefined || cursor.after < this.modelSeq;
      const after = cursor.after ?? 0;
      const names = full ? h.secrets : h.secrets.filter((s) => (this.changedAt.get(s) ?? 0) > after);
      if (full || names.length > 0 || isClosed || Date.now() >= deadline) {
        const payload: ValuesPayload = {
          full,
          ...(full ? { consumers: h.consumers } : {}),
          secrets: names.map((s) => this.copy(s)),
        };
        return this.sealer.seal(agent, h.recipient, this.epoch, this.seq, payload);
      }
      await this.pause(agent, deadline, closed);
    }
  }

  private async pause(agent: string, deadline: number, closed: Promise<void> | undefined): Promise<void> {
    let wake!: () => void;
    const woken = new Promise<void>((resolve) => (wake = resolve));
    let set = this.waiters.get(agent);
    if (!set) this.waiters.set(agent, (set = new Set()));
    set.add(wake);
    const timer = setTimeout(wake, Math.max(0, deadline - Date.now()));
    try {
      await Promise.race([woken, ...(closed ? [closed] : [])]);
    } finally {
      clearTimeout(timer);
      set.delete(wake);
      if (set.size === 0 && this.waiters.get(agent) === set) this.waiters.delete(agent);
    }
  }

  private copy(name: string): SecretCopy {
    const s = this.o.engine.served(name);
    const next = this.o.engine.nextRotationAt(name);
    return {
      name,
      ...(s
        ? {
            current: {
              version: s.version,
              value: s.value,
              ...(s.username !== undefined ? { username: s.username } : {}),
              rotatedAt: s.rotatedAt,
            },
          }
        : {}),
      ...(s?.previous
        ? { previous: { ...s.previous, rotatedAt: this.o.engine.version(name, s.previous.version)?.rotatedAt } }
        : {}),
      nextRotationAt: next === undefined ? null : new Date(next).toISOString(),
    };
  }

  /**
   * Read receipts from `agent`: each for a consumer it hosts, of a secret that consumer may read, of a
   * version that exists. Returns how many were taken; the others are refused and logged.
   */
  receipts(agent: string, list: readonly Receipt[]): number {
    const h = this.hosted.get(agent);
    let accepted = 0;
    for (const r of list) {
      const hosts = h?.consumers.some((c) => c.name === r.consumer) ?? false;
      if (!hosts || !h!.grants.granted(r.consumer, r.secret)) {
        const code = hosts ? 'AGENT_SECRET_NOT_GRANTED' : 'AGENT_CONSUMER_FOREIGN';
        this.once(`${code}-${agent}`, (suppressed) =>
          this.o.log('warn', 'agent reported a read it cannot have served: refused', {
            code,
            agent,
            consumer: r.consumer,
            secret: r.secret,
            ...(suppressed ? { suppressed } : {}),
          }),
        );
        continue;
      }
      const current = this.o.engine.served(r.secret)?.version;
      if (current === undefined || r.version > current) continue;
      this.o.consumers.receipt(r.consumer, r.secret, r.version);
      accepted++;
    }
    return accepted;
  }

  /** The agents that host consumers, and how many each. */
  hostedCounts(): Map<string, number> {
    return new Map([...this.hosted].map(([a, h]) => [a, h.consumers.length]));
  }
}
