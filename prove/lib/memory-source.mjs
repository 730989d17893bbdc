// A repository held in memory, for the loader (src/model/load.ts takes any RepoSource): the files are
// listed with their sizes and read from a Map of path -> Buffer (paths with a dot-segment are skipped,
// as both real sources skip them). Nothing touches the disk.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

export class MemorySource {
  /** @param {Map<string, Buffer>} files  '/'-separated paths relative to the root */
  constructor(files, label = 'memory') {
    this.files = files;
    this.label = label;
  }

  async list() {
    const files = new Map();
    for (const [p, buf] of this.files) {
      if (p.split('/').some((seg) => seg.startsWith('.'))) continue; // as DirectorySource and GitTreeSource do
      files.set(p, { path: p, size: buf.length });
    }
    return { files, problems: [], truncated: false };
  }

  async readMany(paths, { maxBytes }) {
    const out = new Map();
    for (const p of paths) {
      const buf = this.files.get(p);
      out.set(
        p,
        buf === undefined
          ? new Error(`no file ${p}`)
          : buf.length > maxBytes
            ? new Error(`${p} is over ${maxBytes} bytes`)
            : buf,
      );
    }
    return out;
  }

  /** Only files are held: every leading path with a file under it is a directory. */
  async probe(dir) {
    const segs = dir.split('/').filter(Boolean);
    const chain = [];
    for (let i = 1; i <= segs.length; i++) {
      const p = segs.slice(0, i).join('/');
      if (this.files.has(p)) {
        chain.push({ path: p, kind: 'file' });
        break;
      }
      if (![...this.files.keys()].some((f) => f.startsWith(`${p}/`))) break;
      chain.push({ path: p, kind: 'dir' });
    }
    return { chain, inside: [], attributes: [] };
  }
}

/** Every file under DIR (skipping dot-entries, as DirectorySource does), as path -> Buffer. */
export function readTree(dir) {
  const out = new Map();
  const walk = (rel) => {
    for (const name of readdirSync(path.join(dir, rel)).sort()) {
      if (name.startsWith('.')) continue;
      const p = rel ? `${rel}/${name}` : name;
      const st = statSync(path.join(dir, p));
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out.set(p, readFileSync(path.join(dir, p)));
    }
  };
  walk('');
  return out;
}
