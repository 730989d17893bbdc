/**
 * Checking what goes into the store: keys, JSON values and batches. Errors name the key at most, never a
 * value (not even a piece of one: JSON.parse's messages quote their input, so they are never passed on).
 */
import type { Json, Op } from './types.js';

export const MAX_KEY_BYTES = 1024;
const MAX_DEPTH = 64;

export function checkKey(key: unknown): asserts key is string {
  if (typeof key !== 'string' || key.length === 0) throw new Error('a state key is a non-empty string');
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) throw new Error(`a state key is at most ${MAX_KEY_BYTES} bytes (this one has ${bytes})`);
}

function keyName(key: string): string {
  return JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}...` : key);
}

/** Throws unless `value` is plain JSON (finite numbers, plain objects and arrays, no cycles). */
function checkJson(value: unknown, key: string, depth: number): void {
  if (value === null) return;
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(value))
        throw new Error(`the value of ${keyName(key)} is not JSON: it holds a number that is not finite`);
      return;
    case 'object': {
      if (depth >= MAX_DEPTH)
        throw new Error(`the value of ${keyName(key)} is nested deeper than ${MAX_DEPTH} levels (or is circular)`);
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) checkJson(value[i], key, depth + 1);
        return;
      }
      const proto: unknown = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null)
        throw new Error(`the value of ${keyName(key)} is not JSON: it holds an object that is not a plain object`);
      for (const k of Object.keys(value)) checkJson((value as Record<string, unknown>)[k], key, depth + 1);
      return;
    }
    default:
      throw new Error(`the value of ${keyName(key)} is not JSON: it holds a ${typeof value}`);
  }
}

export function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

export interface Batch {
  /** The operations, as they are applied: private, frozen copies. */
  readonly ops: readonly Op[];
  /** The operations as JSON, exactly as they are written to the log. */
  readonly json: string;
}

/** Checks a batch and takes a frozen copy, so that the caller may change its objects afterwards. */
export function prepareBatch(ops: readonly Op[]): Batch {
  if (!Array.isArray(ops)) throw new Error('a batch is an array of operations');
  const plain: Op[] = [];
  for (const op of ops as readonly unknown[]) {
    if (op === null || typeof op !== 'object')
      throw new Error('an operation is { op: "put", key, value } or { op: "delete", key }');
    const { op: kind, key, value } = op as { op?: unknown; key?: unknown; value?: unknown };
    checkKey(key);
    if (kind === 'put') {
      if (value === undefined) throw new Error(`put ${keyName(key)} has no value`);
      checkJson(value, key, 0);
      plain.push({ op: 'put', key, value: value as Json });
    } else if (kind === 'delete') {
      plain.push({ op: 'delete', key });
    } else {
      throw new Error('an operation is { op: "put", key, value } or { op: "delete", key }');
    }
  }
  const json = JSON.stringify(plain);
  return { json, ops: deepFreeze(JSON.parse(json) as Op[]) };
}

/** Checks the operations of a record read back from the log (already JSON); returns them frozen. */
export function checkStoredOps(ops: unknown): readonly Op[] | undefined {
  if (!Array.isArray(ops)) return undefined;
  for (const op of ops as unknown[]) {
    if (op === null || typeof op !== 'object') return undefined;
    const o = op as { op?: unknown; key?: unknown; value?: unknown };
    if (typeof o.key !== 'string' || o.key.length === 0 || Buffer.byteLength(o.key) > MAX_KEY_BYTES) return undefined;
    if (!(o.op === 'delete' || (o.op === 'put' && o.value !== undefined))) return undefined;
  }
  return deepFreeze(ops as Op[]);
}
