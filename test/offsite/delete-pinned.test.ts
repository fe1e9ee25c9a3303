// A pin keeps a backup's offsite copies too: deleting the copy of a pinned backup at a destination is
// refused (409, nothing deleted), also once its local file was removed by hand (the pin stays in the
// records). Unpinning works from that record, so the copy can then be deleted; a name with neither file
// nor record stays 404.
import { unlink } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { uploadBackup } from '../../agent/offsite/index';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, filenameOf } from './helpers';
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

describe('deleting the offsite copy of a pinned backup', () => {
  it('is refused while it is pinned, here or removed by hand, and goes through once it is unpinned from its record', async () => {
    const folder = 'delete-pinned';
    const b1 = filenameOf(await backupNow(t));
    const b2 = filenameOf(await backupNow(t));
    await t.agent.settings.update({ offsite: { sftp: m.sftp(folder) } });
    const provider = m.sftpProvider(folder);
    for (const name of [b1, b2]) await uploadBackup(t.agent, provider, name);
    expect((await call(t, 'POST', `/backups/${b1}/pin`)).status).toBe(200);

    // The list says which copies are pinned (the page turns their Delete off).
    const list = await call(t, 'GET', '/offsite/sftp/backups');
    expect(list.status).toBe(200);
    const rows = new Map(list.body.backups.map((b: { filename: string }) => [b.filename, b]));
    expect(rows.get(b1)).toMatchObject({ local: true, pinned: true });
    expect(rows.get(b2)).not.toHaveProperty('pinned');

    // Pinned, its file here: refused, the copy stays.
    const refused = await call(t, 'DELETE', `/offsite/sftp/backups/${b1}`);
    expect(refused.status).toBe(409);
    expect(refused.body.error).toEqual({
      code: 'conflict',
      message: `${b1} is pinned: unpin it first (the Unpin button, or gem-backup unpin ${b1}), then delete its copy on the SFTP server`,
    });
    expect(await m.remoteNames(folder)).toEqual([b1, b2]);

    // Its file removed by hand: the pin is in the records, still refused.
    await unlink(t.agent.catalog.pathOf(b1));
    const stillRefused = await call(t, 'DELETE', `/offsite/sftp/backups/${b1}`);
    expect(stillRefused.status).toBe(409);
    expect(stillRefused.body.error.message).toBe(
      `${b1} is pinned: unpin it first (its file here was removed: the Unpin button beside its copy in the page's Offsite list, or gem-backup unpin ${b1}), then delete its copy on the SFTP server`,
    );
    expect(await m.remoteNames(folder)).toEqual([b1, b2]);
    expect((await call(t, 'GET', '/offsite/sftp/backups')).body.backups[1]).toMatchObject({
      filename: b1,
      local: false,
      pinned: true,
    });

    // Unpinned from its record (no file needed), the copy can be deleted.
    const unpinned = await call(t, 'DELETE', `/backups/${b1}/pin`);
    expect(unpinned.status, JSON.stringify(unpinned.body)).toBe(200);
    expect(unpinned.body).toEqual({ filename: b1, pinned: false, local: false });
    expect(await t.agent.catalog.pinnedNames()).toEqual(new Set());
    const deleted = await call(t, 'DELETE', `/offsite/sftp/backups/${b1}`);
    expect(deleted.status, JSON.stringify(deleted.body)).toBe(200);
    expect(await m.remoteNames(folder)).toEqual([b2]);

    // An unpinned copy is deleted as before.
    expect((await call(t, 'DELETE', `/offsite/sftp/backups/${b2}`)).status).toBe(200);
    expect(await m.remoteNames(folder)).toEqual([]);
  });

  it('keeps 404 for a name with neither file nor record, and a pin still needs the file', async () => {
    const ghost = 'gem-backup-2020-01-01-000000.tar.gz';
    expect((await call(t, 'DELETE', `/backups/${ghost}/pin`)).status).toBe(404);
    expect((await call(t, 'POST', `/backups/${ghost}/pin`)).status).toBe(404);
    expect(await t.agent.catalog.hasRecord(ghost)).toBe(false);

    // A record without its file (removed by hand, its pin already gone): pinning it again is 404.
    const b = filenameOf(await backupNow(t));
    await t.agent.catalog.updateRecord(b, { verifyResult: 'ok', verifiedAt: new Date().toISOString() });
    await unlink(t.agent.catalog.pathOf(b));
    expect((await call(t, 'POST', `/backups/${b}/pin`)).status).toBe(404);
    expect((await t.agent.catalog.pinnedNames()).has(b)).toBe(false);
  });
});
