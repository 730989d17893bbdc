/**
 * What a change to the declarations does: the pure comparison of two models behind `rotor plan`.
 * plan(base, head, now) knows nothing of git or files.
 */

import type { Strategy } from '../model/engines.js';
import { defaultStrategy, ENGINES } from '../model/engines.js';
import { compileGlob, NameIndex } from '../model/glob.js';
import type { Desired, Located } from '../model/model.js';
import type { Secret } from '../model/schema-types.js';
import type { Kind } from '../model/schemas.js';
import { compileSchedule, nextRotations } from '../schedule/schedule.js';
import { parseDuration } from '../util/duration.js';

export type Action = 'added' | 'removed' | 'changed';

export interface FieldChange {
  /** Dotted path of the field, e.g. `generate.length`. */
  readonly path: string;
  readonly from?: unknown;
  readonly to?: unknown;
}

export interface DeclChange {
  readonly kind: Exclude<Kind, 'Config'> | 'Config';
  readonly name: string;
  readonly action: Action;
  /** For `changed`, the fields that differ; for `added` and `removed`, every field. */
  readonly fields: readonly FieldChange[];
  /** Where the declaration is (head for added and changed, base for removed). */
  readonly file?: string;
  readonly line?: number;
}

export interface RotationForecast {
  readonly secret: string;
  readonly policy: string;
  readonly why: 'new' | 'changed' | 'policy changed' | 'rotate now';
  /** ISO times of the next three rotations (for a new secret or a rotate-now request, the first is when the change is applied). */
  readonly next: readonly string[];
  readonly jitter?: string;
  readonly window?: string;
  readonly timezone: string;
  /** The value comes from a SOPS file: the times are when a person is due to rotate it. */
  readonly manual: boolean;
}

export interface RotateNow {
  readonly secret: string;
  readonly request: string;
  readonly reason: string;
  readonly previousRequest?: string;
}

export interface AccessChange {
  readonly consumer: string;
  readonly secret: string;
  readonly change: 'gained' | 'lost';
}

export type AttentionCode =
  | 'STRATEGY_CHANGED'
  | 'STRATEGY_SINGLE'
  | 'USERS_CHANGED'
  | 'TARGET_CHANGED'
  | 'ENGINE_CHANGED'
  | 'SECRET_REMOVED'
  | 'SOURCE_CHANGED'
  | 'RETAIN_REDUCED'
  | 'OVERLAP_SHORTENED'
  | 'AGENT_KEYS_CHANGED'
  | 'CONSUMER_UID_CHANGED'
  | 'CONSUMER_REMOVED'
  | 'CONSUMER_MOVED'
  | 'AUDIT_ATTRIBUTES_CHANGED'
  | 'AUDIT_SIGN_OFF';

export interface Attention {
  readonly subject: string;
  readonly code: AttentionCode;
  readonly message: string;
}

/** A `sops:` secret a person must rotate: past its policy's `maxAge`, or soon. */
export interface Reminder {
  readonly secret: string;
  readonly file: string;
  readonly maxAge: string;
  /** When its current version became current (the audit log's last created/rotated entry). */
  readonly lastRotatedAt: string;
  readonly dueAt: string;
  readonly overdue: boolean;
}

/** A reminder is given this long before `maxAge` is reached (or a quarter of `maxAge`, if shorter). */
export const REMIND_BEFORE_MS = 14 * 86_400_000;

export interface Plan {
  readonly reminders: readonly Reminder[];
  readonly changes: readonly DeclChange[];
  readonly rotations: readonly RotationForecast[];
  readonly rotateNow: readonly RotateNow[];
  readonly access: readonly AccessChange[];
  readonly attention: readonly Attention[];
}

type Plain = Record<string, unknown>;

/** Leaf fields of a declaration as dotted paths; lists are compared as wholes. */
export function flatten(v: unknown, prefix = '', out = new Map<string, unknown>()): Map<string, unknown> {
  if (v === undefined) return out;
  if (typeof v === 'object' && v !== null && !Array.isArray(v) && (Object.keys(v).length > 0 || prefix === '')) {
    for (const [k, x] of Object.entries(v as Plain)) flatten(x, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, v);
  }
  return out;
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function diffFields(from: unknown, to: unknown): FieldChange[] {
  const a = flatten(from);
  const b = flatten(to);
  const out: FieldChange[] = [];
  for (const [k, v] of a) {
    if (k === 'kind') continue;
    if (!b.has(k)) out.push({ path: k, from: v });
    else if (!same(v, b.get(k))) out.push({ path: k, from: v, to: b.get(k) });
  }
  for (const [k, v] of b) if (k !== 'kind' && !a.has(k)) out.push({ path: k, to: v });
  return out;
}

function diffMaps<T>(
  kind: DeclChange['kind'],
  base: ReadonlyMap<string, Located<T>>,
  head: ReadonlyMap<string, Located<T>>,
): DeclChange[] {
  const out: DeclChange[] = [];
  for (const [name, h] of head) {
    const b = base.get(name);
    if (!b)
      out.push({
        kind,
        name,
        action: 'added',
        fields: diffFields(undefined, h.decl),
        file: h.source.file,
        line: h.source.line,
      });
    else {
      const fields = diffFields(b.decl, h.decl);
      if (fields.length) out.push({ kind, name, action: 'changed', fields, file: h.source.file, line: h.source.line });
    }
  }
  for (const [name, b] of base) {
    if (!head.has(name))
      out.push({
        kind,
        name,
        action: 'removed',
        fields: diffFields(b.decl, undefined),
        file: b.source.file,
        line: b.source.line,
      });
  }
  return out.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0));
}

/** The secrets each consumer may read. */
export function grants(d: Desired): Map<string, Set<string>> {
  const index = new NameIndex(d.secrets.keys());
  const out = new Map<string, Set<string>>();
  for (const [name, c] of d.consumers) {
    const set = new Set<string>();
    for (const g of c.decl.secrets) {
      const glob = compileGlob(g);
      if (typeof glob !== 'string') for (const s of index.match(glob)) set.add(s);
    }
    out.set(name, set);
  }
  return out;
}

interface DbShape {
  target: string;
  engine?: string;
  strategy?: Strategy;
  users: string[];
}

function dbShape(d: Desired, s: Secret): DbShape | undefined {
  if (!s.database) return undefined;
  const engine = d.targets.get(s.database.target)?.decl.engine;
  return {
    target: s.database.target,
    ...(engine ? { engine } : {}),
    ...(engine ? { strategy: s.database.strategy ?? defaultStrategy(engine) } : {}),
    users: s.database.usernames ? [...s.database.usernames] : s.database.username ? [s.database.username] : [],
  };
}

function sourceOf(s: Secret): string {
  return s.sops ? 'sops' : s.fields ? 'fields' : 'generate';
}

function consumersOf(g: Map<string, Set<string>>, secret: string): string[] {
  return [...g]
    .filter(([, set]) => set.has(secret))
    .map(([c]) => c)
    .sort();
}

/**
 * @param lastRotated  secret -> when its current version became current, from the audit log; used to
 *   remind of `sops:` secrets near or past their policy's `maxAge`.
 */
export function plan(
  base: Desired,
  head: Desired,
  now: number,
  lastRotated: ReadonlyMap<string, number> = new Map(),
): Plan {
  const changes = [
    ...(base.config && head.config
      ? diffMaps('Config', new Map([['rotor.yaml', base.config]]), new Map([['rotor.yaml', head.config]]))
      : []),
    ...diffMaps('Policy', base.policies, head.policies),
    ...diffMaps('Secret', base.secrets, head.secrets),
    ...diffMaps('Target', base.targets, head.targets),
    ...diffMaps('Agent', base.agents, head.agents),
    ...diffMaps('Consumer', base.consumers, head.consumers),
  ];
  const attention: Attention[] = [];
  const baseGrants = grants(base);
  const headGrants = grants(head);

  // Policies whose schedule changed.
  const changedPolicies = new Set(
    changes.filter((c) => c.kind === 'Policy' && c.action === 'changed').map((c) => c.name),
  );
  for (const [name, h] of head.policies) {
    const b = base.policies.get(name);
    if (!b) continue;
    if ((h.decl.retain ?? 3) < (b.decl.retain ?? 3)) {
      attention.push({
        subject: `Policy ${name}`,
        code: 'RETAIN_REDUCED',
        message: `retain goes from ${b.decl.retain ?? 3} to ${h.decl.retain ?? 3}: older versions beyond it are deleted from the store at the next rotation of each secret`,
      });
    }
    const ho = parseDuration(h.decl.overlap)!;
    const bo = parseDuration(b.decl.overlap);
    if (bo !== undefined && ho < bo) {
      attention.push({
        subject: `Policy ${name}`,
        code: 'OVERLAP_SHORTENED',
        message: `overlap goes from ${b.decl.overlap} to ${h.decl.overlap}: consumers have less time to pick up each new version`,
      });
    }
  }

  // Secrets.
  const rotations: RotationForecast[] = [];
  const rotateNow: RotateNow[] = [];
  const forecast = (s: Secret, why: RotationForecast['why']) => {
    const p = head.policies.get(s.policy)?.decl;
    if (!p) return;
    const sched = compileSchedule(p);
    const first = why === 'new' || why === 'rotate now';
    rotations.push({
      secret: s.name,
      policy: s.policy,
      why,
      next: nextRotations(sched, s.name, now, 3, first && !s.sops).map((t) => new Date(t).toISOString()),
      ...(p.jitter ? { jitter: p.jitter } : {}),
      ...(p.window ? { window: `${p.window.start}-${p.window.end}` } : {}),
      timezone: sched.timezone,
      manual: s.sops !== undefined,
    });
  };
  for (const [name, h] of head.secrets) {
    const s = h.decl;
    const b = base.secrets.get(name)?.decl;
    const subject = `Secret ${name}`;
    const hdb = dbShape(head, s);
    const request = s.rotate && (!b?.rotate || b.rotate.request !== s.rotate.request) ? s.rotate : undefined;
    if (request && b)
      rotateNow.push({
        secret: name,
        request: request.request,
        reason: request.reason,
        ...(b.rotate ? { previousRequest: b.rotate.request } : {}),
      });
    if (!b) {
      forecast(s, 'new');
      if (hdb?.strategy === 'single') attention.push({ subject, code: 'STRATEGY_SINGLE', message: singleWarning(hdb) });
      continue;
    }
    const fieldsChanged = !same(b, s);
    if (request) forecast(s, 'rotate now');
    else if (fieldsChanged) forecast(s, 'changed');
    else if (changedPolicies.has(s.policy)) forecast(s, 'policy changed');
    if (sourceOf(b) !== sourceOf(s)) {
      attention.push({
        subject,
        code: 'SOURCE_CHANGED',
        message: `the value source changes from ${sourceOf(b)} to ${sourceOf(s)}: the next version comes from the new source, and consumers that parse the value must expect its new shape`,
      });
    }
    const bdb = dbShape(base, b);
    if (bdb || hdb) {
      if (bdb?.target !== hdb?.target) {
        attention.push({
          subject,
          code: 'TARGET_CHANGED',
          message: `the database target changes from ${bdb?.target ?? 'none'} to ${hdb?.target ?? 'none'}: the next rotation sets a password on ${hdb ? `"${hdb.target}"` : 'no database'}${bdb ? ` and "${bdb.target}" keeps the last one it had` : ''}`,
        });
      } else if (bdb && hdb && bdb.engine !== hdb.engine) {
        attention.push({
          subject,
          code: 'ENGINE_CHANGED',
          message: `target ${hdb.target} changes engine from ${bdb.engine} to ${hdb.engine}`,
        });
      }
      if (bdb && hdb && bdb.strategy !== hdb.strategy) {
        attention.push({
          subject,
          code: 'STRATEGY_CHANGED',
          message: `strategy changes from ${bdb.strategy} to ${hdb.strategy}: the next rotation switches to it; check that the database users and the agent's grants fit the new strategy before merging`,
        });
      }
      if (bdb && hdb && !same(bdb.users, hdb.users)) {
        attention.push({
          subject,
          code: 'USERS_CHANGED',
          message: `database users change from ${bdb.users.join(', ') || 'none'} to ${hdb.users.join(', ') || 'none'}: the users must exist before the next rotation, and the old ones keep their last password until someone removes them`,
        });
      }
      if (hdb?.strategy === 'single' && bdb?.strategy !== 'single')
        attention.push({ subject, code: 'STRATEGY_SINGLE', message: singleWarning(hdb) });
    }
  }
  // Rotate-now requests on new secrets are covered by version 1; list them anyway so the reason is seen.
  for (const [name, h] of head.secrets) {
    if (!base.secrets.has(name) && h.decl.rotate)
      rotateNow.push({ secret: name, request: h.decl.rotate.request, reason: h.decl.rotate.reason });
  }
  for (const [name, b] of base.secrets) {
    if (head.secrets.has(name)) continue;
    const overlap = base.policies.get(b.decl.policy)?.decl.overlap;
    const readers = consumersOf(baseGrants, name);
    attention.push({
      subject: `Secret ${name}`,
      code: 'SECRET_REMOVED',
      message: `the secret stops rotating; its values are kept for ${overlap ? `the overlap (${overlap})` : 'its overlap'} and then purged${readers.length ? `. Consumers that read it now: ${readers.join(', ')}` : ''}${b.decl.database ? '. The database user keeps its current password' : ''}`,
    });
  }

  // Agents and consumers.
  for (const [name, h] of head.agents) {
    const b = base.agents.get(name);
    if (b && (b.decl.signingKey !== h.decl.signingKey || b.decl.recipient !== h.decl.recipient)) {
      attention.push({
        subject: `Agent ${name}`,
        code: 'AGENT_KEYS_CHANGED',
        message:
          "the agent's keys change: the daemon rejects the old keys once this is applied, so the agent must already run with the new ones",
      });
    }
  }
  for (const [name, h] of head.consumers) {
    const b = base.consumers.get(name);
    if (b && (b.decl.uid !== h.decl.uid || b.decl.gid !== h.decl.gid)) {
      attention.push({
        subject: `Consumer ${name}`,
        code: 'CONSUMER_UID_CHANGED',
        message: `the socket's owner changes (uid ${b.decl.uid} to ${h.decl.uid}${b.decl.gid !== h.decl.gid ? `, gid ${b.decl.gid ?? 'default'} to ${h.decl.gid ?? 'default'}` : ''}): processes running as the old user lose access`,
      });
    }
    if (b && b.decl.agent !== h.decl.agent) {
      const host = (agent: string | undefined) => (agent === undefined ? "the daemon's host" : `agent ${agent}'s host`);
      attention.push({
        subject: `Consumer ${name}`,
        code: 'CONSUMER_MOVED',
        message: `the consumer's socket moves from ${host(b.decl.agent)} to ${host(h.decl.agent)}: the old one is closed when this commit is applied, so the application must run on the new host by then`,
      });
    }
  }
  for (const name of base.consumers.keys()) {
    if (!head.consumers.has(name))
      attention.push({
        subject: `Consumer ${name}`,
        code: 'CONSUMER_REMOVED',
        message: `the consumer's socket is removed; it could read ${baseGrants.get(name)?.size ?? 0} secrets`,
      });
  }

  // The audit log's signatures: turning them off is a downgrade a reviewer should see.
  if (base.config?.decl.audit?.sign === true && head.config?.decl.audit?.sign !== true)
    attention.push({
      subject: 'Config rotor.yaml',
      code: 'AUDIT_SIGN_OFF',
      message:
        'the daemon stops signing its audit commits (audit.sign): a branch that requires signed commits refuses its pushes, and rotor audit verify --allowed-signers reports each new one as AUDIT_COMMIT_UNSIGNED',
    });

  const access: AccessChange[] = [];
  for (const [consumer, set] of headGrants) {
    const before = baseGrants.get(consumer) ?? new Set<string>();
    for (const s of set) if (!before.has(s)) access.push({ consumer, secret: s, change: 'gained' });
    for (const s of before)
      if (!set.has(s) && head.secrets.has(s)) access.push({ consumer, secret: s, change: 'lost' });
  }
  access.sort((a, b) => (`${a.consumer}\0${a.secret}` < `${b.consumer}\0${b.secret}` ? -1 : 1));
  rotations.sort((a, b) => (a.secret < b.secret ? -1 : 1));
  rotateNow.sort((a, b) => (a.secret < b.secret ? -1 : 1));
  return { reminders: reminders(head, now, lastRotated), changes, rotations, rotateNow, access, attention };
}

function reminders(head: Desired, now: number, lastRotated: ReadonlyMap<string, number>): Reminder[] {
  const out: Reminder[] = [];
  for (const [name, { decl }] of head.secrets) {
    const maxAgeText = head.policies.get(decl.policy)?.decl.maxAge;
    const maxAge = maxAgeText ? parseDuration(maxAgeText) : undefined;
    const last = lastRotated.get(name);
    if (!decl.sops || maxAge === undefined || last === undefined) continue;
    const due = last + maxAge;
    if (due - now > Math.min(REMIND_BEFORE_MS, maxAge / 4)) continue;
    out.push({
      secret: name,
      file: decl.sops.file,
      maxAge: maxAgeText!,
      lastRotatedAt: new Date(last).toISOString(),
      dueAt: new Date(due).toISOString(),
      overdue: now > due,
    });
  }
  return out.sort((a, b) => (a.secret < b.secret ? -1 : 1));
}

function singleWarning(db: DbShape): string {
  const label = db.engine ? ENGINES[db.engine as keyof typeof ENGINES].label : 'the database';
  return `strategy single changes the password of ${db.users.join(', ') || 'the user'} on ${label} in place: open connections survive, but new logins with the old value fail at once, so every consumer must pick up the new value before it reconnects`;
}
