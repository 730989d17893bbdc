/** An agent's calls to a daemon's agent API, made by hand: requests signed as an agent, answers checked. */
import type { KeyObject } from 'node:crypto';
import { request } from 'node:http';
import { type ResponseVerdict, signRequest, verifyResponse } from '../../src/protocol/sign.js';

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  // biome-ignore lint/suspicious/noExplicitAny: answers of many shapes, read field by field in the tests
  body: any;
}

/** A POST of `body` with `headers` to `urlPath` of the agent API at `url` (http://HOST:PORT); the answer is JSON. */
export function post(url: string, urlPath: string, body: string, headers: Record<string, string>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      new URL(urlPath, url),
      { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, agent: false },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body: JSON.parse(text) }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * `payload` as JSON to `path` of the agent API at `url`, signed as `agent` with `privateKey` (at `now`,
 * default the clock): the answer, and the verdict on whether `daemonKey` signed it for this request.
 */
export async function signedCall(
  url: string,
  o: { agent: string; privateKey: KeyObject; daemonKey: KeyObject; path: string; payload: unknown; now?: number },
): Promise<{ answer: Answer; verdict: ResponseVerdict }> {
  const body = JSON.stringify(o.payload);
  const headers = signRequest({
    agent: o.agent,
    method: 'POST',
    path: o.path,
    body,
    privateKey: o.privateKey,
    now: o.now,
  });
  const answer = await post(url, o.path, body, headers);
  const verdict = verifyResponse({
    headers: answer.headers,
    status: answer.status,
    requestNonce: headers['x-rotor-nonce'],
    body: answer.text,
    publicKey: o.daemonKey,
  });
  return { answer, verdict };
}
