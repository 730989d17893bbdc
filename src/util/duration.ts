/** Durations of the declarations: `<n>s|m|h|d`. */

const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** The longest duration rotor accepts: 100 years, far inside the range of a JS Date. */
export const MAX_DURATION_MS = 36_500 * UNIT_MS.d;

/** Milliseconds of a duration, or undefined when it is malformed or longer than MAX_DURATION_MS. */
export function parseDuration(text: string): number | undefined {
  const m = /^([0-9]{1,9})([smhd])$/.exec(text);
  if (!m) return undefined;
  const ms = Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  return ms <= MAX_DURATION_MS ? ms : undefined;
}

/** A short human form of a duration in ms: 90061000 -> "1d 1h 1m 1s". */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0s';
  const parts: string[] = [];
  let rest = Math.round(ms / 1000);
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3_600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) parts.push(`${n}${unit}`);
    rest -= n * size;
  }
  return parts.join(' ');
}
