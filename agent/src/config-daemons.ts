/**
 * The `daemon:` field of the agent's configuration (./config.ts): one URL, or a list of them when several
 * daemons run on one store (one leads; ./daemons.ts says how the agent uses the list).
 *
 *   daemon: http://127.0.0.1:7700
 *   daemon: [https://rotor-a.internal:7700, https://rotor-b.internal:7700]
 *
 * Each URL is the origin of a daemon's --agent-listen: http:// or https://, a host, an optional port,
 * no credentials, path, query or fragment. The same daemon twice is refused (AGENT_CONFIG_DAEMON_DUPLICATE).
 * All are https:// or all http:// (AGENT_CONFIG_DAEMON_MIXED): TLS keeps secret names, versions and the
 * timing of rotations off the network, and a list with one clear daemon would hand them out anyway;
 * `tls:` then applies to every daemon (they share the certificate's CA or pins).
 */
import type { ErrorObject } from 'ajv';
import type { Path } from 'rotor/internal';

/** The codes of `daemon:` (part of AGENT_CONFIG_CODES). */
export const DAEMON_CONFIG_CODES = {
  AGENT_CONFIG_DAEMON_URL:
    "`daemon` must be http://HOST:PORT or https://HOST:PORT (or a list of them): the address of the daemon's --agent-listen, without credentials or a path.",
  AGENT_CONFIG_DAEMON_DUPLICATE: '`daemon` lists the same daemon twice. Name each daemon once.',
  AGENT_CONFIG_DAEMON_MIXED:
    '`daemon` lists http:// and https:// daemons: use https:// for all of them (each daemon needs --agent-tls-cert and --agent-tls-key), or http:// for all.',
} as const;

/** A problem of `daemon:` or of `tls:` beside it, at `at`. */
export interface DaemonProblem {
  readonly at: Path;
  readonly code: keyof typeof DAEMON_CONFIG_CODES | 'AGENT_CONFIG_TLS_CLEAR';
  readonly message: string;
  /** Placed at the key rather than the value. */
  readonly key?: boolean;
}

/** The daemon URLs (each an origin), or the problems of `daemon:` (`hasTls`: `tls:` is given). */
export function readDaemons(
  raw: string | readonly string[],
  hasTls: boolean,
): { daemons: URL[]; problems: DaemonProblem[] } {
  const list = typeof raw === 'string' ? [raw] : raw;
  const daemons: URL[] = [];
  const problems: DaemonProblem[] = [];
  const seen = new Map<string, number>();
  for (const [i, text] of list.entries()) {
    const at: Path = typeof raw === 'string' ? ['daemon'] : ['daemon', i];
    const field = typeof raw === 'string' ? 'daemon' : `daemon.${i}`;
    const u = checkDaemonUrl(field, text);
    if (typeof u === 'string') {
      problems.push({ at, code: 'AGENT_CONFIG_DAEMON_URL', message: u });
      continue;
    }
    const first = seen.get(u.origin);
    if (first !== undefined) {
      const message = `${field} is ${u.origin} again (daemon.${first}): name each daemon once`;
      problems.push({ at, code: 'AGENT_CONFIG_DAEMON_DUPLICATE', message });
      continue;
    }
    seen.set(u.origin, i);
    const other = daemons.find((d) => d.protocol !== u.protocol);
    if (other) {
      const message = `${field} is ${u.origin} and ${other.origin} is listed too: all daemons are https:// (each with --agent-tls-cert and --agent-tls-key) or all http://, so that none hands out in clear what TLS hides`;
      problems.push({ at, code: 'AGENT_CONFIG_DAEMON_MIXED', message });
      continue;
    }
    daemons.push(u);
  }
  if (hasTls && daemons.length > 0 && daemons[0]!.protocol === 'http:' && problems.length === 0) {
    const which = typeof raw === 'string' ? `daemon is ${daemons[0]!.origin}` : 'the daemons are http://';
    problems.push({
      at: ['tls'],
      code: 'AGENT_CONFIG_TLS_CLEAR',
      message: `tls is for an https:// daemon, and ${which}: write https:// (the daemon needs --agent-tls-cert and --agent-tls-key), or remove tls`,
      key: true,
    });
  }
  return { daemons, problems };
}

/** One daemon URL: http(s), a host, no credentials, no path; or what is wrong with it. */
function checkDaemonUrl(field: string, text: string): URL | string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return `${field} must be a URL such as http://127.0.0.1:7700 (the daemon's --agent-listen address)`;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    return `${field} must start with http:// or https://, not ${u.protocol}//`;
  if (u.username !== '' || u.password !== '')
    return `${field} must not carry a user or password: the agent signs its requests with its own key`;
  if (u.hostname === '') return `${field} has no host`;
  if ((u.pathname !== '/' && u.pathname !== '') || u.search !== '' || u.hash !== '') {
    return `${field} is the address of the daemon's --agent-listen, http://HOST:PORT, without a path, query or fragment`;
  }
  return u;
}

/** What the schema check says of `daemon:` (its type, an empty or long list), for people; undefined for the rest. */
export function daemonSchemaProblem(
  err: ErrorObject,
  at: Path,
  kind: string,
): { code: string; message: string } | undefined {
  if (at[0] !== 'daemon') return undefined;
  if (err.keyword === 'type' && at.length === 1)
    return {
      code: 'SCHEMA_TYPE',
      message: `daemon must be a URL (http://HOST:PORT or https://HOST:PORT) or a list of them, not ${kind}`,
    };
  if (err.keyword === 'type')
    return { code: 'SCHEMA_TYPE', message: `daemon.${at[1]} must be a URL (http://HOST:PORT), not ${kind}` };
  if (err.keyword === 'minItems')
    return { code: 'SCHEMA_RANGE', message: 'daemon is an empty list: name at least one daemon URL' };
  if (err.keyword === 'maxItems') {
    const limit = (err.params as { limit: number }).limit;
    return { code: 'SCHEMA_RANGE', message: `daemon lists more than ${limit} daemons` };
  }
  return undefined;
}
