// Schedules as pure functions: next runs in two time zones, across DST changes, and the catch-up rule (no sleeping).
import { describe, expect, it } from 'vitest';
import { missedRun, nextRuns } from '../../agent/jobs/scheduler';

const iso = (dates: Date[]) => dates.map((d) => d.toISOString());
const FROM = new Date('2026-03-10T12:34:56Z'); // a Tuesday, after the US switched to DST, before Europe did

describe('next run times', () => {
  it('hourly runs on the hour, in any time zone', () => {
    const expected = ['2026-03-10T13:00:00.000Z', '2026-03-10T14:00:00.000Z', '2026-03-10T15:00:00.000Z'];
    expect(iso(nextRuns('hourly', 'Europe/Berlin', FROM, 3))).toEqual(expected);
    expect(iso(nextRuns('hourly', 'America/New_York', FROM, 3))).toEqual(expected);
  });

  it('daily at 02:00 local: Berlin (UTC+1) and New York (UTC-4 in EDT)', () => {
    expect(iso(nextRuns('daily', 'Europe/Berlin', FROM, 2))).toEqual([
      '2026-03-11T01:00:00.000Z',
      '2026-03-12T01:00:00.000Z',
    ]);
    expect(iso(nextRuns('daily', 'America/New_York', FROM, 2))).toEqual([
      '2026-03-11T06:00:00.000Z',
      '2026-03-12T06:00:00.000Z',
    ]);
  });

  it('weekly on Sunday at 02:00 local', () => {
    expect(iso(nextRuns('weekly', 'Europe/Berlin', FROM, 2))).toEqual([
      '2026-03-15T01:00:00.000Z',
      '2026-03-22T01:00:00.000Z',
    ]);
    expect(iso(nextRuns('weekly', 'America/New_York', FROM, 2))).toEqual([
      '2026-03-15T06:00:00.000Z',
      '2026-03-22T06:00:00.000Z',
    ]);
    for (const d of nextRuns('weekly', 'America/New_York', FROM, 5)) {
      expect(
        new Intl.DateTimeFormat('en-US', { timeZone: 'America/New_York', weekday: 'long' }).format(d),
      ).toBe('Sunday');
    }
  });

  it('monthly on the 1st at 02:00 local (Berlin in CEST by April)', () => {
    expect(iso(nextRuns('monthly', 'Europe/Berlin', FROM, 2))).toEqual([
      '2026-04-01T00:00:00.000Z',
      '2026-05-01T00:00:00.000Z',
    ]);
    expect(iso(nextRuns('monthly', 'America/New_York', FROM, 2))).toEqual([
      '2026-04-01T06:00:00.000Z',
      '2026-05-01T06:00:00.000Z',
    ]);
  });

  it('maintenance runs daily at 03:00 local', () => {
    expect(iso(nextRuns('maintenance', 'Europe/Berlin', FROM, 1))).toEqual(['2026-03-11T02:00:00.000Z']);
  });

  it('spring forward: 02:00 does not exist that night; the run happens once, at 03:00', () => {
    // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST.
    expect(iso(nextRuns('daily', 'Europe/Berlin', new Date('2026-03-27T12:00:00Z'), 4))).toEqual([
      '2026-03-28T01:00:00.000Z', // 02:00 CET
      '2026-03-29T01:00:00.000Z', // 03:00 CEST, the first valid time after the gap
      '2026-03-30T00:00:00.000Z', // 02:00 CEST
      '2026-03-31T00:00:00.000Z',
    ]);
    // America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT.
    expect(iso(nextRuns('daily', 'America/New_York', new Date('2026-03-06T12:00:00Z'), 3))).toEqual([
      '2026-03-07T07:00:00.000Z',
      '2026-03-08T07:00:00.000Z',
      '2026-03-09T06:00:00.000Z',
    ]);
  });

  it('fall back: 02:00 happens twice in Berlin, the daily run happens once', () => {
    // 2026-10-25 03:00 CEST -> 02:00 CET.
    const runs = nextRuns('daily', 'Europe/Berlin', new Date('2026-10-23T12:00:00Z'), 4);
    expect(iso(runs)).toEqual([
      '2026-10-24T00:00:00.000Z',
      '2026-10-25T00:00:00.000Z',
      '2026-10-26T01:00:00.000Z',
      '2026-10-27T01:00:00.000Z',
    ]);
  });

  it('hourly stays one real hour apart across the New York fall-back', () => {
    const runs = nextRuns('hourly', 'America/New_York', new Date('2026-11-01T03:30:00Z'), 8);
    for (let i = 1; i < runs.length; i++) expect(runs[i]!.getTime() - runs[i - 1]!.getTime()).toBe(3_600_000);
  });

  it('without a time zone, runs at 02:00 in the server time zone', () => {
    const [run] = nextRuns('daily', undefined, FROM, 1);
    expect(run!.getHours()).toBe(2);
    expect(run!.getMinutes()).toBe(0);
  });
});

describe('the catch-up rule', () => {
  const tz = 'Europe/Berlin';
  it('down for several days: one catch-up, for the latest missed slot', () => {
    const lastRun = new Date('2026-03-01T01:00:05Z');
    const now = new Date('2026-03-05T12:00:00Z');
    expect(missedRun('daily', tz, lastRun, now)?.toISOString()).toBe('2026-03-05T01:00:00.000Z');
  });

  it('hourly, down for hours: still one', () => {
    const missed = missedRun(
      'hourly',
      tz,
      new Date('2026-03-01T01:00:05Z'),
      new Date('2026-03-01T05:30:00Z'),
    );
    expect(missed?.toISOString()).toBe('2026-03-01T05:00:00.000Z');
  });

  it('no slot passed since the last run: nothing to catch up', () => {
    expect(
      missedRun('daily', tz, new Date('2026-03-05T01:00:02Z'), new Date('2026-03-05T23:00:00Z')),
    ).toBeUndefined();
    expect(
      missedRun('weekly', tz, new Date('2026-03-08T01:00:00Z'), new Date('2026-03-14T12:00:00Z')),
    ).toBeUndefined();
  });

  it('a slot exactly at "now" counts as missed (the timer did not fire)', () => {
    const now = new Date('2026-03-06T01:00:00Z');
    expect(missedRun('daily', tz, new Date('2026-03-05T01:00:02Z'), now)?.toISOString()).toBe(
      now.toISOString(),
    );
  });

  it('never ran and never armed: nothing to catch up on a first start', () => {
    expect(missedRun('daily', tz, undefined, new Date())).toBeUndefined();
  });
});
