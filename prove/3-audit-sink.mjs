// Proof, part 3: the audit sink failing. Secrets rotate every 2 s and a consumer reads them
// through its socket while the daemon's audit log cannot be written:
//   (a) read-only: the injected AuditFs (faults-fs.mjs) fails every write with EROFS, as a read-only
//       mount does. Used rather than chmod: CI runs as root, and chmod does not stop root's writes.
//   (b) disk full: the injected AuditFs stores part of a write, then fails with ENOSPC.
//   (c) and (d), in the full run where this machine may mount (root with CAP_SYS_ADMIN): the same
//       with the real thing: a read-only bind mount of the clone's audit directory, and the clone on a
//       small tmpfs filled up to the last byte (git's commits then fail too). Where they do not run
//       (the short run, or no mounts), their rows are skipped with the reason, never reported as held.
// While the sink fails: no version is served that the audit log does not hold, and the version served
// does not change; `rotor status --json` and the text table name AUDIT_WRITE_FAILED with the errno;
// the log says so once per cause. Then the fault is removed and the daemon resumes by itself, in the
// same process: every secret rotates again within the bound, and nothing is left failing.

import { randomInt } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { canMount, fill, readOnly, tmpfs } from './lib/faults-mount.mjs';
import {
  auditEntries,
  auditVersions,
  cli,
  declarations,
  fingerprintOf,
  git,
  localSeq,
  makeWorld,
  remoteAudit,
  remoteSeq,
  secondsOf,
  secretNames,
  startDaemon,
  startReader,
  status,
  storeView,
  waitFor,
} from './lib/faults-world.mjs';

export const part = 3;
export const title = 'The audit sink failing: read-only, disk full';

/** Rotations resume within this long after the sink works again (the engine retries storage at least every 10 s). */
const RESUME_BOUND_MS = 15_000;
/** The daemon must say why within this long after the sink fails. */
const NOTICE_BOUND_MS = 15_000;
/** The phases with a real file system fault (full run, where the machine may mount). */
const REAL_PHASES = [
  'read-only (real ro bind mount of the audit directory)',
  'disk full (real tmpfs under the clone, filled)',
];

export async function run({ short, log }) {
  const n = short ? 4 : 8;
  const holdMs = short ? 3_000 : 12_000;
  const mounts = !short && canMount();
  const w = await makeWorld('audit-sink', declarations({ n, every: '2s', overlap: '1s' }));
  const names = secretNames(n);
  const audit = path.join(w.dataDir, 'repo', 'audit');
  let unmountClone;
  let d;
  let reader;
  const undo = [];
  try {
    if (mounts) {
      // The daemon's clone on a small tmpfs, cloned here first (the daemon opens an existing clone).
      unmountClone = tmpfs(path.join(w.dataDir, 'repo'), '32m');
      git(w.root, 'clone', '-q', w.remote, path.join(w.dataDir, 'repo'));
    }
    d = await startDaemon(w, { seed: randomInt(1, 2 ** 31), commitDelayMs: 200 });
    log(`part 3: daemon started (${n} secrets every 2 s); real mounts ${mounts ? 'available' : 'not used'}`);
    reader = startReader(w, names);
    await waitFor(async () => (await status(w)).secrets.every((s) => (s.version ?? 0) >= 2), { timeoutMs: 30_000 });

    const phases = [
      {
        name: 'read-only (injected AuditFs, EROFS)',
        errno: 'EROFS',
        apply: () => d.faults({ audit: { mode: 'readonly' } }),
        remove: () => d.faults({ audit: { mode: 'off' } }),
      },
      {
        name: 'disk full (injected AuditFs, ENOSPC)',
        errno: 'ENOSPC',
        apply: () => d.faults({ audit: { mode: 'full' } }),
        remove: () => d.faults({ audit: { mode: 'off' } }),
      },
    ];
    if (mounts) {
      phases.push(
        {
          name: REAL_PHASES[0],
          errno: 'EROFS',
          apply: () => void undo.push(readOnly(audit)),
          remove: () => undo.pop()(),
        },
        {
          name: REAL_PHASES[1],
          errno: 'ENOSPC',
          apply: () => void undo.push(fill(path.join(w.dataDir, 'repo'))),
          remove: () => undo.pop()(),
        },
      );
    }

    const rows = [];
    const pid = d.pid;
    for (const p of phases) {
      const r = await phase(w, d, reader, names, p, holdMs, log);
      rows.push(
        { check: `${p.name}: rotations pause, nothing unaudited served`, figure: r.pause, ok: r.pauseOk },
        { check: `${p.name}: the daemon says why (status --json, text, log)`, figure: r.says, ok: r.saysOk },
        {
          check: `${p.name}: resumes by itself (bound ${secondsOf(RESUME_BOUND_MS)})`,
          figure: r.resume,
          ok: r.resumeOk,
        },
      );
    }
    if (!mounts) {
      // Not checked, and said so: the rows above (the injected AuditFs) are what this run proves.
      const why = short
        ? 'the short run uses the injected AuditFs only; the full run (npm run prove) mounts where the machine allows'
        : 'this machine does not allow mounts (root with CAP_SYS_ADMIN is needed); only the injected AuditFs above was checked';
      for (const name of REAL_PHASES)
        rows.push({ check: `${name}: rotations pause, the daemon says why, resumes by itself`, figure: '', skip: why });
    }

    const seqAtEnd = localSeq(w);
    const pushed = await waitFor(() => remoteSeq(w) >= seqAtEnd, { timeoutMs: 120_000 });
    await reader.stop();
    const seen = reader.seen;
    reader = undefined;
    const stop = await d.stop();

    const local = auditEntries(audit);
    const remote = await remoteAudit(w);
    const versions = auditVersions(local);
    const { key } = await storeView(w, Math.max(0, ...local.map((e) => e.stateSeq ?? 0)));
    let values = 0;
    const unknown = [];
    for (const [name, byVersion] of seen) {
      for (const [version, canonical] of byVersion) {
        values++;
        const e = versions.byVersion.get(`${name}@${version}`);
        if (!e || e.fingerprint !== fingerprintOf(key, canonical)) unknown.push(`${name}@${version}`);
      }
    }
    rows.push(
      {
        check: 'every value served is in the audit log (fingerprints, daemon key)',
        figure: `${values} (secret, version) values; ${unknown.length} unknown`,
        ok: values > 0 && unknown.length === 0,
      },
      {
        check: 'afterwards: versions contiguous, chain verifies, all pushed, same process',
        figure: `${versions.problems.length} version problems; remote ${remote.verified.ok ? 'verifies' : remote.verified.code}, ${remote.entries.length} of ${local.length} entries${pushed ? '' : ' (push lagging)'}; one daemon process (pid ${pid}) throughout, exit ${stop.code ?? stop.signal}`,
        ok:
          local.length > 0 &&
          versions.problems.length === 0 &&
          remote.verified.ok &&
          remote.entries.length === local.length &&
          stop.code === 0,
      },
    );
    return { rows };
  } finally {
    await reader?.stop();
    while (undo.length) {
      try {
        undo.pop()();
      } catch {
        // already undone
      }
    }
    await d?.stop().catch(() => undefined);
    unmountClone?.();
    w.cleanup();
  }
}

/** One fault: apply it, see the daemon pause and say why, hold it, remove it, see the daemon resume. */
async function phase(w, d, reader, names, p, holdMs, log) {
  const logBefore = d.logLines().length;
  await p.apply();
  const applied = Date.now();
  log(`part 3: ${p.name}: applied`);
  // The daemon says why: status() (rotor status --json) names the code and the errno.
  let st;
  const noticed = await waitFor(
    async () => {
      st = await status(w);
      return st.audit?.failing?.code === 'AUDIT_WRITE_FAILED' && st.audit.failing.errno === p.errno;
    },
    { timeoutMs: NOTICE_BOUND_MS, everyMs: 100 },
  );
  const noticedMs = Date.now() - applied;
  // Each secret fails when it next falls due (every 2 s): wait until every row says so, then look.
  await waitFor(async () => (await status(w)).secrets?.every((s) => s.failing?.error === 'AUDIT_WRITE_FAILED'), {
    timeoutMs: NOTICE_BOUND_MS,
    everyMs: 100,
  });
  const json = await cli(['status', '--json', '--data-dir', w.dataDir]);
  const text = await cli(['status', '--data-dir', w.dataDir]);
  let jsonOk = false;
  try {
    const j = JSON.parse(json.stdout);
    jsonOk = j.audit?.failing?.code === 'AUDIT_WRITE_FAILED' && j.audit.failing.errno === p.errno && json.code === 1;
  } catch {
    jsonOk = false;
  }
  const line = text.stdout.split('\n').find((l) => l.includes('audit log: cannot be written')) ?? '';
  const textOk = text.code === 1 && line.includes(`(AUDIT_WRITE_FAILED, ${p.errno})`);
  const failingRows = text.stdout.split('\n').filter((l) => l.includes('failing: AUDIT_WRITE_FAILED')).length;

  // Hold the fault; the versions served must not move.
  const from = Date.now() + 500; // a rotation whose entry was written just before the fault may still finish
  await sleep(holdMs);
  const to = Date.now();
  const audited = auditVersions(auditEntries(path.join(w.dataDir, 'repo', 'audit'))).last;
  const during = reader.servedBetween(from, to);
  let changed = 0;
  let unaudited = 0;
  let _reads = 0;
  for (const [name, versions] of during) {
    _reads += versions.size;
    if (versions.size > 1) changed++;
    if (Math.max(...versions) > (audited.get(name) ?? 0)) unaudited++;
  }
  const atRemoval = await status(w);
  const versionsAtRemoval = new Map(atRemoval.secrets.map((s) => [s.name, s.version ?? 0]));
  const lines = d.logLines().slice(logBefore);
  const cause = lines.filter((l) => /the audit log cannot be written/.test(l.msg ?? '') && l.errno === p.errno).length;
  const errors = lines.filter((l) => l.level === 'error' || l.level === 50).length;

  await p.remove();
  const removed = Date.now();
  let last;
  const resumed = await waitFor(
    async () => {
      last = await status(w);
      return (
        !last.audit?.failing &&
        last.secrets.every((s) => !s.failing && (s.version ?? 0) > versionsAtRemoval.get(s.name))
      );
    },
    { timeoutMs: RESUME_BOUND_MS + 30_000, everyMs: 100 },
  );
  const resumeMs = Date.now() - removed;
  const firstMs = firstRotationAfter(d, removed);
  const recovered = d
    .logLines()
    .slice(logBefore)
    .some((l) => /the audit log can be written again/.test(l.msg ?? ''));
  log(`part 3: ${p.name}: resumed in ${secondsOf(resumeMs)}`);
  return {
    pause: `${secondsOf(to - from)} held: ${changed} of ${names.length} secrets changed version, ${unaudited} served a version not in the audit log (${during.size} secrets read)`,
    pauseOk: during.size === names.length && changed === 0 && unaudited === 0,
    says: `noticed in ${noticed ? secondsOf(noticedMs) : 'never'}; status: ${st?.audit?.failing ? `${st.audit.failing.code} ${st.audit.failing.errno}` : 'nothing'}; text: "${line.trim().replace(/since \S+/, 'since ...')}" and ${failingRows} rows "failing: AUDIT_WRITE_FAILED"; log: ${cause} line for the cause, ${errors} error lines in all`,
    saysOk: Boolean(noticed) && jsonOk && textOk && failingRows === names.length && cause === 1,
    resume: resumed
      ? `first rotation ${firstMs === undefined ? '?' : secondsOf(firstMs)}, every secret ${secondsOf(resumeMs)} after the fault was removed${recovered ? '; logged "can be written again"' : ''}`
      : `not within ${secondsOf(resumeMs)}: ${last?.secrets
          .filter((s) => s.failing)
          .map((s) => `${s.name} ${s.failing.error}`)
          .slice(0, 3)
          .join(', ')}`,
    resumeOk: Boolean(resumed) && resumeMs <= RESUME_BOUND_MS && recovered,
  };
}

/** How long after `t` the daemon logged its first finished rotation. */
function firstRotationAfter(d, t) {
  const first = d.logLines().find((l) => /^secret (rotated|created)$/.test(l.msg ?? '') && Date.parse(l.time) >= t);
  return first ? Date.parse(first.time) - t : undefined;
}
