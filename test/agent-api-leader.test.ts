/**
 * The agent API of a daemon that follows (several daemons on one store, one leads): the real listener
 * refuses the jobs and results routes with a signed 503 NOT_LEADER naming the leader's agent API when it
 * knows it, and serves the values long-poll and receipts as the leader does. A values cursor of another
 * daemon (another epoch) gets a full answer.
 */
import { generateKeyPairSync } from 'node:crypto';
import path from 'node:path';
import t from 'tap';
import { generateKeys, loadKeys } from '../src/keys.js';
import { AGENT_JOBS_PATH, AGENT_RESULTS_PATH } from '../src/protocol/jobs.js';
import { AGENT_RECEIPTS_PATH, AGENT_VALUES_PATH, ValuesOpener } from '../src/protocol/values.js';
import { tempDir } from './helpers.js';
import { daemonApi, hostModel, type Role } from './leader-listeners.js';
import { signedCall } from './lib/agent-api.js';

t.test('a follower refuses jobs and results with NOT_LEADER and the leader, and serves values', async (t) => {
  const dir = tempDir(t, 'rotor-agent-api-leader-');
  await generateKeys(path.join(dir, 'agent'));
  const agent = await loadKeys(path.join(dir, 'agent'));
  const daemon = generateKeyPairSync('ed25519');
  const desired = await hostModel(dir, agent, process.getuid!());
  const role: Role = { leading: false, leader: 'http://10.0.0.7:7700' };
  const d = await daemonApi(t, { desired, signing: daemon.privateKey, role, value: 'v1-value' });

  /** A signed call, its answer checked to be signed by the daemon for this request. */
  const call = async (p: string, payload: unknown) => {
    const { answer, verdict } = await signedCall(d.url, {
      agent: 'web-1',
      privateKey: agent.signing,
      daemonKey: daemon.publicKey,
      path: p,
      payload,
    });
    t.same(verdict, { ok: true }, `the answer to ${p} (${answer.status}) is signed`);
    return answer;
  };

  const jobs = await call(AGENT_JOBS_PATH, { wait: 0 });
  t.equal(jobs.status, 503, 'a job poll on a follower: 503');
  t.equal(jobs.body.error.code, 'NOT_LEADER');
  t.equal(jobs.body.error.leader, 'http://10.0.0.7:7700', "with the leader's agent API");
  t.match(jobs.body.error.message, /this daemon follows: the leading daemon's agent API is http:\/\/10\.0\.0\.7:7700/);
  t.equal(jobs.headers.connection, 'close', 'and the connection closed, as for every refusal');
  const results = await call(AGENT_RESULTS_PATH, { results: [{ id: 'x', outcome: 'done' }] });
  t.same([results.status, results.body.error.code], [503, 'NOT_LEADER'], 'results on a follower: NOT_LEADER too');

  role.leader = undefined;
  const unknown = await call(AGENT_JOBS_PATH, { wait: 0 });
  t.same([unknown.status, unknown.body.error.code], [503, 'NOT_LEADER'], 'a follower that does not know the leader');
  t.notOk('leader' in unknown.body.error, 'names none');
  t.match(unknown.body.error.message, /does not know which daemon leads/);

  // Values and receipts: served by a follower.
  const opener = new ValuesOpener('web-1', agent.identity);
  const first = await call(AGENT_VALUES_PATH, { wait: 0 });
  t.equal(first.status, 200, 'the values long-poll is served by a follower');
  const full = opener.open(first.body);
  t.equal(full.full, true, 'without a cursor: full');
  t.same(
    full.secrets.map((s) => [s.name, s.current?.version]),
    [['app/db', 1]],
    'with the secret its consumer reads',
  );
  const receipts = await call(AGENT_RECEIPTS_PATH, { receipts: [{ consumer: 'web', secret: 'app/db', version: 1 }] });
  t.same([receipts.status, receipts.body.accepted], [200, 1], 'receipts are taken by a follower');

  // A cursor of this daemon: a delta; a cursor of another daemon (another epoch): everything.
  const mine = opener.open(
    (await call(AGENT_VALUES_PATH, { wait: 0, epoch: first.body.epoch, after: first.body.cursor })).body,
  );
  t.same([mine.full, mine.secrets.length], [false, 0], "this daemon's own cursor: the changes since (none)");
  const foreign = await call(AGENT_VALUES_PATH, { wait: 0, epoch: 'another-daemon-epoch', after: first.body.cursor });
  t.equal(opener.open(foreign.body).full, true, "another daemon's epoch: a full answer");
  t.same(
    opener.open(foreign.body).consumers?.map((c) => c.name),
    ['web'],
    'with the consumers',
  );

  // Leading again: jobs are handed out.
  role.leading = true;
  const led = await call(AGENT_JOBS_PATH, { wait: 0 });
  t.same([led.status, led.body.jobs], [200, []], 'a leader answers the poll');
});
