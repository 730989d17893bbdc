// A `git` wrapper put first on the daemon's PATH (the daemon runs git by name, src/git/run.ts): it
// logs every push's arguments (so that a --force or a +refspec would be seen) and, at the rate in
// CTL/rate (per mille, 0 = none; at random, but never more than twice the mean gap apart), makes
// `git commit`, `git push` and `git fetch` fail: half of the
// hits fail before git runs, half after it ran (the push landed, the commit was made, but the caller
// sees an error, as when a connection breaks after the remote updated). Everything else goes to the
// real git untouched. Counts come from CTL/faults.log and CTL/calls.log, one line per event.
//
// Races (race(remote, n)): before the next n pushes of the daemon, never two in a row, another writer
// (a clone of its own, CTL/racer, with the real git) commits docs/racer.txt and pushes it to the remote
// first. The daemon's push that follows is then certain to be rejected as non-fast-forward: it must
// fetch, put its audit commits on top and push again, never force. A force-push would drop the racer's
// commit, which the proof looks for on the remote (racerCommits), and show in the remote's reflog.
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const SCRIPT = (realGit) => `#!/bin/bash
# rotor prove: git with injected failures (prove/lib/faults-git.mjs)
CTL="$ROTOR_FAULTS_GIT"
sub=""
skip=0
for a in "$@"; do
  if [ "$skip" = 1 ]; then skip=0; continue; fi
  case "$a" in
    -c|-C) skip=1 ;;
    -*) ;;
    *) sub="$a"; break ;;
  esac
done
# Another writer's push, just before this one of the daemon (see race() below): the racer's clone is
# brought up to date, gets one commit and pushes it, retried until it lands (up to 50 times).
race_push() (
  unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES GIT_CONFIG_PARAMETERS GIT_CONFIG_COUNT
  export GIT_AUTHOR_NAME=racer GIT_AUTHOR_EMAIL=racer@rotor.invalid GIT_COMMITTER_NAME=racer GIT_COMMITTER_EMAIL=racer@rotor.invalid
  export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0
  real=${JSON.stringify(realGit)}
  cd "$CTL/racer" || exit 1
  n=$(( $(cat "$CTL/racer-commits" 2>/dev/null || echo 0) + 1 ))
  mkdir -p docs && printf 'racer commit %s\\n' "$n" >> docs/racer.txt
  "$real" add docs/racer.txt && "$real" commit -q -m "racer commit $n" || exit 1
  for attempt in $(seq 1 50); do
    if "$real" pull -q --rebase origin main >/dev/null 2>&1 && "$real" push -q origin HEAD:refs/heads/main >/dev/null 2>&1; then
      echo "$n" > "$CTL/racer-commits"
      exit 0
    fi
  done
  exit 1
)
case "$sub" in
  commit|push|fetch)
    printf '%s\\n' "$sub" >> "$CTL/calls.log"
    if [ "$sub" = push ]; then
      printf '%s\\n' "$*" >> "$CTL/push-args.log"
      left=$(cat "$CTL/race" 2>/dev/null || echo 0)
      if [ "$left" -gt 0 ] && [ ! -e "$CTL/raced-last" ]; then
        echo $((left - 1)) > "$CTL/race"
        touch "$CTL/raced-last"
        if race_push; then printf 'raced\\n' >> "$CTL/races.log"; else printf 'racer failed\\n' >> "$CTL/races.log"; fi
      else
        rm -f "$CTL/raced-last"
      fi
    fi
    rate=$(cat "$CTL/rate" 2>/dev/null || echo 0)
    since=$(cat "$CTL/since" 2>/dev/null || echo 0)
    # at random, and at the latest after twice the mean gap (so that a short run sees faults too)
    if [ "$rate" -gt 0 ] && { [ $((RANDOM % 1000)) -lt "$rate" ] || [ "$since" -ge $((2000 / rate)) ]; }; then
      echo 0 > "$CTL/since"
      if [ $((RANDOM % 2)) = 0 ]; then
        printf '%s before\\n' "$sub" >> "$CTL/faults.log"
        echo "fatal: injected fault: git $sub failed" >&2
        exit 128
      fi
      ${JSON.stringify(realGit)} "$@"
      printf '%s after\\n' "$sub" >> "$CTL/faults.log"
      echo "fatal: injected fault: the connection broke after git $sub" >&2
      exit 128
    fi
    [ "$rate" -gt 0 ] && echo $((since + 1)) > "$CTL/since"
    ;;
esac
exec ${JSON.stringify(realGit)} "$@"
`;

/** Makes the wrapper in DIR/bin/git; returns the environment for the daemon and the controls. */
export function gitFaults(dir) {
  const realGit = execFileSync('sh', ['-c', 'command -v git'], { encoding: 'utf8' }).trim();
  const bin = path.join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  writeFileSync(path.join(bin, 'git'), SCRIPT(realGit));
  chmodSync(path.join(bin, 'git'), 0o755);
  writeFileSync(path.join(dir, 'rate'), '0\n');
  const lines = (f) =>
    existsSync(path.join(dir, f)) ? readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean) : [];
  const tally = (f) => {
    const out = {};
    for (const l of lines(f)) out[l] = (out[l] ?? 0) + 1;
    return out;
  };
  return {
    env: { PATH: `${bin}:${process.env.PATH}`, ROTOR_FAULTS_GIT: dir },
    /** Sets the failure rate (0 to 1). */
    setRate: (rate) => writeFileSync(path.join(dir, 'rate'), `${Math.round(rate * 1000)}\n`),
    /** Injected failures by kind ("git.push.after": 3, ...). */
    faults: () =>
      Object.fromEntries(Object.entries(tally('faults.log')).map(([k, n]) => [`git.${k.replace(' ', '.')}`, n])),
    /** commit/push/fetch calls made. */
    calls: () => tally('calls.log'),
    /** The argument lists of every push the daemon ran. */
    pushes: () => lines('push-args.log'),
    /** Another writer pushes just before each of the daemon's next `n` pushes (never two in a row). */
    race(remote, n) {
      execFileSync('git', ['clone', '-q', remote, path.join(dir, 'racer')], {
        env: { ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null' },
        stdio: 'ignore',
      });
      writeFileSync(path.join(dir, 'race'), `${n}\n`);
    },
    /** Races run: { raced, failed } (failed: the racer could not land its commit). */
    races: () => ({
      raced: lines('races.log').filter((l) => l === 'raced').length,
      failed: lines('races.log').filter((l) => l === 'racer failed').length,
    }),
    /** The racer's commits that landed ("racer commit N", N = 1..). */
    racerCommits: () =>
      Number(
        existsSync(path.join(dir, 'racer-commits')) ? readFileSync(path.join(dir, 'racer-commits'), 'utf8').trim() : 0,
      ),
  };
}

/** A push that forces: --force, -f, --force-with-lease, --mirror, or a refspec starting with '+'. */
export function forcedPush(args) {
  return /(^|\s)(--force(-with-lease)?(=\S*)?|-f|--mirror|\+\S+:\S+)(\s|$)/.test(args);
}
