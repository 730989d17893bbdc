/**
 * The checks of Config.notify (webhooks) beyond its schema: where a delivery may go, and the secret
 * whose value signs it. Pure: the caller reports what this returns with the position of each path.
 */
import type { Code } from './problems.js';
import { suggest } from './problems.js';
import type { Config, Secret } from './schema-types.js';
import type { Path } from './yaml.js';

export interface NotifyProblem {
  readonly path: Path;
  readonly code: Code;
  readonly message: string;
}

/** Whether a URL's host is a loopback address, where plain http:// stays on this machine. */
export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  if (h === 'localhost' || h === '[::1]') return true;
  return /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Why a notify URL is refused, or undefined when it is usable. Never echoes a password back. */
export function notifyUrlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return 'is not an absolute URL (https://host/path)';
  }
  if (u.username !== '' || u.password !== '')
    return 'carries a user name or password; remove it (the receiver checks the signature instead), and change that password, which is now in the repository';
  if (u.hash !== '') return 'has a fragment (#...); remove it';
  if (u.protocol === 'https:') return undefined;
  if (u.protocol === 'http:')
    return isLoopbackHost(u.hostname)
      ? undefined
      : 'is http:// to a host that is not a loopback address; use https:// (plain http is allowed only to 127.0.0.1, [::1] or localhost)';
  return `has the scheme ${u.protocol.replace(/:$/, '')}; use https://`;
}

/** The problems of `config.notify`, given the declared secrets (and the names mentioned but broken). */
export function checkNotify(
  config: Config,
  secrets: ReadonlyMap<string, { readonly decl: Secret }>,
  mentioned: ReadonlySet<string>,
): NotifyProblem[] {
  const out: NotifyProblem[] = [];
  const seen = new Set<string>();
  (config.notify ?? []).forEach((ep, i) => {
    if (seen.has(ep.name))
      out.push({
        path: ['notify', i, 'name'],
        code: 'NOTIFY_NAME_DUPLICATE',
        message: `notify[${i}]: a second endpoint named "${ep.name}"; give each endpoint its own name`,
      });
    seen.add(ep.name);
    // A URL that holds a password is not echoed: only where it is and why.
    const bad = notifyUrlProblem(ep.url);
    if (bad) out.push({ path: ['notify', i, 'url'], code: 'NOTIFY_URL_INVALID', message: `notify[${i}].url ${bad}` });
    const s = secrets.get(ep.secret);
    if (!s) {
      if (mentioned.has(ep.secret)) return; // declared, but broken: its own problem says why
      const hint = suggest(ep.secret, secrets.keys());
      out.push({
        path: ['notify', i, 'secret'],
        code: 'NOTIFY_SECRET_UNKNOWN',
        message: `notify[${i}].secret: Secret "${ep.secret}" is not declared${hint ? `; did you mean "${hint}"?` : '; declare it (its value is the HMAC key the receiver checks with)'}`,
      });
    } else if (s.decl.fields !== undefined || s.decl.database !== undefined) {
      out.push({
        path: ['notify', i, 'secret'],
        code: 'NOTIFY_SECRET_INVALID',
        message: `notify[${i}].secret: Secret "${ep.secret}" is a ${s.decl.fields !== undefined ? 'structured (fields)' : 'database'} secret; name a plain generate or sops secret, whose value is the HMAC key`,
      });
    }
  });
  return out;
}
