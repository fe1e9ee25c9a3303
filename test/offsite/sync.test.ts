// Auto-upload, Sync Now with retention on both sides, remote list/download/delete and restore-from-remote, on real servers.
import { chmod, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { startBackup } from '../../agent/backup/operations';
import { metricsFor } from '../../agent/metrics/recorder';
import { offsiteServiceFor } from '../../agent/offsite/index';
import { createdAtFromName } from '../../agent/offsite/transfer';
import { SftpProvider } from '../../agent/providers/sftp';
import { databaseUrl } from '../../agent/system/postgres-tools';
import type { TestAgent } from '../services/agent';
import { freePort } from '../services/ports';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import {
  backupNow,
  call,
  filenameOf,
  foreignBackup,
  OTHER_INSTALLATION,
  runJob,
  startOffsiteAgent,
} from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startOffsiteAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await Promise.all([pg?.stop(), sshd?.stop()]);
});

const sftp = (remotePath: string, autoUpload = false) => ({
  enabled: true,
  host: sshd.host,
  port: sshd.port,
  username: sshd.passwordUser.username,
  remotePath,
  auth: { password: sshd.passwordUser.password },
  autoUpload,
});
const remoteNames = async (folder: string) => (await readdir(join(sshd.root, folder)).catch(() => [])).sort();
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

describe('auto-upload after a backup', () => {
  it('uploads to every destination; one being down fails neither the backup nor the other, and is recorded', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: {
        sftp: sftp('auto', true),
        s3: {
          enabled: true,
          provider: 'minio',
          endpoint: `http://127.0.0.1:${await freePort()}`, // nothing listens: down
          region: 'us-east-1',
          bucket: 'gem',
          accessKeyId: 'key',
          secretAccessKey: 'secret',
          autoUpload: true,
        },
      },
    });
    const job = await backupNow(t);
    const name = filenameOf(job);
    const followUps = (job.result as { followUps: Record<string, { ok: boolean; error?: string }> })
      .followUps;
    expect(followUps['retention']).toEqual({ ok: true, details: { deleted: [] } });
    expect(followUps['offsiteUpload']?.ok).toBe(false);
    expect(followUps['offsiteUpload']?.error).toMatch(
      /^S3 storage: Cannot reach the storage at http:\/\/127\.0\.0\.1/,
    );
    // Each destination's outcome is kept beside the failure: SFTP uploaded, S3 did not.
    const outcomes = (
      followUps['offsiteUpload'] as { details?: Record<string, { ok: boolean; size?: number }> }
    ).details;
    expect(outcomes?.['sftp']).toMatchObject({
      ok: true,
      size: (await stat(t.agent.catalog.pathOf(name))).size,
    });
    expect(outcomes?.['s3']?.ok).toBe(false);
    // Its remote list answers 503 naming the destination, not the database (the socket error's
    // address is the S3 endpoint's).
    const listed = await call(t, 'GET', '/offsite/s3/backups');
    expect(listed.status).toBe(503);
    const { error } = listed.body as { error: { message: string } };
    expect(error.message).toMatch(/^Cannot reach the storage at http:\/\/127\.0\.0\.1/);
    expect(error.message).not.toMatch(/database/);

    // The SFTP copy is complete and byte-identical; nothing else (no temp file) is in the folder.
    expect(await remoteNames('auto')).toEqual([name]);
    expect(await readFile(join(sshd.root, 'auto', name))).toEqual(
      await readFile(t.agent.catalog.pathOf(name)),
    );

    const status = await offsiteServiceFor(t.agent).status();
    expect(status.sftp.lastUpload).toMatchObject({ backup: name, ok: true });
    expect(status.s3.lastUpload).toMatchObject({ backup: name, ok: false, error: { code: 'unreachable' } });
    expect(status.s3.lastSuccessfulUpload).toBeUndefined();
    const onDisk = JSON.parse(await readFile(join(t.dataDir, 'offsite-state.json'), 'utf8'));
    expect(onDisk.s3.lastUpload.error.message).toContain('Cannot reach the storage');
    await t.agent.settings.update({ offsite: { s3: { enabled: false }, sftp: sftp('auto', false) } });
  });

  it('prunes the destination to maxBackups after an upload', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 2 }, offsite: { sftp: sftp('auto', true) } });
    const second = filenameOf(await backupNow(t));
    const third = filenameOf(await backupNow(t));
    expect(await remoteNames('auto')).toEqual([second, third].sort());
    expect(await localNames()).toEqual([second, third].sort());
    await t.agent.settings.update({ autoBackup: { maxBackups: 10 }, offsite: { sftp: sftp('auto', false) } });
  });
});

describe('Sync Now', () => {
  it('uploads what is missing remotely, downloads what is missing locally, and enforces maxBackups on both sides', async () => {
    for (const name of await localNames()) await t.agent.catalog.delete(name);
    const made: string[] = [];
    for (let i = 0; i < 4; i++) made.push(filenameOf(await backupNow(t)));
    const [b1, b2, b3, b4] = made as [string, string, string, string];
    // Remote: b1 and b2 (put there directly). Local: b1, b3, b4 (b2 only remote).
    const provider = new SftpProvider({ ...sftp('synced'), password: sshd.passwordUser.password });
    const { uploadBackup } = await import('../../agent/offsite/index');
    await uploadBackup(t.agent, provider, b1);
    await uploadBackup(t.agent, provider, b2);
    await t.agent.catalog.delete(b2);
    await t.agent.settings.update({ autoBackup: { maxBackups: 3 }, offsite: { sftp: sftp('synced') } });

    const metrics = metricsFor(t.agent);
    const bytesBefore = metrics.uploadedBytes.get('sftp') ?? 0;
    const phases: string[] = [];
    const res = await call(t, 'POST', '/offsite/sftp/sync');
    expect(res.status).toBe(202);
    const off = t.agent.jobs.subscribe(res.body.jobId, (event) => {
      if (event.type === 'update' && phases.at(-1) !== event.job.phase) phases.push(event.job.phase);
    });
    const job = await t.agent.jobs.waitFor(res.body.jobId);
    off();
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(job.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [b2],
      deleted: { remote: [b1], local: [b1] },
    });
    expect(phases).toEqual(
      expect.arrayContaining([`downloading ${b2}`, `uploading ${b3}`, `uploading ${b4}`, 'pruning']),
    );
    expect(await remoteNames('synced')).toEqual([b2, b3, b4]);
    expect(await localNames()).toEqual([b2, b3, b4]);
    // Counted in gem_backup_uploaded_bytes_total as an auto-upload is.
    const sizes = await Promise.all([b3, b4].map(async (b) => (await t.agent.catalog.info(b)).size));
    expect(metrics.uploadedBytes.get('sftp')).toBe(bytesBefore + sizes[0]! + sizes[1]!);
    // The downloaded copy was verified end to end on arrival.
    expect(await t.agent.catalog.info(b2)).toMatchObject({ verifyResult: 'ok' });
    expect(await readFile(join(sshd.root, 'synced', b2))).toEqual(await readFile(t.agent.catalog.pathOf(b2)));
    expect((await offsiteServiceFor(t.agent).status()).sftp.lastSync).toMatchObject({
      ok: true,
      uploaded: [b3, b4],
    });

    // A second sync has nothing to do.
    const again = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(again.result).toEqual({ uploaded: [], downloaded: [], deleted: { remote: [], local: [] } });
  });

  it('lists, downloads and deletes remote backups', async () => {
    const list = await call(t, 'GET', '/offsite/sftp/backups');
    expect(list.status).toBe(200);
    const backups = list.body.backups as Array<{
      filename: string;
      size: number;
      createdAt: string;
      local: boolean;
    }>;
    expect(backups.map((b) => b.filename)).toEqual((await remoteNames('synced')).reverse());
    const newest = backups[0]!;
    expect(newest).toMatchObject({ local: true, size: (await t.agent.catalog.info(newest.filename)).size });
    expect(newest.createdAt).toMatch(/^\d{4}-\d{2}-\d{2}T/);

    const oldest = backups.at(-1)!.filename;
    expect((await call(t, 'POST', `/offsite/sftp/backups/${oldest}/download`)).status).toBe(409); // already local
    await t.agent.catalog.delete(oldest);
    const download = await runJob(t, 'POST', `/offsite/sftp/backups/${oldest}/download`);
    expect(download.state, JSON.stringify(download.error)).toBe('succeeded');
    expect(download.result).toMatchObject({ filename: oldest, verified: true });
    expect(await localNames()).toContain(oldest);

    expect(await call(t, 'DELETE', `/offsite/sftp/backups/${oldest}`)).toEqual({
      status: 200,
      body: { deleted: oldest },
    });
    expect(await remoteNames('synced')).not.toContain(oldest);
    const missing = await call(t, 'DELETE', `/offsite/sftp/backups/${oldest}`);
    expect(missing.status).toBe(404);
    const gone = await runJob(
      t,
      'POST',
      `/offsite/sftp/backups/gem-backup-2001-01-01-000000.tar.gz/download`,
    );
    expect(gone.state).toBe('failed');
  });
});

describe('a destination folder shared with another installation', () => {
  it('Sync Now and auto-upload neither count, download nor delete its backups, and keep ours', async () => {
    for (const name of await localNames()) await t.agent.catalog.delete(name);
    const ours = filenameOf(await backupNow(t));
    const day = 24 * 3600 * 1000;
    const newerForeign = backupNameFor(new Date(Date.now() + day));
    const olderForeign = backupNameFor(new Date(Date.now() - 30 * day));
    // Written as the other installation would, straight into the folder (which the SFTP user may write too).
    await mkdir(join(sshd.root, 'shared'), { recursive: true });
    await chmod(join(sshd.root, 'shared'), 0o777);
    for (const name of [newerForeign, olderForeign]) {
      await writeFile(join(sshd.root, 'shared', name), await foreignBackup(createdAtFromName(name)!));
    }
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 }, offsite: { sftp: sftp('shared') } });

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(job.result).toEqual({ uploaded: [ours], downloaded: [], deleted: { remote: [], local: [] } });
    expect(await localNames()).toEqual([ours]);
    expect(await remoteNames('shared')).toEqual([olderForeign, ours, newerForeign].sort());

    // The remote list says whose each copy is: theirs (from its header) is not of this installation.
    const { body } = await call(t, 'GET', '/offsite/sftp/backups');
    const whose = (body.backups as RemoteEntry[]).map((b) => [
      b.filename,
      b.installation,
      b.ofThisInstallation,
    ]);
    // Only the first 8 characters of an id: the whole one is the installation's DR recovery credential.
    const other = OTHER_INSTALLATION.slice(0, 8);
    expect(whose).toEqual([
      [newerForeign, other, false],
      [ours, t.agent.keyring.installationId.slice(0, 8), true],
      [olderForeign, other, false],
    ]);

    // Auto-upload prunes our older copy at the destination, never theirs.
    await t.agent.settings.update({ offsite: { sftp: sftp('shared', true) } });
    const next = filenameOf(await backupNow(t));
    expect(await localNames()).toEqual([next]);
    expect(await remoteNames('shared')).toEqual([olderForeign, next, newerForeign].sort());

    // The other installation's older backup rotates away: the remote headers the agent remembers (whose
    // each remote backup is, and what is under our own names) keep only what the folder still holds.
    await rm(join(sshd.root, 'shared', olderForeign));
    expect((await runJob(t, 'POST', '/offsite/sftp/sync')).state).toBe('succeeded');
    const remembered = (offsiteServiceFor(t.agent) as unknown as { remoteHeaders: Map<string, unknown> })
      .remoteHeaders;
    expect([...remembered.keys()].map((key) => key.split('\n')[1]).sort()).toEqual(
      await remoteNames('shared'),
    );
    expect(await remoteNames('shared')).toEqual([newerForeign, next].sort());
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: sftp('shared', false) },
    });
  });
});

/** A remote list entry, as far as these tests read it. */
interface RemoteEntry {
  filename: string;
  local: boolean;
  installation?: string;
  ofThisInstallation?: boolean;
}

describe('restore from a remote copy', () => {
  it('restores the SFTP copy end to end: data changed after the backup comes back', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: sftp('restore', true) },
    });
    const url = databaseUrl(t.agent.sources.conn);
    const names = () =>
      withSql(url, (sql) =>
        sql`select display_name from users order by id`.then((r) => r.map((x) => x.display_name)),
      );
    const before = await names();
    const name = filenameOf(await backupNow(t));
    expect(await remoteNames('restore')).toEqual([name]);
    await withSql(url, (sql) => sql`update users set display_name = 'changed after the backup'`);
    expect(await names()).not.toEqual(before);

    expect((await call(t, 'POST', `/offsite/sftp/backups/${name}/restore`, { confirm: 'yes' })).status).toBe(
      400,
    );
    const job = await runJob(t, 'POST', `/offsite/sftp/backups/${name}/restore`, { confirm: name });
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(job.result).toMatchObject({ destination: 'sftp', restoredFrom: name });
    expect(await names()).toEqual(before);
    // The work file is gone; the safety backup of the changed state is in the catalog.
    const safety = (job.result as { safetyBackup?: string }).safetyBackup;
    expect(safety && (await t.agent.catalog.info(safety)).kind).toBe('safety');
    expect((await readdir(t.agent.paths.work).catch(() => [])).filter((n) => n.includes('offsite'))).toEqual(
      [],
    );
  });
});

describe('whose each remote copy is, on a controller rebuilt with the keys of the old one (drill F4)', () => {
  it("marks the old installation's copies until its keys are imported, then this box's own copy made before", async () => {
    // The old controller A put its backups in the folder; the rebuilt box (t) first made one of its own
    // (sample data) there, before its keys were imported.
    const old = await startOffsiteAgent(pg);
    try {
      await old.agent.settings.update({ offsite: { sftp: sftp('rebuilt', true) } });
      // A minute older than ours: made in the same second, both had one name (see same-name.test.ts).
      const made = await startBackup(old.agent, { kind: 'manual', now: new Date(Date.now() - 60_000) });
      const theirsJob = await old.agent.jobs.waitFor(made.id);
      expect(theirsJob.state, JSON.stringify(theirsJob.error)).toBe('succeeded');
      const theirs = filenameOf(theirsJob);
      for (const name of await localNames()) await t.agent.catalog.delete(name);
      await t.agent.settings.update({
        autoBackup: { maxBackups: 10 },
        offsite: { sftp: sftp('rebuilt', true) },
      });
      const own = filenameOf(await backupNow(t));
      expect(await remoteNames('rebuilt')).toEqual([theirs, own].sort());
      const ownInstallation = t.agent.keyring.installationId.slice(0, 8);
      const oldInstallation = old.agent.keyring.installationId.slice(0, 8);
      const list = async () =>
        ((await call(t, 'GET', '/offsite/sftp/backups')).body.backups as RemoteEntry[]).map((b) => [
          b.filename,
          b.local,
          b.installation,
          b.ofThisInstallation,
        ]);

      expect(await list()).toEqual([
        [own, true, ownInstallation, true],
        [theirs, false, oldInstallation, false],
      ]);
      // Sync leaves A's copy alone while its keys are not here (what it read of the header is remembered).
      const before = await runJob(t, 'POST', '/offsite/sftp/sync');
      expect(before.result).toMatchObject({ uploaded: [], downloaded: [] });

      await t.agent.keyring.importKeys(old.agent.keyring.toFile());
      // Now the newest copy is the one NOT of the active installation: "restore the newest" would take it.
      expect(await list()).toEqual([
        [own, true, ownInstallation, false],
        [theirs, false, oldInstallation, true],
      ]);
      // The remembered header is judged by the keys held now: A's copy is ours, and Sync fetches it.
      const after = await runJob(t, 'POST', '/offsite/sftp/sync');
      expect(after.state, JSON.stringify(after.error)).toBe('succeeded');
      expect(after.result).toMatchObject({ uploaded: [], downloaded: [theirs] });
    } finally {
      await old.close();
    }
  });
});

describe('whose each remote copy is, in a crowded folder', () => {
  it('a list reads at most 10 headers it does not know yet, newest first; the next list reads on', async () => {
    await mkdir(join(sshd.root, 'crowded'), { recursive: true });
    await chmod(join(sshd.root, 'crowded'), 0o777);
    const names = Array.from({ length: 12 }, (_, i) => backupNameFor(new Date(Date.UTC(2026, 0, i + 1, 2))));
    for (const name of names) {
      await writeFile(join(sshd.root, 'crowded', name), await foreignBackup(createdAtFromName(name)!));
    }
    await t.agent.settings.update({ offsite: { sftp: sftp('crowded') } });
    const known = async () =>
      ((await call(t, 'GET', '/offsite/sftp/backups')).body.backups as RemoteEntry[])
        .filter((b) => b.installation !== undefined)
        .map((b) => b.filename);
    const newestFirst = [...names].reverse();
    expect(await known()).toEqual(newestFirst.slice(0, 10));
    expect(await known()).toEqual(newestFirst);
  });
});
