/**
 * Consumer globs over secret names: `*` matches within one segment, `**` (a whole segment) matches any
 * number of segments, including none. Everything else is literal.
 *
 * Precisely (names are split at "/"): a segment with `*` matches one name segment (each `*` any run of
 * characters but "/", possibly empty); a `**` that is not the last segment matches zero or more
 * non-empty name segments; a `**` that is the last segment matches whatever is left of the name, so
 * "team/**" matches "team/a/b" but not "team" itself.
 *
 * No regular expression: a backtracking regex for a few `**` segments in a row, or for a segment like
 * `a*a*a*b`, takes time that grows as the name's length to the power of the number of wildcards (it
 * froze the daemon for minutes). Matching here fills a table of (glob segment, name segment) pairs,
 * O(glob segments x name segments), and tests a segment with `*` against one name segment in time
 * linear in that name segment: the literal pieces between the stars are found left to right, each at
 * its leftmost place (KMP), which is all that `*` needs.
 */

/** Bounds on a glob (the schemas declare the same or tighter ones): they keep every match cheap. */
export const GLOB_LIMITS = { length: 253, segments: 32 } as const;

export interface Glob {
  readonly source: string;
  /** The literal text before the first wildcard: every match starts with it. */
  readonly prefix: string;
  readonly test: (name: string) => boolean;
}

/** One glob segment: `**`, or a segment of literal pieces separated by `*` (no `*`: one piece). */
type Segment = { readonly any: true } | Pieces;
interface Pieces {
  readonly any: false;
  readonly pieces: readonly string[];
  /** The KMP failure function of each piece. */
  readonly kmp: readonly Int32Array[];
  /** The length of the literal text: the shortest name segment it can match. */
  readonly min: number;
}

interface Program {
  /** The segments, without a last `**`. */
  readonly segments: readonly Segment[];
  /** Whether the glob ends in `**`, which matches the rest of the name. */
  readonly rest: boolean;
  /** Whether no `**` is left in `segments`: then each glob segment meets one name segment. */
  readonly fixed: boolean;
}

/** Counts the matcher's basic steps (for the tests that bound its work). */
interface Meter {
  steps: number;
}

/** Compiles a glob, or returns an error message saying what is wrong with it. */
export function compileGlob(source: string): Glob | string {
  if (source.length > GLOB_LIMITS.length)
    return `a glob is at most ${GLOB_LIMITS.length} characters; this one has ${source.length}`;
  const parts = source.split('/');
  if (parts.length > GLOB_LIMITS.segments) {
    return `a glob has at most ${GLOB_LIMITS.segments} segments; this one has ${parts.length} (use "**" for the segments in between, or a shorter name)`;
  }
  const segments: Segment[] = [];
  for (const seg of parts) {
    if (seg === '**') {
      segments.push({ any: true });
      continue;
    }
    if (seg.includes('**')) return `'**' must be a whole segment (as in "team/**"), not part of "${seg}"`;
    if (seg === '') return 'empty segment (a leading, trailing or doubled "/")';
    if (seg === '..' || seg === '.') return `"${seg}" is not a valid segment`;
    const pieces = seg.split('*');
    segments.push({ any: false, pieces, kmp: pieces.map(failure), min: seg.length - (pieces.length - 1) });
  }
  const star = source.indexOf('*');
  if (star < 0) return { source, prefix: source, test: (n) => n === source };
  const rest = parts[parts.length - 1] === '**';
  const kept = rest ? segments.slice(0, -1) : segments;
  const program: Program = { segments: kept, rest, fixed: kept.every((seg) => !seg.any) };
  return new CompiledGlob(source, source.slice(0, star), program);
}

class CompiledGlob implements Glob {
  readonly test: (name: string) => boolean;
  constructor(
    readonly source: string,
    readonly prefix: string,
    readonly program: Program,
  ) {
    this.test = (name) => run(program, name, undefined);
  }
}

/**
 * The number of basic steps `glob.test(name)` takes (table cells, character comparisons, KMP moves).
 * For tests and benchmarks: it stays within O(glob segments x (name segments + name length)).
 */
export function globSteps(glob: Glob, name: string): number {
  if (!(glob instanceof CompiledGlob)) return name.length + 1; // a literal: one string comparison
  const meter = { steps: 0 };
  run(glob.program, name, meter);
  return meter.steps;
}

function run(program: Program, name: string, meter: Meter | undefined): boolean {
  if (meter) meter.steps += name.length + 1;
  return program.fixed ? runFixed(program, name, meter) : runTable(program, name, meter);
}

/** Without a `**` before the last segment, glob segment i can only match name segment i. */
function runFixed(program: Program, name: string, meter: Meter | undefined): boolean {
  const { segments } = program;
  let from = 0;
  for (let i = 0; i < segments.length; i++) {
    const slash = name.indexOf('/', from);
    if (i === segments.length - 1 && !program.rest) {
      return slash < 0 && segmentMatches(segments[i] as Pieces, name, from, name.length, meter);
    }
    if (slash < 0 || !segmentMatches(segments[i] as Pieces, name, from, slash, meter)) return false;
    from = slash + 1;
  }
  // Only with a last `**` (or the glob "**" alone): it takes whatever follows.
  return true;
}

// Scratch space for runTable, grown as needed (matching is synchronous: one table in use at a time).
let starts = new Int32Array(64);
let ends = new Int32Array(64);
let reachA = new Uint8Array(65);
let reachB = new Uint8Array(65);

function runTable(program: Program, name: string, meter: Meter | undefined): boolean {
  // Name segment j is name.slice(starts[j], ends[j]).
  let n = 0;
  let from = 0;
  for (;;) {
    if (n === starts.length) {
      starts = grow(starts);
      ends = grow(ends);
    }
    const slash = name.indexOf('/', from);
    starts[n] = from;
    ends[n++] = slash < 0 ? name.length : slash;
    if (slash < 0) break;
    from = slash + 1;
  }
  if (reachA.length < n + 1) {
    reachA = new Uint8Array(2 * n + 1);
    reachB = new Uint8Array(2 * n + 1);
  }
  // reach[j]: the glob segments so far match name segments 0..j-1, each followed by "/".
  let reach = reachA;
  let next = reachB;
  reach.fill(0, 0, n + 1);
  reach[0] = 1;
  for (const seg of program.segments) {
    let any = 0;
    if (seg.any) {
      // zero or more non-empty name segments
      let carry = 0;
      for (let j = 0; j <= n; j++) {
        carry = reach[j] || (carry && j > 0 && ends[j - 1]! > starts[j - 1]!) ? 1 : 0;
        next[j] = carry;
        any |= carry;
      }
      if (meter) meter.steps += n + 1;
    } else {
      next[0] = 0;
      for (let j = 0; j < n; j++) {
        const ok = reach[j] && segmentMatches(seg, name, starts[j]!, ends[j]!, meter) ? 1 : 0;
        next[j + 1] = ok;
        any |= ok;
      }
      if (meter) meter.steps += n;
    }
    if (!any) return false;
    const done = reach;
    reach = next;
    next = done;
  }
  if (!program.rest) return reach[n] === 1;
  // A last `**` takes the rest of the name after a "/": the segments before it end before the last one.
  for (let j = 0; j < n; j++) if (reach[j]) return true;
  return false;
}

function grow(a: Int32Array<ArrayBuffer>): Int32Array<ArrayBuffer> {
  const b = new Int32Array(2 * a.length);
  b.set(a);
  return b;
}

/** Whether one glob segment (pieces joined by `*`) matches name.slice(from, to), which holds no "/". */
function segmentMatches(seg: Pieces, name: string, from: number, to: number, meter: Meter | undefined): boolean {
  const { pieces } = seg;
  if (to - from < seg.min) return false;
  const first = pieces[0]!;
  if (pieces.length === 1) {
    if (meter) meter.steps += first.length;
    return to - from === first.length && name.startsWith(first, from);
  }
  const last = pieces[pieces.length - 1]!;
  if (meter) meter.steps += first.length + last.length;
  if (!name.startsWith(first, from) || !name.startsWith(last, to - last.length)) return false;
  // The pieces between the stars, each at its leftmost place after the one before, before `last`.
  let pos = from + first.length;
  const end = to - last.length;
  for (let k = 1; k < pieces.length - 1; k++) {
    const found = find(name, pieces[k]!, seg.kmp[k]!, pos, end, meter);
    if (found < 0) return false;
    pos = found + pieces[k]!.length;
  }
  return true;
}

/** KMP failure function of a piece. */
function failure(p: string): Int32Array {
  const f = new Int32Array(p.length);
  for (let i = 1, k = 0; i < p.length; i++) {
    while (k > 0 && p[i] !== p[k]) k = f[k - 1]!;
    if (p[i] === p[k]) k++;
    f[i] = k;
  }
  return f;
}

/** The first index >= from where `p` occurs in text, ending at or before `end`; -1 if none. Linear in end - from. */
function find(text: string, p: string, f: Int32Array, from: number, end: number, meter: Meter | undefined): number {
  if (p.length === 0) return from;
  let k = 0;
  for (let i = from; i < end; i++) {
    while (k > 0 && text[i] !== p[k]) {
      k = f[k - 1]!;
      if (meter) meter.steps++;
    }
    if (meter) meter.steps++;
    if (text[i] === p[k]) k++;
    if (k === p.length) return i - p.length + 1;
  }
  return -1;
}

/**
 * Names sorted once, so that the secrets a glob matches are found from its literal prefix without a
 * scan of every name (10,000 secrets x 1,000 consumers stays fast).
 */
export class NameIndex {
  private readonly sorted: string[];
  constructor(names: Iterable<string>) {
    this.sorted = [...names].sort();
  }
  /** Every name the glob matches, in sorted order. */
  match(glob: Glob): string[] {
    const out: string[] = [];
    for (let i = this.lowerBound(glob.prefix); i < this.sorted.length; i++) {
      const name = this.sorted[i]!;
      if (!name.startsWith(glob.prefix)) break;
      if (glob.test(name)) out.push(name);
    }
    return out;
  }
  /** Whether the glob matches at least one name. */
  any(glob: Glob): boolean {
    for (let i = this.lowerBound(glob.prefix); i < this.sorted.length; i++) {
      const name = this.sorted[i]!;
      if (!name.startsWith(glob.prefix)) return false;
      if (glob.test(name)) return true;
    }
    return false;
  }
  private lowerBound(prefix: string): number {
    let lo = 0;
    let hi = this.sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.sorted[mid]! < prefix) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
