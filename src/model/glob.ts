/**
 * Consumer globs over secret names: `*` matches within one segment, `**` (a whole segment) matches any
 * number of segments, including none. Everything else is literal.
 */

export interface Glob {
  readonly source: string;
  /** The literal text before the first wildcard: every match starts with it. */
  readonly prefix: string;
  readonly test: (name: string) => boolean;
}

/** Compiles a glob, or returns an error message saying what is wrong with it. */
export function compileGlob(source: string): Glob | string {
  const segments = source.split('/');
  let re = '^';
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '**') {
      // zero or more whole segments
      re += last ? '.*' : '(?:[^/]+/)*';
      continue;
    }
    if (seg.includes('**')) return `'**' must be a whole segment (as in "team/**"), not part of "${seg}"`;
    if (seg === '' ) return 'empty segment (a leading, trailing or doubled "/")';
    if (seg === '..' || seg === '.') return `"${seg}" is not a valid segment`;
    re += seg.split('*').map(escapeRe).join('[^/]*');
    if (!last) re += '/';
  }
  re += '$';
  const regex = new RegExp(re);
  const star = source.indexOf('*');
  const prefix = star < 0 ? source : source.slice(0, star);
  return star < 0 ? { source, prefix, test: (n) => n === source } : { source, prefix, test: (n) => regex.test(n) };
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
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
