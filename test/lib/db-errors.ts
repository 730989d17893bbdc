/** The check that an engine's failure is a DbError of the expected code and holds no value. */
import type { Test } from 'tap';
import { DbError } from '../../agent/src/engines/types.js';

/**
 * `rejectsWith(t, p, code, what)`, which asserts that `p` rejects with a DbError of `code` in whose
 * text (message, stack, JSON, properties) none of `usedValues` is, nor with `o.hash` its hash; the list
 * may grow after this call.
 */
export function rejectsWithNone(usedValues: readonly string[], o: { hash?: (value: string) => string } = {}) {
  const { hash } = o;
  return async function rejectsWith(
    t: Test,
    p: Promise<unknown>,
    code: string,
    what: string,
  ): Promise<DbError | undefined> {
    try {
      await p;
      t.fail(`${what}: expected ${code}, but it succeeded`);
      return undefined;
    } catch (err) {
      t.type(err, DbError, `${what}: a DbError`);
      t.equal((err as DbError).code, code, `${what}: ${code}`);
      const e = err as Error;
      const text = [
        String(e),
        e.message,
        e.stack ?? '',
        JSON.stringify(e),
        JSON.stringify(Object.getOwnPropertyDescriptors(e)),
      ].join('\n');
      t.same(
        usedValues.filter((v) => text.includes(v) || (hash !== undefined && text.includes(hash(v)))),
        [],
        `${what}: no password${hash ? ' (nor its hash)' : ''} in the error`,
      );
      return err as DbError;
    }
  };
}
