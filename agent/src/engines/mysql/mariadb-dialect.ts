/**
 * MariaDB 10.4.2+ statements. MariaDB does not apply a multi-account ALTER USER atomically (a failure on
 * one account leaves the others changed), so the crash-recovery check also reads every row's
 * authentication rules from mysql.global_priv. Values are sent as H(x) = '*'+HEX(SHA1(SHA1(x))),
 * computed here so that MariaDB never receives a plaintext value unless it demands one:
 *
 *   dual set           a IDENTIFIED VIA mysql_native_password USING H(P) OR mysql_native_password USING H(C), b ...
 *   dual retire        each row re-issued without the rule H(retired)
 *   alternate set      a IDENTIFIED VIA mysql_native_password USING H(P), b ... ACCOUNT UNLOCK
 *   alternate retire   a, b ACCOUNT LOCK (shared with MySQL, in the engine)
 *   single set         a IDENTIFIED VIA mysql_native_password USING H(P), b ...
 *
 * MariaDB with strict_password_validation and a password validation plugin refuses hashes (1290); only
 * then the same statements are sent with `USING PASSWORD(<plaintext>)` so that the plugin can check them.
 */
import { createHash } from 'node:crypto';
import { format } from 'mysql2/promise';
import type { Credential, SetJob } from '../types.js';
import { DbError } from '../types.js';
import type { AccountOps, AccountRow, AuthRule } from './accounts.js';
import { account, literal } from './accounts.js';
import type { Row, ServerInfo } from './connect.js';
import { atLeast } from './connect.js';
import { StrictPasswordValidation } from './errors.js';

/** mysql_native_password's stored form of `password`: '*' + HEX(SHA1(SHA1(password))), as PASSWORD() gives. */
export function nativePasswordHash(password: string): string {
  const sha1 = (b: Buffer): Buffer => createHash('sha1').update(b).digest();
  return (
    '*' +
    sha1(sha1(Buffer.from(password, 'utf8')))
      .toString('hex')
      .toUpperCase()
  );
}

export const NATIVE = 'mysql_native_password';

/** What a rule is re-issued as: a stored rule, or (strict password validation only) a plaintext value. */
type RuleSpec = AuthRule | { readonly plaintext: string };

export const isNative = (r: AuthRule, hash: string): boolean => r.plugin === NATIVE && r.auth.toUpperCase() === hash;

/** mysql.global_priv.Priv: the first rule is kept at the top level; `auth_or` lists all, `{}` standing for it. */
function parsePriv(value: unknown): { rules: AuthRule[]; locked: boolean; isRole: boolean } {
  // mysql2 hands MariaDB's JSON-checked LONGTEXT over already parsed; a stand-in may give text or bytes.
  const parsed: unknown = typeof value === 'string' || Buffer.isBuffer(value) ? JSON.parse(value.toString()) : value;
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
  const p = parsed as Record<string, unknown>;
  const rule = (o: Record<string, unknown>): AuthRule => ({
    plugin: typeof o.plugin === 'string' && o.plugin !== '' ? o.plugin : NATIVE,
    auth: typeof o.authentication_string === 'string' ? o.authentication_string : '',
  });
  const top = rule(p);
  const rules = Array.isArray(p.auth_or)
    ? (p.auth_or as unknown[]).map((o) => {
        const obj = (o ?? {}) as Record<string, unknown>;
        return Object.keys(obj).length === 0 ? top : rule(obj);
      })
    : [top];
  return { rules, locked: p.account_locked === true, isRole: p.is_role === true };
}

function pluginName(name: string): string {
  if (!/^[A-Za-z0-9_]+$/.test(name))
    throw new DbError(
      'DB_UNSUPPORTED',
      'mariadb: an account has an authentication plugin with an unexpected name; not re-issuing its rules',
    );
  return name;
}

function identifiedVia(rules: readonly RuleSpec[]): string {
  const one = (r: RuleSpec): string =>
    'plaintext' in r
      ? `${NATIVE} USING PASSWORD(${literal(r.plaintext)})`
      : `${pluginName(r.plugin)} USING ${literal(r.auth)}`;
  return `IDENTIFIED VIA ${rules.map(one).join(' OR ')}`;
}

/** The account rows of a user, with their authentication rules. */
export function mariadbAccountRowsSql(username: string): string {
  return format('SELECT Host AS host, Priv AS priv FROM mysql.global_priv WHERE User = ? ORDER BY Host', [username]);
}

/** An account row read from mysql.global_priv; undefined for a role. */
export function mariadbAccountRow(r: Row, engine: string, username: string): AccountRow | undefined {
  let priv: ReturnType<typeof parsePriv>;
  try {
    priv = parsePriv(r.priv);
  } catch {
    const message = `${engine}: mysql.global_priv holds unreadable JSON for a row of ${JSON.stringify(username)}`;
    throw new DbError('DB_ERROR', message);
  }
  return priv.isRole ? undefined : { host: String(r.host), locked: priv.locked, rules: priv.rules };
}

/** DB_UNSUPPORTED when this server is too old for the engine. */
export function requireMariadb(engine: string, server: ServerInfo): void {
  const v = server.version.join('.');
  if (!atLeast(server.version, [10, 4, 2])) {
    const needs = 'the engine needs 10.4.2 or later (mysql.global_priv, several passwords per account, ACCOUNT LOCK)';
    throw new DbError('DB_UNSUPPORTED', `${engine}: MariaDB ${v} is too old: ${needs}`);
  }
}

/** Set: every row re-issued with the pending value's rule (and for dual, the current value's rule). */
export async function setMariadb(
  ops: AccountOps,
  job: SetJob,
  current: Credential | undefined,
  rows: readonly AccountRow[],
): Promise<void> {
  const hp = nativePasswordHash(job.password);
  const keepCurrent =
    job.strategy === 'dual' && current !== undefined && current.password !== job.password ? current : undefined;
  const hc = keepCurrent ? nativePasswordHash(keepCurrent.password) : undefined;
  const build = (plaintext: boolean): string => {
    const specs = rows.map((r) => {
      const rules: RuleSpec[] = [plaintext ? { plaintext: job.password } : { plugin: NATIVE, auth: hp }];
      if (keepCurrent && hc) {
        // The current value's rule as the server stores it (the unsalted hash is the same string the
        // agent computes; computed if this row does not have it yet).
        rules.push(
          plaintext
            ? { plaintext: keepCurrent.password }
            : (r.rules.find((x) => isNative(x, hc)) ?? { plugin: NATIVE, auth: hc }),
        );
      }
      return `${account(job.username, r.host)} ${identifiedVia(rules)}`;
    });
    return `ALTER USER ${specs.join(', ')}${job.strategy === 'alternate' ? ' ACCOUNT UNLOCK' : ''}`;
  };
  await ops.alterPreferringHashes(build, job.username);
}

/** Removes the rule of the retired value from every row that has it; every other rule stays as stored. */
export async function retireMariadbDual(ops: AccountOps, retired: Credential, current: Credential): Promise<void> {
  const rows = await ops.accountRows(retired.username);
  const hr = nativePasswordHash(retired.password);
  const hc = nativePasswordHash(current.password);
  const changes = rows
    .map((r) => ({ host: r.host, keep: r.rules.filter((x) => !isNative(x, hr)), before: r.rules.length }))
    .filter((c) => c.keep.length !== c.before);
  if (changes.length === 0) return;
  for (const c of changes) {
    if (c.keep.length === 0) {
      throw new DbError(
        'DB_ERROR',
        `${ops.engine}: retire: the retired value is the only password of ${account(retired.username, c.host)}; left in place`,
      );
    }
  }
  const build = (plaintext: boolean): string => {
    const specs = changes.map((c) => {
      const rules: RuleSpec[] = c.keep.map((x) => {
        if (!plaintext) return x;
        if (isNative(x, hc)) return { plaintext: current.password };
        throw new StrictPasswordValidation(ops.engine);
      });
      return `${account(retired.username, c.host)} ${identifiedVia(rules)}`;
    });
    return `ALTER USER ${specs.join(', ')}`;
  };
  await ops.alterPreferringHashes(build, retired.username);
}
