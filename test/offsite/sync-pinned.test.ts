// A pin keeps a backup here and offsite: deleting a pinned backup is refused (409, unpin it first), and a
// pinned backup whose local file a person removed by hand (rm) keeps its offsite copies, at a Sync and at
// an auto-upload's prune, because its pin stays in the records.
import { unlink } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { offsiteServiceFor, uploadBackup } from '../../agent/offsite/index';
import type { StorageProvider } from '../../shared/storage/index';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, filenameOf, runJob } from './helpers';
import { MidUploadFixture } from './mid-upload';

let pg: TestPostgres;
let sshd: SshdService;
let m: MidUploadFixture;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  m = await MidUploadFixture.start(pg, sshd);
  t = m.t;
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

describe('a pinned backup and its offsite copies', () => {
  it('refuses to delete a pinned backup, and keeps the copies of one removed by hand at a Sync and an auto-upload', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('pinned');
    expect((await call(t, 'POST', `/backups/${b1}/pin`)).status).toBe(200);

    // The page's and the API's delete: refused, nothing changed (file and pin stay).
    const refused = await call(t, 'DELETE', `/backups/${b1}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error).toEqual({
      code: 'conflict',
      message: `${b1} is pinned: unpin it first (the Unpin button, or gem-backup unpin ${b1}), then delete it`,
    });
    expect((await t.agent.catalog.info(b1)).pinned).toBe(true);

    // A person removes the file by hand: the pin stays in the records, so the Sync keeps the copy (and,
    // a kept copy missing here, brings it back) and prunes only b2 under maxBackups 2.
    await unlink(t.agent.catalog.pathOf(b1));
    const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(sync.state, JSON.stringify(sync.error)).toBe('succeeded');
    expect(sync.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [b1],
      deleted: { remote: [b2], local: [b2] },
    });
    expect(await m.remoteNames('pinned')).toEqual([b1, b3, b4]);
    expect((await t.agent.catalog.info(b1)).pinned).toBe(true);

    // Removed by hand again; an auto-upload's prune of the destination keeps it too.
    await unlink(t.agent.catalog.pathOf(b1));
    await t.agent.settings.update({ offsite: { sftp: m.sftp('pinned', { autoUpload: true }) } });
    // Names go by the second (bumped when taken): b5's must be newer than b4's, or it is not the newest.
    while (backupNameFor(new Date()) <= b4) await new Promise((resolve) => setTimeout(resolve, 100));
    const b5 = filenameOf(await backupNow(t));
    expect(await m.remoteNames('pinned')).toEqual([b1, b4, b5]);
  });

  it('keeps on both sides a backup pinned while the Sync prunes, and does not name it deleted', async () => {
    await t.agent.settings.update({ offsite: { sftp: m.sftp('pinned', { enabled: false }) } });
    for (const backup of await t.agent.catalog.list())
      if (backup.pinned) await t.agent.catalog.setPinned(backup.filename, false);
    const [b1, b2, b3, b4] = await m.fourBackups('pinning');
    // The Sync's plan deletes b1 and b2 on both sides; as it deletes b1 here, the owner pins b2.
    const catalog = t.agent.catalog;
    const remove = catalog.delete.bind(catalog);
    catalog.delete = async (name, options) => {
      catalog.delete = remove;
      expect(name).toBe(b1);
      expect((await call(t, 'POST', `/backups/${b2}/pin`)).status).toBe(200);
      return remove(name, options);
    };
    try {
      const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
      expect(sync.state, JSON.stringify(sync.error)).toBe('succeeded');
      expect(sync.result).toEqual({
        uploaded: [b3, b4],
        downloaded: [],
        deleted: { remote: [b1], local: [b1] },
      });
    } finally {
      catalog.delete = remove;
    }
    expect(await m.remoteNames('pinning')).toEqual([b2, b3, b4]);
    expect(await m.localNames()).toEqual([b2, b3, b4]);
    expect((await t.agent.catalog.info(b2)).pinned).toBe(true);
  });

  it("keeps at the destination the copy of a backup pinned while an auto-upload's retention prunes there", async () => {
    await t.agent.settings.update({ offsite: { sftp: m.sftp('pinning', { enabled: false }) } });
    for (const backup of await t.agent.catalog.list())
      if (backup.pinned) await t.agent.catalog.setPinned(backup.filename, false);
    const [b1, b2, b3, b4] = await m.fourBackups('pruning');
    const provider: StorageProvider = m.sftpProvider('pruning');
    for (const name of [b3, b4]) await uploadBackup(t.agent, provider, name);
    // Retention's plan under maxBackups 2 deletes b1 and b2 there; as b1 goes, the owner pins b2.
    const remove = provider.delete.bind(provider);
    provider.delete = async (name, options) => {
      provider.delete = remove;
      expect(name).toBe(b1);
      expect((await call(t, 'POST', `/backups/${b2}/pin`)).status).toBe(200);
      return remove(name, options);
    };
    expect(await offsiteServiceFor(t.agent).pruneRemote(provider, 2)).toEqual([b1]);
    expect(await m.remoteNames('pruning')).toEqual([b2, b3, b4]);
    expect((await t.agent.catalog.info(b2)).pinned).toBe(true);
  });
});
