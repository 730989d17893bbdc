/**
 * A git commit object as bytes, and its signature header, as git itself reads and writes them (the
 * functions parse_buffer_signed_by_header and add_header_signature of git's commit.c):
 *
 * - the signature is the header `gpgsig` (`gpgsig-sha256` in a SHA-256 repository), its first line
 *   after the name and a space, every further line after one space, inserted at the end of the
 *   headers (before the blank line that starts the message);
 * - what is signed is the object without that header and its continuation lines (any other
 *   signature header is left out too), which, for a commit signed once, is the commit before signing.
 *
 * Pure: bytes in, bytes out. src/git/sign-commits.ts writes the objects, src/git/verify-signatures.ts
 * reads them.
 */
import { createHash } from 'node:crypto';

export type ObjectFormat = 'sha1' | 'sha256';

/** The header that holds a commit's signature in a repository of this object format. */
export function signatureHeader(format: ObjectFormat): string {
  return format === 'sha256' ? 'gpgsig-sha256' : 'gpgsig';
}

/** The object id git gives a commit with this content. */
export function commitId(format: ObjectFormat, raw: Buffer): string {
  return createHash(format).update(`commit ${raw.length}\0`).update(raw).digest('hex');
}

export interface SplitCommit {
  /** The object without its signature headers: what the signature is over. */
  readonly payload: Buffer;
  /** The signature (the header's value, lines joined with "\n"), when the commit has one. */
  readonly signature?: string;
}

/** Separates a commit object into what was signed and its signature (as git's parse_signed_commit). */
export function splitSignature(raw: Buffer, format: ObjectFormat): SplitCommit {
  const header = `${signatureHeader(format)} `;
  const payload: Buffer[] = [];
  const sig: string[] = [];
  let inSignature = false;
  let otherSignature = false;
  let saw = false;
  let at = 0;
  while (at < raw.length) {
    const nl = raw.indexOf(0x0a, at);
    let next = nl < 0 ? raw.length : nl + 1;
    const line = raw.subarray(at, next);
    const first = line[0];
    if (inSignature && first === 0x20) {
      sig.push(line.subarray(1).toString('latin1'));
      saw = true;
    } else if (line.subarray(0, header.length).toString('latin1') === header) {
      sig.push(line.subarray(header.length).toString('latin1'));
      inSignature = true;
      saw = true;
    } else {
      if (line.subarray(0, 6).toString('latin1') === 'gpgsig') otherSignature = true;
      else if (otherSignature && first !== 0x20) otherSignature = false;
      if (first === 0x0a) next = raw.length; // the blank line: the rest is the message, taken whole
      if (!otherSignature) payload.push(raw.subarray(at, next));
      inSignature = false;
    }
    at = next;
  }
  return { payload: Buffer.concat(payload), ...(saw ? { signature: sig.join('') } : {}) };
}

/**
 * The commit with `signature` (armored text, one or more lines) added as its signature header at the
 * end of its headers. The commit must have none yet (use splitSignature().payload).
 */
export function addSignature(payload: Buffer, signature: string, format: ObjectFormat): Buffer {
  const eoh = payload.indexOf('\n\n');
  const at = eoh < 0 ? payload.length : eoh + 1;
  const lines = signature.endsWith('\n') ? signature.slice(0, -1).split('\n') : signature.split('\n');
  const header = lines.map((l, i) => `${i === 0 ? `${signatureHeader(format)} ` : ' '}${l}\n`).join('');
  return Buffer.concat([payload.subarray(0, at), Buffer.from(header, 'latin1'), payload.subarray(at)]);
}

/** The header lines of a commit (before the blank line), without continuation lines. */
function headers(raw: Buffer): string[] {
  const eoh = raw.indexOf('\n\n');
  return raw
    .subarray(0, eoh < 0 ? raw.length : eoh)
    .toString('utf8')
    .split('\n')
    .filter((l) => !l.startsWith(' '));
}

/** The commit's parents, in order. */
export function parentsOf(raw: Buffer): string[] {
  return headers(raw)
    .filter((l) => l.startsWith('parent '))
    .map((l) => l.slice(7).trim());
}

/** The commit with each parent found in `map` replaced by what it maps to. */
export function withParents(raw: Buffer, map: ReadonlyMap<string, string>): Buffer {
  const eoh = raw.indexOf('\n\n');
  const end = eoh < 0 ? raw.length : eoh;
  const head = raw
    .subarray(0, end)
    .toString('latin1')
    .split('\n')
    .map((l) => {
      if (!l.startsWith('parent ')) return l;
      const id = l.slice(7);
      return `parent ${map.get(id) ?? id}`;
    })
    .join('\n');
  return Buffer.concat([Buffer.from(head, 'latin1'), raw.subarray(end)]);
}

/** The committer's time of a commit, in seconds since the epoch (undefined when it has none). */
export function committerTime(raw: Buffer): number | undefined {
  const line = headers(raw).find((l) => l.startsWith('committer '));
  const m = line ? / (\d{1,15}) [+-]\d{4}$/.exec(line) : null;
  return m ? Number(m[1]) : undefined;
}

/** The committer (name and email) of a commit, for messages. */
export function committerOf(raw: Buffer): string {
  const line = headers(raw).find((l) => l.startsWith('committer '));
  const m = line ? /^committer (.*?) \d{1,15} [+-]\d{4}$/.exec(line) : null;
  // from a repository: control characters (a terminal's escape sequences) are not printed
  return (m?.[1] ?? 'unknown').slice(0, 200).replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
}
