// The prune planner (pure): oldest first, pinned/foreign/protected kept, safety backups apart, newest good kept.
import { describe, expect, it } from 'vitest';
import { type PruneCandidate, planPrune } from '../../agent/backup/retention';

const at = (day: number, kind = 'manual', extra: Partial<PruneCandidate> = {}): PruneCandidate => {
  const d = new Date(Date.UTC(2026, 0, day, 2, 0, 0));
  const iso = d.toISOString();
  return {
    filename: `gem-backup-${iso.slice(0, 10)}-020000.tar.gz`,
    createdAt: iso,
    kind,
    ...extra,
  };
};
const names = (list: PruneCandidate[]) => list.map((b) => b.filename.slice(11, 21));

describe('planPrune', () => {
  it('10 backups, max 3: deletes the 7 oldest, oldest first', () => {
    const list = Array.from({ length: 10 }, (_, i) => at(i + 1));
    const plan = planPrune(list, 3);
    expect(names(plan.delete)).toEqual(names(list.slice(0, 7)));
    expect(names(plan.keep).sort()).toEqual(names(list.slice(7)).sort());
  });

  it('pinned backups and files that are not ours are never deleted nor counted', () => {
    const list = [
      ...Array.from({ length: 5 }, (_, i) => at(i + 1, 'scheduled', { pinned: i === 0 })),
      { filename: 'notes.txt', createdAt: '2020-01-01T00:00:00Z' },
      { filename: 'gem-backup-2020-01-01-000000.tar.gz.partial', createdAt: '2020-01-01T00:00:00Z' },
    ];
    const plan = planPrune(list, 2);
    expect(names(plan.delete)).toEqual(['2026-01-02', '2026-01-03']);
    expect(plan.keep.map((b) => b.filename)).toContain('notes.txt');
    expect(plan.keep.find((b) => b.pinned)?.createdAt).toBe(list[0]!.createdAt);
  });

  it('safety backups stay out of the count and are pruned by their own limit (3)', () => {
    const list = [
      ...Array.from({ length: 4 }, (_, i) => at(i + 1)),
      ...Array.from({ length: 5 }, (_, i) => at(i + 10, 'safety')),
    ];
    const plan = planPrune(list, 4);
    expect(names(plan.delete)).toEqual(['2026-01-10', '2026-01-11']);
    expect(planPrune(list, { maxBackups: 1, maxSafety: 5 }).delete.every((b) => b.kind !== 'safety')).toBe(
      true,
    );
  });

  it('never deletes the newest good backup, even when newer failed ones fill the quota', () => {
    const list = [
      at(1),
      at(2),
      at(3, 'manual', { verifyResult: 'failed' }),
      at(4, 'manual', { verifyResult: 'failed' }),
    ];
    const plan = planPrune(list, 2);
    expect(names(plan.delete)).toEqual(['2026-01-01']);
    expect(names(plan.keep)).toContain('2026-01-02');
  });

  it('never deletes a protected name (the backup just made), whatever the clock said', () => {
    const list = Array.from({ length: 4 }, (_, i) => at(i + 1));
    const plan = planPrune(list, { maxBackups: 1, protect: [list[0]!.filename] });
    expect(names(plan.delete)).toEqual(['2026-01-02', '2026-01-03']);
    // Protected names still count toward the quota when they are among the newest (the usual case).
    expect(names(planPrune(list, { maxBackups: 2, protect: [list[3]!.filename] }).delete)).toEqual([
      '2026-01-01',
      '2026-01-02',
    ]);
  });

  it('works on offsite lists that only know names and times', () => {
    const list = [
      'gem-backup-2026-01-01-020000.tar.gz',
      'gem-backup-2026-01-03-020000.tar.gz',
      'gem-backup-2026-01-02-020000.tar.gz',
    ].map((filename) => ({ filename, createdAt: `${filename.slice(11, 21)}T02:00:00Z` }));
    expect(planPrune(list, 2).delete.map((b) => b.filename)).toEqual(['gem-backup-2026-01-01-020000.tar.gz']);
  });
});
