/**
 * The errors of the agent's own exchanges with the daemon. A job's failure is a Result, not an error.
 */
import { BACKOFF, NEVER, NOT_LEADER, RotorError } from 'rotor/internal';

export type AgentErrorCode =
  /** The daemon could not be reached, or the connection broke or timed out. */
  | 'AGENT_DAEMON_UNREACHABLE'
  /** The daemon's TLS certificate is refused (tls.ca, tls.pin, or the system's CAs): nothing was sent. */
  | 'AGENT_DAEMON_CERT'
  /** An answer that does not verify with daemonSigningKey for this request: refused whole. */
  | 'AGENT_DAEMON_UNVERIFIED'
  /** A verified answer with an error status (the daemon's code is in daemonCode). */
  | 'AGENT_DAEMON_REFUSED'
  /** A verified answer that is not what the protocol says (not JSON, no jobs list). */
  | 'AGENT_ANSWER_INVALID'
  /** An answer over maxAnswerBytes. */
  | 'AGENT_ANSWER_TOO_LARGE'
  /** The agent is stopping. */
  | 'AGENT_STOPPED'
  /** A verified values answer that does not open with the agent's identity (another recipient declared for it?). */
  | 'AGENT_VALUES_SEAL';

/** The statuses of a verified refusal that the same request would get again: the daemon refuses it for good. */
const REFUSED_FOR_GOOD: ReadonlySet<number> = new Set([400, 413, 422]);

/**
 * Every exchange that failed is retried with backoff (the daemon restarts, the network comes back, a
 * stopped agent's work is delivered again), except a request the daemon refused for good (a verified
 * refusal with status 400, 413 or 422): sending it again would be refused again.
 */
export class AgentError extends RotorError {
  declare readonly code: AgentErrorCode;
  constructor(
    code: AgentErrorCode,
    message: string,
    /** The HTTP status of a verified refusal. */
    readonly status?: number,
    /** The daemon's error code of a verified refusal. */
    readonly daemonCode?: string,
    /** A NOT_LEADER refusal: the leading daemon's agent API URL, when the follower named it (unchecked). */
    readonly leader?: string,
  ) {
    const forGood = code === 'AGENT_DAEMON_REFUSED' && status !== undefined && REFUSED_FOR_GOOD.has(status);
    super(code, message, { retry: forGood ? NEVER : BACKOFF });
  }
}

/** Whether `e` is a follower's refusal of the jobs or results route (NOT_LEADER): another daemon leads. */
export function isNotLeader(e: unknown): e is AgentError {
  return e instanceof AgentError && e.daemonCode === NOT_LEADER;
}

/** A short, value-free description of a transport error. */
export function transportProblem(e: unknown): { code: AgentErrorCode; cause?: string; message: string } {
  if (e instanceof AgentError) return { code: e.code, message: e.message };
  const err = e as { code?: unknown; name?: unknown };
  const cause = typeof err?.code === 'string' ? err.code : typeof err?.name === 'string' ? err.name : undefined;
  const message = `the daemon cannot be reached${cause ? ` (${cause})` : ''}`;
  return { code: 'AGENT_DAEMON_UNREACHABLE', message, ...(cause ? { cause } : {}) };
}
