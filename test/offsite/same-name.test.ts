// Two controllers backing up into one folder made backups in the same second, so of one name: ours is
// never put over theirs (the provider would replace it), nor taken for "there" by Sync or health. Real sshd.
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { startBackup } from '../../agent/backup/operations';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { offsiteModule } from '../../agent/http/routes/offsite';
import type { Job } from '../../agent/jobs/runner';
import { offsiteServiceFor, uploadBackup } from '../../agent/offsite/index';
import { createdAtFromName, fileSource } from '../../agent/offsite/transfer';
import { SftpProvider } from '../../agent/providers/sftp';
import { isStorageError } from '../../shared/storage/index';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, FAST, filenameOf, foreignBackup, OTHER_INSTALLATION, runJob } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
  t = await startTestAgent(pg, { modules: [offsiteModule, healthModule] });
  offsiteServiceFor(t.agent, FAST);
  healthFor(t.agent, { offsiteProbeIntervalMs: 0 });
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
const provider = (folder: string) =>
  new SftpProvider({ ...sftp(folder), password: sshd.passwordUser.password });

/** A manual backup made as at `when` (so of a name known beforehand); the finished job. */
async function backupAt(when: Date): Promise<Job> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual', now: when })).id);
  expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
  return job;
}

/** Puts another installation's backup under `name` in `folder`, as that controller would; its bytes. */
async function theirs(folder: string, name: string): Promise<Buffer> {
  await mkdir(join(sshd.root, folder), { recursive: true });
  await chmod(join(sshd.root, folder), 0o777);
  const bytes = await foreignBackup(createdAtFromName(name)!);
  await writeFile(join(sshd.root, folder, name), bytes);
  return bytes;
}

/** The sentence a person reads for `name` taken by the other installation's backup. */
const taken = (name: string) =>
  `a different backup named ${name} is already there (of installation ${OTHER_INSTALLATION.slice(0, 8)}…; two controllers back up into this folder and made backups in the same second): it is left as it is and this backup is not uploaded there. Give each controller its own folder`;

describe('a backup of the same name from another controller in the folder', () => {
  it('auto-upload refuses to put ours over it, Sync reports the name, and theirs stays byte-identical', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 10 }, offsite: { sftp: sftp('same', true) } });
    const when = new Date(Date.now() - 3600_000);
    const name = backupNameFor(when);
    const foreign = await theirs('same', name);

    const job = await backupAt(when);
    expect(filenameOf(job)).toBe(name);
    const upload = (job.result as { followUps: Record<string, { ok: boolean; error?: string }> }).followUps[
      'offsiteUpload'
    ];
    expect(upload?.ok).toBe(false);
    expect(upload?.error).toBe(`SFTP server: ${taken(name)}`);
    expect(await readFile(join(sshd.root, 'same', name))).toEqual(foreign);
    const status = await offsiteServiceFor(t.agent).status();
    expect(status.sftp.lastUpload).toMatchObject({
      backup: name,
      ok: false,
      error: { code: 'integrity', message: taken(name) },
    });

    // Sync does not take the name for our copy being there: it reports it, fetches and deletes nothing.
    const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(sync.state).toBe('failed');
    expect(sync.error?.message).toBe(`1 transfer failed; nothing was pruned. ${name}: ${taken(name)}`);
    expect(await readFile(join(sshd.root, 'same', name))).toEqual(foreign);
    expect(await readFile(t.agent.catalog.pathOf(name))).not.toEqual(foreign);
    await t.agent.settings.update({ offsite: { sftp: sftp('same', false) } });
    await t.agent.catalog.delete(name);
  });

  it('health does not count the name taken by their backup as our newest being there', async () => {
    // An older backup uploaded (the last upload ok), then ours while auto-upload was off, under the name
    // of their backup; auto-upload on again. The list shows the name, but not our backup.
    await t.agent.settings.update({ offsite: { sftp: sftp('health-same', true) } });
    const older = filenameOf(await backupAt(new Date(Date.now() - 2 * 3600_000)));
    await t.agent.settings.update({ offsite: { sftp: sftp('health-same', false) } });
    const when = new Date(Date.now() - 3600_000 + 5000);
    const name = backupNameFor(when);
    await theirs('health-same', name);
    expect(filenameOf(await backupAt(when))).toBe(name);
    await t.agent.settings.update({ offsite: { sftp: sftp('health-same', true) } });

    const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(sync.error?.message).toContain(`${name}: ${taken(name)}`);
    const health = await call(t, 'GET', '/health');
    expect(health.status).toBe(200);
    const sftpHealth = health.body.areas.offsite.destinations.sftp;
    expect(sftpHealth.lastSuccessfulUpload).toMatchObject({ backup: older });
    expect(sftpHealth.status).toBe('warning');
    expect(sftpHealth.reason).toMatch(
      new RegExp(`^The newest backup, ${name.replace(/\./g, '\\.')}, is not on`),
    );
    await t.agent.settings.update({ offsite: { sftp: sftp('health-same', false) } });
    for (const n of [older, name]) await t.agent.catalog.delete(n);
  });

  it('re-uploading our own backup over its earlier copy, or over an object that is no backup, still works', async () => {
    await t.agent.settings.update({ offsite: { sftp: sftp('own', true) } });
    const name = filenameOf(await backupNow(t));
    const ours = await readFile(t.agent.catalog.pathOf(name));
    expect(await readFile(join(sshd.root, 'own', name))).toEqual(ours);
    const stored = await uploadBackup(t.agent, provider('own'), name);
    expect(stored.size).toBe(ours.length);
    expect(await readFile(join(sshd.root, 'own', name))).toEqual(ours);

    await writeFile(join(sshd.root, 'own', name), 'not a backup');
    await uploadBackup(t.agent, provider('own'), name);
    expect(await readFile(join(sshd.root, 'own', name))).toEqual(ours);
    await t.agent.settings.update({ offsite: { sftp: sftp('own', false) } });
  });

  it('an older backup of ours under the name (the clock was set back): kept, and the words say so', async () => {
    await t.agent.settings.update({ offsite: { sftp: sftp('clock', true) } });
    const when = new Date(Date.now() - 5 * 3600_000);
    const name = filenameOf(await backupAt(when));
    const first = await readFile(join(sshd.root, 'clock', name));
    // Gone here (pruned or deleted); the clock goes back to the same second and a new backup takes the name.
    await t.agent.catalog.delete(name);
    const job = await backupAt(when);
    expect(filenameOf(job)).toBe(name);
    const upload = (job.result as { followUps: Record<string, { ok: boolean; error?: string }> }).followUps
      .offsiteUpload;
    const ours = `a different backup named ${name} is already there, made earlier by this installation (the controller's clock was set back since then): it is left as it is and this backup is not uploaded there. Check the controller's clock (time zone, NTP); backups made once the clock is past that time upload as usual`;
    expect(upload).toMatchObject({ ok: false, error: `SFTP server: ${ours}` });
    const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(sync.error?.message).toBe(`1 transfer failed; nothing was pruned. ${name}: ${ours}`);
    expect(await readFile(join(sshd.root, 'clock', name))).toEqual(first);
    await t.agent.settings.update({ offsite: { sftp: sftp('clock', false) } });
    await t.agent.catalog.delete(name);
  });

  it('the remote list does not take a different backup under our name for ours: not here, of its own installation', async () => {
    await t.agent.settings.update({ offsite: { sftp: sftp('list-same') } });
    // Theirs under the name of ours (the same second); and our older backup under the name of a newer one
    // of ours (the clock set back since): neither is the backup here.
    const when = new Date(Date.now() - 7 * 3600_000);
    const name = backupNameFor(when);
    await theirs('list-same', name);
    expect(filenameOf(await backupAt(when))).toBe(name);
    const earlier = new Date(Date.now() - 9 * 3600_000);
    const older = filenameOf(await backupAt(earlier));
    await uploadBackup(t.agent, provider('list-same'), older);
    await t.agent.catalog.delete(older);
    expect(filenameOf(await backupAt(earlier))).toBe(older);
    const same = filenameOf(await backupNow(t));
    await uploadBackup(t.agent, provider('list-same'), same);

    const list = await call(t, 'GET', '/offsite/sftp/backups');
    expect(list.status).toBe(200);
    const rows = Object.fromEntries(
      (list.body.backups as { filename: string }[]).map(({ filename, ...row }) => [filename, row]),
    );
    expect(rows[name]).toMatchObject({
      local: false,
      installation: OTHER_INSTALLATION.slice(0, 8),
      ofThisInstallation: false,
    });
    expect(rows[older]).toMatchObject({ local: false, ofThisInstallation: true });
    expect(rows[same]).toMatchObject({ local: true, ofThisInstallation: true });
    await t.agent.settings.update({ offsite: { sftp: sftp('list-same', false) } });
    for (const n of [name, older, same]) await t.agent.catalog.delete(n);
  });

  it('an exclusive put refuses a taken name in its rename: the object stays, no temp is left', async () => {
    const name = filenameOf(await backupAt(new Date(Date.UTC(2026, 2, 3, 2))));
    const before = await theirs('exclusive', name);
    const { size } = await t.agent.catalog.info(name);
    const sha256 = (await t.agent.catalog.knownSha256(name))!;
    const error = await provider('exclusive')
      .put(name, fileSource(t.agent.catalog.pathOf(name), size, sha256), { exclusive: true })
      .catch((e: unknown) => e);
    expect(isStorageError(error, 'exists'), String(error)).toBe(true);
    expect(await readFile(join(sshd.root, 'exclusive', name))).toEqual(before);
    expect(await readdir(join(sshd.root, 'exclusive'))).toEqual([name]);
    await t.agent.catalog.delete(name);
  });
});
