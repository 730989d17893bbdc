/**
 * The `sops` metadata of a file (stores/stores.go `Metadata.ToInternal`): the age-encrypted data key,
 * the MAC and `lastmodified`, the encryption rule, `mac_only_encrypted`. Malformed metadata is
 * SOPS_CORRUPT; what rotor does not implement (Shamir key groups, comment rules) SOPS_UNSUPPORTED.
 */
import { type EncryptionRule, keyRegex } from './rule.js';
import type { Node } from './tree.js';
import { SopsError } from './types.js';

export interface Metadata {
  readonly lastModifiedAad: string;
  readonly mac: string | undefined;
  readonly ageKeys: readonly { recipient: string; enc: string }[];
  readonly otherKeyTypes: readonly string[];
  readonly rule: EncryptionRule;
  readonly macOnlyEncrypted: boolean;
}

function plain(node: Node): unknown {
  switch (node.k) {
    case 'map':
      return Object.fromEntries(node.entries.map(([k, v]) => [k, plain(v)]));
    case 'seq':
      return node.items.map(plain);
    case 'null':
      return null;
    case 'int':
      return Number(node.v);
    default:
      return node.v;
  }
}

/** Go's time.Parse(time.RFC3339, s).Format(time.RFC3339): whole seconds, "Z" for a zero offset. */
function rfc3339Aad(s: string): string | undefined {
  const m =
    /^([0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))T((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9])(?:\.[0-9]+)?(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$/.exec(
      s,
    );
  if (!m) return undefined;
  const offset = m[3] === '+00:00' || m[3] === '-00:00' ? 'Z' : m[3]!;
  return `${m[1]}T${m[2]}${offset}`;
}

const KEY_TYPES = ['age', 'pgp', 'kms', 'gcp_kms', 'azure_kv', 'hc_vault', 'hckms'];

export function readMetadata(node: Node, name: string): Metadata {
  const corrupt = (why: string) => new SopsError('SOPS_CORRUPT', `${name} has malformed SOPS metadata: ${why}`);
  if (node.k !== 'map') throw corrupt('"sops" is not a mapping');
  const m = plain(node) as Record<string, unknown>;
  const str = (k: string): string | undefined => {
    const v = m[k];
    if (v === undefined || v === null || v === '') return undefined;
    if (typeof v !== 'string') throw corrupt(`sops.${k} is not a string`);
    return v;
  };
  const lastModified = str('lastmodified');
  if (lastModified === undefined) throw corrupt('sops.lastmodified is missing');
  const lastModifiedAad = rfc3339Aad(lastModified);
  if (lastModifiedAad === undefined) throw corrupt('sops.lastmodified is not an RFC 3339 time');

  const rules = (
    [
      'unencrypted_suffix',
      'encrypted_suffix',
      'unencrypted_regex',
      'encrypted_regex',
      'unencrypted_comment_regex',
      'encrypted_comment_regex',
    ] as const
  ).filter((k) => str(k) !== undefined);
  if (rules.length > 1) throw corrupt(`it sets ${rules.join(' and ')}; SOPS allows one of them`);
  if (rules[0] === 'unencrypted_comment_regex' || rules[0] === 'encrypted_comment_regex') {
    throw new SopsError(
      'SOPS_UNSUPPORTED',
      `${name} selects values to encrypt by comments (${rules[0]}); rotor does not implement that rule, use a suffix or a key regex`,
    );
  }
  let rule: Metadata['rule'] = { kind: 'unencrypted_suffix', suffix: '_unencrypted' };
  const which = rules[0];
  if (which === 'unencrypted_suffix' || which === 'encrypted_suffix') rule = { kind: which, suffix: str(which)! };
  else if (which === 'unencrypted_regex' || which === 'encrypted_regex')
    rule = { kind: which, re: keyRegex(str(which)!, which, name) };

  const macOnly = m.mac_only_encrypted;
  if (macOnly !== undefined && macOnly !== null && typeof macOnly !== 'boolean')
    throw corrupt('sops.mac_only_encrypted is not a boolean');

  // stores.go internalKeygroups: the top-level key lists form one group; otherwise key_groups.
  const hasKeys = (g: Record<string, unknown>) =>
    KEY_TYPES.some((t) => Array.isArray(g[t]) && (g[t] as unknown[]).length > 0);
  let groups: Record<string, unknown>[];
  if (hasKeys(m)) groups = [m];
  else if (Array.isArray(m.key_groups) && m.key_groups.length > 0) groups = m.key_groups as Record<string, unknown>[];
  else throw corrupt('it lists no keys');
  if (groups.length > 1) {
    throw new SopsError(
      'SOPS_UNSUPPORTED',
      `${name} splits its data key over ${groups.length} key groups (Shamir); rotor reads files with one key group`,
    );
  }
  const group = groups[0]!;
  if (typeof group !== 'object' || group === null) throw corrupt('a key group is not a mapping');
  const ageKeys: { recipient: string; enc: string }[] = [];
  for (const entry of Array.isArray(group.age) ? (group.age as unknown[]) : []) {
    const e = entry as Record<string, unknown> | null;
    if (typeof e !== 'object' || e === null || typeof e.enc !== 'string') throw corrupt('an age entry has no "enc"');
    ageKeys.push({ recipient: typeof e.recipient === 'string' ? e.recipient : '(unnamed)', enc: e.enc });
  }
  const otherKeyTypes = KEY_TYPES.filter(
    (t) => t !== 'age' && Array.isArray(group[t]) && (group[t] as unknown[]).length > 0,
  );
  return { lastModifiedAad, mac: str('mac'), ageKeys, otherKeyTypes, rule, macOnlyEncrypted: macOnly === true };
}
