/**
 * Agent API listeners as several daemons on one store run them: the real listener (listenAgentApi) with
 * a real AgentHub (jobs) and AgentValues (the consumers' values) over a model loaded from declarations,
 * each listener with its own hub and values (its own epoch), all signing with one key, and each told
 * whether it leads by a function the test flips. What the rotation engine would serve is a fixed value
 * per secret here (the engine is not what these tests are about).
 */
import type { KeyObject } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { AgentValues } from '../src/daemon/agent-values.js';
import { AgentHub } from '../src/daemon/agents.js';
import type { Keys } from '../src/keys.js';
import { jsonLogger } from '../src/log.js';
import { loadModel } from '../src/model/load.js';
import type { Desired } from '../src/model/model.js';
import { DirectorySource } from '../src/model/source.js';
import { listenAgentApi } from '../src/serve/agent-api.js';

/** Agent web-1 with target db (a redis Target, secret app/db) and consumer web (reads app/*). */
export async function hostModel(dir: string, agent: Keys, uid: number): Promise<Desired> {
  const repo = path.join(dir, 'repo');
  mkdirSync(repo, { recursive: true });
  writeFileSync(path.join(repo, 'rotor.yaml'), 'kind: Config\n');
  writeFileSync(
    path.join(repo, 'all.yaml'),
    [
      'kind: Policy\nname: p\nevery: 30d\noverlap: 1d',
      `kind: Agent\nname: web-1\nsigningKey: "${agent.signingKey}"\nrecipient: ${agent.recipient}`,
      'kind: Target\nname: db\nengine: redis\nagent: web-1',
      'kind: Secret\nname: app/db\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: db, username: app }',
      `kind: Consumer\nname: web\nagent: web-1\nuid: ${uid}\nsecrets: ["app/*"]`,
      '',
    ].join('\n---\n'),
  );
  const model = await loadModel(new DirectorySource(repo), { now: Date.now() });
  if (!model.valid) throw new Error(JSON.stringify(model.problems.slice(0, 3)));
  return model.desired;
}

export interface Role {
  leading: boolean;
  leader?: string;
}

/** One daemon's agent API on 127.0.0.1, leading while `role.leading`; closed when `t` ends (or by close()). */
export async function daemonApi(t: Test, o: { desired: Desired; signing: KeyObject; role: Role; value: string }) {
  let logs = '';
  const log = jsonLogger((l) => void (logs += l));
  const hub = new AgentHub({ log, now: Date.now });
  hub.setModel(o.desired);
  const rotatedAt = new Date().toISOString();
  const values = new AgentValues({
    engine: {
      served: (name) => ({ name, version: 1, value: o.value, rotatedAt }),
      version: (_name, version) =>
        version === 1 ? { version, value: o.value, rotatedAt, state: 'current' } : undefined,
      nextRotationAt: () => undefined,
    },
    consumers: { receipt: () => {} },
    log,
  });
  values.setModel(o.desired);
  const api = await listenAgentApi('127.0.0.1:0', {
    hub,
    values,
    signing: o.signing,
    log,
    now: Date.now,
    leader: () => ({ ...o.role }),
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    hub.close();
    values.close();
    await api.close();
  };
  t.teardown(close);
  return { api, hub, values, url: `http://${api.address}`, close, logs: () => logs };
}
