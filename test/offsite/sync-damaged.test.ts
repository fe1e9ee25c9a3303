// A damaged copy at a destination is its own outcome of Sync Now: the rest of the sync is done, pruning
// does not count it as a kept copy (so no good copy is deleted in its place), and the job fails with
// corrupt_backup naming it and saying to delete it; once deleted, the next sync succeeds.
import { chown, copyFile, readdir, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd, unixIds } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, call, filenameOf, runJob, startOffsiteAgent } from './helpers';

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

const FOLDER = 'damaged';
/** A copy of ours under a name newer than any backup: cut short, so its only chunk fails. */
const DAMAGED = 'gem-backup-2099-01-01-000000.tar.gz';
const remoteNames = async () => (await readdir(join(sshd.root, FOLDER)).catch(() => [])).sort();
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

describe('Sync Now with a damaged copy at the destination', () => {
  it('does the rest, prunes without counting it, fails with corrupt_backup saying to delete it', async () => {
    await t.agent.settings.update({
      autoBackup: { maxBackups: 3 },
      offsite: {
        sftp: {
          enabled: true,
          host: sshd.host,
          port: sshd.port,
          username: sshd.passwordUser.username,
          remotePath: FOLDER,
          auth: { password: sshd.passwordUser.password },
          autoUpload: false,
        },
      },
    });
    const a = filenameOf(await backupNow(t));
    const b = filenameOf(await backupNow(t));
    const c = filenameOf(await backupNow(t));
    expect((await runJob(t, 'POST', '/offsite/sftp/sync')).state).toBe('succeeded');
    expect(await remoteNames()).toEqual([a, b, c].sort());
    // A damaged copy appears there (a transfer cut short), and a new backup is made here.
    const damagedPath = join(sshd.root, FOLDER, DAMAGED);
    await copyFile(join(sshd.root, FOLDER, c), damagedPath);
    await truncate(damagedPath, 20_000);
    const { uid, gid } = await unixIds(sshd.passwordUser.username);
    await chown(damagedPath, uid, gid);
    const e = filenameOf(await backupNow(t));

    const job = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(job.state).toBe('failed');
    expect(job.error?.code).toBe('corrupt_backup');
    expect(job.error?.message).toBe(
      `The rest of the sync was done (pruning spared the good copies), but a copy at the SFTP server is damaged: ${DAMAGED} (its last chunk (chunk 0) fails its check: the file ends early (truncated) or was changed). Delete it there (Delete on the page, or DELETE /api/v1/offsite/sftp/backups/<name>), or upload a good copy under the name; it is not counted among the backups kept.`,
    );
    // The new backup went up; of the four good ones the oldest was pruned on both sides, and only it:
    // counted as kept, the damaged copy would have pushed out b too.
    expect(await remoteNames()).toEqual([b, c, e, DAMAGED].sort());
    expect(await localNames()).toEqual([b, c, e].sort());

    // Said again by the next sync (without fetching it), until it is deleted; then the sync succeeds.
    const again = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(again.error?.code).toBe('corrupt_backup');
    expect(again.error?.message).toContain(DAMAGED);
    expect((await call(t, 'DELETE', `/offsite/sftp/backups/${DAMAGED}`)).status).toBe(200);
    const clean = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(clean.state, JSON.stringify(clean.error)).toBe('succeeded');
    expect(await remoteNames()).toEqual([b, c, e].sort());
  }, 120_000);
});
