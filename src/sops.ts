/**
 * Opening SOPS files (https://github.com/getsops/sops) with an age identity: the YAML and JSON stores.
 *
 * What SOPS does, and what this file does the same way (getsops/sops: sops.go `Tree.Decrypt`,
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
 */
import { createDecipheriv, createHash, timingSafeEqual } from 'node:crypto';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { Decrypter, armor } from 'age-encryption';
import { isAlias, isMap, isPair, isScalar, isSeq, parseAllDocuments, Scalar } from 'yaml';

export type SopsErrorCode =
  /** The file is not a SOPS file of a supported store: no `sops` metadata, or not YAML/JSON at all. */
  | 'SOPS_NOT_SOPS'
  /** None of the file's age recipients is the identity given (or the file has no age recipient). */
  | 'SOPS_NO_MATCHING_KEY'
  /** The file was changed after SOPS wrote it: a value or the MAC does not authenticate, or they disagree. */
  | 'SOPS_MAC_MISMATCH'
  /** The SOPS metadata or an encrypted value is malformed. */
  | 'SOPS_CORRUPT'
  /** A SOPS feature this reader does not implement (Shamir key groups, comment rules, aliases, ...). */
  | 'SOPS_UNSUPPORTED';

export class SopsError extends Error {
  constructor(readonly code: SopsErrorCode, message: string) {
    super(message);
    this.name = 'SopsError';
  }
}

export type SopsFormat = 'yaml' | 'json';
export type SopsValue = string | number | bigint | boolean | null | Uint8Array | SopsValue[] | SopsTree;
export interface SopsTree {
  [key: string]: SopsValue;
}

export interface SopsEntry {
  readonly value: SopsValue;
  /** False for a value SOPS left in clear (unencrypted_suffix and the like) and for a null. */
  readonly encrypted: boolean;
}

export interface SopsDocument {
  readonly format: SopsFormat;
  /** The decrypted document, without its `sops` metadata. */
  readonly data: SopsTree;
  /** Whether the MAC covers only the encrypted values (`mac_only_encrypted`). */
  readonly macOnlyEncrypted: boolean;
  /** The value at a path: an array of keys and list indices, or a dotted string ("db.admin.password", "hosts.0"). */
  get(at: string | readonly (string | number)[]): SopsEntry | undefined;
}

export interface OpenSopsOptions {
  /** The store; by default from the file name: `.json` is JSON, anything else YAML. */
  readonly format?: SopsFormat;
  /** The name used in error messages (default: the file's path). */
  readonly name?: string;
}

/** Files larger than this are refused (SOPS files are small; this bounds memory and work). */
export const MAX_SOPS_FILE_BYTES = 4 * 1024 * 1024;
const MAX_DEPTH = 100;

/*
 * sops.encrypted_regex and sops.unencrypted_regex come from the file, like the keys they are tried on:
 * whoever can commit writes both. sops runs them with Go's regexp, in linear time; V8's backtracking
 * engine takes exponential time on some ("^(a|a)*$" against forty a's and a "b"). So they run on V8's
 * linear-time engine (the `l` flag; the V8 option below makes that flag available and changes nothing
 * else), which refuses what it cannot run that way: backreferences and lookaround (Go's regexp has
 * neither) and very large nested counts. Its work is the regex's size times the text's, so the regex
 * (REGEX_LIMITS.length) and the total length of the distinct keys it is tried on are bounded.
 */
setFlagsFromString('--enable-experimental-regexp-engine');
const LINEAR_REGEX = ((): boolean => {
  try {
    return new RegExp('a', 'l').test('a');
  } catch {
    return false;
  }
})();

/** Key regexes: their length, and the work of trying one on keys, (regex length + 1) x (key length + 1) summed over the distinct keys. */
export const REGEX_LIMITS = { length: 256, work: 1 << 22 } as const;

/** The store of a file name: `.json` is JSON, anything else YAML (as `sops` decides). */
export function sopsFormatOf(file: string): SopsFormat {
  return path.extname(file).toLowerCase() === '.json' ? 'json' : 'yaml';
}

/** Reads and opens a SOPS file with one or more age identities (`AGE-SECRET-KEY-1...`). */
export async function openSopsFile(file: string, identity: string | readonly string[], options: OpenSopsOptions = {}): Promise<SopsDocument> {
  const name = options.name ?? file;
  let buf: Buffer;
  const fh = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new SopsError('SOPS_NOT_SOPS', `${name} cannot be read (${e.code ?? e.message})`);
  });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new SopsError('SOPS_NOT_SOPS', `${name} is not a regular file`);
    if (st.size > MAX_SOPS_FILE_BYTES) throw new SopsError('SOPS_UNSUPPORTED', `${name} is larger than ${MAX_SOPS_FILE_BYTES} bytes`);
    buf = await fh.readFile();
  } finally {
    await fh.close();
  }
  return openSops(buf, identity, { format: options.format ?? sopsFormatOf(file), name });
}

/** Opens the text of a SOPS file: decrypts the data key with `identity`, every value, and checks the MAC. */
export async function openSops(content: string | Uint8Array, identity: string | readonly string[], options: OpenSopsOptions = {}): Promise<SopsDocument> {
  const { format, name, tree, meta } = parseSopsText(content, options);
  if (!meta) {
    throw new SopsError('SOPS_NOT_SOPS', `${name} has no "sops" metadata: it is not a SOPS-encrypted file (encrypt it with sops to the age recipient of whoever reads it: the agent, or the daemon for a sops: secret)`);
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

export function sopsValueState(content: string | Uint8Array, at: string | readonly (string | number)[], options: OpenSopsOptions = {}): SopsValueState {
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
function parseSopsText(content: string | Uint8Array, options: OpenSopsOptions): { format: SopsFormat; name: string; tree: MapNode; meta: Metadata | undefined } {
  const format = options.format ?? 'yaml';
  const name = options.name ?? 'the SOPS file';
  let text: string;
  if (typeof content === 'string') text = content;
  else {
    if (content.length > MAX_SOPS_FILE_BYTES) throw new SopsError('SOPS_UNSUPPORTED', `${name} is larger than ${MAX_SOPS_FILE_BYTES} bytes`);
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

// ---------------------------------------------------------------------------------------------------
// The tree: mappings keep their order (the MAC depends on it); leaves keep their store type.

type Leaf = { k: 'str'; v: string } | { k: 'int'; v: bigint } | { k: 'float'; v: number } | { k: 'bool'; v: boolean } | { k: 'null' };
interface MapNode {
  k: 'map';
  entries: [string, Node][];
}
interface SeqNode {
  k: 'seq';
  items: Node[];
}
type Node = MapNode | SeqNode | Leaf;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;

// ---------------------------------------------------------------------------------------------------
// YAML store

function parseYaml(text: string, name: string): MapNode {
  const notSops = (why: string) => new SopsError('SOPS_NOT_SOPS', `${name} is not a SOPS YAML file: ${why}`);
  let docs;
  try {
    docs = parseAllDocuments(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text, {
      schema: 'failsafe',
      version: '1.2',
      uniqueKeys: true,
      merge: false,
      strict: true,
      prettyErrors: false,
    });
  } catch (e) {
    if (e instanceof RangeError) throw new SopsError('SOPS_UNSUPPORTED', `${name} nests too deeply`);
    throw e;
  }
  const list = Array.isArray(docs) ? docs : [];
  for (const d of list) {
    const err = d.errors[0];
    if (err) {
      if (err.code === 'DUPLICATE_KEY') throw new SopsError('SOPS_CORRUPT', `${name} has a duplicate key in a mapping`);
      throw notSops('the YAML does not parse');
    }
  }
  const nonEmpty = list.filter((d) => d.contents !== null);
  if (nonEmpty.length === 0) throw notSops('it is empty');
  if (nonEmpty.length > 1) throw new SopsError('SOPS_UNSUPPORTED', `${name} holds several YAML documents; rotor reads single-document SOPS files`);
  const node = yamlNode(nonEmpty[0]!.contents, name, 0);
  if (node.k !== 'map') throw notSops('its top level is not a mapping');
  return node;
}

function yamlNode(node: unknown, name: string, depth: number): Node {
  if (depth > MAX_DEPTH) throw new SopsError('SOPS_UNSUPPORTED', `${name} nests more than ${MAX_DEPTH} levels deep`);
  if (node === null || node === undefined) return { k: 'null' };
  if (isAlias(node)) throw new SopsError('SOPS_UNSUPPORTED', `${name} uses a YAML alias (*name); write the value out`);
  if (isMap(node)) {
    const entries: [string, Node][] = [];
    for (const pair of node.items) {
      if (!isPair(pair)) throw new SopsError('SOPS_CORRUPT', `${name} has a malformed mapping`);
      const key = yamlKey(pair.key, name);
      entries.push([key, yamlNode(pair.value, name, depth + 1)]);
    }
    return { k: 'map', entries };
  }
  if (isSeq(node)) return { k: 'seq', items: node.items.map((item) => yamlNode(item, name, depth + 1)) };
  if (isScalar(node)) return yamlScalar(node, name);
  throw new SopsError('SOPS_CORRUPT', `${name} has a YAML node of an unknown kind`);
}

function yamlKey(key: unknown, name: string): string {
  if (isScalar(key)) {
    const leaf = yamlScalar(key, name);
    if (leaf.k === 'str') return leaf.v;
  }
  throw new SopsError('SOPS_UNSUPPORTED', `${name} has a mapping key that is not a string (SOPS supports only string keys; quote it)`);
}

/** A scalar as gopkg.in/yaml.v3 decodes it into interface{}. */
function yamlScalar(node: Scalar, name: string): Leaf {
  const raw = String(node.value ?? '');
  const tag = node.tag;
  if (tag === 'tag:yaml.org,2002:str' || tag === '!!str') return { k: 'str', v: raw };
  if (tag !== undefined) throw new SopsError('SOPS_UNSUPPORTED', `${name} uses the YAML tag ${tag}; rotor reads untagged values only`);
  if (node.type !== Scalar.PLAIN) return { k: 'str', v: raw };
  return resolveYamlV3(raw, name);
}

const V3_MAP: Record<string, Leaf> = {
  true: { k: 'bool', v: true }, True: { k: 'bool', v: true }, TRUE: { k: 'bool', v: true },
  false: { k: 'bool', v: false }, False: { k: 'bool', v: false }, FALSE: { k: 'bool', v: false },
  '': { k: 'null' }, '~': { k: 'null' }, null: { k: 'null' }, Null: { k: 'null' }, NULL: { k: 'null' },
  '.nan': { k: 'float', v: NaN }, '.NaN': { k: 'float', v: NaN }, '.NAN': { k: 'float', v: NaN },
  '.inf': { k: 'float', v: Infinity }, '.Inf': { k: 'float', v: Infinity }, '.INF': { k: 'float', v: Infinity },
  '+.inf': { k: 'float', v: Infinity }, '+.Inf': { k: 'float', v: Infinity }, '+.INF': { k: 'float', v: Infinity },
  '-.inf': { k: 'float', v: -Infinity }, '-.Inf': { k: 'float', v: -Infinity }, '-.INF': { k: 'float', v: -Infinity },
};

/** Go's strconv.ParseInt(s, 0, 64) / ParseUint without the range check: sign, 0x / 0o / 0b / 0 (octal) prefixes. */
function goParseIntBase0(s: string): bigint | undefined {
  const m = /^([+-]?)(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (!m) return undefined;
  const body = m[2]!;
  let v: bigint;
  if (/^0[oO]/.test(body)) v = BigInt(`0o${body.slice(2)}`);
  else if (/^0[xXbB]/.test(body)) v = BigInt(body.toLowerCase());
  else if (body.length > 1 && body[0] === '0') v = BigInt(`0o${body.slice(1)}`);
  else v = BigInt(body);
  return m[1] === '-' ? -v : v;
}

/** yaml.v3's resolve() for an untagged plain scalar (resolve.go), as decoded into interface{}. */
function resolveYamlV3(s: string, name: string): Leaf {
  const known = Object.hasOwn(V3_MAP, s) ? V3_MAP[s] : undefined;
  if (known) return known;
  const c = s[0]!;
  if (c === '.') {
    // strconv.ParseFloat of a decimal starting with "."
    if (/^\.[0-9]+(?:[eE][+-]?[0-9]+)?$/.test(s) && Number.isFinite(Number(s))) return { k: 'float', v: Number(s) };
    return { k: 'str', v: s };
  }
  if (c === '+' || c === '-' || (c >= '0' && c <= '9')) {
    // (A timestamp is tried first, but resolves to its text: it never parses as a number below.)
    const plain = s.replace(/_/g, '');
    const n = goParseIntBase0(plain);
    if (n !== undefined && n >= INT64_MIN && n <= INT64_MAX) return { k: 'int', v: n };
    if (n !== undefined && n >= 0n && n <= UINT64_MAX && plain[0] !== '+' && plain[0] !== '-') {
      throw new SopsError('SOPS_UNSUPPORTED', `${name} has an integer beyond the signed 64-bit range, which SOPS cannot read either`);
    }
    if (/^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$/.test(plain)) {
      const f = Number(plain);
      if (Number.isFinite(f)) return { k: 'float', v: f };
    }
    return { k: 'str', v: s };
  }
  return { k: 'str', v: s };
}

// ---------------------------------------------------------------------------------------------------
// JSON store: a strict RFC 8259 parser that keeps key order and refuses duplicate keys.

function parseJson(text: string, name: string): MapNode {
  let i = 0;
  const notJson = (): never => {
    throw new SopsError('SOPS_NOT_SOPS', `${name} is not a SOPS JSON file: the JSON does not parse (offset ${i})`);
  };
  const ws = () => {
    while (i < text.length) {
      const c = text.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
  };
  const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;
  const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  const str = (): string => {
    STRING.lastIndex = i;
    const m = STRING.exec(text);
    if (!m) return notJson();
    i += m[0].length;
    return JSON.parse(m[0]) as string;
  };
  const value = (depth: number): Node => {
    if (depth > MAX_DEPTH) throw new SopsError('SOPS_UNSUPPORTED', `${name} nests more than ${MAX_DEPTH} levels deep`);
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const entries: [string, Node][] = [];
      const seen = new Set<string>();
      ws();
      if (text[i] === '}') {
        i++;
        return { k: 'map', entries };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') notJson();
        const key = str();
        if (seen.has(key)) throw new SopsError('SOPS_CORRUPT', `${name} has a duplicate key in an object`);
        seen.add(key);
        ws();
        if (text[i] !== ':') notJson();
        i++;
        entries.push([key, value(depth + 1)]);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return { k: 'map', entries };
        }
        notJson();
      }
    }
    if (c === '[') {
      i++;
      const items: Node[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return { k: 'seq', items };
      }
      for (;;) {
        items.push(value(depth + 1));
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return { k: 'seq', items };
        }
        notJson();
      }
    }
    if (c === '"') return { k: 'str', v: str() };
    for (const [word, leaf] of [['true', { k: 'bool', v: true }], ['false', { k: 'bool', v: false }], ['null', { k: 'null' }]] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return leaf;
      }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) return notJson();
    i += m[0].length;
    // stores/json: numbers are decoded with UseNumber, then an int when they parse as int64, else a float64.
    if (/^-?[0-9]+$/.test(m[0])) {
      const n = BigInt(m[0]);
      if (n >= INT64_MIN && n <= INT64_MAX) return { k: 'int', v: n };
    }
    const f = Number(m[0]);
    if (!Number.isFinite(f)) throw new SopsError('SOPS_UNSUPPORTED', `${name} has a number out of the float64 range`);
    return { k: 'float', v: f };
  };
  const root = value(0);
  ws();
  if (i !== text.length) notJson();
  if (root.k !== 'map') throw new SopsError('SOPS_NOT_SOPS', `${name} is not a SOPS JSON file: its top level is not an object`);
  return root;
}

// ---------------------------------------------------------------------------------------------------
// Metadata

interface Metadata {
  readonly lastModifiedAad: string;
  readonly mac: string | undefined;
  readonly ageKeys: readonly { recipient: string; enc: string }[];
  readonly otherKeyTypes: readonly string[];
  readonly rule: { kind: 'unencrypted_suffix' | 'encrypted_suffix'; suffix: string } | { kind: 'unencrypted_regex' | 'encrypted_regex'; re: RegExp };
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
  const m = /^([0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))T((?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9])(?:\.[0-9]+)?(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$/.exec(s);
  if (!m) return undefined;
  const offset = m[3] === '+00:00' || m[3] === '-00:00' ? 'Z' : m[3]!;
  return `${m[1]}T${m[2]}${offset}`;
}

const KEY_TYPES = ['age', 'pgp', 'kms', 'gcp_kms', 'azure_kv', 'hc_vault', 'hckms'];

/**
 * A key regex on the linear-time engine. It must also be valid with the `u` flag (closer to Go's
 * syntax: "[[:alpha:]]" is refused rather than read otherwise), and may not use the two escapes whose
 * meaning the `u` flag changes (\p{...} and \u{...}); keys outside the Basic Multilingual Plane are
 * refused where it is tried (see decryptTree). With that, `l` answers as `u` would.
 */
function keyRegex(source: string, which: string, name: string): RegExp {
  const unsupported = (why: string) => new SopsError('SOPS_UNSUPPORTED', `${name}: sops.${which} ${why}`);
  if (source.length > REGEX_LIMITS.length) throw unsupported(`has ${source.length} characters; rotor reads key regexes of at most ${REGEX_LIMITS.length}`);
  try {
    new RegExp(source, 'u');
  } catch {
    throw unsupported('is not a regular expression JavaScript can run the same way as Go');
  }
  for (let i = 0; i < source.length; i++) {
    if (source[i] !== '\\') continue;
    const next = source[++i];
    if (next === 'p' || next === 'P' || (next === 'u' && source[i + 1] === '{')) throw unsupported(`uses \\${next}${next === 'u' ? '{...}' : ''}, which rotor does not read; write the characters out`);
  }
  if (!LINEAR_REGEX) throw unsupported(`cannot be run in linear time on this Node.js (${process.version}), which has no linear-time regex engine; use encrypted_suffix or unencrypted_suffix`);
  try {
    return new RegExp(source, 'l');
  } catch {
    throw unsupported('cannot be run in linear time (it uses a backreference or a lookaround, which sops refuses too, or very large nested counts)');
  }
}

function readMetadata(node: Node, name: string): Metadata {
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

  const rules = (['unencrypted_suffix', 'encrypted_suffix', 'unencrypted_regex', 'encrypted_regex', 'unencrypted_comment_regex', 'encrypted_comment_regex'] as const).filter(
    (k) => str(k) !== undefined,
  );
  if (rules.length > 1) throw corrupt(`it sets ${rules.join(' and ')}; SOPS allows one of them`);
  if (rules[0] === 'unencrypted_comment_regex' || rules[0] === 'encrypted_comment_regex') {
    throw new SopsError('SOPS_UNSUPPORTED', `${name} selects values to encrypt by comments (${rules[0]}); rotor does not implement that rule, use a suffix or a key regex`);
  }
  let rule: Metadata['rule'] = { kind: 'unencrypted_suffix', suffix: '_unencrypted' };
  const which = rules[0];
  if (which === 'unencrypted_suffix' || which === 'encrypted_suffix') rule = { kind: which, suffix: str(which)! };
  else if (which === 'unencrypted_regex' || which === 'encrypted_regex') rule = { kind: which, re: keyRegex(str(which)!, which, name) };

  const macOnly = m.mac_only_encrypted;
  if (macOnly !== undefined && macOnly !== null && typeof macOnly !== 'boolean') throw corrupt('sops.mac_only_encrypted is not a boolean');

  // stores.go internalKeygroups: the top-level key lists form one group; otherwise key_groups.
  const hasKeys = (g: Record<string, unknown>) => KEY_TYPES.some((t) => Array.isArray(g[t]) && (g[t] as unknown[]).length > 0);
  let groups: Record<string, unknown>[];
  if (hasKeys(m)) groups = [m];
  else if (Array.isArray(m.key_groups) && m.key_groups.length > 0) groups = m.key_groups as Record<string, unknown>[];
  else throw corrupt('it lists no keys');
  if (groups.length > 1) {
    throw new SopsError('SOPS_UNSUPPORTED', `${name} splits its data key over ${groups.length} key groups (Shamir); rotor reads files with one key group`);
  }
  const group = groups[0]!;
  if (typeof group !== 'object' || group === null) throw corrupt('a key group is not a mapping');
  const ageKeys: { recipient: string; enc: string }[] = [];
  for (const entry of Array.isArray(group.age) ? (group.age as unknown[]) : []) {
    const e = entry as Record<string, unknown> | null;
    if (typeof e !== 'object' || e === null || typeof e.enc !== 'string') throw corrupt('an age entry has no "enc"');
    ageKeys.push({ recipient: typeof e.recipient === 'string' ? e.recipient : '(unnamed)', enc: e.enc });
  }
  const otherKeyTypes = KEY_TYPES.filter((t) => t !== 'age' && Array.isArray(group[t]) && (group[t] as unknown[]).length > 0);
  return { lastModifiedAad, mac: str('mac'), ageKeys, otherKeyTypes, rule, macOnlyEncrypted: macOnly === true };
}

// ---------------------------------------------------------------------------------------------------
// The data key

async function unwrapDataKey(meta: Metadata, identities: readonly string[], name: string): Promise<Buffer> {
  const decrypter = new Decrypter();
  for (const id of identities) decrypter.addIdentity(id);
  let malformed = false;
  for (const { enc } of meta.ageKeys) {
    let file: Uint8Array;
    try {
      file = armor.decode(enc);
    } catch {
      malformed = true;
      continue;
    }
    let key: Uint8Array;
    try {
      key = await decrypter.decrypt(file);
    } catch (e) {
      if (!/no identity matched/.test(String((e as Error).message))) malformed = true;
      continue;
    }
    if (key.length !== 32) throw new SopsError('SOPS_CORRUPT', `${name}: the data key is not 32 bytes`);
    return Buffer.from(key);
  }
  if (meta.ageKeys.length === 0) {
    const others = meta.otherKeyTypes.length ? ` (only ${meta.otherKeyTypes.join(', ')})` : '';
    throw new SopsError('SOPS_NO_MATCHING_KEY', `${name} is not encrypted to any age recipient${others}; add the agent's recipient: sops updatekeys, or sops rotate --add-age <recipient>`);
  }
  const recipients = meta.ageKeys.map((k) => k.recipient).join(', ');
  throw new SopsError(
    'SOPS_NO_MATCHING_KEY',
    `${name} cannot be opened with the agent's identity: it is encrypted to ${recipients}${malformed ? ' (and an entry that does not decrypt cleanly)' : ''}; add the agent's age recipient to the file (sops rotate --add-age <recipient>)`,
  );
}

// ---------------------------------------------------------------------------------------------------
// Values

type Plain = { k: 'str'; v: string; bytes: Buffer } | { k: 'int'; v: bigint } | { k: 'float'; v: number } | { k: 'bool'; v: boolean } | { k: 'bytes'; v: Buffer };

const ENC = /^ENC\[AES256_GCM,data:([A-Za-z0-9+/=]+),iv:([A-Za-z0-9+/=]+),tag:([A-Za-z0-9+/=]+),type:([a-z0-9]+)\]$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

class AuthFailure extends Error {}

/** aes/cipher.go Decrypt. Throws AuthFailure when GCM refuses (the value or its path changed). */
function decryptValue(text: string, key: Buffer, aad: string, where: () => string, name: string): Plain {
  if (text === '') return { k: 'str', v: '', bytes: Buffer.alloc(0) };
  const m = ENC.exec(text);
  if (!m || !BASE64.test(m[1]!) || !BASE64.test(m[2]!) || !BASE64.test(m[3]!)) {
    throw new SopsError('SOPS_CORRUPT', `${name}: ${where()} should hold an encrypted value (ENC[AES256_GCM,...]) and does not`);
  }
  const [data, iv, tag] = [m[1]!, m[2]!, m[3]!].map((b) => Buffer.from(b, 'base64')) as [Buffer, Buffer, Buffer];
  const type = m[4]!;
  if (iv.length === 0 || tag.length !== 16) throw new SopsError('SOPS_CORRUPT', `${name}: ${where()} has a malformed IV or tag`);
  let out: Buffer;
  try {
    const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
    d.setAAD(Buffer.from(aad, 'utf8'));
    d.setAuthTag(tag);
    out = Buffer.concat([d.update(data), d.final()]);
  } catch {
    throw new AuthFailure();
  }
  const s = out.toString('utf8');
  const bad = () => new SopsError('SOPS_CORRUPT', `${name}: ${where()} does not hold a valid ${type}`);
  switch (type) {
    case 'str':
      return { k: 'str', v: s, bytes: out };
    case 'int':
    case 'int64': {
      // strconv.Atoi / ParseInt(s, 10, 64)
      if (!/^[+-]?[0-9]+$/.test(s)) throw bad();
      const n = BigInt(s);
      if (n < INT64_MIN || n > INT64_MAX) throw bad();
      return { k: 'int', v: n };
    }
    case 'float': {
      // strconv.ParseFloat(s, 64) of what FormatFloat writes (decimal, NaN, +Inf, -Inf)
      if (/^[+-]?(?:inf|infinity)$/i.test(s)) return { k: 'float', v: s.startsWith('-') ? -Infinity : Infinity };
      if (/^[+-]?nan$/i.test(s)) return { k: 'float', v: NaN };
      // Not [0-9]+\.?[0-9]*: two ways to split the digits of "111...1x", quadratic on a 4 MB value.
      if (!/^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$/.test(s)) throw bad();
      const f = Number(s);
      if (!Number.isFinite(f)) throw bad();
      return { k: 'float', v: f };
    }
    case 'bool': {
      // strconv.ParseBool
      if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(s)) return { k: 'bool', v: true };
      if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(s)) return { k: 'bool', v: false };
      throw bad();
    }
    case 'bytes':
      return { k: 'bytes', v: out };
    case 'comment':
      throw new SopsError('SOPS_CORRUPT', `${name}: ${where()} holds an encrypted comment where a value belongs`);
    default:
      throw new SopsError('SOPS_UNSUPPORTED', `${name}: ${where()} has the unknown SOPS type "${type}"`);
  }
}

/** Go's strconv.FormatFloat(f, 'f', -1, 64): the shortest digits that read back, never an exponent. */
export function goFormatFloat(f: number): string {
  if (Number.isNaN(f)) return 'NaN';
  if (f === Infinity) return '+Inf';
  if (f === -Infinity) return '-Inf';
  if (f === 0) return Object.is(f, -0) ? '-0' : '0';
  const sign = f < 0 ? '-' : '';
  const [mant, exp] = Math.abs(f).toExponential().split('e') as [string, string];
  const digits = mant.replace('.', '');
  const e = Number(exp);
  let out: string;
  if (e >= 0) {
    const intLen = e + 1;
    out = digits.length <= intLen ? digits + '0'.repeat(intLen - digits.length) : `${digits.slice(0, intLen)}.${digits.slice(intLen)}`;
  } else {
    out = `0.${'0'.repeat(-e - 1)}${digits}`;
  }
  return sign + out;
}

/** sops.go ToBytes: what a value contributes to the MAC. */
function macBytes(v: Plain | Leaf): Buffer {
  switch (v.k) {
    case 'str':
      return 'bytes' in v ? v.bytes : Buffer.from(v.v, 'utf8');
    case 'int':
      return Buffer.from(v.v.toString(), 'utf8');
    case 'float':
      return Buffer.from(goFormatFloat(v.v), 'utf8');
    case 'bool':
      return Buffer.from(v.v ? 'True' : 'False', 'utf8');
    case 'bytes':
      return v.v;
    case 'null':
      return Buffer.alloc(0);
  }
}

function toValue(v: Plain | Leaf): SopsValue {
  switch (v.k) {
    case 'int':
      return v.v >= BigInt(Number.MIN_SAFE_INTEGER) && v.v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.v) : v.v;
    case 'null':
      return null;
    case 'bytes':
      return new Uint8Array(v.v);
    default:
      return v.v;
  }
}

function newTree(): SopsTree {
  return Object.create(null) as SopsTree;
}

/** The SHA-256 of "sops": how SOPS starts the hash when mac_only_encrypted is set. */
const MAC_ONLY_ENCRYPTED_INIT = createHash('sha256').update('sops').digest();

/**
 * sops.go shouldBeEncrypted, as a function of the mapping keys on a value's path: whether SOPS
 * encrypts that value, by the file's rule. A key regex is tried once per distinct key (a key is on the
 * path of every value under it), within REGEX_LIMITS.work steps for the whole file.
 */
function encryptionRule(rule: Metadata['rule'], name: string): (keys: readonly string[]) => boolean {
  const tried = new Map<string, boolean>();
  let work = 0;
  const matches = (re: RegExp, k: string): boolean => {
    let hit = tried.get(k);
    if (hit === undefined) {
      work += (re.source.length + 1) * (k.length + 1);
      if (work > REGEX_LIMITS.work) {
        throw new SopsError('SOPS_UNSUPPORTED', `${name}: its keys are too many or too long to try sops.${rule.kind} on (more than ${REGEX_LIMITS.work} steps); use a shorter regex, or encrypted_suffix or unencrypted_suffix`);
      }
      if (/[\uD800-\uDFFF]/.test(k)) throw new SopsError('SOPS_UNSUPPORTED', `${name}: a key has a character outside the Basic Multilingual Plane, which rotor does not try sops.${rule.kind} on; use encrypted_suffix or unencrypted_suffix`);
      hit = re.test(k);
      tried.set(k, hit);
    }
    return hit;
  };
  return (keys) => {
    switch (rule.kind) {
      case 'unencrypted_suffix':
        return !keys.some((k) => k.endsWith(rule.suffix));
      case 'encrypted_suffix':
        return keys.some((k) => k.endsWith(rule.suffix));
      case 'unencrypted_regex':
        return !keys.some((k) => matches(rule.re, k));
      case 'encrypted_regex':
        return keys.some((k) => matches(rule.re, k));
    }
  };
}

function decryptTree(tree: MapNode, meta: Metadata, key: Buffer, format: SopsFormat, name: string): SopsDocument {
  const hash = createHash('sha512');
  if (meta.macOnlyEncrypted) hash.update(MAC_ONLY_ENCRYPTED_INIT);
  const encryptedPaths = new Set<string>();
  const shouldBeEncrypted = encryptionRule(meta.rule, name);
  const describe = (at: readonly (string | number)[]) => () => (at.length ? `the value at ${at.map(String).join('.')}` : 'a value');

  // `keys` is SOPS's path (mapping keys only); `at` adds list indices, for messages and lookups.
  const walk = (node: Node, keys: string[], at: (string | number)[]): SopsValue => {
    switch (node.k) {
      case 'map': {
        const out = newTree();
        for (const [k, child] of node.entries) out[k] = walk(child, [...keys, k], [...at, k]);
        return out;
      }
      case 'seq':
        return node.items.map((child, i) => walk(child, keys, [...at, i]));
      case 'null':
        return null;
      default: {
        const encrypted = shouldBeEncrypted(keys);
        let v: Plain | Leaf = node;
        if (encrypted) {
          if (node.k !== 'str') throw new SopsError('SOPS_CORRUPT', `${name}: ${describe(at)()} should be encrypted but is a ${node.k === 'bool' ? 'boolean' : 'number'} in clear`);
          try {
            v = decryptValue(node.v, key, `${keys.join(':')}:`, describe(at), name);
          } catch (e) {
            if (e instanceof AuthFailure) {
              throw new SopsError('SOPS_MAC_MISMATCH', `${name}: ${describe(at)()} does not authenticate: it was edited, moved to another key, or encrypted with another data key`);
            }
            throw e;
          }
          encryptedPaths.add(JSON.stringify(at));
        }
        if (!meta.macOnlyEncrypted || encrypted) hash.update(macBytes(v));
        return toValue(v);
      }
    }
  };
  const data = walk(tree, [], []) as SopsTree;
  const computed = Buffer.from(hash.digest('hex').toUpperCase(), 'utf8');

  if (meta.mac === undefined) throw new SopsError('SOPS_MAC_MISMATCH', `${name} has no MAC (sops.mac); re-encrypt it with sops`);
  let stored: Plain;
  try {
    stored = decryptValue(meta.mac, key, meta.lastModifiedAad, () => 'sops.mac', name);
  } catch (e) {
    if (e instanceof AuthFailure) throw new SopsError('SOPS_MAC_MISMATCH', `${name}: the MAC does not authenticate (sops.mac or sops.lastmodified was changed)`);
    throw e;
  }
  const storedBytes = stored.k === 'str' ? stored.bytes : Buffer.alloc(0);
  if (storedBytes.length !== computed.length || !timingSafeEqual(storedBytes, computed)) {
    throw new SopsError('SOPS_MAC_MISMATCH', `${name} was changed after SOPS encrypted it: its MAC does not match its ${meta.macOnlyEncrypted ? 'encrypted values' : 'values'} (a value was edited, added, removed or reordered)`);
  }

  const get = (at: string | readonly (string | number)[]): SopsEntry | undefined => {
    const steps = typeof at === 'string' ? at.split('.') : at;
    let cur: SopsValue | undefined = data;
    const resolved: (string | number)[] = [];
    for (const step of steps) {
      if (Array.isArray(cur)) {
        const i = typeof step === 'number' ? step : /^(?:0|[1-9][0-9]*)$/.test(step) ? Number(step) : NaN;
        if (!Number.isInteger(i) || i < 0 || i >= cur.length) return undefined;
        cur = cur[i];
        resolved.push(i);
      } else if (cur !== null && typeof cur === 'object' && !(cur instanceof Uint8Array)) {
        const k = String(step);
        if (!Object.hasOwn(cur, k)) return undefined;
        cur = (cur as SopsTree)[k];
        resolved.push(k);
      } else return undefined;
    }
    if (cur === undefined) return undefined;
    return { value: cur, encrypted: encryptedPaths.has(JSON.stringify(resolved)) };
  };
  return { format, data, macOnlyEncrypted: meta.macOnlyEncrypted, get };
}
