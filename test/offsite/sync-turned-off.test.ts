// A destination turned off (or moved to another folder) through PUT /api/v1/settings while a Sync or an auto-upload runs: the job stops touching it, deletes nothing there, and says so.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { offsiteServiceFor, s3Options } from '../../agent/offsite/index';
import { S3Provider } from '../../agent/providers/s3';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { call, runJob, s3Section } from './helpers';
import { MidUploadFixture } from './mid-upload';

let pg: TestPostgres;
let sshd: SshdService;
let s3: S3Service;
let m: MidUploadFixture;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, sshd, s3 } = await startAll({ pg: startPostgres, sshd: startSshd, s3: startS3 }));
  m = await MidUploadFixture.start(pg, sshd);
  t = m.t;
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), s3?.stop()]);
});

const s3At = (autoUpload: boolean) => s3Section(s3, { prefix: 'gem', autoUpload });
const s3Provider = () => new S3Provider(s3Options(s3At(false)));

/** A PUT of the settings through the API, as the page does it. */
async function putSettings(body: unknown): Promise<void> {
  const res = await call(t, 'PUT', '/settings', body);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

describe('Sync Now, the destination changed while it runs', () => {
  it('turned off: the upload under way lands, nothing more is uploaded, nothing is pruned on either side; the job reports it skipped', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('turned-off');
    expect(await m.remoteNames('turned-off')).toEqual([b1, b2]);
    m.duringSftpUpload = () => putSettings({ offsite: { sftp: m.sftp('turned-off', { enabled: false }) } });

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(m.duringSftpUpload).toBeUndefined(); // the PUT ran inside the upload of b3
    expect(job.result).toEqual({
      uploaded: [b3],
      downloaded: [],
      deleted: { remote: [], local: [] },
      skipped: {
        reason: 'turned_off',
        message: expect.stringMatching(/^skipped: the SFTP server was turned off during the job/),
      },
    });
    // b1 and b2, which retention would have pruned, are still there; b4 was never sent.
    expect(await m.remoteNames('turned-off')).toEqual([b1, b2, b3]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);
    const { sftp: state } = await offsiteServiceFor(t.agent).status();
    expect(state.enabled).toBe(false);
    expect(state.lastSync).toMatchObject({ ok: true, uploaded: [b3], skipped: { reason: 'turned_off' } });
  });

  it('moved to another folder: the old folder is left as it was, the new one untouched; reported as changed', async () => {
    const [b1, b2, b3, b4] = await m.fourBackups('moved-from');
    m.duringSftpUpload = () => putSettings({ offsite: { sftp: m.sftp('moved-to') } });

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(job.result).toMatchObject({
      uploaded: [b3],
      deleted: { remote: [], local: [] },
      skipped: {
        reason: 'changed',
        message: expect.stringMatching(/^skipped: the settings of the SFTP server were changed/),
      },
    });
    expect(await m.remoteNames('moved-from')).toEqual([b1, b2, b3]);
    expect(await m.remoteNames('moved-to')).toEqual([]);
    expect(await m.localNames()).toEqual([b1, b2, b3, b4]);

    // The next sync works on the new folder as usual.
    const next = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(next.state, JSON.stringify(next.error)).toBe('succeeded');
    expect(next.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [], local: [b1, b2] },
    });
    expect(await m.remoteNames('moved-to')).toEqual([b3, b4]);
  });
});

describe('auto-upload after a backup, one destination turned off while it runs', () => {
  it('the SFTP copy lands but nothing is pruned there; S3 in the same job uploads and prunes; the backup job is not failed', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: m.sftp('auto', { enabled: false }), s3: { ...s3At(false), enabled: false } },
    });
    // Copies of ours from one and two days ago at both destinations, none here: retention (maxBackups 1)
    // prunes them after the next upload.
    const older = await m.olderCopiesAt([m.sftpProvider('auto'), s3Provider()]);
    const s3Names = async () => (await s3Provider().list()).map((o) => o.name).sort();
    expect(await s3Names()).toEqual(older);
    await t.agent.settings.update({
      autoBackup: { maxBackups: 1 },
      offsite: { sftp: m.sftp('auto', { autoUpload: true }), s3: s3At(true) },
    });
    m.duringSftpUpload = () =>
      putSettings({ offsite: { sftp: m.sftp('auto', { enabled: false, autoUpload: true }) } });

    const { name, notices } = await m.backupWithUploads();
    expect(m.duringSftpUpload).toBeUndefined();
    expect(notices).toEqual([
      {
        sftp: expect.objectContaining({
          ok: true,
          pruned: [],
          skipped: { reason: 'turned_off', message: expect.stringMatching(/^skipped: /) },
        }),
        s3: expect.objectContaining({ ok: true, pruned: older }),
      },
    ]);
    expect(await m.remoteNames('auto')).toEqual([...older, name].sort());
    expect(await s3Names()).toEqual([name]);
    const status = await offsiteServiceFor(t.agent).status();
    expect(status.sftp.lastUpload).toMatchObject({
      backup: name,
      ok: true,
      skipped: { reason: 'turned_off' },
    });
    expect(status.s3.lastUpload).toMatchObject({ backup: name, ok: true, pruned: older });
    expect(status.s3.lastUpload?.skipped).toBeUndefined();
  });
});
