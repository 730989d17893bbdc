/**
 * The agent's rounds over several daemons (agent/src/daemons.ts): the next daemon is tried at once, the
 * backoff comes after a full round of failures; it grows to the full cap when no daemon answered, and
 * only to ELECTION_CAP_MS when one answered NOT_LEADER (the cluster is up and choosing its leader: an
 * agent that met several failovers in a row must not sit out 30 s while a new leader has a job for it).
 */
import t from 'tap';
import { DaemonList, ELECTION_CAP_MS, Rounds } from '../agent/src/daemons.js';
import { AgentError } from '../agent/src/errors.js';
import { NOT_LEADER } from '../src/protocol/jobs.js';

const CAP_MS = 30_000;

function rounds() {
  const list = new DaemonList(
    ['http://127.0.0.1:1', 'http://127.0.0.1:2', 'http://127.0.0.1:3'].map((u) => new URL(u)),
    () => undefined,
    'jobs from',
  );
  // random() near 1: each delay is the top of its jittered range, so the growth shows plainly.
  const r = new Rounds(list, {
    backoff: { baseMs: 500, capMs: CAP_MS, random: () => 0.999 },
    sleep: async () => undefined,
  });
  return { list, r };
}

const refused = () => Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
const notLeader = () => new AgentError('AGENT_DAEMON_REFUSED', 'not the leader', 503, NOT_LEADER);

/**
 * `n` full rounds of the failures `round` gives; the delay each round ends with. Throws should a failure
 * within a round wait, or a full round not.
 */
function delays(r: Rounds, n: number, round: () => unknown[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const fails = round();
    fails.forEach((e, j) => {
      const d = r.failed(e);
      if (j < fails.length - 1 && d !== undefined) throw new Error(`failure ${j + 1} of a round waits ${d} ms`);
      if (j === fails.length - 1) {
        if (d === undefined) throw new Error('a full round of failures does not wait');
        out.push(d);
      }
    });
  }
  return out;
}

t.test('no daemon answered: the backoff grows to the full cap', async (t) => {
  const { r } = rounds();
  const d = delays(r, 12, () => [refused(), refused(), refused()]);
  t.ok(
    d.every((x, i) => i === 0 || x >= d[i - 1]!),
    `the delays do not shrink (${d.join(', ')})`,
  );
  t.ok(d.at(-1)! > ELECTION_CAP_MS * 5, `it reaches far beyond ${ELECTION_CAP_MS} ms (${d.at(-1)} ms)`);
  t.ok(
    d.every((x) => x <= CAP_MS),
    'never beyond the cap',
  );
});

t.test('a daemon answered NOT_LEADER in each round: the backoff stays within ELECTION_CAP_MS', async (t) => {
  const { r } = rounds();
  // A failover after another: the old leader's port refuses, the others do not lead (yet).
  const d = delays(r, 12, () => [refused(), notLeader(), notLeader()]);
  t.ok(
    d.every((x) => x > 0 && x <= ELECTION_CAP_MS),
    `every delay is at most ${ELECTION_CAP_MS} ms (${d.join(', ')})`,
  );
  t.ok(d.at(-1)! > d[0]!, 'it still grows, up to that cap (a ping-pong between two daemons waits)');
});

t.test('after a round in which a daemon answered, a round without any grows on from where it was', async (t) => {
  const { r } = rounds();
  delays(r, 6, () => [refused(), notLeader(), refused()]);
  const [after] = delays(r, 1, () => [refused(), refused(), refused()]);
  t.ok(after! > ELECTION_CAP_MS, `the NOT_LEADER answer of an earlier round does not cap a later one (${after} ms)`);
});

t.test('an answer resets the rounds', async (t) => {
  const { r } = rounds();
  const first = delays(r, 1, () => [refused(), refused(), refused()])[0]!;
  delays(r, 8, () => [refused(), refused(), refused()]);
  r.ok();
  const again = delays(r, 1, () => [refused(), refused(), refused()])[0]!;
  t.equal(again, first, 'the first round after an answer waits the first delay again');
});
