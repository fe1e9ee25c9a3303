// Another installation's backup uploaded here by hand (say, to restore it) is foreign offsite as it is to
// local retention: Sync Now neither counts it toward maxBackups, spreads it nor deletes it, and an
// auto-upload's prune of the destination neither counts nor deletes its copy there. Real sshd.
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupNameFor } from '../../agent/backup/catalog';
import { createdAtFromName } from '../../agent/offsite/transfer';
import type { TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { type SshdService, startSshd } from '../services/sshd';
import { startAll } from '../services/start-all';
import { backupNow, filenameOf, foreignBackup, runJob, startOffsiteAgent } from './helpers';

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

const FOLDER = 'foreign-here';
const sftp = (autoUpload: boolean) => ({
  enabled: true,
  host: sshd.host,
  port: sshd.port,
  username: sshd.passwordUser.username,
  remotePath: FOLDER,
  auth: { password: sshd.passwordUser.password },
  autoUpload,
});
const remoteNames = async () => (await readdir(join(sshd.root, FOLDER)).catch(() => [])).sort();
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

/** A backup name newer than `than`: names go by the second. */
async function nameAfter(than: string): Promise<string> {
  while (backupNameFor(new Date()) <= than) await new Promise((resolve) => setTimeout(resolve, 100));
  return backupNameFor(new Date());
}

describe("another installation's backup uploaded here by hand", () => {
  it('is neither counted, spread nor deleted by Sync Now, nor counted or deleted at the destination by an auto-upload', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 10 } });
    const b1 = filenameOf(await backupNow(t));
    const b2 = filenameOf(await backupNow(t));
    // The newest here but for the next one of ours: counted, it would push b1 out under maxBackups 2.
    const theirs = await nameAfter(b2);
    const bytes = await foreignBackup(createdAtFromName(theirs)!);
    const upload = await t.request(`/api/v1/backups/upload?filename=${theirs}`, {
      method: 'POST',
      body: new Uint8Array(bytes),
      headers: { 'content-length': String(bytes.length) },
    });
    expect(upload.status, await upload.clone().text()).toBe(201);
    expect((await upload.json()).verified).toBe(false);
    await t.agent.settings.update({ autoBackup: { maxBackups: 2 }, offsite: { sftp: sftp(false) } });

    // Both of ours go up and stay here; theirs stays here only.
    const sync = await runJob(t, 'POST', '/offsite/sftp/sync');
    expect(sync.state, JSON.stringify(sync.error)).toBe('succeeded');
    expect(sync.result).toEqual({ uploaded: [b1, b2], downloaded: [], deleted: { remote: [], local: [] } });
    expect(await localNames()).toEqual([b1, b2, theirs]);
    expect(await remoteNames()).toEqual([b1, b2]);

    // A copy of theirs at the destination too (a person put it there). The next backup's auto-upload
    // prunes our oldest copy there, b1 (as the local prune did here), and keeps b2 and theirs.
    await writeFile(join(sshd.root, FOLDER, theirs), bytes);
    await t.agent.settings.update({ offsite: { sftp: sftp(true) } });
    await nameAfter(theirs);
    const b3 = filenameOf(await backupNow(t));
    expect(await localNames()).toEqual([b2, theirs, b3]);
    expect(await remoteNames()).toEqual([b2, theirs, b3]);
  });
});
