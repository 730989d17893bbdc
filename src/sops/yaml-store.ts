/**
 * The YAML store: a SOPS YAML file parsed into the tree. Plain scalars are typed as gopkg.in/yaml.v3
 * types them (0777 and 0x1F are ints, 1_000 is 1000, yes/no are strings), since unencrypted values
 * enter the MAC in their Go form.
 */
import { isAlias, isMap, isPair, isScalar, isSeq, parseAllDocuments, Scalar } from 'yaml';
import { goParseIntBase0, INT64_MAX, INT64_MIN, UINT64_MAX } from './go-number.js';
import { type Leaf, MAX_DEPTH, type MapNode, type Node } from './tree.js';
import { SopsError } from './types.js';

export function parseYaml(text: string, name: string): MapNode {
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
  if (nonEmpty.length > 1)
    throw new SopsError(
      'SOPS_UNSUPPORTED',
      `${name} holds several YAML documents; rotor reads single-document SOPS files`,
    );
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
  throw new SopsError(
    'SOPS_UNSUPPORTED',
    `${name} has a mapping key that is not a string (SOPS supports only string keys; quote it)`,
  );
}

/** A scalar as gopkg.in/yaml.v3 decodes it into interface{}. */
function yamlScalar(node: Scalar, name: string): Leaf {
  const raw = String(node.value ?? '');
  const tag = node.tag;
  if (tag === 'tag:yaml.org,2002:str' || tag === '!!str') return { k: 'str', v: raw };
  if (tag !== undefined)
    throw new SopsError('SOPS_UNSUPPORTED', `${name} uses the YAML tag ${tag}; rotor reads untagged values only`);
  if (node.type !== Scalar.PLAIN) return { k: 'str', v: raw };
  return resolveYamlV3(raw, name);
}

const V3_MAP: Record<string, Leaf> = {
  true: { k: 'bool', v: true },
  True: { k: 'bool', v: true },
  TRUE: { k: 'bool', v: true },
  false: { k: 'bool', v: false },
  False: { k: 'bool', v: false },
  FALSE: { k: 'bool', v: false },
  '': { k: 'null' },
  '~': { k: 'null' },
  null: { k: 'null' },
  Null: { k: 'null' },
  NULL: { k: 'null' },
  '.nan': { k: 'float', v: NaN },
  '.NaN': { k: 'float', v: NaN },
  '.NAN': { k: 'float', v: NaN },
  '.inf': { k: 'float', v: Infinity },
  '.Inf': { k: 'float', v: Infinity },
  '.INF': { k: 'float', v: Infinity },
  '+.inf': { k: 'float', v: Infinity },
  '+.Inf': { k: 'float', v: Infinity },
  '+.INF': { k: 'float', v: Infinity },
  '-.inf': { k: 'float', v: -Infinity },
  '-.Inf': { k: 'float', v: -Infinity },
  '-.INF': { k: 'float', v: -Infinity },
};

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
      throw new SopsError(
        'SOPS_UNSUPPORTED',
        `${name} has an integer beyond the signed 64-bit range, which SOPS cannot read either`,
      );
    }
    if (/^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$/.test(plain)) {
      const f = Number(plain);
      if (Number.isFinite(f)) return { k: 'float', v: f };
    }
    return { k: 'str', v: s };
  }
  return { k: 'str', v: s };
}
