// Injected file-system layers for the proofs (parts 1-3): a StoreFs (src/state/fs.ts) and an AuditFs
// (src/audit/log.ts) that pass every call through to the real ones (node:fs), except that writes and
// fsyncs fail or stall as a FaultPlan says. The daemon takes them as DaemonOptions.storeFs / auditFs:
// injection through the layers the store and the log already have, no branch in src/.
//
// A plan is one of:
//   { mode: 'off' }
//   { mode: 'random', rate: 0.2, stallShare: 0.5, stallMs: [20, 300], errno: 'EIO' }
//       each write and each fsync is hit with probability `rate`; a hit stalls (a delay, then the call
//       goes on) with probability `stallShare`, otherwise it fails with `errno`. A failed write has
//       written a part of its bytes, or none, as a real one may.
//   { mode: 'readonly' }   what a read-only mount does: opening a file to write, creating or removing
//       one fails with EROFS; reading and fsyncing a directory work.
//   { mode: 'full' }       a full disk: a write stores what fits (part of the bytes) and the next one
//       fails with ENOSPC; truncating (freeing space), reading and fsyncing work.
// Faults are counted by kind ("audit.write.fail", "store.sync.stall", ...), never with a value.

import { stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';

/** mulberry32: a small seeded generator, so that a run can be repeated with its seed. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MESSAGES = { EIO: 'i/o error', EROFS: 'read-only file system', ENOSPC: 'no space left on device' };

/** An error shaped like node's own (code, syscall, path), marked as injected. */
export function fsError(code, syscall, file) {
  return Object.assign(new Error(`${code}: ${MESSAGES[code] ?? 'error'} (injected), ${syscall} '${file}'`), {
    code,
    errno: code,
    syscall,
    path: file,
    injected: true,
  });
}

export class FaultPlan {
  constructor(layer, spec = { mode: 'off' }, seed = 1) {
    this.layer = layer;
    this.random = prng(seed);
    this.counts = {};
    this.calls = {};
    this.set(spec);
  }

  set(spec) {
    this.spec = { mode: 'off', rate: 0.2, stallShare: 0.5, stallMs: [20, 300], errno: 'EIO', ...spec };
  }

  get mode() {
    return this.spec.mode;
  }

  count(kind) {
    const k = `${this.layer}.${kind}`;
    this.counts[k] = (this.counts[k] ?? 0) + 1;
  }

  /** For a write or an fsync: 'ok', or a stall (awaited here), or 'fail'. */
  async decide(op) {
    this.calls[op] = (this.calls[op] ?? 0) + 1;
    if (this.spec.mode !== 'random' || this.random() >= this.spec.rate) return 'ok';
    if (this.random() < this.spec.stallShare) {
      const [lo, hi] = this.spec.stallMs;
      this.count(`${op}.stall`);
      await sleep(lo + Math.floor(this.random() * (hi - lo + 1)));
      return 'ok';
    }
    this.count(`${op}.fail`);
    return 'fail';
  }

  /** How many of `n` bytes a failing write stores first (0 to n-1). */
  part(n) {
    return n <= 1 ? 0 : Math.floor(this.random() * n);
  }
}

// ---- the state store's layer ------------------------------------------------------------------------

/** A StoreFs over `base` (nodeFs) with the faults of `plan`. */
export function faultyStoreFs(base, plan) {
  const wrap = (f, file) => ({
    read: (buffer, position) => f.read(buffer, position),
    async write(data, position) {
      if (plan.mode === 'readonly') {
        plan.count('write.fail');
        throw fsError('EROFS', 'write', file);
      }
      if (plan.mode === 'full') {
        plan.count('write.fail');
        await f.write(data.subarray(0, plan.part(data.length)), position);
        throw fsError('ENOSPC', 'write', file);
      }
      if ((await plan.decide('write')) === 'fail') {
        const n = plan.part(data.length);
        if (n > 0) await f.write(data.subarray(0, n), position);
        throw fsError(plan.spec.errno, 'write', file);
      }
      return f.write(data, position);
    },
    async sync() {
      if ((await plan.decide('sync')) === 'fail') throw fsError(plan.spec.errno, 'fsync', file);
      return f.sync();
    },
    truncate: (length) => f.truncate(length),
    size: () => f.size(),
    close: () => f.close(),
  });
  return {
    async open(file, mode) {
      if (mode !== 'read' && plan.mode === 'readonly') {
        plan.count('open.fail');
        throw fsError('EROFS', 'open', file);
      }
      return wrap(await base.open(file, mode), file);
    },
    size: (file) => base.size(file),
    rename: (from, to) => base.rename(from, to),
    unlink: (file) => base.unlink(file),
    async syncDir(dir) {
      if ((await plan.decide('syncdir')) === 'fail') throw fsError(plan.spec.errno, 'fsync', dir);
      return base.syncDir(dir);
    },
    mkdir: (dir) => base.mkdir(dir),
  };
}

// ---- the audit log's layer --------------------------------------------------------------------------

/** An AuditFs over `base` (nodeAuditFs) with the faults of `plan`. */
export function faultyAuditFs(base, plan) {
  const wrap = (fh, file, isDir) => {
    let filled = false;
    return {
      async write(buffer, offset, length) {
        if (plan.mode === 'full') {
          // what fits is written (a real write returns a short count); the next write finds no space
          if (!filled) {
            filled = true;
            const n = plan.part(length);
            if (n > 0) return fh.write(buffer, offset, n);
          }
          plan.count('write.fail');
          throw fsError('ENOSPC', 'write', file);
        }
        if ((await plan.decide('write')) === 'fail') {
          const n = plan.part(length);
          if (n > 0) await fh.write(buffer, offset, n);
          throw fsError(plan.spec.errno, 'write', file);
        }
        return fh.write(buffer, offset, length);
      },
      truncate: (length) => fh.truncate(length),
      async sync() {
        if ((await plan.decide(isDir ? 'syncdir' : 'sync')) === 'fail') throw fsError(plan.spec.errno, 'fsync', file);
        return fh.sync();
      },
      close: () => fh.close(),
    };
  };
  return {
    readdir: (dir) => base.readdir(dir),
    readFile: (file) => base.readFile(file),
    async mkdir(dir, options) {
      // an existing directory is no error on a read-only mount either
      if (
        plan.mode === 'readonly' &&
        !(await stat(dir).then(
          (s) => s.isDirectory(),
          () => false,
        ))
      )
        throw fsError('EROFS', 'mkdir', dir);
      return base.mkdir(dir, options);
    },
    async open(file, flags) {
      if (flags !== 'r' && plan.mode === 'readonly') {
        plan.count('open.fail');
        throw fsError('EROFS', 'open', file);
      }
      return wrap(await base.open(file, flags), file, flags === 'r');
    },
    async unlink(file) {
      if (plan.mode === 'readonly') {
        plan.count('unlink.fail');
        throw fsError('EROFS', 'unlink', file);
      }
      return base.unlink(file);
    },
  };
}
