/**
 * HTTP to the daemon: the transport seam (node:http / node:https with keep-alive agents, bounded answers;
 * over https:// the daemon's certificate is checked before a request is sent: ./tls.ts) and
 * DaemonClient, which signs each request with the agent's Ed25519 key and has every answer checked
 * (./wire.ts) against this request's nonce before anything in it is used. With several daemons it
 * sends jobs and results to the one it believes leads, values and receipts to the one that answers
 * (./daemons.ts).
 */

import type { IncomingHttpHeaders } from 'node:http';
import http from 'node:http';
import https from 'node:https';
import type { Logger, Result, ValuesAnswer, ValuesReceipt } from 'rotor/internal';
import {
  AGENT_JOBS_PATH,
  AGENT_RECEIPTS_PATH,
  AGENT_RESULTS_PATH,
  AGENT_VALUES_PATH,
  boundedBody,
  declaredOver,
  H_NONCE,
  MAX_VALUES_ANSWER,
  signRequest,
} from 'rotor/internal';
import type { AgentConfig } from './config.js';
import type { AgentTls } from './config-tls.js';
import { DaemonList } from './daemons.js';
import { AgentError } from './errors.js';
import { DaemonTlsAgent } from './tls.js';
import { acceptedOf, answerData, jobsOf, valuesOf } from './wire.js';

export interface HttpExchange {
  readonly url: URL;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: Buffer;
  /** For the whole exchange. */
  readonly timeoutMs: number;
  /** The largest answer body taken. */
  readonly maxBytes: number;
  readonly signal: AbortSignal;
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** Sends one POST and returns the answer as received (the agent verifies it); rejects on transport errors. */
export type Transport = (x: HttpExchange) => Promise<HttpAnswer>;

/** Timeout of a results request, and the margin of a poll beyond its `wait`. */
const EXCHANGE_MS = 30_000;
const POLL_MARGIN_MS = 15_000;

export interface NodeTransportOptions {
  /** How an https:// daemon's certificate is checked (the configuration's `tls`); default: the system's CAs. */
  readonly tls?: AgentTls;
}

/** node:http / node:https, one keep-alive agent each, bounded answers. */
export function nodeTransport(options: NodeTransportOptions = {}): Transport & { close(): void } {
  const agents = { http: new http.Agent({ keepAlive: true }), https: new DaemonTlsAgent(options.tls) };
  const transport = (x: HttpExchange): Promise<HttpAnswer> =>
    new Promise((resolve, reject) => {
      const secure = x.url.protocol === 'https:';
      let settled = false;
      let res: http.IncomingMessage | undefined;
      const settle = (err: unknown, answer?: HttpAnswer) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        x.signal.removeEventListener('abort', onAbort);
        if (answer) {
          resolve(answer);
        } else {
          res?.destroy();
          req.destroy();
          reject(err);
        }
      };
      const onAbort = () => settle(new AgentError('AGENT_STOPPED', 'the agent is stopping'));
      const req = (secure ? https : http).request(x.url, {
        method: 'POST',
        headers: { ...x.headers, 'content-type': 'application/json', 'content-length': String(x.body.length) },
        agent: secure ? agents.https : agents.http,
      });
      const timer = setTimeout(() => {
        const message = `the daemon did not answer within ${Math.round(x.timeoutMs / 1000)} s`;
        settle(new AgentError('AGENT_DAEMON_UNREACHABLE', message));
      }, x.timeoutMs);
      x.signal.addEventListener('abort', onAbort, { once: true });
      req.on('response', (r: http.IncomingMessage) => {
        res = r;
        if (declaredOver(r.headers['content-length'], x.maxBytes)) {
          const message = `the daemon's answer is ${r.headers['content-length']} bytes, over the ${x.maxBytes}-byte limit`;
          settle(new AgentError('AGENT_ANSWER_TOO_LARGE', message));
          return;
        }
        const collected = boundedBody(x.maxBytes);
        r.on('data', (chunk: Buffer) => {
          if (!collected.add(chunk)) {
            settle(
              new AgentError('AGENT_ANSWER_TOO_LARGE', `the daemon's answer is over the ${x.maxBytes}-byte limit`),
            );
          }
        });
        r.on('end', () => settle(undefined, { status: r.statusCode ?? 0, headers: r.headers, body: collected.body() }));
        r.on('error', (e) => settle(e));
        r.on('close', () =>
          settle(new AgentError('AGENT_DAEMON_UNREACHABLE', 'the daemon closed the connection mid-answer')),
        );
      });
      req.on('error', (e) => settle(e));
      req.on('close', () => {
        if (!res) settle(new AgentError('AGENT_DAEMON_UNREACHABLE', 'the connection closed without an answer'));
      });
      if (x.signal.aborted) onAbort();
      else req.end(x.body);
    });
  return Object.assign(transport, {
    close() {
      agents.http.destroy();
      agents.https.destroy();
    },
  });
}

export interface DaemonClientOptions {
  readonly config: Pick<AgentConfig, 'name' | 'daemons' | 'keys' | 'daemonSigningKey'>;
  readonly transport: Transport;
  readonly log: Logger;
  /** ms since the epoch, for request timestamps. */
  readonly now: () => number;
  /** The largest answer accepted. */
  readonly maxAnswerBytes: number;
}

/** The agent's requests to the daemons, signed, with their answers checked. */
export class DaemonClient {
  readonly #o: DaemonClientOptions;
  /** Where jobs are polled and results sent: the daemon believed to lead. */
  readonly jobDaemons: DaemonList;
  /** Where the values long-poll and the receipts go: the daemon that last answered. */
  readonly valueDaemons: DaemonList;

  constructor(options: DaemonClientOptions) {
    this.#o = options;
    const { daemons } = options.config;
    this.jobDaemons = new DaemonList(daemons, options.log, 'database jobs come from the leading daemon at');
    this.valueDaemons = new DaemonList(daemons, options.log, "consumers' values come from the daemon at");
  }

  /** One long-poll of at most `wait` seconds: the jobs in the answer, each still unchecked. */
  async poll(wait: number, signal: AbortSignal): Promise<unknown[]> {
    const answer = await this.#exchange(
      this.jobDaemons,
      AGENT_JOBS_PATH,
      { wait },
      wait * 1000 + POLL_MARGIN_MS,
      signal,
    );
    const jobs = jobsOf(answer);
    if (jobs.length > 0) this.#o.log('debug', 'jobs received', { jobs: jobs.length });
    return jobs;
  }

  /** Sends results: how many the daemon says it accepted (undefined if its answer does not say). */
  async report(results: readonly Result[], signal: AbortSignal): Promise<number | undefined> {
    return acceptedOf(await this.#exchange(this.jobDaemons, AGENT_RESULTS_PATH, { results }, EXCHANGE_MS, signal));
  }

  /** One values long-poll of at most `wait` seconds (src/protocol/values.ts): the answer, still sealed. */
  async values(cursor: { epoch?: string; after?: number }, wait: number, signal: AbortSignal): Promise<ValuesAnswer> {
    const body = { wait, ...cursor };
    const timeoutMs = wait * 1000 + POLL_MARGIN_MS;
    return valuesOf(
      await this.#exchange(this.valueDaemons, AGENT_VALUES_PATH, body, timeoutMs, signal, MAX_VALUES_ANSWER),
    );
  }

  /** Sends read receipts: how many the daemon took (undefined if its answer does not say). */
  async receipts(receipts: readonly ValuesReceipt[], signal: AbortSignal): Promise<number | undefined> {
    return acceptedOf(await this.#exchange(this.valueDaemons, AGENT_RECEIPTS_PATH, { receipts }, EXCHANGE_MS, signal));
  }

  /**
   * One signed POST to the current daemon of `daemons`; the answer's JSON when it verified and its
   * status is 200. A failure moves `daemons` on (unless the agent is stopping, or the request is
   * refused for good, which another daemon would refuse too).
   */
  async #exchange(
    daemons: DaemonList,
    path: string,
    payload: unknown,
    timeoutMs: number,
    signal: AbortSignal,
    maxBytes = this.#o.maxAnswerBytes,
  ): Promise<unknown> {
    if (signal.aborted) throw new AgentError('AGENT_STOPPED', 'the agent is stopping');
    const { config } = this.#o;
    const body = Buffer.from(JSON.stringify(payload), 'utf8');
    const privateKey = config.keys.signing;
    const headers = signRequest({ agent: config.name, method: 'POST', path, body, privateKey, now: this.#o.now() });
    const daemon = daemons.current;
    const url = new URL(path, daemon);
    try {
      const answer = await this.#o.transport({ url, headers, body, timeoutMs, maxBytes, signal });
      const data = answerData(path, answer, headers[H_NONCE], config.daemonSigningKey);
      daemons.answered(daemon);
      return data;
    } catch (e) {
      const forGood = e instanceof AgentError && e.retry.kind === 'never';
      if (!signal.aborted && !forGood) daemons.failed(daemon, e);
      throw e;
    }
  }
}
