/**
 * A verify job (drift detection): log in with the credentials the daemon serves now, on fresh
 * connections, with the engine's own `test` (the login that follows a set), and change nothing. Each
 * credential gets a check: ok, refused (the server refused the credential: someone changed it behind
 * rotor's back), or error (the server could not be reached, or answered something else: not drift).
 *
 * Logs: identifiers, outcomes and codes only; never a value.
 */

import type { Check, CheckedCredential, Credential, Job, Result } from 'rotor/internal';
import type { TargetConnection } from './engines/types.js';
import { DbError } from './engines/types.js';
import type { ExecuteContext } from './execute.js';
import { verifyPayloadOf } from './wire.js';

export async function verifyJob(
  job: Job,
  payload: unknown,
  conn: TargetConnection,
  ctx: ExecuteContext,
): Promise<Result> {
  const vp = verifyPayloadOf(payload);
  if (!vp) {
    return {
      id: job.id,
      outcome: 'failed',
      code: 'AGENT_JOB_INVALID',
      message: 'the sealed payload of a verify job needs current (and optionally previous) with username and password',
    };
  }
  const ids = { job: job.id, secret: job.secret, target: job.target };
  const logins: [CheckedCredential, Credential][] = [['current', vp.current]];
  if (vp.previous) logins.push(['previous', vp.previous]);
  const checks: Check[] = [];
  for (const [credential, c] of logins) {
    let check: Check;
    try {
      const engine = await ctx.engines.get(job.target, job.engine, conn);
      check = { credential, outcome: (await engine.test(c)) ? 'ok' : 'refused' };
    } catch (e) {
      // The engines' errors carry no value (agent/src/engines/types.ts); anything else is not the login's answer either.
      check = { credential, outcome: 'error', code: e instanceof DbError ? e.code : 'AGENT_INTERNAL' };
    }
    ctx.log(check.outcome === 'refused' ? 'warn' : 'info', `verify: the ${credential} credential: ${check.outcome}`, {
      ...ids,
      step: 'verified',
      credential,
      outcome: check.outcome,
      ...(check.code ? { code: check.code } : {}),
    });
    checks.push(check);
  }
  return { id: job.id, outcome: 'done', detail: 'verified', checks };
}
