/**
 * Checking what comes back from the daemon, before anything in it is used: the answer's signature over
 * this request's nonce (an old answer cannot be replayed; one that does not verify is refused whole,
 * AGENT_DAEMON_UNVERIFIED), its JSON and status, the shape of each job (AGENT_JOB_INVALID), and the shape
 * of a job's payload once opened. The problems name fields, never values.
 */

import type { KeyObject } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type {
  Credential,
  EngineName,
  Job,
  JobKind,
  RetirePayload,
  SetPayload,
  Strategy,
  ValuesAnswer,
  VerifyPayload,
} from 'rotor/internal';
import { ENGINE_NAMES, JOB_KINDS, verifyResponse } from 'rotor/internal';
import { AgentError } from './errors.js';

const MAX_ID = 256;
const STRATEGIES: readonly Strategy[] = ['dual', 'alternate', 'single'];

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function isName(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_ID;
}

/** An answer as the transport received it. */
export interface ReceivedAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/**
 * The JSON of an answer to `path` when it verified against `publicKey` over `requestNonce` and its
 * status is 200; else an AgentError (AGENT_DAEMON_UNVERIFIED, AGENT_ANSWER_INVALID, AGENT_DAEMON_REFUSED).
 */
export function answerData(path: string, answer: ReceivedAnswer, requestNonce: string, publicKey: KeyObject): unknown {
  const { headers, status, body } = answer;
  const verdict = verifyResponse({ headers, status, requestNonce, body, publicKey });
  if (!verdict.ok) {
    const message = `the answer to ${path} is refused (${verdict.code}): ${verdict.message}; nothing in it is used`;
    throw new AgentError('AGENT_DAEMON_UNVERIFIED', message, answer.status);
  }
  let data: unknown;
  try {
    data = JSON.parse(answer.body.toString('utf8'));
  } catch {
    throw new AgentError('AGENT_ANSWER_INVALID', `the daemon's answer to ${path} is not JSON`, answer.status);
  }
  if (answer.status !== 200) {
    const err = isRecord(data) && isRecord(data.error) ? data.error : undefined;
    const daemonCode = typeof err?.code === 'string' && err.code.length <= 64 ? err.code : undefined;
    const leader = typeof err?.leader === 'string' && err.leader.length <= 2048 ? err.leader : undefined;
    const message = `the daemon refused ${path} with status ${answer.status}${daemonCode ? ` (${daemonCode})` : ''}`;
    throw new AgentError('AGENT_DAEMON_REFUSED', message, answer.status, daemonCode, leader);
  }
  return data;
}

/** The jobs list of a poll's answer (each job still unchecked: see jobOf). */
export function jobsOf(data: unknown): unknown[] {
  if (!isRecord(data) || !Array.isArray(data.jobs)) {
    throw new AgentError('AGENT_ANSWER_INVALID', 'the daemon\'s answer to a poll has no "jobs" list', 200);
  }
  return data.jobs;
}

/** A values answer's fields, checked for shape (the sealed part is opened by ValuesOpener). */
export function valuesOf(data: unknown): ValuesAnswer {
  if (
    !isRecord(data) ||
    typeof data.epoch !== 'string' ||
    !Number.isSafeInteger(data.cursor) ||
    typeof data.kx !== 'string' ||
    typeof data.sealed !== 'string'
  )
    throw new AgentError(
      'AGENT_ANSWER_INVALID',
      "the daemon's answer to a values poll lacks epoch, cursor, kx or sealed",
      200,
    );
  return { epoch: data.epoch, cursor: data.cursor as number, kx: data.kx, sealed: data.sealed };
}

/** How many results the daemon says it accepted, if it says so. */
export function acceptedOf(data: unknown): number | undefined {
  return isRecord(data) && typeof data.accepted === 'number' ? data.accepted : undefined;
}

/** A job as the protocol defines it, or why not. */
export function jobOf(v: unknown): Job | string {
  if (!isRecord(v)) return 'a job is not an object';
  const { id, kind, secret, version, target, engine, strategy, sealed } = v;
  if (!isName(id)) return 'a job has no id';
  if (typeof kind !== 'string' || !JOB_KINDS.includes(kind as JobKind)) return 'kind is not set, retire or verify';
  if (!isName(secret)) return 'secret is missing';
  if (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 0) {
    return 'version is not a whole number';
  }
  if (!isName(target)) return 'target is missing';
  if (typeof engine !== 'string' || !ENGINE_NAMES.includes(engine as EngineName)) {
    return 'engine is not one the agent drives';
  }
  if (typeof strategy !== 'string' || !STRATEGIES.includes(strategy as Strategy)) {
    return 'strategy is not dual, alternate or single';
  }
  if (typeof sealed !== 'string') return 'sealed is not a string';
  const k = kind as JobKind;
  return { id, kind: k, secret, version, target, engine: engine as EngineName, strategy: strategy as Strategy, sealed };
}

/**
 * A stand-in for a malformed job that has an id, so that it can be answered (failed) and the daemon does
 * not deliver it again and again; undefined when it has no usable id.
 */
export function malformedJobStub(raw: unknown): Job | undefined {
  if (!isRecord(raw) || !isName(raw.id)) return undefined;
  const secret = isName(raw.secret) ? String(raw.secret) : '';
  const id = raw.id;
  return { id, kind: 'set', secret, version: 0, target: '', engine: 'postgres', strategy: 'single', sealed: '' };
}

/** Longer names or values than any engine takes (src/model/engines.ts) are refused before they reach a driver. */
const MAX_USERNAME = 256;
const MAX_PASSWORD = 4096;

function credentialOf(v: unknown): Credential | undefined {
  if (!isRecord(v) || typeof v.username !== 'string' || typeof v.password !== 'string') return undefined;
  if (v.username.length > MAX_USERNAME || v.password.length > MAX_PASSWORD) return undefined;
  return { username: v.username, password: v.password };
}

/** The opened payload of a set job: pending, and optionally current. */
export function setPayloadOf(payload: unknown): SetPayload | undefined {
  const p = isRecord(payload) ? payload : {};
  const pending = credentialOf(p.pending);
  const current = p.current === undefined ? undefined : credentialOf(p.current);
  if (!pending || (p.current !== undefined && !current)) return undefined;
  return { pending, ...(current ? { current } : {}) };
}

/** The opened payload of a verify job: current, and optionally previous. */
export function verifyPayloadOf(payload: unknown): VerifyPayload | undefined {
  const p = isRecord(payload) ? payload : {};
  const current = credentialOf(p.current);
  const previous = p.previous === undefined ? undefined : credentialOf(p.previous);
  if (!current || (p.previous !== undefined && !previous)) return undefined;
  return { current, ...(previous ? { previous } : {}) };
}

/** The opened payload of a retire job: retired and current. */
export function retirePayloadOf(payload: unknown): RetirePayload | undefined {
  const p = isRecord(payload) ? payload : {};
  const retired = credentialOf(p.retired);
  const current = credentialOf(p.current);
  if (!retired || !current) return undefined;
  return { retired, current };
}
