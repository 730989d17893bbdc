/**
 * The agent API listener (--agent-listen HOST:PORT): signed requests from agents, signed answers.
 * See src/protocol/jobs.ts for the routes and src/protocol/sign.ts for the signatures. Every answer,
 * errors included, is signed over the request's nonce when the request carried a well-formed one.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { KeyObject } from 'node:crypto';
import type { Logger } from '../log.js';
import { AGENT_AUTH_STATUS, H_NONCE, NonceCache, signResponse, verifyRequest } from '../protocol/sign.js';
import { AGENT_JOBS_PATH, AGENT_RESULTS_PATH, MAX_AGENT_WAIT } from '../protocol/jobs.js';
import type { Result } from '../protocol/jobs.js';
import type { AgentHub } from '../daemon/agents.js';
import { listenTcp } from './listen.js';

const MAX_BODY = 1024 * 1024;
const NONCE_RE = /^[A-Za-z0-9_-]{22}$/;

export interface AgentApiOptions {
  readonly hub: AgentHub;
  readonly signing: KeyObject;
  readonly log: Logger;
  readonly now: () => number;
}

export async function listenAgentApi(listen: string, o: AgentApiOptions): Promise<{ address: string; close: () => Promise<void> }> {
  const nonces = new NonceCache();
  let closing!: () => void;
  const closed = new Promise<void>((resolve) => (closing = resolve));
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000, maxHeaderSize: 8192 }, (req, res) => {
    void handle(req, res).catch((e: unknown) => {
      o.log('error', 'agent API request failed', { code: (e as { code?: string }).code ?? 'INTERNAL' });
      answer(req, res, 500, { error: { code: 'INTERNAL', message: 'internal error (see the daemon log)' } });
    });
  });
  server.keepAliveTimeout = 65_000;

  function answer(req: IncomingMessage, res: ServerResponse, status: number, body: unknown): void {
    if (res.headersSent || res.destroyed) return;
    const text = JSON.stringify(body);
    const nonce = req.headers[H_NONCE];
    const signed = typeof nonce === 'string' && NONCE_RE.test(nonce) ? signResponse({ status, requestNonce: nonce, body: text, privateKey: o.signing }) : {};
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text), ...signed });
    res.end(text);
  }

  async function readBody(req: IncomingMessage): Promise<Buffer | undefined> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > MAX_BODY) return undefined;
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    if (!body) return answer(req, res, 413, { error: { code: 'BODY_TOO_LARGE', message: `the request body is over ${MAX_BODY} bytes` } });
    const verdict = verifyRequest({ headers: req.headers, method: req.method ?? '', path: req.url ?? '', body, now: o.now(), keyOf: (a) => o.hub.keyOf(a), nonces });
    if (!verdict.ok) {
      o.log('warn', 'agent request refused', { code: verdict.code, agent: typeof req.headers['x-rotor-agent'] === 'string' ? req.headers['x-rotor-agent'].slice(0, 64) : undefined, path: (req.url ?? '').slice(0, 100) });
      return answer(req, res, AGENT_AUTH_STATUS[verdict.code], { error: { code: verdict.code, message: verdict.message } });
    }
    const agent = verdict.agent;
    if (req.method !== 'POST') return answer(req, res, 405, { error: { code: 'METHOD_NOT_ALLOWED', message: 'the agent API takes POST' } });
    let parsed: unknown;
    try {
      parsed = body.length ? JSON.parse(body.toString('utf8')) : {};
    } catch {
      return answer(req, res, 400, { error: { code: 'BAD_JSON', message: 'the body is not JSON' } });
    }
    if (req.url === AGENT_JOBS_PATH) {
      const wait = (parsed as { wait?: unknown }).wait ?? 0;
      if (typeof wait !== 'number' || !(wait >= 0 && wait <= MAX_AGENT_WAIT)) return answer(req, res, 400, { error: { code: 'BAD_REQUEST', message: `wait is 0 to ${MAX_AGENT_WAIT} seconds` } });
      const gone = new Promise<void>((resolve) => res.once('close', () => resolve()));
      const jobs = await o.hub.take(agent, wait * 1000, Promise.race([closed, gone]));
      if (jobs.length) o.log('info', 'jobs handed to an agent', { agent, jobs: jobs.length });
      return answer(req, res, 200, { jobs });
    }
    if (req.url === AGENT_RESULTS_PATH) {
      const results = (parsed as { results?: unknown }).results;
      if (!Array.isArray(results) || results.length > 1000 || !results.every(isResult)) return answer(req, res, 400, { error: { code: 'BAD_REQUEST', message: 'results must be a list of {id, outcome, detail?, code?, message?}' } });
      const accepted = o.hub.complete(agent, results);
      return answer(req, res, 200, { accepted });
    }
    return answer(req, res, 404, { error: { code: 'NOT_FOUND', message: `no ${req.url} here` } });
  }

  const bound = await listenTcp(server, listen, '--agent-listen', 'AGENT_LISTEN');
  return {
    address: bound.address,
    close: () => {
      closing();
      return bound.close();
    },
  };
}

function isResult(r: unknown): r is Result {
  if (typeof r !== 'object' || r === null) return false;
  const x = r as Record<string, unknown>;
  return typeof x.id === 'string' && x.id.length <= 64 && (x.outcome === 'done' || x.outcome === 'failed')
    && (x.code === undefined || (typeof x.code === 'string' && x.code.length <= 64))
    && (x.message === undefined || (typeof x.message === 'string' && x.message.length <= 1000))
    && (x.detail === undefined || x.detail === 'applied' || x.detail === 'already-applied' || x.detail === 'retired');
}
