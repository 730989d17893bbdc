/** Decrypting a parsed file into a SopsDocument: every value, the MAC checked, lookups by path. */
import { AuthFailure, decryptValue, type Plain } from './cipher.js';
import { checkMac, macBytes, macHash } from './mac.js';
import type { Metadata } from './metadata.js';
import { encryptionRule } from './rule.js';
import type { Leaf, MapNode, Node } from './tree.js';
import {
  type SopsDocument,
  type SopsEntry,
  SopsError,
  type SopsFormat,
  type SopsTree,
  type SopsValue,
} from './types.js';

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

export function decryptTree(
  tree: MapNode,
  meta: Metadata,
  key: Buffer,
  format: SopsFormat,
  name: string,
): SopsDocument {
  const hash = macHash(meta.macOnlyEncrypted);
  const encryptedPaths = new Set<string>();
  const shouldBeEncrypted = encryptionRule(meta.rule, name);
  const describe = (at: readonly (string | number)[]) => () =>
    at.length ? `the value at ${at.map(String).join('.')}` : 'a value';

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
          if (node.k !== 'str')
            throw new SopsError(
              'SOPS_CORRUPT',
              `${name}: ${describe(at)()} should be encrypted but is a ${node.k === 'bool' ? 'boolean' : 'number'} in clear`,
            );
          try {
            v = decryptValue(node.v, key, `${keys.join(':')}:`, describe(at), name);
          } catch (e) {
            if (e instanceof AuthFailure) {
              throw new SopsError(
                'SOPS_MAC_MISMATCH',
                `${name}: ${describe(at)()} does not authenticate: it was edited, moved to another key, or encrypted with another data key`,
              );
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
  checkMac(hash, meta, key, name);

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
