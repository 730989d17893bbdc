/**
 * The events that are states rather than audit entries: a secret that becomes overdue, and the audit
 * log's push that keeps failing. The watcher compares each look at the daemon's status with the last and
 * emits on the change (edge-triggered): once when a secret becomes overdue (again after it was
 * rotated), once when pushes have failed PUSH_FAILING_AFTER times in a row (again after one succeeded).
 * What it saw is kept in memory only: after a restart, or when another daemon starts leading, a secret
 * still overdue is reported once more. Pure apart from the timer in the daemon's wiring.
 */
import type { Occurrence } from './events.js';

/** Failed pushes in a row before `audit-push-failing` (one failed push is usually a race, retried at once). */
export const PUSH_FAILING_AFTER = 3;

export interface WatchedStatus {
  readonly now: string;
  readonly secrets: readonly { readonly name: string; readonly overdue: boolean; readonly version?: number }[];
  readonly audit?: { readonly pushFailures: number; readonly pushError?: { readonly code: string } };
  readonly config?: { readonly applied?: { readonly commit: string } };
}

export class Watcher {
  private overdue = new Set<string>();
  private pushFailing = false;

  /** The occurrences since the last look. */
  look(s: WatchedStatus): Occurrence[] {
    const out: Occurrence[] = [];
    const now = new Set<string>();
    for (const x of s.secrets) {
      if (!x.overdue) continue;
      now.add(x.name);
      if (!this.overdue.has(x.name))
        out.push({
          event: 'overdue',
          time: s.now,
          secret: x.name,
          ...(x.version !== undefined ? { version: x.version } : {}),
        });
    }
    this.overdue = now;
    const failing = (s.audit?.pushFailures ?? 0) >= PUSH_FAILING_AFTER;
    if (failing && !this.pushFailing)
      out.push({
        event: 'audit-push-failing',
        time: s.now,
        ...(s.audit?.pushError ? { code: s.audit.pushError.code } : {}),
      });
    this.pushFailing = failing;
    return out;
  }

  /** Forgets what it saw (this daemon stopped acting): the next leader's look reports afresh. */
  reset(): void {
    this.overdue.clear();
    this.pushFailing = false;
  }
}
