/**
 * A deterministic npm package tarball (gzipped ustar, every entry under "package/"), as `npm pack`
 * makes one: the same files give the same bytes, so that the release's tarball and the one `rotor init`
 * vendors from an installed rotor are the same file with the same checksum. Regular files only, in
 * sorted order, mode 0644 (0755 for executables), owner 0, mtime fixed at npm's 1985-10-26T08:15:00Z.
 */
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';

/** npm pack's fixed mtime for every entry. */
const MTIME = Date.UTC(1985, 9, 26, 8, 15, 0) / 1000;

export interface TarFile {
  /** The path inside the package, "/"-separated, without "package/". */
  readonly path: string;
  readonly bytes: Uint8Array;
  readonly executable?: boolean;
}

function header(name: string, size: number, mode: number): Buffer {
  const h = Buffer.alloc(512);
  let prefix = '';
  let base = name;
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', 155);
    if (cut <= 0 || Buffer.byteLength(name.slice(cut + 1)) > 100) throw new Error(`tarball: path too long: ${name}`);
    prefix = name.slice(0, cut);
    base = name.slice(cut + 1);
  }
  const octal = (n: number, width: number) => `${n.toString(8).padStart(width - 1, '0')}\0`;
  h.write(base, 0, 100, 'utf8');
  h.write(octal(mode, 8), 100, 'ascii');
  h.write(octal(0, 8), 108, 'ascii'); // uid
  h.write(octal(0, 8), 116, 'ascii'); // gid
  h.write(octal(size, 12), 124, 'ascii');
  h.write(octal(MTIME, 12), 136, 'ascii');
  h.fill(' ', 148, 156); // the checksum counts itself as spaces
  h.write('0', 156, 'ascii'); // a regular file
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return h;
}

/** The gzipped tarball of these files. */
export function packTarball(files: readonly TarFile[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))) {
    if (f.path.startsWith('/') || f.path.split('/').some((s) => s === '' || s === '.' || s === '..'))
      throw new Error(`tarball: not a relative path: ${f.path}`);
    parts.push(header(`package/${f.path}`, f.bytes.length, f.executable ? 0o755 : 0o644), Buffer.from(f.bytes));
    const pad = (512 - (f.bytes.length % 512)) % 512;
    if (pad) parts.push(Buffer.alloc(pad));
  }
  parts.push(Buffer.alloc(1024));
  // zlib's gzip header has mtime 0 and a fixed OS byte: the same input gives the same bytes.
  return gzipSync(Buffer.concat(parts), { level: 9 });
}

/** npm's integrity string (package-lock.json) for a tarball. */
export function integrity(tarball: Uint8Array): string {
  return `sha512-${createHash('sha512').update(tarball).digest('base64')}`;
}

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** One file of a gzipped tarball (npm's: "package/..."), or undefined; throws on a malformed archive. */
export function readTarEntry(tgz: Uint8Array, wanted: string, maxBytes = 1024 * 1024): Buffer | undefined {
  const tar = gunzipSync(tgz, { maxOutputLength: 512 * 1024 * 1024 });
  for (let at = 0; at + 512 <= tar.length; ) {
    const h = tar.subarray(at, at + 512);
    if (h.every((b) => b === 0)) return undefined;
    const field = (from: number, len: number) =>
      h
        .subarray(from, from + len)
        .toString('utf8')
        .replace(/\0.*$/s, '');
    const prefix = field(345, 155);
    const name = prefix ? `${prefix}/${field(0, 100)}` : field(0, 100);
    const size = Number.parseInt(field(124, 12).trim() || '0', 8);
    if (!Number.isSafeInteger(size) || size < 0) throw new Error('tarball: a malformed header');
    const type = field(156, 1);
    if (name === wanted && (type === '0' || type === '')) {
      if (size > maxBytes) throw new Error(`tarball: ${wanted} is larger than ${maxBytes} bytes`);
      return Buffer.from(tar.subarray(at + 512, at + 512 + size));
    }
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return undefined;
}
