// The prune planner (pure): oldest first, pinned/foreign/protected kept, safety backups apart, newest verified backup kept.
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

  it('never deletes the newest good backup, even when newer unverified ones fill the quota', () => {
    const list = [
      at(1, 'manual', { verifyResult: 'ok' }),
      at(2, 'manual', { verifyResult: 'ok' }),
      at(3, 'manual'),
      at(4, 'manual'),
    ];
    const plan = planPrune(list, 2);
    expect(names(plan.delete)).toEqual(['2026-01-01']);
    expect(names(plan.keep)).toContain('2026-01-02');
  });

  it('backups whose verification failed are kept and not counted: they never push good copies out', () => {
    // Sync with maxBackups 2: two local backups failed a verification run (disk rot); the destination
    // holds an older copy no local backup has. Counting the failed ones deleted that copy.
    const failed = [at(2, 'manual', { verifyResult: 'failed' }), at(3, 'manual', { verifyResult: 'failed' })];
    const remoteOnly = { filename: at(1).filename, createdAt: at(1).createdAt };
    const plan = planPrune([remoteOnly, ...failed], 2);
    expect(plan.delete).toEqual([]);
    expect(names(plan.keep).sort()).toEqual(['2026-01-01', '2026-01-02', '2026-01-03']);
    // The quota applies to the others as before.
    const good = Array.from({ length: 3 }, (_, i) => at(i + 4, 'manual', { verifyResult: 'ok' }));
    expect(names(planPrune([...failed, ...good], 2).delete)).toEqual(['2026-01-04']);
  });

  it('counts only a backup verified ok as the newest good: newer unverified copies do not push it out', () => {
    // Sync Now with maxBackups 1: ours is verified; the destination holds a newer copy we never read.
    const ours = at(1, 'scheduled', { verifyResult: 'ok' });
    const remoteOnly = { filename: at(2).filename, createdAt: at(2).createdAt };
    const plan = planPrune([ours, remoteOnly], 1);
    expect(plan.delete).toEqual([]);
    expect(names(plan.keep).sort()).toEqual(['2026-01-01', '2026-01-02']);
    // Among our own verified backups the documented rule is unchanged: the newest N are kept.
    const verified = Array.from({ length: 4 }, (_, i) => at(i + 1, 'manual', { verifyResult: 'ok' }));
    expect(names(planPrune(verified, 2).delete)).toEqual(['2026-01-01', '2026-01-02']);
  });

  it('foreign backups (another installation, keys we do not hold) are never deleted nor counted', () => {
    const ours = Array.from({ length: 3 }, (_, i) => at(i + 1, 'scheduled', { verifyResult: 'ok' }));
    const foreign = [at(4, 'scheduled', { foreign: true }), at(5, 'scheduled', { foreign: true })];
    const plan = planPrune([...ours, ...foreign], 2);
    expect(names(plan.delete)).toEqual(['2026-01-01']);
    expect(names(plan.keep).sort()).toEqual(['2026-01-02', '2026-01-03', '2026-01-04', '2026-01-05']);
    // Even with nothing of ours verified, a foreign backup is never in the plan's deletions.
    expect(planPrune([at(1), ...foreign], 1).delete.some((b) => b.foreign)).toBe(false);
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

  it('keeps backups dated after the clock without counting them (made while it was ahead)', () => {
    const now = Date.UTC(2026, 0, 10);
    const ahead = [at(3650), at(3651)]; // ten years on
    const list = [
      ...Array.from({ length: 4 }, (_, i) => at(i + 1, 'manual', { verifyResult: 'ok' })),
      ...ahead,
    ];
    const plan = planPrune(list, { maxBackups: 2, now });
    expect(names(plan.delete)).toEqual(['2026-01-01', '2026-01-02']);
    expect(plan.keep).toEqual(expect.arrayContaining(ahead));
    // The backup just made (protected) counts as usual whatever its date: the next backup's stand-in.
    expect(names(planPrune(list, { maxBackups: 2, now, protect: [ahead[1]!.filename] }).delete)).toEqual([
      '2026-01-01',
      '2026-01-02',
      '2026-01-03',
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
