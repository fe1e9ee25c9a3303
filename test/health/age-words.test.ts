// How health words an age, against the CLI's words for the same age: whole units gone by, so the page
// never says "3 days" at 60 h while `gem-backup` says "2 days" (the time drill saw the two disagree).
import { describe, expect, it } from 'vitest';
import { formatAge as cliAge } from '../../agent/cli/format';
import { formatAge } from '../../agent/health/model';

const MIN = 60_000;
const HOUR = 60 * MIN;

describe('health ages', () => {
  it('count whole units gone by', () => {
    expect(formatAge(89.9 * MIN)).toBe('89 min');
    expect(formatAge(90 * MIN)).toBe('1 h');
    expect(formatAge(47.9 * HOUR)).toBe('47 h');
    expect(formatAge(60 * HOUR)).toBe('2 days');
    expect(formatAge(72 * HOUR - 1)).toBe('2 days');
    expect(formatAge(72 * HOUR)).toBe('3 days');
  });

  it('name the same number of days as the CLI', () => {
    const now = Date.parse('2026-11-30T12:00:00.000Z');
    for (const hours of [48, 59, 60, 71, 72, 83, 84, 240]) {
      const at = new Date(now - hours * HOUR).toISOString();
      expect(`${formatAge(hours * HOUR)} ago`, `${hours} h`).toBe(cliAge(at, now));
    }
  });
});
