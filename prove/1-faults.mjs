// Proof, part 1: faults in the state store, the audit log and git while rotations run.
//
// The daemon runs in its own process with injected layers under its state store and its audit log
// (20% of writes and fsyncs fail with EIO, a failed write having stored part of its bytes, or stall
// for 20-300 ms and go on) and a git wrapper first on its PATH (20% of commits, pushes and fetches
// fail; half of those after git did its work). Meanwhile secrets rotate on a 2 s schedule, `rotor
// rotate` requests come in a loop over the admin socket, and a consumer reads every secret through
// its socket. Then the faults stop, and the daemon must recover by itself: every secret rotates
// again, no secret is failing, and every audit entry is on the remote. Afterwards, with the daemon
// stopped: versions run 1..N per secret in the audit log, each once; the store's current version is
// the audit's last; every value the consumer was served has the fingerprint its version's audit entry
// records (computed here with the daemon's key from the store); the chain verifies, locally and on
// the remote, which holds every entry once; the daemon never forced a push. The remote accepts
// non-fast-forward pushes, and before a few of the daemon's pushes another writer pushes first (the
// git wrapper's races): a force-push would land, drop that writer's commit and show in the reflog.

import { randomInt } from 'node:crypto';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { forcedPush, gitFaults } from './lib/faults-git.mjs';
import {
  auditEntries,
  auditVersions,
  canonicalJson,
  declarations,
  fingerprintOf,
  forcedUpdates,
  git,
  localAudit,
  localSeq,
  makeWorld,
  remoteAudit,
  remoteSeq,
  rotate,
  secondsOf,
  secretNames,
  seqProblems,
  startDaemon,
  startReader,
  status,
  storeView,
  tally,
  waitFor,
} from './lib/faults-world.mjs';

export const part = 1;
export const title = 'Faults in the state store, the audit log and git while secrets rotate';

const RATE = 0.2;
/** Recovery must be complete within this long after the faults stop (see prove/RESULTS.md). */
const RECOVERY_BOUND_MS = 60_000;

export async function run({ short, log }) {
  const n = short ? 6 : 16;
  const faultMs = short ? 8_000 : 60_000;
  const seed = randomInt(1, 2 ** 31);
  const w = await makeWorld('faults', declarations({ n, every: '2s', overlap: '1s' }));
  const gf = gitFaults(path.join(w.root, 'git-faults'));
  gf.race(w.remote, short ? 2 : 4);
  const names = secretNames(n);
  let d;
  try {
    d = await startDaemon(w, { env: gf.env, seed, commitDelayMs: 200 });
    log(`part 1: daemon started (${n} secrets every 2 s, seed ${seed}); faults on for ${faultMs / 1000} s`);
    const reader = startReader(w, names);
    const faulty = { mode: 'random', rate: RATE, stallShare: 0.5, stallMs: [20, 300], errno: 'EIO' };
    await d.faults({ store: faulty, audit: faulty });
    gf.setRate(RATE);

    // rotor rotate in a loop, over the admin socket
    const requests = { ok: 0, failed: 0, codes: {} };
    let requesting = true;
    const requester = (async () => {
      while (requesting) {
        try {
          await rotate(w, names[randomInt(names.length)], 'prove: fault injection');
          requests.ok++;
        } catch (e) {
          requests.failed++;
          requests.codes[e.code] = (requests.codes[e.code] ?? 0) + 1;
        }
        await sleep(100);
      }
    })();

    await sleep(faultMs); // the length of the fault phase
    gf.setRate(0);
    await d.faults({ store: { mode: 'off' }, audit: { mode: 'off' } });
    const stoppedAt = Date.now();
    const injected = { ...(await d.counts()), ...gf.faults() };
    const gitCalls = gf.calls();
    const before = await status(w);
    const failingAtStop = before.secrets.filter((s) => s.failing).length;
    const versionsAtStop = new Map(before.secrets.map((s) => [s.name, s.version ?? 0]));
    const seqAtStop = localSeq(w);
    log(`part 1: faults off; ${tally(injected)}; ${failingAtStop} secrets failing; waiting for recovery`);

    // Recovery: every secret rotated again, none failing, everything audited so far on the remote.
    let lastStatus;
    const recovered = await waitFor(
      async () => {
        lastStatus = await status(w).catch(() => undefined);
        if (!lastStatus) return false;
        const rotated = lastStatus.secrets.every((s) => (s.version ?? 0) > versionsAtStop.get(s.name));
        const failing = lastStatus.secrets.some((s) => s.failing);
        return rotated && !failing && remoteSeq(w) >= seqAtStop;
      },
      { timeoutMs: RECOVERY_BOUND_MS, everyMs: 200 },
    );
    const recoveryMs = Date.now() - stoppedAt;
    if (!recovered) {
      const stuck =
        lastStatus?.secrets
          .filter((s) => s.failing || (s.version ?? 0) <= versionsAtStop.get(s.name))
          .map(
            (s) => `${s.name} v${s.version} ${s.failing ? `failing ${s.failing.error} x${s.failing.attempts}` : ''}`,
          ) ?? [];
      log(
        `part 1: not recovered after ${secondsOf(recoveryMs)}: remote seq ${remoteSeq(w)} of ${seqAtStop}; ${stuck.slice(0, 5).join('; ')}`,
      );
    }
    requesting = false;
    await requester;
    await reader.stop();
    const stop = await d.stop();

    // ---- checks on what is on disk ----
    const local = auditEntries(path.join(w.dataDir, 'repo', 'audit'));
    const remote = await remoteAudit(w);
    const versions = auditVersions(local);
    const { key, records } = await storeView(w, Math.max(0, ...local.map((e) => e.stateSeq ?? 0)));
    const storeProblems = [];
    let storedValues = 0;
    for (const name of names) {
      const r = records.get(name);
      if (!r) storeProblems.push(`${name}: not in the store`);
      const cur = r?.versions[0]?.version;
      if (cur !== versions.last.get(name))
        storeProblems.push(`${name}: store at version ${cur}, audit at ${versions.last.get(name)}`);
      for (const v of r?.versions ?? []) {
        storedValues++;
        const e = versions.byVersion.get(`${name}@${v.version}`);
        if (!e || e.fingerprint !== fingerprintOf(key, canonicalJson(v.value)))
          storeProblems.push(`${name}: stored version ${v.version} is not the value its audit entry names`);
      }
    }
    let served = 0;
    const unknown = [];
    for (const [name, byVersion] of reader.seen) {
      for (const [version, canonical] of byVersion) {
        served++;
        const e = versions.byVersion.get(`${name}@${version}`);
        if (!e || e.fingerprint !== fingerprintOf(key, canonical)) unknown.push(`${name}@${version}`);
      }
    }
    const rotations = local.filter((e) => e.event === 'created' || e.event === 'rotated').length;
    const pushes = gf.pushes();
    const forced = pushes.filter(forcedPush).length;
    const reflog = forcedUpdates(w);
    const raced = gf.races();
    const racerLanded = gf.racerCommits();
    const racerOnRemote = git(w.remote, 'log', '--format=%s', 'main')
      .split('\n')
      .filter((x) => /^racer commit \d+$/.test(x)).length;
    const localChain = await localAudit(w);
    const remoteSame =
      local.length > 0 && remote.entries.length === local.length && remote.entries.at(-1)?.hash === local.at(-1)?.hash;
    const injectedTotal = Object.values(injected).reduce((a, b) => a + b, 0);

    return {
      rows: [
        {
          check: 'faults injected (store, audit log, git)',
          figure: `${injectedTotal}: ${tally(injected)} (git calls while faulty: ${tally(gitCalls)})`,
          ok:
            injectedTotal > 0 &&
            Object.keys(injected).some((k) => k.startsWith('store.')) &&
            Object.keys(injected).some((k) => k.startsWith('audit.')) &&
            Object.keys(injected).some((k) => k.startsWith('git.')),
        },
        {
          check: 'rotations done (schedule every 2 s + rotor rotate loop)',
          figure: `${rotations} versions made current; ${requests.ok} rotate requests answered, ${requests.failed} refused (${tally(requests.codes)})`,
          ok: rotations > n,
        },
        {
          check: 'versions 1..N per secret in the audit log, none lost or duplicated',
          figure: `${n} secrets, ${versions.problems.length} problems${versions.problems.length ? `: ${versions.problems.slice(0, 3).join('; ')}` : ''}`,
          ok: versions.problems.length === 0 && versions.last.size === n,
        },
        {
          check: "store's current version = the audit's last, stored values match their fingerprints",
          figure: `${n} secrets, ${storedValues} stored values; ${storeProblems.length} problems${storeProblems.length ? `: ${storeProblems.slice(0, 3).join('; ')}` : ''}`,
          ok: storedValues >= n && storeProblems.length === 0,
        },
        {
          check: 'every value served through the consumer socket is in the audit log',
          figure: `${served} (secret, version) values seen in ${reader.stats.reads} reads; ${unknown.length} unknown; ${reader.stats.conflicting} versions with two values; ${reader.stats.backwards} times a version went back`,
          ok: served > 0 && unknown.length === 0 && reader.stats.conflicting === 0 && reader.stats.backwards === 0,
        },
        {
          check: 'audit chain verifies (daemon clone and remote)',
          figure: `${local.length} entries; clone: ${localChain.ok ? 'ok' : `${localChain.code} at line ${localChain.line}`}; remote: ${remote.verified.ok ? 'ok' : `${remote.verified.code} at line ${remote.verified.line}`}; seq ${seqProblems(local).length ? seqProblems(local).join('; ') : 'contiguous'}`,
          ok: local.length > 0 && localChain.ok && remote.verified.ok && seqProblems(local).length === 0,
        },
        {
          check: 'every audit entry on the remote exactly once',
          figure: `${remote.entries.length} on the remote, ${local.length} written`,
          ok: remoteSame && seqProblems(remote.entries).length === 0,
        },
        {
          check:
            "never a force-push (the remote accepts non-fast-forward pushes, and other writers pushed just before some of the daemon's)",
          figure: `${pushes.length} pushes by the daemon, ${forced} forced; ${raced.raced} raced by another writer, ${racerOnRemote} of its ${racerLanded} commits on the remote; remote reflog: ${reflog.updates} updates, ${reflog.forced} not fast-forward, ${reflog.gaps} not starting where the one before ended${reflog.examples.length ? ` (${reflog.examples.join('; ')})` : ''}`,
          ok:
            pushes.length > 0 &&
            forced === 0 &&
            raced.raced > 0 &&
            racerOnRemote === racerLanded &&
            reflog.updates > 0 &&
            reflog.forced === 0 &&
            reflog.gaps === 0,
        },
        {
          check: `recovery by itself once the faults stop (bound ${secondsOf(RECOVERY_BOUND_MS)})`,
          figure: `${recovered ? secondsOf(recoveryMs) : `not within ${secondsOf(recoveryMs)}`} (${failingAtStop} of ${n} secrets failing when the faults stopped)`,
          ok: Boolean(recovered),
        },
        { check: 'the daemon stopped cleanly', figure: `exit ${stop.code ?? stop.signal}`, ok: stop.code === 0 },
      ],
    };
  } finally {
    await d?.stop().catch(() => undefined);
    w.cleanup();
  }
}
