/**
 * When a secret rotates next, from its policy and the time of its last rotation. Pure: the clock is
 * passed in. Used by `rotor plan` (the next three rotations) and by the daemon's scheduler.
 */
import { createHash } from 'node:crypto';
import { Cron } from 'croner';
import { parseDuration } from '../util/duration.js';

/**
 * What a schedule is made of, as declared (a Policy has these fields): durations as `<n>s|m|h|d`,
 * clock times as HH:MM. Plain inputs, so that the schedule does not depend on the model.
 */
export interface ScheduleSpec {
  readonly every?: string;
  readonly cron?: string;
  readonly timezone?: string;
  readonly window?: { readonly start: string; readonly end: string };
  readonly jitter?: string;
}

export interface Schedule {
  readonly everyMs?: number;
  readonly cron?: string;
  readonly timezone: string;
  /** Minutes after midnight, in `timezone`. */
  readonly window?: { readonly start: number; readonly end: number };
  readonly jitterMs: number;
}

/** Whether `tz` is a time zone this runtime knows. */
export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** Parses a cron expression of 5 or 6 fields; returns an error message when it is not one. */
export function checkCron(expr: string, timezone: string): string | undefined {
  const fields = expr.trim().split(/\s+/);
  if (fields.length !== 5 && fields.length !== 6)
    return `a cron expression has 5 fields (or 6 with seconds first), this one has ${fields.length}`;
  try {
    if (!cron(expr, timezone).nextRun(new Date(0))) return 'it never fires (no date matches it)';
    return undefined;
  } catch (e) {
    return String((e as Error).message)
      .split('\n')[0]!
      .replace(/^CronPattern: /, '');
  }
}

function clockMinutes(hhmm: string): number {
  const [h, m] = hhmm.split(':').map(Number);
  return h! * 60 + m!;
}

/** A policy's schedule. The policy must have passed validation. */
export function compileSchedule(policy: ScheduleSpec): Schedule {
  const timezone = policy.timezone ?? 'UTC';
  return {
    ...(policy.every !== undefined ? { everyMs: parseDuration(policy.every)! } : {}),
    ...(policy.cron !== undefined ? { cron: policy.cron } : {}),
    timezone,
    ...(policy.window
      ? { window: { start: clockMinutes(policy.window.start), end: clockMinutes(policy.window.end) } }
      : {}),
    jitterMs: policy.jitter !== undefined ? parseDuration(policy.jitter)! : 0,
  };
}

const crons = new Map<string, Cron>();
/** A parsed cron expression (croner; parsed once per expression and zone). Throws when it is invalid. */
function cron(expr: string, timezone: string): Cron {
  const key = `${timezone}\0${expr}`;
  let c = crons.get(key);
  if (!c) {
    if (crons.size > 10_000) crons.clear();
    c = new Cron(expr, { timezone, paused: true });
    crons.set(key, c);
  }
  return c;
}

/** The next cron time strictly after `after` (ms since the epoch). */
export function cronNext(expr: string, timezone: string, after: number): number {
  const next = cron(expr, timezone).nextRun(new Date(after));
  if (!next) throw new Error(`cron "${expr}" has no time after ${new Date(after).toISOString()}`);
  return next.getTime();
}

/** The shortest gap between the next `count` times of a cron expression after `from`. */
export function cronMinInterval(expr: string, timezone: string, from: number, count = 32): number {
  const runs = cron(expr, timezone)
    .nextRuns(count, new Date(from))
    .map((d) => d.getTime());
  let min = Infinity;
  for (let i = 1; i < runs.length; i++) min = Math.min(min, runs[i]! - runs[i - 1]!);
  return min;
}

/** The rotation interval of a schedule: `every`, or the shortest gap of its cron times after `from`. */
export function intervalOf(s: Schedule, from: number): number {
  return s.everyMs ?? cronMinInterval(s.cron!, s.timezone, from);
}

const formatters = new Map<string, Intl.DateTimeFormat>();
/** Minutes after midnight of instant `t` in `timezone`. */
export function minutesOfDay(t: number, timezone: string): number {
  let f = formatters.get(timezone);
  if (!f)
    formatters.set(
      timezone,
      (f = new Intl.DateTimeFormat('en-US', {
        timeZone: timezone,
        hour: '2-digit',
        minute: '2-digit',
        hourCycle: 'h23',
      })),
    );
  const parts = f.formatToParts(new Date(t));
  const hour = Number(parts.find((p) => p.type === 'hour')!.value);
  const minute = Number(parts.find((p) => p.type === 'minute')!.value);
  return hour * 60 + minute;
}

export function inWindow(s: Schedule, t: number): boolean {
  if (!s.window) return true;
  const m = minutesOfDay(t, s.timezone);
  const { start, end } = s.window;
  return start < end ? m >= start && m < end : m >= start || m < end;
}

/** `t` if it lies inside the window, else the next time the window opens. */
export function intoWindow(s: Schedule, t: number): number {
  if (!s.window || inWindow(s, t)) return t;
  const { start } = s.window;
  return cronNext(`${start % 60} ${Math.floor(start / 60)} * * *`, s.timezone, t - 1);
}

/**
 * The jitter of one rotation: a fraction of `jitterMs` derived from the secret's name and the base
 * time, so that secrets of one policy spread out, and a restarted daemon computes the same time again.
 */
export function jitterOf(s: Schedule, seed: string, base: number): number {
  if (s.jitterMs <= 0) return 0;
  const h = createHash('sha256').update(`${seed}\0${base}`).digest();
  return Math.floor((h.readUInt32BE(0) / 0x1_0000_0000) * s.jitterMs);
}

/**
 * The next scheduled time after a rotation scheduled at `base` (or, for a rotation nobody scheduled,
 * such as a new secret or a rotate-now request, made at `base`): the interval, then the window. Jitter
 * is added on top by `withJitter` and never feeds the next computation, so it does not accumulate.
 */
export function nextBase(s: Schedule, base: number): number {
  return intoWindow(s, s.everyMs !== undefined ? base + s.everyMs : cronNext(s.cron!, s.timezone, base));
}

/** The time a rotation scheduled at `base` actually starts. */
export function withJitter(s: Schedule, seed: string, base: number): number {
  return base + jitterOf(s, seed, base);
}

/** The next `count` rotations after `from`; for a new secret the first is `from` itself (version 1 at once). */
export function nextRotations(s: Schedule, seed: string, from: number, count: number, isNew = false): number[] {
  const out: number[] = [];
  let base = from;
  if (isNew) out.push(from);
  while (out.length < count) {
    base = nextBase(s, base);
    out.push(withJitter(s, seed, base));
  }
  return out;
}
