/**
 * The daemon's agent API, as a real HTTP listener of an in-process daemon: signed requests only (a
 * replayed, skewed, altered, unsigned or unknown-agent request is refused), signed answers, jobs only
 * for the agent's own targets, results only from the agent the job was given to, and credentials
 * sealed so that only the agent opens them.
 */
import { createPublicKey } from 'node:crypto';
import path from 'node:path';
import t from 'tap';
import { generateKeys, type Keys, loadKeys } from '../src/keys.js';
import type { Job, SetPayload } from '../src/protocol/jobs.js';
import { AGENT_JOBS_PATH, AGENT_RESULTS_PATH } from '../src/protocol/jobs.js';
import { openSealed } from '../src/protocol/seal.js';
import { signRequest } from '../src/protocol/sign.js';
import { tempDir } from './helpers.js';
import { post, signedCall } from './lib/agent-api.js';
import { step, world } from './world.js';

t.test('the agent API: signatures, replay, skew, routing of jobs and results', async (t) => {
  const keysDir = tempDir(t, 'rotor-agent-api-');
  await generateKeys(path.join(keysDir, 'a'));
  await generateKeys(path.join(keysDir, 'b'));
  const a: Keys = await loadKeys(path.join(keysDir, 'a'));
  const b: Keys = await loadKeys(path.join(keysDir, 'b'));
  const w = await world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
    'agents.yaml': `kind: Agent\nname: agent-a\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n---\nkind: Agent\nname: agent-b\nsigningKey: "${b.signingKey}"\nrecipient: ${b.recipient}\n`,
    'targets.yaml':
      'kind: Target\nname: db-a\nengine: postgres\nagent: agent-a\n---\nkind: Target\nname: db-b\nengine: redis\nagent: agent-b\n',
    'secret.yaml':
      'kind: Secret\nname: app/db\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: db-a, usernames: [app_blue, app_green] }\n',
  });
  // One clock for the daemon and the agents' signatures, standing still: the skew checks below compare
  // timestamps to it exactly, whatever the wall clock does while the test runs.
  const NOW = Date.parse('2026-11-26T10:00:00.000Z');
  const d = await w.start({ socketDir: path.join(w.root, 'sockets'), agentListen: '127.0.0.1:0', now: () => NOW });
  t.teardown(() => d.stop());
  const url = `http://${d.agentAddress!}`;
  const daemonKey = createPublicKey((await loadKeys(w.dataDir)).signing);
  const signed = (keys: Keys, agent: string, p: string, body: string, extra: { now?: number; nonce?: string } = {}) =>
    signRequest({ agent, method: 'POST', path: p, body, privateKey: keys.signing, now: NOW, ...extra });
  const call = async (keys: Keys, agent: string, p: string, payload: unknown) => {
    const { answer, verdict } = await signedCall(url, {
      agent,
      privateKey: keys.signing,
      daemonKey,
      path: p,
      payload,
      now: NOW,
    });
    t.same(verdict, { ok: true }, `the daemon's answer to ${agent} ${p} is signed`);
    return answer;
  };

  // Agent B has no job: the secret's target belongs to agent A.
  const none = await call(b, 'agent-b', AGENT_JOBS_PATH, { wait: 0 });
  t.equal(none.status, 200);
  t.same(none.body.jobs, [], "agent-b gets no job for agent-a's target");
  const got = await call(a, 'agent-a', AGENT_JOBS_PATH, { wait: 10 });
  const jobs = got.body.jobs as Job[];
  t.equal(jobs.length, 1, 'agent-a gets the set job of version 1');
  const job = jobs[0]!;
  t.match(job, {
    kind: 'set',
    secret: 'app/db',
    version: 1,
    target: 'db-a',
    engine: 'postgres',
    strategy: 'alternate',
  });
  t.notOk(got.text.includes('password'), 'no credential in clear on the wire');
  const payload = (await openSealed(a.identity, job.sealed)) as SetPayload;
  t.equal(payload.pending.username, 'app_blue');
  t.match(payload.pending.password, /^[A-Za-z0-9_-]{32}$/);
  await t.rejects(openSealed(b.identity, job.sealed), { code: 'SEAL_WRONG_KEY' }, 'another agent cannot open it');
  t.notOk(w.logs().includes(payload.pending.password), "the credential is not in the daemon's logs");
  // Leased: a second poll does not get it again (until the lease runs out).
  t.same(
    (await call(a, 'agent-a', AGENT_JOBS_PATH, { wait: 0 })).body.jobs,
    [],
    'a leased job is not handed out twice',
  );

  // Refusals.
  const body = JSON.stringify({ wait: 0 });
  const h = signed(a, 'agent-a', AGENT_JOBS_PATH, body);
  t.equal((await post(url, AGENT_JOBS_PATH, body, h)).status, 200, 'a fresh signed request is answered');
  const replay = await post(url, AGENT_JOBS_PATH, body, h);
  t.same([replay.status, replay.body.error.code], [401, 'AGENT_REPLAY'], 'the same request again is a replay');
  // The limit is 60 s either way (DEFAULT_MAX_SKEW_MS), on the daemon's clock: 60 s is still accepted, 60.001 s is not.
  const atLimit = await post(
    url,
    AGENT_JOBS_PATH,
    body,
    signed(a, 'agent-a', AGENT_JOBS_PATH, body, { now: NOW - 60_000 }),
  );
  t.equal(atLimit.status, 200, "a request signed 60 s behind the daemon's clock is answered");
  const skewed = await post(
    url,
    AGENT_JOBS_PATH,
    body,
    signed(a, 'agent-a', AGENT_JOBS_PATH, body, { now: NOW - 60_001 }),
  );
  t.same([skewed.status, skewed.body.error.code], [401, 'AGENT_SKEW'], 'one ms more behind is refused');
  const aheadAtLimit = await post(
    url,
    AGENT_JOBS_PATH,
    body,
    signed(a, 'agent-a', AGENT_JOBS_PATH, body, { now: NOW + 60_000 }),
  );
  t.equal(aheadAtLimit.status, 200, 'a request signed 60 s ahead is answered');
  const ahead = await post(
    url,
    AGENT_JOBS_PATH,
    body,
    signed(a, 'agent-a', AGENT_JOBS_PATH, body, { now: NOW + 60_001 }),
  );
  t.same([ahead.status, ahead.body.error.code], [401, 'AGENT_SKEW'], 'one ms more ahead is refused');
  const altered = await post(
    url,
    AGENT_JOBS_PATH,
    JSON.stringify({ wait: 1 }),
    signed(a, 'agent-a', AGENT_JOBS_PATH, body),
  );
  t.equal(altered.body.error.code, 'AGENT_BODY_ALTERED');
  const unsigned = await post(url, AGENT_JOBS_PATH, body, {});
  t.same([unsigned.status, unsigned.body.error.code], [401, 'AGENT_UNSIGNED']);
  const forged = await post(url, AGENT_JOBS_PATH, body, signed(b, 'agent-a', AGENT_JOBS_PATH, body));
  t.equal(forged.body.error.code, 'AGENT_BAD_SIGNATURE', 'agent-b cannot speak for agent-a');
  const unknown = await post(url, AGENT_JOBS_PATH, body, signed(b, 'agent-z', AGENT_JOBS_PATH, body));
  t.equal(unknown.body.error.code, 'AGENT_UNKNOWN');
  const otherPath = await post(url, AGENT_RESULTS_PATH, body, signed(a, 'agent-a', AGENT_JOBS_PATH, body));
  t.equal(otherPath.body.error.code, 'AGENT_BAD_SIGNATURE', 'a signature for one path does not serve another');
  t.match(w.logs(), /agent request refused.*AGENT_REPLAY/, 'refusals are logged');

  // A verify result's checks are bounded and checked whole: a malformed list refuses the request (400).
  for (const checks of [
    [
      { credential: 'current', outcome: 'ok' },
      { credential: 'current', outcome: 'ok' },
    ],
    [{ credential: 'current', outcome: 'hacked' }],
    [{ credential: 'current', outcome: 'error', code: 'X'.repeat(65) }],
    'ok',
  ]) {
    const bad = await call(a, 'agent-a', AGENT_RESULTS_PATH, {
      results: [{ id: job.id, outcome: 'done', detail: 'verified', checks }],
    });
    t.same(
      [bad.status, bad.body.error?.code],
      [400, 'BAD_REQUEST'],
      `checks ${JSON.stringify(checks).slice(0, 50)}: refused`,
    );
  }

  // Results: agent-b cannot settle agent-a's job; agent-a's failure fails the step (audited), nothing promoted.
  const fromB = await call(b, 'agent-b', AGENT_RESULTS_PATH, {
    results: [{ id: job.id, outcome: 'done', detail: 'applied' }],
  });
  t.equal(fromB.body.accepted, 0, "a result for another agent's job is ignored");
  t.equal(d.served('app/db'), undefined, 'nothing served yet');
  const failed = step('app/db', 'failed');
  const fromA = await call(a, 'agent-a', AGENT_RESULTS_PATH, {
    results: [{ id: job.id, outcome: 'failed', code: 'DB_UNREACHABLE', message: 'connection refused' }],
  });
  t.equal(fromA.body.accepted, 1);
  await failed;
  t.equal(d.served('app/db'), undefined, 'a failed set promotes nothing');
  const st = d.status();
  t.match(
    st.secrets.find((s) => s.name === 'app/db'),
    { pending: true, failing: { error: 'DB_UNREACHABLE' } },
  );
  t.match(
    st.agents.agents.find((x) => x.name === 'agent-a'),
    { lastSeen: String },
  );
});
