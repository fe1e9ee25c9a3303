// Cancel pressed while a backup's auto-upload runs: the backup is kept, the upload is said to be cancelled (not
// failed), nothing is recorded against the destination, its health does not turn failing, and Sync Now sends it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FollowUp } from '../../agent/backup/operations';
import { healthFor } from '../../agent/health/service';
import { offsiteServiceFor, UPLOAD_CANCELLED } from '../../agent/offsite/service';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, filenameOf, runJob, s3Section } from './helpers';
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

describe('Cancel during the auto-upload after a backup', () => {
  it('keeps the backup, says the upload was cancelled, records nothing against the destination, and Sync Now sends it', async () => {
    await t.agent.settings.update({ offsite: { sftp: m.sftp('cancelled', { autoUpload: true }) } });
    const first = filenameOf(await backupNow(t));
    expect(await m.remoteNames('cancelled')).toEqual([first]);
    const before = (await offsiteServiceFor(t.agent).status()).sftp.lastUpload;
    expect(before).toMatchObject({ backup: first, ok: true });

    // The person presses Cancel while the next backup's copy is on its way to the server.
    m.duringSftpUpload = async () => {
      const [running] = t.agent.jobs.active();
      expect((await call(t, 'POST', `/jobs/${running!.id}/cancel`)).status).toBe(202);
    };
    const job = await backupNow(t);
    expect(m.duringSftpUpload).toBeUndefined();
    const second = filenameOf(job);
    expect(job.state).toBe('succeeded');
    expect((await t.agent.catalog.list()).map((b) => b.filename)).toContain(second);
    const upload = (job.result as { followUps: Record<string, FollowUp> }).followUps['offsiteUpload'];
    expect(upload).toEqual({
      ok: false,
      cancelled: true,
      error: `SFTP server: ${UPLOAD_CANCELLED}`,
      details: { sftp: { ok: false, error: { code: 'cancelled', message: UPLOAD_CANCELLED } } },
    });
    // Nothing half-written under its name there, and the destination's record is the last real upload.
    expect(await m.remoteNames('cancelled')).toEqual([first]);
    expect((await offsiteServiceFor(t.agent).status()).sftp.lastUpload).toEqual(before);
    // Its health says the newest backup is not there yet (a warning with what to do), not "failing".
    const offsite = (await healthFor(t.agent, { offsiteProbeIntervalMs: 0 }).evaluate()).areas.offsite;
    expect(offsite.status).toBe('warning');
    expect(offsite.reason).toContain(`The newest backup, ${second}, is not on SFTP server`);

    const synced = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(synced.state).toBe('succeeded');
    expect(await m.remoteNames('cancelled')).toEqual([first, second].sort());
  });

  it('still records a destination that had failed on its own before the Cancel came, and the step as failed', async () => {
    // S3 with a bucket the server does not have: refused at once, for a reason of its own.
    const refusing = s3Section(s3, { bucket: 'no-such-bucket', prefix: 'gem', autoUpload: true });
    await t.agent.settings.update({
      offsite: { sftp: m.sftp('cancelled-too', { autoUpload: true }), s3: refusing },
    });
    // The Cancel comes while the SFTP copy is on its way, a second after S3 was refused.
    m.duringSftpUpload = async () => {
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      const [running] = t.agent.jobs.active();
      expect((await call(t, 'POST', `/jobs/${running!.id}/cancel`)).status).toBe(202);
    };
    const job = await backupNow(t);
    expect(m.duringSftpUpload).toBeUndefined();
    const upload = (job.result as { followUps: Record<string, FollowUp> }).followUps['offsiteUpload'];
    expect(upload?.cancelled, JSON.stringify(upload)).toBeUndefined();
    expect(upload).toMatchObject({
      ok: false,
      details: {
        sftp: { ok: false, error: { code: 'cancelled' } },
        s3: { ok: false, error: { code: expect.not.stringMatching(/^(cancelled|aborted)$/) } },
      },
    });
    const status = await offsiteServiceFor(t.agent).status();
    expect(status.s3.lastUpload).toMatchObject({ backup: filenameOf(job), ok: false });
    await t.agent.settings.update({ offsite: { s3: { ...refusing, enabled: false, autoUpload: false } } });
  });
});
