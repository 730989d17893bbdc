/**
 * A follower that cannot read the database (src/daemon/cluster.ts): follow() is called without being
 * awaited (on a NOTIFY, on a reconnect, by the poll), so it must never reject, or the process ends on
 * an unhandled rejection; the failure is logged once, and a later follow() that succeeds says so.
 */
import t from 'tap';
import { AuditError } from '../src/audit/entry.js';
import { Cluster } from '../src/daemon/cluster.js';
import { pgPlace } from './lib/pg-store.js';

const p = await pgPlace(t);

if (p) {
  t.test('follow() never rejects: a failed catch-up is logged, and the next one recovers', async (t) => {
    const store = await p.open(p.schema());
    t.teardown(() => store.close());
    const logged: { level: string; message: string; code?: unknown }[] = [];
    const cluster = new Cluster({
      store,
      log: (level, message, fields) => void logged.push({ level, message, code: fields?.code }),
      agentUrl: () => undefined,
      onLead: async () => undefined,
      onFollow: () => undefined,
      onState: () => undefined,
      onReceipts: () => undefined,
    });
    t.teardown(() => cluster.stop());
    let failing = true;
    cluster.setAudit({
      head: { seq: 0, hash: '' },
      append: async () => [],
      catchUp: async () => {
        if (failing) throw new AuditError('AUDIT_IO', 'reading the audit table failed: connection timeout');
        return [];
      },
    });
    await t.resolves(cluster.follow(), 'a failed catch-up does not reject');
    await t.resolves(cluster.follow(), 'nor does the next');
    t.same(
      logged.filter((l) => l.level === 'warn').map((l) => l.code),
      ['AUDIT_IO'],
      'the failure is logged once, with its code',
    );
    failing = false;
    await cluster.follow();
    t.ok(
      logged.some((l) => l.message === 'following the state store again'),
      'and the recovery is logged',
    );
  });
}
