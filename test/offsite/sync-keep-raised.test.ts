// The number of backups kept raised through PUT /api/v1/settings while a Sync or an auto-upload runs: the job's prune, planned with the old count, deletes nothing more and says so.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { offsiteModule } from '../../agent/http/routes/offsite';
import { settingsModule } from '../../agent/http/routes/settings';
import { offsiteServiceFor, uploadBackup } from '../../agent/offsite/index';
import { fileSource } from '../../agent/offsite/transfer';
import { SftpProvider } from '../../agent/providers/sftp';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, FAST, filenameOf, runJob } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let sshd: SshdService;
/** Runs inside the SFTP upload, after the bytes are written and before the file takes its name. */
let duringSftpUpload: (() => Promise<void>) | undefined;

beforeAll(async () => {
  ({ pg, sshd } = await startAll({ pg: startPostgres, sshd: startSshd }));
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
  await Promise.all([pg?.stop(), sshd?.stop()]);
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
const sftpProvider = (folder: string) =>
  new SftpProvider({ ...sftp(folder), password: sshd.passwordUser.password });
const remoteNames = async (folder: string) =>
  (await readdir(join(sshd.root, folder)).catch(() => [] as string[])).sort();
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

/** Sets the number of backups kept with a PUT of the settings through the API, as the page does it. */
async function putMaxBackups(maxBackups: number): Promise<void> {
  const res = await call(t, 'PUT', '/settings', {
    autoBackup: { ...t.agent.settings.get().autoBackup, maxBackups },
  });
  expect(res.status, JSON.stringify(res.body)).toBe(200);
  expect(t.agent.settings.get().autoBackup.maxBackups).toBe(maxBackups);
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

describe('Sync Now, the number of backups kept changed while it runs', () => {
  it('raised from 2 to 4: the transfers go on, nothing is pruned on either side; the job says why', async () => {
    const [b1, b2, b3, b4] = await fourBackups('raised');
    expect(await remoteNames('raised')).toEqual([b1, b2]);
    duringSftpUpload = () => putMaxBackups(4);

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(duringSftpUpload).toBeUndefined(); // the PUT ran inside the upload of b3
    expect(job.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [], local: [] },
      pruneStopped: expect.stringMatching(
        /^kept: the number of backups kept was raised during the job \(from 2 to 4\)/,
      ),
    });
    // b1 and b2, which the plan made under 2 would have pruned, are kept as the new setting says.
    expect(await remoteNames('raised')).toEqual([b1, b2, b3, b4]);
    expect(await localNames()).toEqual([b1, b2, b3, b4]);
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
    const [b1, b2, b3, b4] = await fourBackups('lowered');
    duringSftpUpload = () => putMaxBackups(1);

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');
    expect(duringSftpUpload).toBeUndefined();
    expect(job.result).toEqual({
      uploaded: [b3, b4],
      downloaded: [],
      deleted: { remote: [b1, b2], local: [b1, b2] },
    });
    expect(await remoteNames('lowered')).toEqual([b3, b4]);
    expect(await localNames()).toEqual([b3, b4]);
  });
});

describe('auto-upload after a backup, the number of backups kept raised while it runs', () => {
  it('the copy lands, nothing is pruned at the destination, the result says why; the backup job is not failed', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 10 },
      offsite: { sftp: sftp('auto', { enabled: false }) },
    });
    for (const name of await localNames()) await t.agent.catalog.delete(name);
    // Copies of ours from one and two days ago at the destination, none here: retention (maxBackups 1)
    // prunes them after the next upload, unless the count is raised meanwhile.
    const made = filenameOf(await backupNow(t));
    const path = t.agent.catalog.pathOf(made);
    const sha256 = await t.agent.catalog.knownSha256(made);
    expect(sha256).toBeDefined();
    const source = fileSource(path, (await stat(path)).size, sha256 as string);
    const day = 24 * 3600 * 1000;
    const older = [backupNameFor(new Date(Date.now() - 2 * day)), backupNameFor(new Date(Date.now() - day))];
    for (const name of older) await sftpProvider('auto').put(name, source);
    await t.agent.catalog.delete(made);
    expect(await remoteNames('auto')).toEqual(older);
    await t.agent.settings.update({
      autoBackup: { maxBackups: 1 },
      offsite: { sftp: sftp('auto', { autoUpload: true }) },
    });
    duringSftpUpload = () => putMaxBackups(5);

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
          pruneStopped: expect.stringMatching(
            /^kept: the number of backups kept was raised during the job \(from 1 to 5\)/,
          ),
        }),
      },
    ]);
    expect((notices[0] as { sftp: { skipped?: unknown } }).sftp.skipped).toBeUndefined();
    expect(await remoteNames('auto')).toEqual([...older, name].sort());
    const status = await offsiteServiceFor(t.agent).status();
    expect(status.sftp.lastUpload).toMatchObject({
      backup: name,
      ok: true,
      pruneStopped: expect.stringMatching(/^kept: /),
    });
  });
});
