/** The world the status tests look at, for `rotor status` and the status page alike. */
import type { Test } from 'tap';
import { generateKeys, loadKeys } from '../../src/keys.js';
import { tempDir } from '../helpers.js';
import { world } from '../world.js';

/**
 * Two secrets: app/token (generated) and app/db (a database secret for the postgres Target pg of the
 * agent db-host, which no test runs); two consumers: web (reads app/*) and worker (reads app/token).
 */
export async function statusWorld(t: Test, prefix: string): ReturnType<typeof world> {
  const keys = tempDir(t, prefix);
  await generateKeys(keys);
  const a = await loadKeys(keys);
  const uid = process.getuid!();
  return world(t, {
    'rotor.yaml': 'kind: Config\nsync: { interval: 1d }\n',
    'policy.yaml': 'kind: Policy\nname: p\nevery: 30d\noverlap: 1d\n',
    'secrets.yaml':
      'kind: Secret\nname: app/token\npolicy: p\ngenerate: {}\n---\nkind: Secret\nname: app/db\npolicy: p\ngenerate: { length: 32 }\ndatabase: { target: pg, usernames: [blue, green] }\n',
    'db.yaml': `kind: Agent\nname: db-host\nsigningKey: "${a.signingKey}"\nrecipient: ${a.recipient}\n---\nkind: Target\nname: pg\nengine: postgres\nagent: db-host\n`,
    'consumers.yaml': `kind: Consumer\nname: web\nuid: ${uid}\nsecrets: ["app/*"]\n---\nkind: Consumer\nname: worker\nuid: ${uid}\nsecrets: ["app/token"]\n`,
  });
}
