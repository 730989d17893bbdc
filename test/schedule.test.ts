/** The pure schedule: intervals, cron with seconds and time zones, windows, jitter. */
import t from 'tap';
import type { Policy } from '../src/model/schema-types.js';
import {
  checkCron,
  compileSchedule,
  cronMinInterval,
  intoWindow,
  inWindow,
  jitterOf,
  nextRotations,
} from '../src/schedule/schedule.js';

const at = (iso: string) => Date.parse(iso);
const iso = (ms: number) => new Date(ms).toISOString();
const policy = (p: Partial<Policy>): Policy => ({ kind: 'Policy', name: 'p', overlap: '1s', ...p });

t.test('every: the interval after each rotation; a new secret rotates at once', async (t) => {
  const s = compileSchedule(policy({ every: '30d' }));
  t.same(nextRotations(s, 'a', at('2026-01-01T00:00:00Z'), 3).map(iso), [
    '2026-01-31T00:00:00.000Z',
    '2026-03-02T00:00:00.000Z',
    '2026-04-01T00:00:00.000Z',
  ]);
  t.same(nextRotations(s, 'a', at('2026-01-01T00:00:00Z'), 2, true).map(iso), [
    '2026-01-01T00:00:00.000Z',
    '2026-01-31T00:00:00.000Z',
  ]);
  const fast = compileSchedule(policy({ every: '1s' }));
  t.same(nextRotations(fast, 'a', 0, 3), [1000, 2000, 3000], 'periods of one second work');
});

t.test('cron: 5 fields, 6 with seconds, in the policy time zone', async (t) => {
  const sunday = compileSchedule(policy({ cron: '0 3 * * 0', timezone: 'America/New_York' }));
  t.same(
    nextRotations(sunday, 'a', at('2026-11-26T00:00:00Z'), 2).map(iso),
    ['2026-11-29T08:00:00.000Z', '2026-12-06T08:00:00.000Z'],
    '03:00 EST is 08:00 UTC',
  );
  const seconds = compileSchedule(policy({ cron: '*/15 * * * * *' }));
  t.same(nextRotations(seconds, 'a', at('2026-01-01T00:00:01Z'), 2).map(iso), [
    '2026-01-01T00:00:15.000Z',
    '2026-01-01T00:00:30.000Z',
  ]);
  t.equal(cronMinInterval('0 3 * * 0', 'UTC', at('2026-01-01T00:00:00Z')), 7 * 86_400_000);
  t.equal(checkCron('0 3 * * 0', 'UTC'), undefined);
  t.match(checkCron('0 3 * *', 'UTC'), /5 fields.*this one has 4/);
  t.type(checkCron('0 99 * * *', 'UTC'), 'string');
});

t.test('windows, also across midnight, in the time zone', async (t) => {
  const s = compileSchedule(
    policy({ every: '1d', window: { start: '02:00', end: '05:00' }, timezone: 'Europe/Berlin' }),
  );
  t.ok(inWindow(s, at('2026-01-10T01:30:00Z')), '02:30 in Berlin (UTC+1 in winter)');
  t.notOk(inWindow(s, at('2026-01-10T04:00:00Z')), '05:00 in Berlin: the end is exclusive');
  t.equal(iso(intoWindow(s, at('2026-01-10T12:00:00Z'))), '2026-01-11T01:00:00.000Z', 'moved to the next opening');
  t.equal(
    iso(intoWindow(s, at('2026-07-10T12:00:00Z'))),
    '2026-07-11T00:00:00.000Z',
    'summer time: 02:00 is 00:00 UTC',
  );
  const night = compileSchedule(policy({ every: '1d', window: { start: '22:00', end: '02:00' } }));
  t.ok(inWindow(night, at('2026-01-10T23:00:00Z')));
  t.ok(inWindow(night, at('2026-01-10T01:00:00Z')));
  t.notOk(inWindow(night, at('2026-01-10T12:00:00Z')));
  t.equal(iso(intoWindow(night, at('2026-01-10T12:00:00Z'))), '2026-01-10T22:00:00.000Z');
});

t.test('jitter: bounded, different per secret, the same after a restart, not accumulating', async (t) => {
  const s = compileSchedule(policy({ every: '1d', jitter: '10m' }));
  const base = at('2026-01-01T00:00:00Z');
  const offsets = Array.from({ length: 200 }, (_, i) => jitterOf(s, `secret-${i}`, base));
  t.ok(
    offsets.every((o) => o >= 0 && o < 600_000),
    'within [0, jitter)',
  );
  t.ok(new Set(offsets).size > 150, 'spread over the secrets');
  t.equal(jitterOf(s, 'secret-1', base), offsets[1], 'deterministic');
  const times = nextRotations(s, 'x', base, 30);
  times.forEach((ms, i) => {
    const scheduled = base + (i + 1) * 86_400_000;
    t.ok(ms >= scheduled && ms < scheduled + 600_000, `rotation ${i + 1} stays within the jitter of its slot`);
  });
});
