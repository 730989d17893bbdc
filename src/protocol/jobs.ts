/**
 * The agent API: what the daemon asks an agent to do, and what the agent answers. Shared by the
 * daemon (src/serve/agent-api.ts) and the agent (agent/src/agent.ts).
 *
 * Transport: HTTP/1.1 (HTTPS optional) to the daemon's --agent-listen address. Every request is a POST
 * with a JSON body, signed by the agent (src/protocol/sign.ts); every answer, errors included, is
 * signed by the daemon over the request's nonce, and the agent refuses an answer it cannot verify.
 *
 *   POST /v1/agent/jobs     {"wait": 25}           -> {"jobs": [Job...]}   long-poll, at most `wait` s (<= 60)
 *   POST /v1/agent/results  {"results": [Result]}  -> {"accepted": n}
 *
 * A job carries its credentials sealed (age) to the agent's recipient: the daemon's logs and the wire
 * never hold them in clear. A job is leased to the agent when delivered; a job without a result when
 * its lease runs out is delivered again, so an agent that crashed mid-job gets it again (the steps are
 * idempotent). An agent only ever receives jobs for the Targets whose `agent` is its own name.
 *
 * Several daemons on one store: only the leader hands out jobs and takes results. A follower answers
 * both routes with 503 {"error": {"code": "NOT_LEADER", "message", "leader"?}}, `leader` being the
 * leading daemon's agent API URL when the follower knows it; the agent then polls that one (if it is
 * in its `daemon:` list) or the next daemon of its list. Every daemon serves values and receipts.
 */

import type { Engine } from '../model/engines.js';

export const AGENT_JOBS_PATH = '/v1/agent/jobs';
export const AGENT_RESULTS_PATH = '/v1/agent/results';
/** The error code of a follower's answer to the jobs and results routes (503). */
export const NOT_LEADER = 'NOT_LEADER';
/** The longest long-poll the daemon holds (seconds). */
export const MAX_AGENT_WAIT = 60;
/** How long a delivered job stays leased to the agent before it is delivered again (ms). */
export const JOB_LEASE_MS = 60_000;

/**
 * The largest request bodies the daemon reads, per route (413 BODY_TOO_LARGE beyond). A poll is
 * {"wait": 25}, a dozen bytes. A result is at most about 6.3 KB as JSON (an id of 64 characters, a code
 * of 64, a message of MAX_RESULT_MESSAGE characters, each of which JSON may write as 6 bytes); the
 * agent puts as many in one request as fit in MAX_RESULTS_BODY (and at most MAX_RESULTS_PER_REQUEST).
 */
export const MAX_JOBS_BODY = 1024;
export const MAX_RESULTS_BODY = 256 * 1024;
/** Results in one request at most. */
export const MAX_RESULTS_PER_REQUEST = 1000;
/** Characters of a result's message at most (the agent shortens longer ones). */
export const MAX_RESULT_MESSAGE = 1000;

/** Whether `v` is one well-formed check of a verify result (what the daemon accepts from an agent). */
export function isCheck(v: unknown): v is Check {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const x = v as Record<string, unknown>;
  return (
    (x.credential === 'current' || x.credential === 'previous') &&
    (x.outcome === 'ok' || x.outcome === 'refused' || x.outcome === 'error') &&
    (x.code === undefined || (typeof x.code === 'string' && x.code.length > 0 && x.code.length <= 64))
  );
}

/** Whether `v` is a well-formed list of checks: at most MAX_CHECKS, each credential at most once. */
export function isChecks(v: unknown): v is readonly Check[] {
  if (!Array.isArray(v) || v.length > MAX_CHECKS || !v.every(isCheck)) return false;
  return new Set(v.map((c) => c.credential)).size === v.length;
}

export type Strategy = 'dual' | 'alternate' | 'single';
/** The schema's engine names (src/model/engines.ts). */
export type EngineName = Engine;

/**
 * set: make the pending value log in, then test it; retire: revoke the previous value; verify: only log
 * in with the credentials served now (current, and previous during the overlap) and report each
 * (drift detection, src/rotation/drift.ts): nothing is changed on the server.
 */
export type JobKind = 'set' | 'retire' | 'verify';
export const JOB_KINDS: readonly JobKind[] = ['set', 'retire', 'verify'];

export interface Job {
  /** Unique per job, and stable across redeliveries. */
  readonly id: string;
  readonly kind: JobKind;
  readonly secret: string;
  /** The version the job is about: the pending one for set, the retired one for retire, the current one for verify. */
  readonly version: number;
  readonly target: string;
  readonly engine: EngineName;
  readonly strategy: Strategy;
  /** sealForAgent(recipient, SetPayload | RetirePayload | VerifyPayload). */
  readonly sealed: string;
}

export interface Credential {
  readonly username: string;
  readonly password: string;
}

/** Set, then test: make `pending` log in (keeping `current` working for dual), then log in with it on a fresh connection. */
export interface SetPayload {
  readonly pending: Credential;
  readonly current?: Credential;
}

/** Revoke `retired`; `current` must keep working. */
export interface RetirePayload {
  readonly retired: Credential;
  readonly current: Credential;
}

/** Log in with `current`, and with `previous` while it is still valid (the overlap before retire); change nothing. */
export interface VerifyPayload {
  readonly current: Credential;
  readonly previous?: Credential;
}

/** Which credential of a verify job a check is about. */
export type CheckedCredential = 'current' | 'previous';

/**
 * One login of a verify job: ok (it logged in), refused (the server refused the credential: drift), or
 * error (the server could not be reached or said something else: not drift; `code` says what).
 */
export interface Check {
  readonly credential: CheckedCredential;
  readonly outcome: 'ok' | 'refused' | 'error';
  readonly code?: string;
}

/** The checks of one verify result at most (current and previous). */
export const MAX_CHECKS = 2;

export interface Result {
  readonly id: string;
  /** done: set+test succeeded (or retire did); failed: see code. */
  readonly outcome: 'done' | 'failed';
  /** For set: 'applied' or 'already-applied' (the pending value logged in before anything was changed). */
  readonly detail?: 'applied' | 'already-applied' | 'retired' | 'verified';
  /** For verify (outcome done, detail verified): one check per credential of the payload. */
  readonly checks?: readonly Check[];
  /** A DbError code (DB_UNREACHABLE, DB_VALUE_REJECTED, ...), DB_TEST_FAILED (the change was accepted but the new login was refused), or an agent code (AGENT_TARGET_UNKNOWN, AGENT_ENGINE_MISMATCH, AGENT_SEAL, AGENT_JOB_INVALID, AGENT_INTERNAL). */
  readonly code?: string;
  /** A short message without any value. */
  readonly message?: string;
}
