/**
 * The linter and formatter (Biome, configured in biome.json) run with the tests: a change that breaks
 * a lint rule or the formatting fails `npm test`. Fix with `npm run format` (formatting, import order
 * and the safe fixes), then what is left by hand.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import t from 'tap';
import { ROOT } from './helpers.js';

t.test('biome check finds nothing to fix', async (t) => {
  const biome = path.join(ROOT, 'node_modules', '.bin', 'biome');
  const r = spawnSync(biome, ['check', '--colors=off', '--max-diagnostics=50', '.'], { cwd: ROOT, encoding: 'utf8' });
  t.equal(r.error, undefined, 'biome runs');
  t.equal(r.status, 0, `no lint or formatting problem (npm run format, then fix the rest):\n${r.stdout}${r.stderr}`);
  t.match(r.stdout + r.stderr, /Checked \d+ files/, 'it checked the files');
});
