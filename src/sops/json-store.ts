/** The JSON store: a strict RFC 8259 parser that keeps key order and refuses duplicate keys. */
import { INT64_MAX, INT64_MIN } from './go-number.js';
import { MAX_DEPTH, type MapNode, type Node } from './tree.js';
import { SopsError } from './types.js';

export function parseJson(text: string, name: string): MapNode {
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
    for (const [word, leaf] of [
      ['true', { k: 'bool', v: true }],
      ['false', { k: 'bool', v: false }],
      ['null', { k: 'null' }],
    ] as const) {
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
  if (root.k !== 'map')
    throw new SopsError('SOPS_NOT_SOPS', `${name} is not a SOPS JSON file: its top level is not an object`);
  return root;
}
