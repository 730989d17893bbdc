/**
 * The allowed-signers file of `ssh-keygen -Y verify` and git's `gpg.ssh.allowedSignersFile` (the
 * ALLOWED SIGNERS section of ssh-keygen(1)), read for `rotor audit verify --allowed-signers`:
 *
 *     # comments and blank lines are skipped
 *     rotor@localhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... rotor-audit
 *     ops@example.com,*@example.com namespaces="git",valid-after="20260101" ssh-ed25519 AAAA...
 *
 * Each line: principals (comma-separated, quoted when they hold spaces), optional options
 * (`namespaces="..."`, `valid-after="..."`, `valid-before="..."`, `cert-authority`), the key type and
 * the base64 key, then an optional comment. rotor matches a signature's key against the keys; the
 * principals are not compared (as `git verify-commit`, which reports the principal it found). A line
 * that does not parse is an error with its line number (ssh-keygen would not use the file either).
 * The file is read bounded (1 MiB).
 */
import { open } from 'node:fs/promises';
import { RotorError } from '../errors.js';

export const MAX_ALLOWED_SIGNERS_BYTES = 1024 * 1024;

export class AllowedSignersError extends RotorError {
  constructor(
    message: string,
    readonly line = 0,
  ) {
    super('AUDIT_ALLOWED_SIGNERS_INVALID', message);
  }
}

export interface AllowedSigner {
  /** 1-based line in the file. */
  readonly line: number;
  readonly principals: string;
  readonly keyType: string;
  /** The SSH public key blob (the base64 field, decoded). */
  readonly key: Buffer;
  /** `cert-authority`: the key signs certificates; rotor does not check certificates, so it matches no signature. */
  readonly certAuthority: boolean;
  /** `namespaces="..."`: the patterns of the namespaces the key may sign for (any when absent). */
  readonly namespaces?: readonly string[];
  /** `valid-after` / `valid-before`, in seconds since the epoch. */
  readonly validAfter?: number;
  readonly validBefore?: number;
}

const KEY_TYPE =
  /^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com|[a-z0-9-]+-cert-v01@openssh\.com)$/;

/** Splits a line into whitespace-separated fields; double quotes keep spaces (and commas) in one field. */
function fields(line: string, n: number): string[] | undefined {
  const out: string[] = [];
  let i = 0;
  while (i < line.length && out.length < n) {
    while (i < line.length && (line[i] === ' ' || line[i] === '\t')) i++;
    if (i >= line.length) break;
    let field = '';
    let quoted = false;
    while (i < line.length && (quoted || (line[i] !== ' ' && line[i] !== '\t'))) {
      if (line[i] === '"') quoted = !quoted;
      field += line[i];
      i++;
    }
    if (quoted) return undefined;
    out.push(field);
  }
  return out;
}

/** ssh's time in options: YYYYMMDD or YYYYMMDDHHMM[SS], local time unless it ends in Z. */
function parseTime(text: string): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(\d{2})?)?(Z?)$/.exec(text);
  if (!m) return undefined;
  const [y, mo, d, h = '0', mi = '0', s = '0'] = m.slice(1, 7).map((v) => v ?? '0');
  const parts = [Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s)] as const;
  const ms = m[7] ? Date.UTC(...parts) : new Date(...parts).getTime();
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : undefined;
}

function unquote(v: string): string {
  return v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v;
}

function parseOptions(
  text: string,
  line: number,
): Pick<AllowedSigner, 'certAuthority' | 'namespaces' | 'validAfter' | 'validBefore'> {
  const opts: { certAuthority: boolean; namespaces?: string[]; validAfter?: number; validBefore?: number } = {
    certAuthority: false,
  };
  // commas separate options, except inside quotes
  const list: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      list.push(cur);
      cur = '';
    } else cur += ch;
  }
  list.push(cur);
  for (const opt of list) {
    const eq = opt.indexOf('=');
    const name = (eq < 0 ? opt : opt.slice(0, eq)).toLowerCase();
    const value = eq < 0 ? undefined : unquote(opt.slice(eq + 1));
    if (name === 'cert-authority' && value === undefined) opts.certAuthority = true;
    else if (name === 'namespaces' && value) opts.namespaces = value.split(',').map((p) => p.trim());
    else if ((name === 'valid-after' || name === 'valid-before') && value) {
      const t = parseTime(value);
      if (t === undefined)
        throw new AllowedSignersError(
          `${name}="${value.slice(0, 40)}" is not a time (YYYYMMDD or YYYYMMDDHHMM[SS], Z for UTC)`,
          line,
        );
      if (name === 'valid-after') opts.validAfter = t;
      else opts.validBefore = t;
    } else
      throw new AllowedSignersError(
        `unknown option "${opt.slice(0, 40)}" (known: namespaces, valid-after, valid-before, cert-authority)`,
        line,
      );
  }
  return opts;
}

/** Parses an allowed-signers file's text. Throws AllowedSignersError (with the line) on a line that does not parse. */
export function parseAllowedSigners(text: string): AllowedSigner[] {
  const out: AllowedSigner[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const line = i + 1;
    const trimmed = raw.replace(/\r$/, '').trim();
    if (trimmed === '' || trimmed.startsWith('#')) return;
    const f = fields(trimmed, 4);
    if (!f || f.length < 3)
      throw new AllowedSignersError('expected: principals [options] key-type base64-key [comment]', line);
    const principals = unquote(f[0]!);
    let at = 1;
    let options: ReturnType<typeof parseOptions> = { certAuthority: false };
    if (!KEY_TYPE.test(f[1]!)) {
      options = parseOptions(f[1]!, line);
      at = 2;
    }
    const keyType = f[at];
    const b64 = f[at + 1];
    if (!keyType || !KEY_TYPE.test(keyType) || !b64)
      throw new AllowedSignersError(
        `no key: expected a key type (ssh-ed25519, ...) and its base64 after the principals${at === 2 ? ' and options' : ''}`,
        line,
      );
    if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0 || b64.length > 16 * 1024)
      throw new AllowedSignersError(`the ${keyType} key is not valid base64`, line);
    const key = Buffer.from(b64, 'base64');
    const typeLen = key.length >= 4 ? key.readUInt32BE(0) : -1;
    if (typeLen < 0 || 4 + typeLen > key.length || key.subarray(4, 4 + typeLen).toString('latin1') !== keyType)
      throw new AllowedSignersError(`the key is not a ${keyType} key (its data names another type)`, line);
    if (!principals) throw new AllowedSignersError('no principals before the key', line);
    out.push({ line, principals, keyType, key, ...options });
  });
  return out;
}

/** Reads and parses an allowed-signers file, at most MAX_ALLOWED_SIGNERS_BYTES. */
export async function readAllowedSigners(file: string): Promise<AllowedSigner[]> {
  let text: string;
  try {
    const fh = await open(file, 'r');
    try {
      const buf = Buffer.alloc(MAX_ALLOWED_SIGNERS_BYTES + 1);
      let n = 0;
      for (;;) {
        const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
        if (bytesRead === 0) break;
        n += bytesRead;
        if (n > MAX_ALLOWED_SIGNERS_BYTES)
          throw new AllowedSignersError(`${file} is larger than ${MAX_ALLOWED_SIGNERS_BYTES / 1024 / 1024} MiB`);
      }
      text = buf.subarray(0, n).toString('utf8');
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (e instanceof AllowedSignersError) throw e;
    throw new AllowedSignersError(`${file} cannot be read: ${(e as Error).message}`);
  }
  const signers = parseAllowedSigners(text);
  if (signers.length === 0)
    throw new AllowedSignersError(
      `${file} lists no key: add the daemon's (a principal, then the line "rotor keygen DATA_DIR" prints)`,
    );
  return signers;
}

/** ssh's pattern match: `*` any run, `?` one character. */
function wildcard(pattern: string, s: string): boolean {
  let p = 0;
  let i = 0;
  let star = -1;
  let mark = 0;
  while (i < s.length) {
    if (p < pattern.length && (pattern[p] === '?' || pattern[p] === s[i])) {
      p++;
      i++;
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++;
      mark = i;
    } else if (star >= 0) {
      p = star + 1;
      i = ++mark;
    } else return false;
  }
  while (p < pattern.length && pattern[p] === '*') p++;
  return p === pattern.length;
}

/** ssh's pattern list: a negated pattern (`!pat`) that matches refuses; otherwise any match accepts. */
export function matchPatternList(patterns: readonly string[], s: string): boolean {
  let found = false;
  for (const p of patterns) {
    if (p.startsWith('!')) {
      if (wildcard(p.slice(1), s)) return false;
    } else if (wildcard(p, s)) found = true;
  }
  return found;
}
