/**
 * Which values a file's rule encrypts (sops.go shouldBeEncrypted): `unencrypted_suffix` (the
 * default), `encrypted_suffix`, `unencrypted_regex` or `encrypted_regex`, and the key regexes on a
 * linear-time engine.
 */
import { setFlagsFromString } from 'node:v8';
import { SopsError } from './types.js';

/** A file's rule, from its metadata. */
export type EncryptionRule =
  | { kind: 'unencrypted_suffix' | 'encrypted_suffix'; suffix: string }
  | { kind: 'unencrypted_regex' | 'encrypted_regex'; re: RegExp };

/*
 * sops.encrypted_regex and sops.unencrypted_regex come from the file, like the keys they are tried on:
 * whoever can commit writes both. sops runs them with Go's regexp, in linear time; V8's backtracking
 * engine takes exponential time on some ("^(a|a)*$" against forty a's and a "b"). So they run on V8's
 * linear-time engine (the `l` flag; the V8 option below makes that flag available and changes nothing
 * else), which refuses what it cannot run that way: backreferences and lookaround (Go's regexp has
 * neither) and very large nested counts. Its work is the regex's size times the text's, so the regex
 * (REGEX_LIMITS.length) and the total length of the distinct keys it is tried on are bounded.
 */
setFlagsFromString('--enable-experimental-regexp-engine');
const LINEAR_REGEX = ((): boolean => {
  try {
    // biome-ignore lint/complexity/useRegexLiterals: the `l` flag exists only once the V8 option above is set, at run time
    return new RegExp('a', 'l').test('a');
  } catch {
    return false;
  }
})();

/** Key regexes: their length, and the work of trying one on keys, (regex length + 1) x (key length + 1) summed over the distinct keys. */
export const REGEX_LIMITS = { length: 256, work: 1 << 22 } as const;

/**
 * A key regex on the linear-time engine. It must also be valid with the `u` flag (closer to Go's
 * syntax: "[[:alpha:]]" is refused rather than read otherwise), and may not use the two escapes whose
 * meaning the `u` flag changes (\p{...} and \u{...}); keys outside the Basic Multilingual Plane are
 * refused where it is tried (see decryptTree). With that, `l` answers as `u` would.
 */
export function keyRegex(source: string, which: string, name: string): RegExp {
  const unsupported = (why: string) => new SopsError('SOPS_UNSUPPORTED', `${name}: sops.${which} ${why}`);
  if (source.length > REGEX_LIMITS.length)
    throw unsupported(`has ${source.length} characters; rotor reads key regexes of at most ${REGEX_LIMITS.length}`);
  try {
    new RegExp(source, 'u');
  } catch {
    throw unsupported('is not a regular expression JavaScript can run the same way as Go');
  }
  for (let i = 0; i < source.length; i++) {
    if (source[i] !== '\\') continue;
    const next = source[++i];
    if (next === 'p' || next === 'P' || (next === 'u' && source[i + 1] === '{'))
      throw unsupported(
        `uses \\${next}${next === 'u' ? '{...}' : ''}, which rotor does not read; write the characters out`,
      );
  }
  if (!LINEAR_REGEX)
    throw unsupported(
      `cannot be run in linear time on this Node.js (${process.version}), which has no linear-time regex engine; use encrypted_suffix or unencrypted_suffix`,
    );
  try {
    return new RegExp(source, 'l');
  } catch {
    throw unsupported(
      'cannot be run in linear time (it uses a backreference or a lookaround, which sops refuses too, or very large nested counts)',
    );
  }
}

/**
 * sops.go shouldBeEncrypted, as a function of the mapping keys on a value's path: whether SOPS
 * encrypts that value, by the file's rule. A key regex is tried once per distinct key (a key is on the
 * path of every value under it), within REGEX_LIMITS.work steps for the whole file.
 */
export function encryptionRule(rule: EncryptionRule, name: string): (keys: readonly string[]) => boolean {
  const tried = new Map<string, boolean>();
  let work = 0;
  const matches = (re: RegExp, k: string): boolean => {
    let hit = tried.get(k);
    if (hit === undefined) {
      work += (re.source.length + 1) * (k.length + 1);
      if (work > REGEX_LIMITS.work) {
        throw new SopsError(
          'SOPS_UNSUPPORTED',
          `${name}: its keys are too many or too long to try sops.${rule.kind} on (more than ${REGEX_LIMITS.work} steps); use a shorter regex, or encrypted_suffix or unencrypted_suffix`,
        );
      }
      if (/[\uD800-\uDFFF]/.test(k))
        throw new SopsError(
          'SOPS_UNSUPPORTED',
          `${name}: a key has a character outside the Basic Multilingual Plane, which rotor does not try sops.${rule.kind} on; use encrypted_suffix or unencrypted_suffix`,
        );
      hit = re.test(k);
      tried.set(k, hit);
    }
    return hit;
  };
  return (keys) => {
    switch (rule.kind) {
      case 'unencrypted_suffix':
        return !keys.some((k) => k.endsWith(rule.suffix));
      case 'encrypted_suffix':
        return keys.some((k) => k.endsWith(rule.suffix));
      case 'unencrypted_regex':
        return !keys.some((k) => matches(rule.re, k));
      case 'encrypted_regex':
        return keys.some((k) => matches(rule.re, k));
    }
  };
}
