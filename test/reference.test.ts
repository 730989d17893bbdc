/**
 * The documentation: docs/reference/ is generated from the sources of truth (the schemas, the commands'
 * flag declarations and --help texts, the problem codes) by scripts/gen-reference.mjs, and must match
 * what the sources make today; every relative link of README.md and docs/ leads to a file that exists,
 * and to a heading of it when it names one.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { AGENT_CONFIG_CODES } from '../agent/src/config.js';
import { AGENT_FLAGS, HELP as AGENT_HELP } from '../agent/src/main.js';
// @ts-expect-error: a plain ES module without type declarations
import { pages, readSchemas, slug } from '../scripts/gen-reference.mjs';
import { COMMANDS, HELP } from '../src/cli/main.js';
import { CODES } from '../src/model/problems.js';
import { flagEnv, flagLabel, optionsHelp } from '../src/util/args.js';
import { ROOT } from './helpers.js';

const generate = pages as (m: object, s: unknown) => Map<string, string>;
const anchorOf = slug as (heading: string) => string;

t.test('docs/reference/ is what scripts/gen-reference.mjs makes from the sources', async (t) => {
  const modules = {
    COMMANDS,
    HELP,
    optionsHelp,
    flagEnv,
    flagLabel,
    AGENT_FLAGS,
    AGENT_HELP,
    CODES,
    AGENT_CONFIG_CODES,
  };
  const made = generate(modules, (readSchemas as (root: string) => unknown)(ROOT));
  t.ok(made.size >= 3, 'the generator makes the reference pages');
  for (const [rel, text] of made) {
    const file = path.join(ROOT, rel);
    const committed = existsSync(file) ? readFileSync(file, 'utf8') : undefined;
    const a = (committed ?? '').split('\n');
    const b = text.split('\n');
    const at = committed === text ? -1 : b.findIndex((line, i) => line !== a[i]);
    const where =
      committed === undefined
        ? 'it is missing'
        : `first difference at line ${at + 1}: ${JSON.stringify(b[at] ?? '(end)')}`;
    const stale = `${rel} is stale (${where}): run \`npm run docs:reference\``;
    t.ok(committed === text, committed === text ? `${rel} is up to date` : stale);
  }
  const errors = made.get('docs/reference/errors.md') ?? '';
  for (const code of [...Object.keys(CODES), ...Object.keys(AGENT_CONFIG_CODES)]) {
    if (!errors.includes(`| \`${code}\` |`)) t.fail(`errors.md lists ${code}`);
  }
  const commands = made.get('docs/reference/commands.md') ?? '';
  for (const name of Object.keys(COMMANDS)) {
    t.ok(commands.includes(`\n## rotor ${name}\n`), `commands.md has rotor ${name}`);
  }
});

/** README.md and every markdown page under docs/, relative to the repository root. */
function markdownFiles(): string[] {
  const out = ['README.md'];
  const walk = (dir: string) => {
    for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.md')) out.push(rel);
    }
  };
  walk('docs');
  return out;
}

/** The text outside fenced code blocks and inline code, where a link is a link. */
function prose(text: string): string {
  return text.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '').replace(/(`+)[\s\S]*?\1/g, '');
}

/** The anchors of a page's headings as GitHub makes them (a repeated heading gets -1, -2, ...). */
function anchors(text: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  const withoutCode = text.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
  for (const m of withoutCode.matchAll(/^#{1,6}\s+(.+?)\s*#*\s*$/gm)) {
    const heading = m[1]!.replace(/\[([^\]]*)\]\([^)]*\)/g, '$1');
    const base = anchorOf(heading);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

t.test('every relative link in README.md and docs/ points at a file that exists, and its heading', async (t) => {
  const files = markdownFiles();
  t.ok(files.length > 5, `${files.length} pages`);
  let links = 0;
  for (const rel of files) {
    const text = readFileSync(path.join(ROOT, rel), 'utf8');
    for (const m of prose(text).matchAll(/!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1]!;
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
      links++;
      const [file, anchor] = target.split('#') as [string, string | undefined];
      const here = path.join(ROOT, rel);
      const resolved = file === '' ? here : path.resolve(path.dirname(here), decodeURI(file));
      if (!resolved.startsWith(ROOT + path.sep)) {
        t.fail(`${rel}: ${target} points outside the repository`);
        continue;
      }
      if (!existsSync(resolved)) {
        t.fail(`${rel}: ${target} does not exist`);
        continue;
      }
      if (anchor !== undefined && resolved.endsWith('.md') && statSync(resolved).isFile()) {
        const heads = anchors(readFileSync(resolved, 'utf8'));
        if (!heads.has(anchor)) t.fail(`${rel}: ${target}: no heading with the anchor #${anchor}`);
      }
    }
  }
  t.ok(links > 50, `${links} relative links checked`);
});

t.test('the documentation refers to nothing outside the repository', async (t) => {
  for (const rel of markdownFiles()) {
    const text = readFileSync(path.join(ROOT, rel), 'utf8');
    t.notMatch(text, /DESIGN\.md|STYLE\.md|\.\.\/shared\b/, `${rel} names no file outside the repository`);
  }
});
