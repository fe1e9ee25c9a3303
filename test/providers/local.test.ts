// The local folder provider against a real temp folder.
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalFolderProvider } from '../../agent/providers/local';
import { runStorageProviderSuite } from '../../shared/storage/conformance';

runStorageProviderSuite('local', async () => {
  const folder = await mkdtemp(join(tmpdir(), 'gem-local-'));
  return {
    provider: new LocalFolderProvider({ folder }),
    cleanup: () => rm(folder, { recursive: true, force: true }),
    rawNames: () => readdir(folder),
  };
});

describe('local folder provider', () => {
  it('lists only backup names, ignoring temp files and foreign files', async () => {
    const folder = await mkdtemp(join(tmpdir(), 'gem-local-'));
    try {
      await writeFile(join(folder, 'gem-backup-2026-02-03-040506.tar.gz'), 'x');
      await writeFile(join(folder, '.tmp-gem-backup-2026-02-03-040507.tar.gz.abc'), 'x');
      await writeFile(join(folder, 'notes.txt'), 'x');
      const names = (await new LocalFolderProvider(folder).list()).map((entry) => entry.name);
      expect(names).toEqual(['gem-backup-2026-02-03-040506.tar.gz']);
    } finally {
      await rm(folder, { recursive: true, force: true });
    }
  });

  it('lists an empty result for a folder that does not exist yet', async () => {
    expect(await new LocalFolderProvider(join(tmpdir(), 'gem-never-created-folder')).list()).toEqual([]);
  });
});
