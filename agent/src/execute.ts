/**
 * One job's steps. The target must be in this agent's configuration (AGENT_TARGET_UNKNOWN), its URL
 * scheme must fit the job's engine (AGENT_ENGINE_MISMATCH), the payload must open (AGENT_SEAL) and have
 * the right shape (AGENT_JOB_INVALID); then `set` + `test` on a fresh connection (DB_TEST_FAILED when
 * the server took the change but refuses the new login), `retire`, or `verify` (verify.ts: logins only). A DbError becomes a failed result
 * with its code; anything else is thrown (the caller makes it AGENT_INTERNAL).
 *
 * Logs: identifiers, steps and codes only; never a value, a sealed text, or a driver's message.
 */

import type { Job, Logger, Result } from 'rotor/internal';
import { openSealed, SealError } from 'rotor/internal';
import type { AgentConfig } from './config.js';
import { schemeFitsEngine } from './config.js';
import { DbError } from './engines/types.js';
import type { EngineRegistry } from './registry.js';
import { publishStep } from './steps.js';
import { verifyJob } from './verify.js';
import { retirePayloadOf, setPayloadOf } from './wire.js';

export interface ExecuteContext {
  readonly config: Pick<AgentConfig, 'targets' | 'schemes' | 'keys'>;
  readonly engines: EngineRegistry;
  readonly log: Logger;
}

export async function executeJob(job: Job, ctx: ExecuteContext): Promise<Result> {
  const { config, engines, log } = ctx;
  const failed = (code: string, message: string): Result => ({ id: job.id, outcome: 'failed', code, message });
  const ids = { job: job.id, secret: job.secret, target: job.target };
  const conn = config.targets.get(job.target);
  if (!conn) return failed('AGENT_TARGET_UNKNOWN', `target "${job.target}" is not in this agent's configuration`);
  const scheme = config.schemes.get(job.target) ?? '';
  if (!schemeFitsEngine(scheme, job.engine)) {
    const where = `target "${job.target}" is a ${scheme}:// URL in this agent's configuration`;
    return failed('AGENT_ENGINE_MISMATCH', `${where}, which does not reach a ${job.engine} server`);
  }
  let payload: unknown;
  try {
    payload = await openSealed(config.keys.identity, job.sealed);
  } catch (e) {
    if (e instanceof SealError) {
      return failed('AGENT_SEAL', `the job's credentials cannot be opened with this agent's identity (${e.code})`);
    }
    throw e;
  }
  if (job.kind === 'verify') return verifyJob(job, payload, conn, ctx);
  try {
    if (job.kind === 'set') {
      const set = setPayloadOf(payload);
      if (!set) {
        return failed(
          'AGENT_JOB_INVALID',
          'the sealed payload of a set job needs pending (and optionally current) with username and password',
        );
      }
      const engine = await engines.get(job.target, job.engine, conn);
      const outcome = await engine.set({
        strategy: job.strategy,
        username: set.pending.username,
        password: set.pending.password,
        ...(set.current ? { current: set.current } : {}),
      });
      log('info', `set: ${outcome}`, { ...ids, step: 'set', detail: outcome });
      publishStep(job, 'set');
      const ok = await engine.test(set.pending);
      const said = ok ? 'the new credential logs in' : 'the new credential is refused';
      log('info', `test: ${said}`, { ...ids, step: 'tested', ok });
      publishStep(job, 'tested');
      if (!ok) {
        return failed(
          'DB_TEST_FAILED',
          'the server accepted the change, but refuses a login with the new credential on a fresh connection',
        );
      }
      return { id: job.id, outcome: 'done', detail: outcome };
    }
    const rp = retirePayloadOf(payload);
    if (!rp) {
      return failed(
        'AGENT_JOB_INVALID',
        'the sealed payload of a retire job needs retired and current, each with username and password',
      );
    }
    const engine = await engines.get(job.target, job.engine, conn);
    await engine.retire({ strategy: job.strategy, retired: rp.retired, current: rp.current });
    log('info', 'retired', { ...ids, step: 'retired' });
    publishStep(job, 'retired');
    return { id: job.id, outcome: 'done', detail: 'retired' };
  } catch (e) {
    // The engines' messages carry no value (agent/src/engines/types.ts).
    if (e instanceof DbError) return failed(e.code, e.message);
    throw e;
  }
}
