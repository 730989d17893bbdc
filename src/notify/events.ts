/**
 * What a webhook says: the notify events, and the body of a delivery made from an audit event (or a
 * state change the watcher saw). A body holds names, versions, times, codes and counts, never a value:
 * it is built field by field from those, never by copying an event. Pure.
 */

export const NOTIFY_EVENTS = [
  'rotated',
  'rotation-failed',
  'overdue',
  'drift-detected',
  'config-rejected',
  'audit-push-failing',
] as const;
export type NotifyEvent = (typeof NOTIFY_EVENTS)[number];

/** What the daemon knows of an event, before it becomes one body per endpoint. */
export interface Occurrence {
  readonly event: NotifyEvent;
  /** ISO 8601: when it happened. */
  readonly time: string;
  readonly secret?: string;
  /** The version before (rotated) and the version concerned (rotated: the new one; rotation-failed: the one tried). */
  readonly from?: number;
  readonly to?: number;
  /** The current version (overdue, drift-detected). */
  readonly version?: number;
  readonly trigger?: string;
  /** A stable error code (rotation-failed, drift-detected, audit-push-failing). */
  readonly code?: string;
  /** The commit of the declarations in force (or rejected). */
  readonly commit?: string;
  /** How many problems a rejected commit has. */
  readonly problems?: number;
}

/** The fields of an audit entry this module reads (src/rotation/engine.ts AuditEvent, and drift's). */
export interface AuditLike {
  readonly time: string;
  readonly event: string;
  readonly secret?: string;
  readonly from?: number;
  readonly to?: number;
  readonly trigger?: string;
  readonly commit?: string;
  readonly problems?: number;
  readonly detail?: string;
}

const CODE = /^([A-Z][A-Z0-9_]{0,63}):/;

/** The error code at the start of an audit detail ("CODE: what happened"), if any. */
export function codeOfDetail(detail: string | undefined): string | undefined {
  return detail === undefined ? undefined : CODE.exec(detail)?.[1];
}

const num = (v: unknown) => (typeof v === 'number' && Number.isSafeInteger(v) ? v : undefined);
const str = (v: unknown, max = 256) => (typeof v === 'string' && v.length <= max ? v : undefined);

/**
 * The occurrence an audit entry is, or undefined for entries webhooks do not report. A `drift-detected`
 * entry (appended by drift detection, with the secret, the version checked in `to` and "CODE: ..." in
 * `detail`) becomes the `drift-detected` event: that audit entry is the one hook drift detection needs.
 */
export function occurrenceOf(e: AuditLike): Occurrence | undefined {
  const base = { time: e.time, ...(str(e.commit) ? { commit: str(e.commit)! } : {}) };
  const secret = str(e.secret);
  const code = codeOfDetail(e.detail);
  const to = num(e.to);
  const from = num(e.from);
  switch (e.event) {
    case 'rotated':
      return {
        ...base,
        event: 'rotated',
        ...(secret ? { secret } : {}),
        ...(from !== undefined ? { from } : {}),
        ...(to !== undefined ? { to } : {}),
        ...(str(e.trigger, 32) ? { trigger: e.trigger! } : {}),
      };
    case 'rotation-failed':
      return {
        ...base,
        event: 'rotation-failed',
        ...(secret ? { secret } : {}),
        ...(to !== undefined ? { to } : {}),
        ...(code ? { code } : {}),
      };
    case 'drift-detected':
      return {
        ...base,
        event: 'drift-detected',
        ...(secret ? { secret } : {}),
        ...((to ?? from) !== undefined ? { version: (to ?? from)! } : {}),
        ...(code ? { code } : {}),
      };
    case 'config-rejected':
      return { ...base, event: 'config-rejected', ...(num(e.problems) !== undefined ? { problems: e.problems! } : {}) };
    default:
      return undefined;
  }
}

/** The JSON body of one delivery: the occurrence, the delivery's id and the daemon's name. */
export function bodyOf(o: Occurrence, id: string, daemon: string, commit: string | undefined): string {
  const c = o.commit ?? commit;
  return JSON.stringify({
    id,
    event: o.event,
    time: o.time,
    daemon,
    ...(o.secret !== undefined ? { secret: o.secret } : {}),
    ...(o.from !== undefined ? { from: o.from } : {}),
    ...(o.to !== undefined ? { to: o.to } : {}),
    ...(o.version !== undefined ? { version: o.version } : {}),
    ...(o.trigger !== undefined ? { trigger: o.trigger } : {}),
    ...(o.code !== undefined ? { code: o.code } : {}),
    ...(o.problems !== undefined ? { problems: o.problems } : {}),
    ...(c !== undefined ? { commit: c } : {}),
  });
}
