// Cancel pressed while a backup's auto-upload runs: the backup is kept, the upload is said to be cancelled (not
// failed), nothing is recorded against the destination, its health does not turn failing, and Sync Now sends it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FollowUp } from '../../agent/backup/operations';
import { healthFor } from '../../agent/health/service';
import { offsiteServiceFor, UPLOAD_CANCELLED } from '../../agent/offsite/service';
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
});
