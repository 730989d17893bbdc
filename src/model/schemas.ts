/**
 * Validation of each document against the JSON Schema of its kind (schemas/, the single source of
 * truth). ajv errors become problems with positions, stable codes and messages that say what to do.
 */
import type { ErrorObject, ValidateFunction } from 'ajv';
import { readSchema } from '../paths.js';
import { errorPath, lengthMessage, quoteHint, uniqueProblems, valueAt } from './ajv-problems.js';
import type { Code, Problem } from './problems.js';
import { suggest } from './problems.js';
import * as compiled from './schema-validators.js';
import type { ParsedDoc, Path } from './yaml.js';
import { positionOf } from './yaml.js';

export const KINDS = ['Config', 'Policy', 'Secret', 'Target', 'Agent', 'Consumer'] as const;
export type Kind = (typeof KINDS)[number];

function loadSchema(file: string): Record<string, unknown> {
  return readSchema(file);
}

/**
 * The validators, compiled ahead of time from schemas/ by scripts/gen-types.mjs (ajv standalone code),
 * so that no command pays for compiling them at start-up.
 */
const validators = Object.fromEntries(
  KINDS.map((k) => [k, (compiled as unknown as Record<string, ValidateFunction>)[k.toLowerCase()]]),
) as Record<Kind, ValidateFunction>;

/** The property names a kind allows at a path of its schema, for "did you mean" hints (read only then). */
function knownProperties(kind: Kind, instancePath: Path): string[] {
  let schema: Record<string, unknown> | undefined = loadCached(`${kind.toLowerCase()}.schema.json`);
  for (const step of instancePath) {
    const props = schema?.properties as Record<string, Record<string, unknown>> | undefined;
    let next: Record<string, unknown> | undefined = props?.[String(step)];
    if (next === undefined && schema?.additionalProperties && typeof schema.additionalProperties === 'object')
      next = schema.additionalProperties as Record<string, unknown>;
    if (next?.$ref && typeof next.$ref === 'string') next = resolveRef(next.$ref);
    schema = next;
  }
  const props = schema?.properties;
  return props ? Object.keys(props) : [];
}

function resolveRef(ref: string): Record<string, unknown> | undefined {
  const [file, pointer] = ref.split('#');
  let node: unknown = file ? loadCached(file) : undefined;
  for (const part of (pointer ?? '').split('/').filter(Boolean))
    node = (node as Record<string, unknown> | undefined)?.[part];
  return node as Record<string, unknown> | undefined;
}
const cache = new Map<string, Record<string, unknown>>();
function loadCached(file: string) {
  let s = cache.get(file);
  if (!s) cache.set(file, (s = loadSchema(file)));
  return s;
}

/** Validates one document of a known kind; returns its problems (empty when valid). */
export function validateSchema(kind: Kind, pd: ParsedDoc): Problem[] {
  const validate = validators[kind];
  if (validate(pd.data)) return [];
  return uniqueProblems(validate.errors ?? [], (err) => toProblem(kind, pd, err));
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  return `${typeof v}`;
}

const DEF_CODES: Record<string, { code: Code; what: string }> = {
  name: {
    code: 'NAME_INVALID',
    what: 'lower case letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters',
  },
  secretName: {
    code: 'NAME_INVALID',
    what: 'segments of lower case letters, digits, ".", "_" and "-", joined by "/" (no leading, trailing or doubled "/")',
  },
  duration: { code: 'DURATION_INVALID', what: 'a whole number and a unit, s, m, h or d (e.g. 30s, 10m, 24h, 30d)' },
  clock: { code: 'CLOCK_INVALID', what: 'a time of day, HH:MM in 24-hour form (e.g. 02:00)' },
};

function toProblem(kind: Kind, pd: ParsedDoc, err: ErrorObject): Problem | undefined {
  const at: Path = errorPath(err);
  const field = at.length ? at.join('.') : kind;
  const value = valueAt(pd.data, at);
  const def = /#\/\$defs\/([A-Za-z]+)\//.exec(err.schemaPath)?.[1];
  const mk = (code: Code, message: string, path: Path = at, key = false): Problem => ({
    ...positionOf(pd, path, key),
    severity: 'error',
    code,
    message,
  });

  switch (err.keyword) {
    case 'additionalProperties': {
      const prop = String((err.params as { additionalProperty: string }).additionalProperty);
      const hint = suggest(prop, knownProperties(kind, at));
      const where = at.length ? `in ${field}` : `in a ${kind}`;
      return mk(
        'SCHEMA_UNKNOWN_FIELD',
        `unknown field "${prop}" ${where}${hint ? `; did you mean "${hint}"?` : `; allowed: ${knownProperties(kind, at).join(', ')}`}`,
        [...at, prop],
        true,
      );
    }
    case 'required': {
      const prop = (err.params as { missingProperty: string }).missingProperty;
      return mk('SCHEMA_REQUIRED', `${at.length ? field : kind} needs the field "${prop}"`, at, at.length > 0);
    }
    case 'type': {
      const want = (err.params as { type: string }).type;
      const quote = quoteHint(want, value);
      return mk(
        'SCHEMA_TYPE',
        `${field} must be ${want === 'integer' ? 'a whole number' : `a ${want}`}, not ${describeValue(value)}${quote}`,
      );
    }
    case 'enum': {
      const allowed = (err.params as { allowedValues: unknown[] }).allowedValues.map(String);
      const hint = typeof value === 'string' ? suggest(value, allowed) : undefined;
      return mk(
        'SCHEMA_ENUM',
        `${field} must be one of ${allowed.join(', ')}${hint ? `; did you mean "${hint}"?` : ''}`,
      );
    }
    case 'const':
      return mk(
        'SCHEMA_ENUM',
        `${field} must be ${JSON.stringify((err.params as { allowedValue: unknown }).allowedValue)}`,
      );
    case 'pattern': {
      if (err.propertyName !== undefined) {
        return mk(
          'NAME_INVALID',
          `${field} field name ${JSON.stringify(err.propertyName)} is not valid: use letters, digits and "_", starting with a letter or "_", at most 64 characters`,
          [...at, err.propertyName],
          true,
        );
      }
      if (at[0] === 'audit' && at[1] === 'dir')
        return mk(
          'SCHEMA_INVALID',
          `audit.dir ${JSON.stringify(value)} must be a relative path inside the repository: segments of letters, digits, ".", "_" and "-", no "." or ".." segment`,
        );
      if (def && DEF_CODES[def])
        return mk(
          DEF_CODES[def].code,
          `${field} ${JSON.stringify(value)} is not valid: use ${DEF_CODES[def].what}${typeof value === 'string' && value !== value.toLowerCase() && def.toLowerCase().includes('name') ? `; try "${value.toLowerCase()}"` : ''}`,
        );
      if (at[0] === 'signingKey')
        return mk(
          'SCHEMA_INVALID',
          'signingKey must be "ed25519:" followed by the base64 of a 32-byte Ed25519 public key, as printed by `rotor keygen`',
        );
      if (at[0] === 'recipient')
        return mk(
          'AGENT_RECIPIENT_INVALID',
          'recipient must be an age recipient, "age1" and 58 more characters, as printed by `rotor keygen`',
        );
      if (kind === 'Consumer' && at[0] === 'secrets')
        return mk(
          'GLOB_INVALID',
          `${field} must be a secret name or glob: segments of lower case letters, digits, ".", "_", "-" and "*", joined by "/"`,
        );
      if (at[0] === 'database')
        return mk(
          'NAME_INVALID',
          `${field} must be a database user name without control characters (tabs, newlines, ...); quotes, spaces and other characters are fine`,
        );
      return mk('SCHEMA_INVALID', `${field} must match ${(err.params as { pattern: string }).pattern}`);
    }
    case 'propertyNames':
      return undefined; // reported by the pattern error on the name itself
    case 'minimum':
    case 'maximum': {
      const limit = (err.params as { limit: number }).limit;
      if (at[0] === 'retain' && err.keyword === 'minimum')
        return mk(
          'RETAIN_TOO_SMALL',
          `retain must be at least 2 (the current and the previous version), not ${String(value)}`,
        );
      return mk(
        'SCHEMA_RANGE',
        `${field} must be ${err.keyword === 'minimum' ? 'at least' : 'at most'} ${limit}, not ${String(value)}`,
      );
    }
    case 'minLength':
    case 'maxLength': {
      return mk('SCHEMA_RANGE', lengthMessage(field, err.keyword, (err.params as { limit: number }).limit));
    }
    case 'minItems':
    case 'maxItems':
    case 'minProperties':
    case 'maxProperties': {
      const limit = (err.params as { limit: number }).limit;
      const noun = err.keyword.endsWith('Items') ? 'entries' : 'fields';
      if (at[0] === 'database' && at[1] === 'usernames')
        return mk(
          'SCHEMA_RANGE',
          `usernames must list exactly two users (they take turns), not ${Array.isArray(value) ? value.length : 0}`,
        );
      return mk(
        'SCHEMA_RANGE',
        `${field} must have ${err.keyword.startsWith('min') ? 'at least' : 'at most'} ${limit} ${noun}`,
      );
    }
    default:
      return mk('SCHEMA_INVALID', `${field} ${err.message ?? 'is invalid'}`);
  }
}
