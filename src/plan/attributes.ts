/**
 * `.gitattributes` changes that reach the audit log. The daemon keeps its log byte for byte whatever
 * attributes say (its clone overrides them), but the clones of people and tools follow them: a line
 * such as `*.jsonl text eol=crlf` rewrites the log in their checkouts, and `rotor audit verify` there
 * fails. `rotor plan` names every added or removed attributes line whose pattern matches a file of the
 * audit directory (or a month file still to come), and every macro definition, for the reviewer.
 */
import path from 'node:path';
import type { RepoSource } from '../model/source.js';
import type { Attention } from './plan.js';

/** Attributes files larger than this are not read: the change is named without its lines. */
const MAX_ATTRIBUTES_BYTES = 1024 * 1024;
/** Lines longer than this are not matched (git itself ignores attributes lines over 2 KiB). */
const MAX_LINE = 2048;

/** Matches one path segment against one pattern segment: `*` and `?` within it, `[...]` as any one character. */
function segmentMatches(pat: string, s: string): boolean {
  // Two pointers with one backtrack point (the last `*`): O(len(pat) * len(s)) at worst, no recursion.
  let p = 0;
  let i = 0;
  let star = -1;
  let mark = 0;
  while (i < s.length) {
    if (p < pat.length && pat[p] === '*') {
      star = p++;
      mark = i;
    } else if (p < pat.length && pat[p] === '[' && pat.indexOf(']', p + 2) > p) {
      p = pat.indexOf(']', p + 2) + 1; // any one character: over-approximates a class, never under
      i++;
    } else if (p + 1 < pat.length && pat[p] === '\\' && pat[p + 1] === s[i]) {
      p += 2;
      i++;
    } else if (p < pat.length && (pat[p] === '?' || pat[p] === s[i])) {
      p++;
      i++;
    } else if (star >= 0) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.length && pat[p] === '*') p++;
  return p === pat.length;
}

/** Whether a gitattributes pattern (relative to its file's directory) matches `rel`, '/'-separated. */
export function attributePatternMatches(pattern: string, rel: string): boolean {
  if (pattern.endsWith('/')) return false; // a directory pattern: it does not reach the files inside
  const names = rel.split('/');
  if (!pattern.includes('/')) return segmentMatches(pattern, names.at(-1)!);
  const pats = pattern.replace(/^\//, '').split('/');
  // reach[j]: the first j path segments are matched by the pattern segments seen so far
  let reach = new Array<boolean>(names.length + 1).fill(false);
  reach[0] = true;
  for (const ps of pats) {
    const next = new Array<boolean>(names.length + 1).fill(false);
    if (ps === '**') {
      const first = reach.indexOf(true); // zero or more segments from the first reachable point on
      if (first >= 0) next.fill(true, first);
    } else {
      for (let j = 0; j < names.length; j++) if (reach[j] && segmentMatches(ps, names[j]!)) next[j + 1] = true;
    }
    reach = next;
  }
  return reach[names.length] === true;
}

/** The pattern of an attributes line (`"..."` C-quoted or the first word), or undefined for blanks and comments. */
function patternOf(line: string): string | undefined {
  const t = line.trim();
  if (!t || t.startsWith('#')) return undefined;
  if (t.startsWith('"')) {
    const end = t.indexOf('"', 1);
    return end > 0 ? t.slice(1, end).replace(/\\(.)/g, '$1') : t.slice(1);
  }
  return t.split(/[ \t]/)[0];
}

function linesOf(buf: Buffer | Error | undefined): Set<string> {
  return new Set(
    buf instanceof Buffer
      ? buf
          .toString('utf8')
          .split('\n')
          .map((l) => l.replace(/\r$/, ''))
      : [],
  );
}

/**
 * The attention items of `.gitattributes` changes between base and head that apply to the audit log.
 * `auditFiles`: paths of audit files (either revision); `now` names the month file still to come.
 */
export async function attributeChanges(
  base: RepoSource,
  head: RepoSource,
  auditDir: string,
  auditFiles: readonly string[],
  now: number,
): Promise<Attention[]> {
  const [b, h] = await Promise.all([base.probe(auditDir), head.probe(auditDir)]);
  const files = [...new Set([...b.attributes, ...h.attributes])].sort();
  if (files.length === 0) return [];
  const limit = { maxBytes: MAX_ATTRIBUTES_BYTES };
  const [before, after] = await Promise.all([base.readMany(b.attributes, limit), head.readMany(h.attributes, limit)]);
  const month = new Date(now).toISOString().slice(0, 7);
  const samples = [...new Set([...auditFiles, `${auditDir}/${month}.jsonl`])];
  const out: Attention[] = [];
  for (const file of files) {
    const x = before.get(file);
    const y = after.get(file);
    if (x instanceof Buffer && y instanceof Buffer && x.equals(y)) continue;
    const dir = path.posix.dirname(file) === '.' ? '' : path.posix.dirname(file);
    const under = samples
      .filter((s) => !dir || s.startsWith(`${dir}/`))
      .map((s) => (dir ? s.slice(dir.length + 1) : s));
    const [old, now_] = [linesOf(x), linesOf(y)];
    const changed = [
      ...[...now_].filter((l) => !old.has(l)).map((l) => ({ l, how: 'added' })),
      ...[...old].filter((l) => !now_.has(l)).map((l) => ({ l, how: 'removed' })),
    ];
    const hits = changed.filter(({ l }) => {
      if (l.length > MAX_LINE) return false;
      if (l.trim().startsWith('[attr]')) return true; // a macro can change what any line means
      const pat = patternOf(l);
      return pat !== undefined && under.some((s) => attributePatternMatches(pat, s));
    });
    const unread = [x, y].find((v): v is Error => v instanceof Error);
    if (hits.length === 0 && !unread) continue;
    const shown = hits
      .slice(0, 3)
      .map(({ l, how }) => `${how} "${l.trim().slice(0, 120)}"`)
      .join('; ');
    out.push({
      subject: file,
      code: 'AUDIT_ATTRIBUTES_CHANGED',
      message:
        `${unread ? `could not be compared (${unread.message})` : `${shown}${hits.length > 3 ? ` and ${hits.length - 3} more` : ''}`}: ` +
        `these attributes apply to the audit log in ${auditDir}/. The daemon keeps its log byte for byte whatever they say, but people's and tools' clones follow them: ` +
        'text, eol, crlf, ident, filter or working-tree-encoding there rewrite the log in a checkout, and rotor audit verify fails on it. Leave the audit directory out of such lines',
    });
  }
  return out;
}
