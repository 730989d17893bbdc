/**
 * Writing a SOPS YAML file the way `sops --encrypt --age RECIPIENT` does, for string values in nested
 * mappings: a fresh 32-byte data key age-encrypted (armored) to each recipient, each value
 * `ENC[AES256_GCM,data:,iv:,tag:,type:str]` with a 32-byte IV and the path of keys plus ":" as
 * additional data, and the MAC (SHA-512 over the values in document order, upper-case hex) encrypted
 * with `lastmodified` as additional data. A value with a key on its path that ends in the
 * `unencrypted_suffix` (default `_unencrypted`) or matches `unencrypted_regex` is left in clear and
 * still enters the MAC, as sops does. src/sops/index.ts is the reader (checked against files the real
 * `sops` wrote); this writer exists for the tests, the bundled example and the demo, where no `sops`
 * binary is at hand. People keep using `sops` itself.
 */
import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { armor, Encrypter } from 'age-encryption';
import { stringify } from 'yaml';

export interface SopsPlainTree {
  readonly [key: string]: string | SopsPlainTree;
}

function encryptValue(value: string, key: Buffer, aad: string): string {
  if (value === '') return '';
  const iv = randomBytes(32);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
  c.setAAD(Buffer.from(aad, 'utf8'));
  const data = Buffer.concat([c.update(value, 'utf8'), c.final()]);
  return `ENC[AES256_GCM,data:${data.toString('base64')},iv:${iv.toString('base64')},tag:${c.getAuthTag().toString('base64')},type:str]`;
}

/** Which values stay in clear: sops's `unencrypted_suffix` (the default, `_unencrypted`) or `unencrypted_regex`. */
export type SopsClearRule = { readonly unencryptedSuffix: string } | { readonly unencryptedRegex: string };

/** The text of a SOPS YAML file holding `tree`, readable with the identity of any of `recipients`. */
export async function sealSops(
  tree: SopsPlainTree,
  recipients: readonly string[],
  now: Date = new Date(),
  rule: SopsClearRule = { unencryptedSuffix: '_unencrypted' },
): Promise<string> {
  if (recipients.length === 0) throw new Error('sealSops needs at least one age recipient');
  const key = randomBytes(32);
  const mac = createHash('sha512');
  const clear =
    'unencryptedRegex' in rule
      ? (k: string) => new RegExp(rule.unencryptedRegex, 'u').test(k)
      : (k: string) => k.endsWith(rule.unencryptedSuffix);
  const walk = (node: SopsPlainTree, keys: string[]): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(node)) {
      const at = [...keys, k];
      if (typeof v === 'string') {
        mac.update(v, 'utf8');
        out[k] = at.some(clear) ? v : encryptValue(v, key, `${at.join(':')}:`);
      } else out[k] = walk(v, at);
    }
    return out;
  };
  const data = walk(tree, []);
  const lastmodified = now.toISOString().replace(/\.\d+Z$/, 'Z');
  const age = [];
  for (const recipient of recipients) {
    const e = new Encrypter();
    e.addRecipient(recipient);
    age.push({ recipient, enc: armor.encode(await e.encrypt(key)) });
  }
  const sops = {
    age,
    lastmodified,
    mac: encryptValue(mac.digest('hex').toUpperCase(), key, lastmodified),
    ...('unencryptedRegex' in rule
      ? { unencrypted_regex: rule.unencryptedRegex }
      : { unencrypted_suffix: rule.unencryptedSuffix }),
    version: '3.9.0',
  };
  return stringify({ ...data, sops }, { lineWidth: 0 });
}
