// Sync's retention plan dates local and remote-only copies alike, by name: a bumped name must not reorder them.
import { describe, expect, it } from 'vitest';
import type { BackupInfo } from '../../agent/backup/catalog';
import { planPrune } from '../../agent/backup/retention';
import { syncCandidates } from '../../agent/offsite/transfer';

function local(filename: string, createdAt: string): BackupInfo {
  return {
    filename,
    createdAt,
    size: 1,
    keyIds: ['mk-ours'],
    installation: 'ours0000',
    installationTag: 'ours',
    kind: 'scheduled',
    verifyResult: 'ok',
  } as BackupInfo;
}

describe('syncCandidates', () => {
  it('keeps the backup made last when a remote-only copy was named a second ahead of its time', () => {
    // 02:00:00.2 took 020000; 02:00:00.5 was bumped to 020001 and is only on the destination now;
    // the local backup made at 02:00:00.8 got 020002 and is the newest of the three.
    const candidates = syncCandidates(
      [
        local('gem-backup-2026-01-01-020000.tar.gz', '2026-01-01T02:00:00.200Z'),
        local('gem-backup-2026-01-01-020002.tar.gz', '2026-01-01T02:00:00.800Z'),
      ],
      [
        { name: 'gem-backup-2026-01-01-020000.tar.gz', size: 1 },
        { name: 'gem-backup-2026-01-01-020001.tar.gz', size: 1 },
      ],
    );
    const plan = planPrune(candidates, { maxBackups: 2 });
    expect(plan.keep.map((c) => c.filename)).toEqual([
      'gem-backup-2026-01-01-020002.tar.gz',
      'gem-backup-2026-01-01-020001.tar.gz',
    ]);
    expect(plan.delete.map((c) => c.filename)).toEqual(['gem-backup-2026-01-01-020000.tar.gz']);
  });

  it('dates a local backup whose file name is not a backup name by its own time', () => {
    const [only] = syncCandidates([local('imported.tar.gz', '2026-01-01T02:00:00.800Z')], []);
    expect(only?.createdAt).toBe('2026-01-01T02:00:00.800Z');
  });
});
