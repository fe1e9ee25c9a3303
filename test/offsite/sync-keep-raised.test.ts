// The number of backups kept raised through PUT /api/v1/settings while a Sync or an auto-upload runs: the job's prune, planned with the old count, deletes nothing more and says so.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteServiceFor } from '../../agent/offsite/index';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { call, runJob } from './helpers';
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

/** Sets the number of backups kept with a PUT of the settings through the API, as the page does it. */
async function putMaxBackups(maxBackups: number): Promise<void> {
  const res = await call(t, 'PUT', '/settings', {
    autoBackup: { ...t.agent.settings.get().autoBackup, maxBackups },
  });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  expect(t.agent.settings.get().autoBackup.maxBackups).toBe(maxBackups);
}

describe('Sync Now, the number of backups kept changed while it runs', () => {
  it('raised from 2 to 4: the transfers go on, nothing is pruned on either side; the job says why', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('raised');
    expect(await m.remoteNames('raised')).toEqual([b1, b2]);
    m.duringSftpUpload = () => putMaxBackups(4);

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(m.duringSftpUpload).toBeUndefined(); // the PUT ran inside the upload of b3
    expect(job.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [], local: [] },
      pruneStopped: expect.stringMatching(
        /^kept: the number of backups kept was raised during the job \(from 2 to 4\)/,
      ),
    });
    // b1 and b2, which the plan made under 2 would have pruned, are kept as the new setting says.
    expect(await m.remoteNames('raised')).toEqual([b1, b2, b3, b4]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);
    const { sftp: state } = await offsiteServiceFor(t.agent).status();
    expect(state.lastSync).toMatchObject({
      ok: true,
      uploaded: [b3, b4],
      deleted: { remote: [], local: [] },
    });
    expect(state.lastSync?.pruneStopped).toMatch(/^kept: /);

    // The next sync plans with 4: everything is in place, nothing to do.
    const next = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(next.state, JSON.stringify(next.error)).toBe('succeeded');
    expect(next.result).toEqual({ uploaded: [], downloaded: [], deleted: { remote: [], local: [] } });
  });

  it('lowered from 2 to 1: the job prunes what its plan under 2 dropped, no more (the next sync does)', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('lowered');
    m.duringSftpUpload = () => putMaxBackups(1);

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(m.duringSftpUpload).toBeUndefined();
    expect(job.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [b1, b2], local: [b1, b2] },
    });
    expect(await m.remoteNames('lowered')).toEqual([b3, b4]);
    expect(await m.localNames()).toEqual([b3, b4]);
  });
});

describe('auto-upload after a backup, the number of backups kept raised while it runs', () => {
  it('the copy lands, nothing is pruned at the destination, the result says why; the backup job is not failed', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: m.sftp('auto', { enabled: false }) },
    });
    // Copies of ours from one and two days ago at the destination, none here: retention (maxBackups 1)
    // prunes them after the next upload, unless the count is raised meanwhile.
    const older = await m.olderCopiesAt([m.sftpProvider('auto')]);
    expect(await m.remoteNames('auto')).toEqual(older);
    await t.agent.settings.update({
      autoBackup: { maxBackups: 1 },
      offsite: { sftp: m.sftp('auto', { autoUpload: true }) },
    });
    m.duringSftpUpload = () => putMaxBackups(5);

    const { name, notices } = await m.backupWithUploads();
    expect(m.duringSftpUpload).toBeUndefined();
    expect(notices).toEqual([
      {
        sftp: expect.objectContaining({
          ok: true,
          pruned: [],
          pruneStopped: expect.stringMatching(
            /^kept: the number of backups kept was raised during the job \(from 1 to 5\)/,
          ),
        }),
      },
    ]);
    expect((notices[0] as { sftp: { skipped?: unknown } }).sftp.skipped).toBeUndefined();
    expect(await m.remoteNames('auto')).toEqual([...older, name].sort());
    const status = await offsiteServiceFor(t.agent).status();
    expect(status.sftp.lastUpload).toMatchObject({
      backup: name,
      ok: true,
      pruneStopped: expect.stringMatching(/^kept: /),
    });
  });
});
