// A destination turned off (or moved to another folder) through PUT /api/v1/settings while a Sync or an auto-upload runs: the job stops touching it, deletes nothing there, and says so.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor, s3Options, uploadBackup } from '../../agent/offsite/index';
import { fileSource } from '../../agent/offsite/transfer';
import { S3Provider } from '../../agent/providers/s3';
import { SftpProvider } from '../../agent/providers/sftp';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type S3Service, startS3 } from '../services/s3';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, FAST, filenameOf, runJob } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;
let s3: S3Service;
/** Runs inside the SFTP upload, after the bytes are written and before the file takes its name. */
let duringSftpUpload: (() => Promise<void>) | undefined;

beforeAll(async () => {
  ({ pg, sshd, s3 } = await startAll({ pg: startPostgres, sshd: startSshd, s3: startS3 }));
  t = await startTestAgent(pg, { modules: [offsiteModule, settingsModule] });
  offsiteServiceFor(t.agent, {
    ...FAST,
    providerOverrides: {
      ...FAST.providerOverrides,
      // The plain-rename path has the provider's own test hook between upload and rename.
      sftp: {
        ...FAST.providerOverrides?.sftp,
        posixRename: false,
        faults: {
          beforeReplace: async () => {
            const hook = duringSftpUpload;
            duringSftpUpload = undefined; // once
            await hook?.();
          },
        },
      },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop(), s3?.stop()]);
});

const sftp = (remotePath: string, extra: { enabled?: boolean; autoUpload?: boolean } = {}) => ({
  enabled: true,
  host: sshd.host,
  port: sshd.port,
  username: sshd.passwordUser.username,
  remotePath,
  auth: { password: sshd.passwordUser.password },
  autoUpload: false,
  ...extra,
});
const s3Section = (autoUpload: boolean) => ({
  enabled: true,
  provider: 'other' as const,
  endpoint: s3.endpoint,
  region: 'us-east-1',
  bucket: s3.bucket,
  prefix: 'gem',
  accessKeyId: s3.accessKeyId,
  secretAccessKey: s3.secretAccessKey,
  forcePathStyle: true,
  autoUpload,
});
const sftpProvider = (folder: string) =>
  new SftpProvider({ ...sftp(folder), password: sshd.passwordUser.password });
const s3Provider = () => new S3Provider(s3Options(s3Section(false)));
const remoteNames = async (folder: string) =>
  (await readdir(join(sshd.root, folder)).catch(() => [] as string[])).sort();
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

/** A PUT of the settings through the API, as the page does it. */
async function putSettings(body: unknown): Promise<void> {
  const res = await call(t, 'PUT', '/settings', body);
  expect(res.status, JSON.stringify(res.body)).toBe(200);
}

/**
 * Four backups b1..b4, b1 and b2 also at `folder` on the SFTP server (placed there directly). Under
 * maxBackups 2 a sync uploads b3 then b4 and deletes b1 and b2 on both sides.
 */
async function fourBackups(folder: string): Promise<[string, string, string, string]> {
  await t.agent.settings.update({
    autoBackup: { maxBackups: 10 },
    offsite: { sftp: sftp(folder, { enabled: false }) },
  });
  for (const name of await localNames()) await t.agent.catalog.delete(name);
  const made: string[] = [];
  for (let i = 0; i < 4; i++) made.push(filenameOf(await backupNow(t)));
  const provider = sftpProvider(folder);
  for (const name of made.slice(0, 2)) await uploadBackup(t.agent, provider, name);
  await t.agent.settings.update({ autoBackup: { maxBackups: 2 }, offsite: { sftp: sftp(folder) } });
  return made as [string, string, string, string];
}

describe('Sync Now, the destination changed while it runs', () => {
  it('turned off: the upload under way lands, nothing more is uploaded, nothing is pruned on either side; the job reports it skipped', async () => {
    const [b1, b2, b3, b4] = await fourBackups('turned-off');
    expect(await remoteNames('turned-off')).toEqual([b1, b2]);
    duringSftpUpload = () => putSettings({ offsite: { sftp: sftp('turned-off', { enabled: false }) } });

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(duringSftpUpload).toBeUndefined(); // the PUT ran inside the upload of b3
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
    expect(await remoteNames('turned-off')).toEqual([b1, b2, b3]);
    expect(await localNames()).toEqual([b1, b2, b3, b4]);
    const { sftp: state } = await offsiteServiceFor(t.agent).status();
    expect(state.enabled).toBe(false);
    expect(state.lastSync).toMatchObject({ ok: true, uploaded: [b3], skipped: { reason: 'turned_off' } });
  });

  it('moved to another folder: the old folder is left as it was, the new one untouched; reported as changed', async () => {
    const [b1, b2, b3, b4] = await fourBackups('moved-from');
    duringSftpUpload = () => putSettings({ offsite: { sftp: sftp('moved-to') } });

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
    expect(await remoteNames('moved-from')).toEqual([b1, b2, b3]);
    expect(await remoteNames('moved-to')).toEqual([]);
    expect(await localNames()).toEqual([b1, b2, b3, b4]);

    // The next sync works on the new folder as usual.
    const next = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(next.state, JSON.stringify(next.error)).toBe('succeeded');
    expect(next.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [], local: [b1, b2] },
    });
    expect(await remoteNames('moved-to')).toEqual([b3, b4]);
  });
});

describe('auto-upload after a backup, one destination turned off while it runs', () => {
  it('the SFTP copy lands but nothing is pruned there; S3 in the same job uploads and prunes; the backup job is not failed', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: sftp('auto', { enabled: false }), s3: { ...s3Section(false), enabled: false } },
    });
    for (const name of await localNames()) await t.agent.catalog.delete(name);
    // Copies of ours from one and two days ago at both destinations, none here: retention (maxBackups 1)
    // prunes them after the next upload.
    const made = filenameOf(await backupNow(t));
    const path = t.agent.catalog.pathOf(made);
    const sha256 = await t.agent.catalog.knownSha256(made);
    expect(sha256).toBeDefined();
    const source = fileSource(path, (await stat(path)).size, sha256 as string);
    const day = 24 * 3600 * 1000;
    const older = [backupNameFor(new Date(Date.now() - 2 * day)), backupNameFor(new Date(Date.now() - day))];
    for (const name of older) {
      await sftpProvider('auto').put(name, source);
      await s3Provider().put(name, source);
    }
    await t.agent.catalog.delete(made);
    const s3Names = async () => (await s3Provider().list()).map((o) => o.name).sort();
    expect(await s3Names()).toEqual(older);
    await t.agent.settings.update({
      autoBackup: { maxBackups: 1 },
      offsite: { sftp: sftp('auto', { autoUpload: true }), s3: s3Section(true) },
    });
    duringSftpUpload = () =>
      putSettings({ offsite: { sftp: sftp('auto', { enabled: false, autoUpload: true }) } });

    const notices: unknown[] = [];
    const off = t.agent.jobs.subscribeAll((event) => {
      if (event.type === 'notice' && event.name === 'offsite-upload') notices.push(event.data);
    });
    let name: string;
    try {
      const job = await backupNow(t);
      name = filenameOf(job);
      expect((job.result as { followUps: Record<string, unknown> }).followUps['offsiteUpload']).toEqual({
        ok: true,
      });
    } finally {
      off();
    }
    expect(duringSftpUpload).toBeUndefined();
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
    expect(await remoteNames('auto')).toEqual([...older, name].sort());
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
