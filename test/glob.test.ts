import t from 'tap';
import { compileGlob, NameIndex } from '../src/model/glob.js';

t.test('* stays within one segment, ** crosses segments', async (t) => {
  const one = compileGlob('payments/*');
  const all = compileGlob('payments/**');
  if (typeof one === 'string' || typeof all === 'string') throw new Error('globs must compile');
  t.ok(one.test('payments/db'));
  t.notOk(one.test('payments/a/b'));
  t.notOk(one.test('payments'));
  t.ok(all.test('payments/a/b'));
  t.ok(all.test('payments/db'));
  t.notOk(all.test('paymentsx/db'));
  const mid = compileGlob('a/**/z');
  if (typeof mid === 'string') throw new Error(mid);
  t.ok(mid.test('a/z'));
  t.ok(mid.test('a/b/c/z'));
  t.notOk(mid.test('a/b/c/y'));
  const literal = compileGlob('a.b/c');
  if (typeof literal === 'string') throw new Error(literal);
  t.notOk(literal.test('axb/c'), 'dots are literal');
});

t.test('malformed globs are refused with a reason', async (t) => {
  t.match(compileGlob('a/x**'), /whole segment/);
  t.match(compileGlob('a//b'), /empty segment/);
  t.match(compileGlob('a/../b'), /not a valid segment/);
});

t.test('the index finds matches from the literal prefix', async (t) => {
  const index = new NameIndex(['b/x', 'a/1', 'a/2', 'a/sub/3', 'c']);
  const g = compileGlob('a/*');
  if (typeof g === 'string') throw new Error(g);
  t.same(index.match(g), ['a/1', 'a/2']);
  const none = compileGlob('d/*');
  if (typeof none === 'string') throw new Error(none);
  t.notOk(index.any(none));
  const star = compileGlob('*');
  if (typeof star === 'string') throw new Error(star);
  t.same(index.match(star), ['c']);
});
