/**
 * The daemon's side of the agents: which agent serves which Target, the jobs waiting for each agent,
 * their leases, and the promises the rotation engine awaits until the agent reports.
 *
 * Jobs live in memory only. After a daemon restart the engine runs the unfinished step again (the
 * pending value is in the store), which makes a new job with the same credentials; the agent's steps
 * are idempotent (set tries the pending value first), so a job delivered twice does no harm.
 */

import type { KeyObject } from 'node:crypto';
import { randomUUID } from 'node:crypto';
import type { Retry } from '../errors.js';
import { BACKOFF, NEVER, RotorError } from '../errors.js';
import { parseSigningKey } from '../keys.js';
import type { Logger } from '../log.js';
import { defaultStrategy } from '../model/engines.js';
import type { Desired } from '../model/model.js';
import type { Secret } from '../model/schema-types.js';
import type {
  Credential,
  EngineName,
  Job,
  Result,
  RetirePayload,
  SetPayload,
  Strategy,
  VerifyPayload,
} from '../protocol/jobs.js';
import { JOB_LEASE_MS } from '../protocol/jobs.js';
import { sealForAgent } from '../protocol/seal.js';
import type { AgentJobs } from '../serve/agent-api.js';

/**
 * A database step that the agent did not complete: the code the agent reported (DB_...), or why no
 * report came (AGENT_TIMEOUT, DAEMON_STOPPING...). The engine runs the step again with its backoff;
 * a step without a declared agent waits for a commit that declares one. `stopping` is set when the
 * daemon stopped while the step waited: not a failure of the step (see stopped() in the engine's steps).
 */
export class StepError extends RotorError {
  readonly stopping: boolean;
  constructor(code: string, message: string, options: { retry?: Retry; stopping?: boolean } = {}) {
    super(code, message, { retry: options.retry ?? BACKOFF });
    this.stopping = options.stopping ?? false;
  }
}

/** The error of every step still waiting for its agent when the daemon stops. */
export const daemonStopping = (): StepError =>
  new StepError('DAEMON_STOPPING', 'the daemon is stopping', { stopping: true });

interface Pending {
  readonly job: Job;
  leasedUntil: number;
  readonly resolve: (r: Result) => void;
  readonly reject: (e: Error) => void;
  readonly timer: NodeJS.Timeout;
}

interface AgentInfo {
  readonly name: string;
  readonly key: KeyObject;
  readonly recipient: string;
}

export interface AgentHubOptions {
  readonly log: Logger;
  readonly now: () => number;
  /** How long a job may wait for its agent's result before the step fails with AGENT_TIMEOUT (default 10 min). */
  readonly jobTimeoutMs?: number;
  /** Several daemons: whether this one leads (a follower hands out no job; its long-polls end). */
  readonly leading?: () => boolean;
}

export class AgentHub implements AgentJobs {
  private agents = new Map<string, AgentInfo>();
  private targets = new Map<string, { agent: string; engine: EngineName }>();
  private readonly queues = new Map<string, Map<string, Pending>>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly seen = new Map<string, number>();

  constructor(private readonly o: AgentHubOptions) {}

  /** Takes the agents and targets of a newly applied model. Jobs for agents no longer declared fail. */
  setModel(desired: Desired): void {
    const agents = new Map<string, AgentInfo>();
    for (const [name, a] of desired.agents)
      agents.set(name, { name, key: parseSigningKey(a.decl.signingKey), recipient: a.decl.recipient });
    this.agents = agents;
    this.targets = new Map(
      [...desired.targets].map(([name, t]) => [name, { agent: t.decl.agent, engine: t.decl.engine as EngineName }]),
    );
    for (const [agent, queue] of this.queues) {
      if (agents.has(agent)) continue;
      const removed = () => new StepError('AGENT_REMOVED', `agent "${agent}" is no longer declared`, { retry: NEVER });
      for (const p of queue.values()) this.settle(agent, p, removed());
    }
  }

  /** The public key of a declared agent (for verifying its requests). */
  keyOf(agent: string): KeyObject | undefined {
    return this.agents.get(agent)?.key;
  }

  /** An agent called on any route (the values long-poll, receipts): it is alive. */
  touch(agent: string): void {
    this.seen.set(agent, this.o.now());
  }

  /** When each declared agent last called (ms), if it has. */
  lastSeen(): { name: string; lastSeen?: number; queued: number }[] {
    return [...this.agents.keys()].map((name) => {
      const at = this.seen.get(name);
      return { name, ...(at !== undefined ? { lastSeen: at } : {}), queued: this.queues.get(name)?.size ?? 0 };
    });
  }

  private route(secret: Secret): { agent: AgentInfo; target: string; engine: EngineName; strategy: Strategy } {
    const db = secret.database!;
    const t = this.targets.get(db.target);
    const agent = t && this.agents.get(t.agent);
    if (!t || !agent) {
      throw new StepError('AGENT_UNKNOWN', `target "${db.target}" has no declared agent`, { retry: NEVER });
    }
    return { agent, target: db.target, engine: t.engine, strategy: db.strategy ?? defaultStrategy(t.engine) };
  }

  /** Set + test through the target's agent; resolves when the agent reports success. */
  async set(secret: Secret, version: number, pending: Credential, current: Credential | undefined): Promise<Result> {
    const payload: SetPayload = { pending, ...(current ? { current } : {}) };
    return this.run(secret, 'set', version, payload);
  }

  /** Retire through the target's agent; `single` changed the password in place and has nothing to revoke. */
  async retire(secret: Secret, version: number, retired: Credential, current: Credential): Promise<Result | undefined> {
    if (this.route(secret).strategy === 'single') return undefined;
    const payload: RetirePayload = { retired, current };
    return this.run(secret, 'retire', version, payload);
  }

  /**
   * Verify through the target's agent (drift detection): logs in with `current`, and with `previous`
   * when given, and changes nothing. Resolves with the agent's checks; fails like the other jobs, and
   * with AGENT_TIMEOUT after `timeoutMs`.
   */
  async verify(
    secret: Secret,
    version: number,
    current: Credential,
    previous: Credential | undefined,
    timeoutMs: number,
  ): Promise<Result> {
    const payload: VerifyPayload = { current, ...(previous ? { previous } : {}) };
    return this.run(secret, 'verify', version, payload, timeoutMs);
  }

  /** The strategy a database secret's agent applies (verify skips `previous` under single: it was replaced in place). */
  strategyOf(secret: Secret): Strategy {
    return this.route(secret).strategy;
  }

  private async run(
    secret: Secret,
    kind: Job['kind'],
    version: number,
    payload: SetPayload | RetirePayload | VerifyPayload,
    timeoutMs?: number,
  ): Promise<Result> {
    const r = this.route(secret);
    const job: Job = {
      id: randomUUID(),
      kind,
      secret: secret.name,
      version,
      target: r.target,
      engine: r.engine,
      strategy: r.strategy,
      sealed: await sealForAgent(r.agent.recipient, payload),
    };
    const result = await new Promise<Result>((resolve, reject) => {
      let queue = this.queues.get(r.agent.name);
      if (!queue) this.queues.set(r.agent.name, (queue = new Map()));
      const timeout = Math.min(timeoutMs ?? Number.POSITIVE_INFINITY, this.o.jobTimeoutMs ?? 600_000);
      const timer = setTimeout(() => {
        const p = queue.get(job.id);
        if (p)
          this.settle(
            r.agent.name,
            p,
            new StepError(
              'AGENT_TIMEOUT',
              `agent "${r.agent.name}" did not report on the ${kind} job of "${secret.name}" within ${Math.round(timeout / 1000)} s (is it running? it polls the daemon's --agent-listen address)`,
            ),
          );
      }, timeout);
      queue.set(job.id, { job, leasedUntil: 0, resolve, reject, timer });
      this.wake(r.agent.name);
    });
    if (result.outcome !== 'done')
      throw new StepError(
        result.code ?? 'AGENT_FAILED',
        `agent reported ${result.code ?? 'a failure'} on the ${kind} job of "${secret.name}"${result.message ? `: ${result.message.slice(0, 300)}` : ''}`,
      );
    return result;
  }

  private settle(agent: string, p: Pending, outcome: Result | Error): void {
    clearTimeout(p.timer);
    this.queues.get(agent)?.delete(p.job.id);
    if (outcome instanceof Error) p.reject(outcome);
    else p.resolve(outcome);
  }

  private wake(agent: string): void {
    for (const w of this.waiters.get(agent) ?? []) w();
  }

  /** The jobs ready for `agent` (new, or whose lease ran out), leased to it; waits up to `waitMs` for one. */
  async take(agent: string, waitMs: number, closed?: Promise<void>): Promise<Job[]> {
    this.seen.set(agent, this.o.now());
    const deadline = Date.now() + waitMs;
    let isClosed = false;
    void closed?.then(() => (isClosed = true));
    for (;;) {
      if (isClosed || (this.o.leading && !this.o.leading())) return [];
      const now = Date.now();
      const ready = [...(this.queues.get(agent)?.values() ?? [])].filter((p) => p.leasedUntil <= now);
      if (ready.length > 0 || now >= deadline) {
        for (const p of ready) p.leasedUntil = now + JOB_LEASE_MS;
        return ready.map((p) => p.job);
      }
      // Wait for a new job, the earliest lease to run out, or the deadline.
      const leases = [...(this.queues.get(agent)?.values() ?? [])].map((p) => p.leasedUntil);
      const until = Math.min(deadline, ...leases);
      let wake!: () => void;
      const woken = new Promise<void>((resolve) => (wake = resolve));
      let set = this.waiters.get(agent);
      if (!set) this.waiters.set(agent, (set = new Set()));
      set.add(wake);
      const timer = setTimeout(wake, Math.max(0, until - now));
      await Promise.race([woken, ...(closed ? [closed] : [])]);
      clearTimeout(timer);
      set.delete(wake);
    }
  }

  /** Results reported by `agent`; returns how many matched a job of its own. */
  complete(agent: string, results: readonly Result[]): number {
    this.seen.set(agent, this.o.now());
    let n = 0;
    const queue = this.queues.get(agent);
    for (const r of results) {
      const p = queue?.get(r.id);
      if (!p) continue; // unknown, another agent's, or already settled (a duplicate report)
      n++;
      this.settle(agent, p, r);
    }
    return n;
  }

  /**
   * This daemon no longer leads: its waiting jobs fail (their rotations are the next leader's to run
   * again) and the agents' long-polls end, so that they ask again and are sent to the leader.
   */
  depose(): void {
    for (const [agent, queue] of this.queues) {
      for (const p of [...queue.values()])
        this.settle(
          agent,
          p,
          new StepError('NOT_LEADER', "this daemon no longer leads: the job is the next leader's to hand out", {
            retry: BACKOFF,
          }),
        );
    }
    for (const agent of this.waiters.keys()) this.wake(agent);
  }

  /** Fails every waiting job (the daemon stops). */
  close(): void {
    for (const [agent, queue] of this.queues) {
      for (const p of [...queue.values()]) this.settle(agent, p, daemonStopping());
    }
    for (const agent of this.waiters.keys()) this.wake(agent);
  }
}
