/**
 * Opening SOPS files (https://github.com/getsops/sops) with an age identity: the YAML and JSON stores.
 *
 * What SOPS does, and what this module does the same way (getsops/sops: sops.go `Tree.Decrypt`,
 * `shouldBeEncrypted`, `ToBytes`; aes/cipher.go; stores/stores.go `Metadata.ToInternal`;
 * stores/yaml/store.go, stores/json/store.go; cmd/sops/common `DecryptTree`):
 * - The data key (32 bytes) is age-encrypted (ASCII armor) to each recipient under `sops.age[].enc`
 *   (or under `sops.key_groups[0].age` when the file uses one key group).
 * - Each value SOPS encrypts is `ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<t>]`: AES-256-GCM
 *   with the data key, the IV as written (32 bytes), a 16-byte tag, and as additional data the path of
 *   mapping keys to the value joined by ":" plus a trailing ":" (list indices are not part of it). An
 *   empty string is never encrypted and stays "".
 * - Which values are encrypted: all, except (one rule per file, default `unencrypted_suffix:
 *   _unencrypted`) those with a key on their path ending in `unencrypted_suffix` or matching
 *   `unencrypted_regex`, or, when `encrypted_suffix` / `encrypted_regex` is set, only those with a key
 *   on their path ending in / matching it. Null values are neither encrypted nor hashed.
 * - The MAC: SHA-512 over the bytes of every value (`ToBytes`: strings as is, ints in decimal, floats
 *   in Go's shortest 'f' form, booleans as True/False), encrypted or not, in document order, keys and
 *   comments excluded; with `mac_only_encrypted: true` the hash starts with SHA-256("sops") and covers
 *   only the values that are encrypted. It is stored upper-case hex, itself encrypted as above with
 *   `sops.lastmodified` (re-formatted as Go's RFC 3339, whole seconds) as the additional data.
 *
 * Plain scalars of the YAML store are typed as gopkg.in/yaml.v3 types them (0777 and 0x1F are ints,
 * 1_000 is 1000, yes/no are strings), since unencrypted values enter the MAC in their Go form.
 *
 * Errors carry a stable code and never a decrypted value (nor a cleartext one, nor a ciphertext).
 *
 * This module is the public API (the daemon, `rotor validate` / `plan` and the agent import it); the
 * rest of src/sops/ holds one part each: yaml-store.ts and json-store.ts parse a file into the tree
 * (tree.ts), metadata.ts reads `sops`, rule.ts says which values are encrypted, cipher.ts decrypts the
 * data key and the values, mac.ts hashes and checks, document.ts puts it together, go-number.ts has
 * Go's number forms, write.ts writes files for the tests and the demo.
 */
import { open } from 'node:fs/promises';
import path from 'node:path';
import { unwrapDataKey } from './cipher.js';
import { decryptTree } from './document.js';
import { parseJson } from './json-store.js';
import { type Metadata, readMetadata } from './metadata.js';
import { encryptionRule } from './rule.js';
import type { MapNode, Node } from './tree.js';
import { type OpenSopsOptions, type SopsDocument, SopsError, type SopsFormat } from './types.js';
import { parseYaml } from './yaml-store.js';

export { goFormatFloat } from './go-number.js';
export { REGEX_LIMITS } from './rule.js';
export type {
  OpenSopsOptions,
  SopsDocument,
  SopsEntry,
  SopsErrorCode,
  SopsFormat,
  SopsTree,
  SopsValue,
} from './types.js';
export { SopsError } from './types.js';

/** Files larger than this are refused (SOPS files are small; this bounds memory and work). */
export const MAX_SOPS_FILE_BYTES = 4 * 1024 * 1024;

/** The store of a file name: `.json` is JSON, anything else YAML (as `sops` decides). */
export function sopsFormatOf(file: string): SopsFormat {
  return path.extname(file).toLowerCase() === '.json' ? 'json' : 'yaml';
}

/** Reads and opens a SOPS file with one or more age identities (`AGE-SECRET-KEY-1...`). */
export async function openSopsFile(
  file: string,
  identity: string | readonly string[],
  options: OpenSopsOptions = {},
): Promise<SopsDocument> {
  const name = options.name ?? file;
  let buf: Buffer;
  const fh = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new SopsError('SOPS_NOT_SOPS', `${name} cannot be read (${e.code ?? e.message})`);
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new SopsError('SOPS_NOT_SOPS', `${name} is not a regular file`);
    if (st.size > MAX_SOPS_FILE_BYTES)
      throw new SopsError('SOPS_UNSUPPORTED', `${name} is larger than ${MAX_SOPS_FILE_BYTES} bytes`);
    buf = await fh.readFile();
  } finally {
    await fh.close();
  }
  return openSops(buf, identity, { format: options.format ?? sopsFormatOf(file), name });
}

/** Opens the text of a SOPS file: decrypts the data key with `identity`, every value, and checks the MAC. */
export async function openSops(
  content: string | Uint8Array,
  identity: string | readonly string[],
  options: OpenSopsOptions = {},
): Promise<SopsDocument> {
  const { format, name, tree, meta } = parseSopsText(content, options);
  if (!meta) {
    throw new SopsError(
      'SOPS_NOT_SOPS',
      `${name} has no "sops" metadata: it is not a SOPS-encrypted file (encrypt it with sops to the age recipient of whoever reads it: the agent, or the daemon for a sops: secret)`,
    );
  }
  const dataKey = await unwrapDataKey(meta, [identity].flat(), name);
  try {
    return decryptTree(tree, meta, dataKey, format, name);
  } finally {
    dataKey.fill(0);
  }
}

/**
 * What a file says about the value at `at` without any key (rotor validate and plan have none):
 * - 'encrypted': SOPS's rule for the file encrypts it (whether it decrypts and authenticates is for
 *   openSops to say, with a key);
 * - 'clear': it is stored in clear: the file's rule leaves it so (its key matches unencrypted_suffix
 *   or unencrypted_regex, or misses encrypted_suffix or encrypted_regex), or the file has no `sops`
 *   metadata at all (a plain YAML or JSON file);
 * - 'empty' (""), 'not-a-value' (a mapping, a list or null), 'missing' (no such key).
 * Throws a SopsError when the file does not parse as YAML/JSON or its metadata is malformed.
 */
export type SopsValueState = 'encrypted' | 'clear' | 'empty' | 'not-a-value' | 'missing';

/** The values of a file as sopsValueState sees them, parsed once for many lookups. */
export interface SopsOutline {
  stateOf(at: string | readonly (string | number)[]): SopsValueState;
}

export function sopsOutline(content: string | Uint8Array, options: OpenSopsOptions = {}): SopsOutline {
  const { tree, meta, name } = parseSopsText(content, options);
  const encrypted = meta ? encryptionRule(meta.rule, name) : undefined;
  return {
    stateOf(at) {
      let node: Node = tree;
      const keys: string[] = [];
      for (const step of typeof at === 'string' ? at.split('.') : at) {
        if (node.k === 'map') {
          const k = String(step);
          const entry: [string, Node] | undefined = node.entries.find(([key]) => key === k);
          if (!entry) return 'missing';
          node = entry[1];
          keys.push(k);
        } else if (node.k === 'seq') {
          const i = typeof step === 'number' ? step : /^(?:0|[1-9][0-9]*)$/.test(step) ? Number(step) : NaN;
          if (!Number.isInteger(i) || i < 0 || i >= node.items.length) return 'missing';
          node = node.items[i]!;
        } else return 'missing';
      }
      if (node.k === 'map' || node.k === 'seq' || node.k === 'null') return 'not-a-value';
      if (node.k === 'str' && node.v === '') return 'empty';
      return encrypted?.(keys) ? 'encrypted' : 'clear';
    },
  };
}

export function sopsValueState(
  content: string | Uint8Array,
  at: string | readonly (string | number)[],
  options: OpenSopsOptions = {},
): SopsValueState {
  return sopsOutline(content, options).stateOf(at);
}

/**
 * The message of SOPS_VALUE_CLEARTEXT, a `sops:` secret's value stored in clear (the daemon, rotor
 * validate and rotor plan say the same); never the value.
 */
export function sopsCleartextMessage(file: string, key: string): string {
  return `"${key}" in ${file} is stored in clear, not encrypted by sops (its key matches the file's unencrypted_suffix or unencrypted_regex, misses its encrypted_suffix or encrypted_regex, or the file is not a SOPS file): anyone who can read the repository can read it. Rename the key or change the rule so that sops encrypts it, encrypt the file with sops, and replace the value: the old one is in the repository's history`;
}

/** The text of a file parsed as its store, the `sops` metadata (if any) apart from the data. */
function parseSopsText(
  content: string | Uint8Array,
  options: OpenSopsOptions,
): { format: SopsFormat; name: string; tree: MapNode; meta: Metadata | undefined } {
  const format = options.format ?? 'yaml';
  const name = options.name ?? 'the SOPS file';
  let text: string;
  if (typeof content === 'string') text = content;
  else {
    if (content.length > MAX_SOPS_FILE_BYTES)
      throw new SopsError('SOPS_UNSUPPORTED', `${name} is larger than ${MAX_SOPS_FILE_BYTES} bytes`);
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(content);
    } catch {
      throw new SopsError('SOPS_NOT_SOPS', `${name} is not UTF-8 text, so not a SOPS ${format.toUpperCase()} file`);
    }
  }
  const root = format === 'json' ? parseJson(text, name) : parseYaml(text, name);
  const metaIndex = root.entries.findIndex(([k]) => k === 'sops');
  if (metaIndex < 0) return { format, name, tree: root, meta: undefined };
  const meta = readMetadata(root.entries[metaIndex]![1], name);
  return { format, name, tree: { k: 'map', entries: root.entries.filter((_, i) => i !== metaIndex) }, meta };
}
