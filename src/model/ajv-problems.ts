/**
 * Helpers for turning ajv's errors into problems: the place an error points at, the value there,
 * one problem per place and code, and the messages that read the same for every schema. Used by
 * the declarations' validation (schemas.ts); the agent's configuration maps its errors the same way.
 */
import type { ErrorObject } from 'ajv';
import type { Position } from './problems.js';

/** The path of the value an error is about (its JSON pointer, unescaped). */
export function errorPath(err: Pick<ErrorObject, 'instancePath'>): string[] {
  return err.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** The value at `at` in `data` (undefined when the path leads nowhere). */
export function valueAt(data: unknown, at: readonly (string | number)[]): unknown {
  return at.reduce<unknown>((v, k) => (v as Record<string, unknown> | undefined)?.[k as string], data);
}

/** The problems of ajv's errors, one per place and code (a pattern and a type error, say). */
export function uniqueProblems<P extends Position & { readonly code: string }>(
  errors: readonly ErrorObject[],
  toProblem: (err: ErrorObject) => P | undefined,
): P[] {
  const out: P[] = [];
  const seen = new Set<string>();
  for (const err of errors) {
    const p = toProblem(err);
    if (!p) continue;
    const id = `${p.line}:${p.col}:${p.code}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push(p);
  }
  return out;
}

/** Told when a string value must be written in quotes (YAML read a number or a boolean). */
export function quoteHint(want: string, value: unknown): string {
  return want === 'string' && (typeof value === 'number' || typeof value === 'boolean') ? ' (quote it: "…")' : '';
}

/** The message of a minLength or maxLength error on `field`. */
export function lengthMessage(field: string, keyword: 'minLength' | 'maxLength', limit: number): string {
  if (keyword === 'minLength' && limit === 1) return `${field} must not be empty`;
  return `${field} must be ${keyword === 'minLength' ? 'at least' : 'at most'} ${limit} characters long`;
}
