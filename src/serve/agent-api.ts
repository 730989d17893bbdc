/**
 * The agent API listener (--agent-listen HOST:PORT): signed requests from agents, signed answers.
 * See src/protocol/jobs.ts for the routes and src/protocol/sign.ts for the signatures. Every answer,
 * errors included, is signed over the request's nonce when the request carried a well-formed one.
 *
 * Nothing is spent on a peer before it proves to be an agent: a request is authenticated from its
 * headers alone (agent, timestamp, nonce, signature; verifyRequestHeaders) before a byte of its body is
 * read, and refused with the connection closed if it is not. Only then is the body read, within the
 * route's limit (MAX_JOBS_BODY, MAX_RESULTS_BODY; a larger Content-Length is refused at once) and
 * the body timeout, and checked against the signed hash. The connections are bounded in number, per
 * peer address and in time (src/serve/limits.ts).
 *
 * With `tls` (--agent-tls-cert, --agent-tls-key) it is HTTPS, TLS 1.2 or later. The signatures give
 * integrity either way; TLS hides what crosses the network (secret names, versions, when rotations
 * happen). Without it, on an address other hosts can reach, the listener warns (AGENT_LISTEN_CLEAR).
 */

import { type KeyObject, X509Certificate } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import type { Job, Result } from '../protocol/jobs.js';
import {
  AGENT_JOBS_PATH,
  AGENT_RESULTS_PATH,
  isChecks,
  MAX_AGENT_WAIT,
  MAX_JOBS_BODY,
  MAX_RESULT_MESSAGE,
  MAX_RESULTS_BODY,
  MAX_RESULTS_PER_REQUEST,
  NOT_LEADER,
} from '../protocol/jobs.js';
import {
  AGENT_AUTH_STATUS,
  abandonRequest,
  H_AGENT,
  H_NONCE,
  NonceCache,
  signResponse,
  verifyRequestBody,
  verifyRequestHeaders,
} from '../protocol/sign.js';
import { spkiPin } from '../protocol/tls.js';
import {
  AGENT_RECEIPTS_PATH,
  AGENT_VALUES_PATH,
  MAX_RECEIPTS_BODY,
  MAX_RECEIPTS_PER_REQUEST,
  MAX_VALUES_BODY,
  type Receipt,
  type ValuesAnswer,
} from '../protocol/values.js';
import { HttpError, readBody } from './http-json.js';
import { boundedServer, type ListenerLimits, type ListenerTls, rateLimited } from './limits.js';
import { isLoopback, listenTcp } from './listen.js';

const NONCE_RE = /^[A-Za-z0-9_-]{22}$/;

export interface AgentApiLimits extends ListenerLimits {
  /** Time to receive a request's body once its headers are authenticated (408 BODY_TIMEOUT, connection closed). */
  readonly bodyTimeoutMs: number;
  /** Body limits per route, bytes. */
  readonly jobsBody: number;
  readonly resultsBody: number;
  readonly valuesBody: number;
  readonly receiptsBody: number;
}

export const AGENT_API_LIMITS: AgentApiLimits = {
  // Each agent holds up to two long-polls (jobs, and the values of the consumers on its host): room
  // for 2,000 agents. About 45 KB each while handled (docs/security.md): a full flood is about 180 MB.
  maxConnections: 4096,
  maxConnectionsPerPeer: 128,
  headersTimeoutMs: 10_000,
  bodyTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  // Longer than the 60 s idle timeout of common proxies, so that a proxy in front closes first. Only
  // an authenticated exchange keeps a connection open: every refusal closes it.
  keepAliveTimeoutMs: 65_000,
  maxHeaderSize: 8192,
  jobsBody: MAX_JOBS_BODY,
  resultsBody: MAX_RESULTS_BODY,
  valuesBody: MAX_VALUES_BODY,
  receiptsBody: MAX_RECEIPTS_BODY,
};

/** What the listener needs of the daemon's side of the agents (the daemon's AgentHub implements it). */
export interface AgentJobs {
  /** The public key of a declared agent (for verifying its requests). */
  keyOf(agent: string): KeyObject | undefined;
  /** The jobs ready for `agent`, leased to it; waits up to `waitMs` for one, or until `closed`. */
  take(agent: string, waitMs: number, closed?: Promise<void>): Promise<Job[]>;
  /** Results reported by `agent`; returns how many matched a job of its own. */
  complete(agent: string, results: readonly Result[]): number;
  /** `agent` called on another route: it is alive. */
  touch?(agent: string): void;
}

/** What the listener needs of the daemon's side of the consumers on agents' hosts (AgentValues implements it). */
export interface AgentValuesApi {
  /** The values long-poll: the changes after the cursor (or everything), waiting up to `waitMs` for one. */
  take(
    agent: string,
    cursor: { epoch?: string; after?: number },
    waitMs: number,
    closed?: Promise<void>,
  ): Promise<ValuesAnswer>;
  /** Read receipts; returns how many were taken. */
  receipts(agent: string, list: readonly Receipt[]): number;
}

export interface AgentApiOptions {
  readonly hub: AgentJobs;
  readonly values: AgentValuesApi;
  readonly signing: KeyObject;
  readonly log: Logger;
  readonly now: () => number;
  /** Defaults: AGENT_API_LIMITS (tests pass small timeouts). */
  readonly limits?: Partial<AgentApiLimits>;
  /** Serve HTTPS with this certificate and key (checked beforehand: see readAgentTls); plain HTTP without. */
  readonly tls?: ListenerTls;
  /**
   * Whether this daemon leads now, and the agent API URL of the one that does when known (several
   * daemons on one store). Absent: this daemon always leads. A follower answers the jobs and results
   * routes with 503 NOT_LEADER (and `leader`, the URL, when known); it serves values and receipts.
   */
  readonly leader?: () => { leading: boolean; leader?: string };
}

/** The routes only the leading daemon serves: it alone hands out database jobs and takes their results. */
const LEADER_ROUTES: ReadonlySet<string> = new Set([AGENT_JOBS_PATH, AGENT_RESULTS_PATH]);

export interface AgentApiListener {
  /** The bound HOST:PORT. */
  readonly address: string;
  /** With TLS: the pin of the certificate's public key, as an agent's tls.pin takes it. */
  readonly pin?: string;
  close(): Promise<void>;
}

export async function listenAgentApi(listen: string, o: AgentApiOptions): Promise<AgentApiListener> {
  const limits: AgentApiLimits = { ...AGENT_API_LIMITS, ...o.limits };
  const nonces = new NonceCache();
  const once = rateLimited(10_000);
  let closing!: () => void;
  const closed = new Promise<void>((resolve) => (closing = resolve));
  const dispatch = (expectsContinue: boolean) => (req: IncomingMessage, res: ServerResponse) => {
    void handle(req, res, expectsContinue).catch((e: unknown) => {
      o.log('error', 'agent API request failed', { code: (e as { code?: string }).code ?? 'INTERNAL' });
      answer(req, res, 500, { error: { code: 'INTERNAL', message: 'internal error (see the daemon log)' } });
    });
  };
  const onRefused = (why: 'peer' | 'total', peer: string | undefined) =>
    once(`connection-${why}`, (suppressed) => {
      o.log(
        'warn',
        why === 'peer'
          ? 'agent API connection refused: too many from one address'
          : 'agent API connection refused: too many open',
        {
          code: why === 'peer' ? 'AGENT_PEER_CONNECTIONS' : 'AGENT_CONNECTIONS',
          peer,
          limit: why === 'peer' ? limits.maxConnectionsPerPeer : limits.maxConnections,
          suppressed,
        },
      );
    });
  const server = boundedServer(limits, dispatch(false), onRefused, o.tls);
  // A handshake that fails says why only here (a peer that closes, as an agent refusing the
  // certificate does, is not worth a line). Node closes the connection either way.
  server.on('tlsClientError', (e: NodeJS.ErrnoException) => {
    const cause = e.code ?? 'ERROR';
    if (cause === 'ECONNRESET' || cause === 'EPIPE') return;
    once(`tls-${cause}`, (suppressed) =>
      o.log('warn', 'agent API TLS handshake failed', {
        code: 'AGENT_TLS_HANDSHAKE',
        cause,
        ...(suppressed ? { suppressed } : {}),
      }),
    );
  });
  // Expect: 100-continue: the agent is authenticated before it is asked for the body.
  server.on('checkContinue', dispatch(true));

  /** Answers (signed when the request carried a well-formed nonce); anything but 200 closes the connection. */
  function answer(req: IncomingMessage, res: ServerResponse, status: number, body: unknown): void {
    if (res.headersSent || res.destroyed) return;
    const text = JSON.stringify(body);
    const nonce = req.headers[H_NONCE];
    const signed =
      typeof nonce === 'string' && NONCE_RE.test(nonce)
        ? signResponse({ status, requestNonce: nonce, body: text, privateKey: o.signing })
        : {};
    res.writeHead(status, {
      'content-type': 'application/json',
      'cache-control': 'no-store',
      'content-length': Buffer.byteLength(text),
      ...(status !== 200 ? { connection: 'close' } : {}),
      ...signed,
    });
    res.end(text);
  }

  function refuse(req: IncomingMessage, res: ServerResponse, status: number, code: string, message: string): void {
    once(code, (suppressed) => {
      const agent = req.headers[H_AGENT];
      o.log('warn', 'agent request refused', {
        code,
        agent: typeof agent === 'string' ? agent.slice(0, 64) : undefined,
        path: (req.url ?? '').slice(0, 100),
        ...(suppressed ? { suppressed } : {}),
      });
    });
    answer(req, res, status, { error: { code, message } });
  }

  async function handle(req: IncomingMessage, res: ServerResponse, expectsContinue: boolean): Promise<void> {
    // Phase 1, before any of the body is read: who is calling, and is this request new?
    const signed = verifyRequestHeaders({
      headers: req.headers,
      method: req.method ?? '',
      path: req.url ?? '',
      now: o.now(),
      keyOf: (a) => o.hub.keyOf(a),
      nonces,
    });
    if (!signed.ok) return refuse(req, res, AGENT_AUTH_STATUS[signed.code], signed.code, signed.message);
    try {
      const agent = signed.agent;
      if (req.method !== 'POST')
        return answer(req, res, 405, { error: { code: 'METHOD_NOT_ALLOWED', message: 'the agent API takes POST' } });
      const limit = {
        [AGENT_JOBS_PATH]: limits.jobsBody,
        [AGENT_RESULTS_PATH]: limits.resultsBody,
        [AGENT_VALUES_PATH]: limits.valuesBody,
        [AGENT_RECEIPTS_PATH]: limits.receiptsBody,
      }[req.url ?? ''];
      if (limit === undefined)
        return answer(req, res, 404, { error: { code: 'NOT_FOUND', message: `no ${req.url} here` } });
      // A follower hands out no job and takes no result: it says so (and who leads) before reading the body.
      const role = LEADER_ROUTES.has(req.url ?? '') ? o.leader?.() : undefined;
      if (role && !role.leading) {
        const leader = role.leader;
        const message = leader
          ? `this daemon follows: the leading daemon's agent API is ${leader}`
          : 'this daemon follows, and does not know which daemon leads now: try another';
        return answer(req, res, 503, { error: { code: NOT_LEADER, message, ...(leader ? { leader } : {}) } });
      }
      if (expectsContinue && !(Number(req.headers['content-length']) > limit)) res.writeContinue();
      let body: Buffer;
      try {
        body = await readBody(req, { limit, timeoutMs: limits.bodyTimeoutMs });
      } catch (e) {
        if (e instanceof HttpError) return refuse(req, res, e.status, e.code, e.message);
        throw e;
      }
      // Phase 2: the body is the one the agent signed.
      const verdict = verifyRequestBody(signed, body, nonces);
      if (!verdict.ok) return refuse(req, res, AGENT_AUTH_STATUS[verdict.code], verdict.code, verdict.message);
      let parsed: unknown;
      try {
        parsed = body.length ? JSON.parse(body.toString('utf8')) : {};
      } catch {
        return answer(req, res, 400, { error: { code: 'BAD_JSON', message: 'the body is not JSON' } });
      }
      if (req.url === AGENT_JOBS_PATH) {
        const wait = (parsed as { wait?: unknown }).wait ?? 0;
        if (typeof wait !== 'number' || !(wait >= 0 && wait <= MAX_AGENT_WAIT))
          return answer(req, res, 400, {
            error: { code: 'BAD_REQUEST', message: `wait is 0 to ${MAX_AGENT_WAIT} seconds` },
          });
        const gone = new Promise<void>((resolve) => res.once('close', () => resolve()));
        const jobs = await o.hub.take(agent, wait * 1000, Promise.race([closed, gone]));
        if (jobs.length) o.log('info', 'jobs handed to an agent', { agent, jobs: jobs.length });
        return answer(req, res, 200, { jobs });
      }
      if (req.url === AGENT_VALUES_PATH) {
        o.hub.touch?.(agent);
        const { wait = 0, epoch, after } = parsed as { wait?: unknown; epoch?: unknown; after?: unknown };
        if (
          typeof wait !== 'number' ||
          !(wait >= 0 && wait <= MAX_AGENT_WAIT) ||
          (epoch !== undefined && (typeof epoch !== 'string' || epoch.length > 64)) ||
          (after !== undefined && !(Number.isSafeInteger(after) && (after as number) >= 0))
        )
          return answer(req, res, 400, {
            error: {
              code: 'BAD_REQUEST',
              message: `wait is 0 to ${MAX_AGENT_WAIT} seconds, epoch a string, after a whole number`,
            },
          });
        const gone = new Promise<void>((resolve) => res.once('close', () => resolve()));
        const cursor = {
          ...(epoch !== undefined ? { epoch } : {}),
          ...(after !== undefined ? { after: after as number } : {}),
        };
        return answer(req, res, 200, await o.values.take(agent, cursor, wait * 1000, Promise.race([closed, gone])));
      }
      if (req.url === AGENT_RECEIPTS_PATH) {
        o.hub.touch?.(agent);
        const receipts = (parsed as { receipts?: unknown }).receipts;
        if (!Array.isArray(receipts) || receipts.length > MAX_RECEIPTS_PER_REQUEST || !receipts.every(isReceipt))
          return answer(req, res, 400, {
            error: {
              code: 'BAD_REQUEST',
              message: `receipts must be a list of at most ${MAX_RECEIPTS_PER_REQUEST} {consumer, secret, version}`,
            },
          });
        return answer(req, res, 200, { accepted: o.values.receipts(agent, receipts) });
      }
      const results = (parsed as { results?: unknown }).results;
      if (!Array.isArray(results) || results.length > MAX_RESULTS_PER_REQUEST || !results.every(isResult)) {
        return answer(req, res, 400, {
          error: {
            code: 'BAD_REQUEST',
            message: `results must be a list of at most ${MAX_RESULTS_PER_REQUEST} {id, outcome, detail?, code?, message?, checks?}`,
          },
        });
      }
      const accepted = o.hub.complete(agent, results);
      return answer(req, res, 200, { accepted });
    } finally {
      abandonRequest(signed, nonces); // gives the nonce back unless the body checked out
    }
  }

  const bound = await listenTcp(server, listen, '--agent-listen', 'AGENT_LISTEN');
  const host = bound.address.slice(0, bound.address.lastIndexOf(':'));
  if (!o.tls && !isLoopback(host)) {
    o.log(
      'warn',
      'the agent API listens without TLS on an address other hosts can reach: secret names, versions and the timing of rotations cross the network in clear (requests and answers are still signed, credentials sealed); give --agent-tls-cert and --agent-tls-key, or listen on loopback',
      { code: 'AGENT_LISTEN_CLEAR', address: bound.address },
    );
  }
  return {
    address: bound.address,
    ...(o.tls ? { pin: spkiPin(new X509Certificate(o.tls.cert)) } : {}),
    close: () => {
      closing();
      return bound.close();
    },
  };
}

function isReceipt(r: unknown): r is Receipt {
  if (typeof r !== 'object' || r === null) return false;
  const x = r as Record<string, unknown>;
  return (
    typeof x.consumer === 'string' &&
    x.consumer.length <= 64 &&
    typeof x.secret === 'string' &&
    x.secret.length <= 253 &&
    Number.isSafeInteger(x.version) &&
    (x.version as number) >= 1
  );
}

function isResult(r: unknown): r is Result {
  if (typeof r !== 'object' || r === null) return false;
  const x = r as Record<string, unknown>;
  return (
    typeof x.id === 'string' &&
    x.id.length <= 64 &&
    (x.outcome === 'done' || x.outcome === 'failed') &&
    (x.code === undefined || (typeof x.code === 'string' && x.code.length <= 64)) &&
    (x.message === undefined || (typeof x.message === 'string' && x.message.length <= MAX_RESULT_MESSAGE)) &&
    (x.detail === undefined ||
      x.detail === 'applied' ||
      x.detail === 'already-applied' ||
      x.detail === 'retired' ||
      x.detail === 'verified') &&
    (x.checks === undefined || isChecks(x.checks))
  );
}
