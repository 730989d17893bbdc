import { readFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import t from 'tap';
import type { Glob } from '../src/model/glob.js';
import * as globModule from '../src/model/glob.js';

// Through the namespace, so that this file still runs (and fails where it should) against a glob
// module without globSteps, such as the backtracking one it replaced.
const { compileGlob, globSteps, GLOB_LIMITS, NameIndex } = globModule;

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

t.test('limits: at most 253 characters and 32 segments', async (t) => {
  t.type(compileGlob(Array(32).fill('a').join('/')), 'object', '32 segments compile');
  t.match(compileGlob(Array(33).fill('a').join('/')), /at most 32 segments; this one has 33/);
  t.match(compileGlob(Array(40).fill('**').join('/')), /at most 32 segments/);
  t.type(compileGlob('a'.repeat(253)), 'object', '253 characters compile');
  t.match(compileGlob('a'.repeat(254)), /at most 253 characters; this one has 254/);
});

t.test('the schemas bound globs within those limits', async (t) => {
  const schema = (f: string) => JSON.parse(readFileSync(path.join('schemas', f), 'utf8'));
  const consumer = schema('consumer.schema.json').properties.secrets;
  const ignore = schema('config.schema.json').properties.ignore;
  t.ok(consumer.items.maxLength <= GLOB_LIMITS.length, 'Consumer.secrets');
  t.ok(ignore.items.maxLength <= GLOB_LIMITS.length, 'Config.ignore');
  t.ok(consumer.maxItems <= 1000 && ignore.maxItems <= 100, 'and the number of globs');
});

/** The matcher before this one: a backtracking regex, compiled exactly as it was. */
function oldRegex(source: string, flags = ''): RegExp {
  const segments = source.split('/');
  let re = '^';
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '**') {
      re += last ? '.*' : '(?:[^/]+/)*';
      continue;
    }
    re += seg
      .split('*')
      .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
      .join('[^/]*');
    if (!last) re += '/';
  }
  return new RegExp(`${re}$`, flags);
}

// Small globs and names over a small alphabet, so that the same letters and empty segments meet often.
const globArb = fc
  .array(
    fc.oneof(fc.constant('**'), fc.string({ unit: fc.constantFrom('a', 'b', '.', '*'), minLength: 1, maxLength: 5 })),
    { minLength: 1, maxLength: 5 },
  )
  .map((segs) => segs.join('/'))
  .filter((g) => typeof compileGlob(g) !== 'string');
const nameArb = (units: string[]) =>
  fc
    .array(fc.string({ unit: fc.constantFrom(...units), maxLength: 5 }), { minLength: 1, maxLength: 7 })
    .map((segs) => segs.join('/'));

t.test('the matcher agrees with the old regex on random globs and names', async (t) => {
  let matched = 0;
  fc.assert(
    fc.property(globArb, nameArb(['a', 'b', '.', 'ab']), (g, name) => {
      const glob = compileGlob(g) as Glob;
      const want = oldRegex(g).test(name);
      if (want) matched++;
      return glob.test(name) === want;
    }),
    { numRuns: 20_000 },
  );
  t.ok(matched > 1000, `the runs include matches, not only refusals (${matched} of 20,000)`);
  // Names from the globs themselves (a star read as a letter), which match far more often.
  fc.assert(
    fc.property(globArb, fc.constantFrom('', 'a', 'b', 'a/b', 'b/'), (g, extra) => {
      const name = g.replaceAll('**', 'a/b').replaceAll('*', extra);
      return (compileGlob(g) as Glob).test(name) === oldRegex(g).test(name);
    }),
    { numRuns: 5_000 },
  );
});

t.test('a last ** takes line breaks too, as * always did (the old regex stopped at them)', async (t) => {
  fc.assert(
    fc.property(
      globArb,
      nameArb(['a', 'b', '\n', '\u2028']),
      (g, name) => (compileGlob(g) as Glob).test(name) === oldRegex(g, 's').test(name),
    ),
    { numRuns: 10_000 },
  );
  const g = compileGlob('charts/**') as Glob;
  t.ok(g.test('charts/a\nb.yaml'));
  t.ok((compileGlob('charts/*') as Glob).test('charts/a\nb.yaml'));
});

/** A name of `segments` segments of `a`, the last one `tail`. */
function name(segments: number, tail = 'a'): string {
  return [...Array<string>(segments - 1).fill('a'), tail].join('/');
}

// Globs that make a backtracking matcher explode on names of a's, within the limits.
const PATHOLOGICAL = [
  `${Array(31).fill('**').join('/')}/x`,
  `${Array(16).fill('**').join('/')}/${Array(16).fill('a*').join('/')}`,
  `${Array(15).fill('**/a*').join('/')}/x`,
  `**/${'a*'.repeat(100)}b`,
  `${'*a'.repeat(60)}*b/**`,
  `**/*${'aaaaab*'.repeat(30)}x`,
];

t.test('a pathological glob against a 100-segment name answers in under 10 ms', async (t) => {
  // The old regex took 0.75 s (best of 5) on the first of these, and longer than anyone waits on the rest.
  const cases: [string, string][] = [
    ['**/**/**/**/**/x', name(100)],
    ...PATHOLOGICAL.map((g): [string, string] => [g, name(100)]),
    [`**/${'a*'.repeat(100)}b`, name(100, 'a'.repeat(54))],
    [`${'*a'.repeat(60)}*b/**`, `${'a'.repeat(200)}/${name(20)}`],
  ];
  for (const [g, n] of cases) {
    const glob = compileGlob(g);
    if (typeof glob === 'string') throw new Error(glob);
    let best = Infinity;
    for (let run = 0; run < 5; run++) {
      const start = process.hrtime.bigint();
      glob.test(n);
      best = Math.min(best, Number(process.hrtime.bigint() - start) / 1e6);
    }
    t.ok(
      best < 10,
      `${g.slice(0, 40)}${g.length > 40 ? '...' : ''} against ${n.length} characters: ${best.toFixed(3)} ms at best of 5`,
    );
    if (best >= 10) break; // the cases after it would take hours on a backtracking matcher
  }
});

t.test('the work is bounded by glob segments x name length and grows linearly with the name', async (t) => {
  for (const g of [...PATHOLOGICAL, '**/**/**/**/x', 'a/**/b*c*d/**']) {
    const glob = compileGlob(g);
    if (typeof glob === 'string') throw new Error(glob);
    const segments = g.split('/').length;
    for (const n of [name(100), name(100, 'a'.repeat(54)), name(50), 'a'.repeat(253)]) {
      const steps = globSteps(glob, n);
      t.ok(
        steps <= 3 * (segments + 1) * (n.length + 1),
        `${g.slice(0, 30)}: ${steps} steps for ${n.length} characters`,
      );
    }
    const small = globSteps(glob, name(40));
    const large = globSteps(glob, name(80));
    const long = globSteps(glob, name(80, 'a'.repeat(41)));
    t.ok(large <= 2.1 * small, `twice the segments, at most about twice the work (${small} -> ${large})`);
    t.ok(long <= 1.5 * large + 200, `a longer last segment, work in proportion (${large} -> ${long})`);
  }
  // Sanity: the step count is real work, a matching name costs what a failing one does.
  const g = compileGlob('**/a*b') as Glob;
  t.ok(globSteps(g, name(100, 'ab')) > 100);
  t.equal(g.test(name(100, 'ab')), true);
});
