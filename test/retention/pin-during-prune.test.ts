// A pin and a prune at the same moment: the pin either comes first and the backup stays (the prune does not
// name it deleted), or it finds the backup deleted and is 404, leaving no pin behind. Real agent, real backups.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupCatalog } from '../../agent/backup/catalog';
import { startBackup } from '../../agent/backup/operations';
import { planLocalPrune, planNextBackupPrune, pruneLocal } from '../../agent/backup/retention';
import type { Job } from '../../agent/jobs/runner';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

const day = (n: number) => new Date(Date.UTC(2026, 0, n, 2, 0, 0));

async function backup(now?: Date): Promise<Job> {
  const job = await startBackup(t.agent, { kind: 'manual', ...(now ? { now } : {}) });
  return t.agent.jobs.waitFor(job.id);
}

/** At least `n` regular unpinned backups, then the number kept lowered to 1 (the owner's settings save). */
async function backupsBeyondTheLimit(n: number): Promise<void> {
  await t.agent.settings.update({ autoBackup: { maxBackups: 100 } });
  const regular = async () => (await t.agent.catalog.list()).filter((b) => !b.pinned).length;
  for (let i = 1; (await regular()) < n; i++) expect((await backup(day(i))).state).toBe('succeeded');
  await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
}

const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename);

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('a pin while retention prunes', () => {
  it('keeps a backup pinned after the prune planned to delete it: the pin stays, and the job does not name it deleted', async () => {
    await backupsBeyondTheLimit(5);
    // What the next backup's prune deletes, oldest first.
    const doomed = (await planNextBackupPrune(t.agent, 1)).map((b) => b.filename);
    expect(doomed.length).toBeGreaterThanOrEqual(5);
    const [, onThePage, byTheCli] = doomed as [string, string, string];
    // The CLI is another process with its own catalog on the same data dir.
    const cliCatalog = new BackupCatalog(t.agent.paths.backups, t.agent.paths.backupRecords);
    const catalog = t.agent.catalog;
    const remove = catalog.delete.bind(catalog);
    // The plan is made; as the prune deletes its first backup, the owner pins two it planned to delete.
    catalog.delete = async (name, options) => {
      catalog.delete = remove;
      const res = await t.request(`/api/v1/backups/${onThePage}/pin`, { method: 'POST' });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { pinned?: boolean }).pinned).toBe(true);
      await cliCatalog.setPinned(byTheCli, true);
      return remove(name, options);
    };
    let job: Job;
    try {
      job = await backup();
    } finally {
      catalog.delete = remove;
    }
    expect(job.state, job.error?.message).toBe('succeeded');
    const retention = (
      job.result as { followUps: Record<string, { ok: boolean; details?: { deleted?: string[] } }> }
    ).followUps.retention;
    const gone = doomed.filter((name) => name !== onThePage && name !== byTheCli);
    expect(retention?.ok).toBe(true);
    // What the page tells ("Removed N older backups: ...") names only what went.
    expect(retention?.details?.deleted).toEqual(gone);
    const left = await localNames();
    for (const name of gone) expect(left).not.toContain(name);
    expect(left).toEqual(expect.arrayContaining([onThePage, byTheCli]));
    expect((await catalog.info(onThePage)).pinned).toBe(true);
    expect((await catalog.info(byTheCli)).pinned).toBe(true);
    // Unpinned, the next prune takes them as any other old backup.
    for (const name of [onThePage, byTheCli]) await catalog.setPinned(name, false);
    expect((await pruneLocal(t.agent)).sort()).toEqual([onThePage, byTheCli].sort());
  });

  it('answers 404 to a pin that comes after the prune deleted the backup, and leaves no pin of it', async () => {
    await backupsBeyondTheLimit(2);
    const [target] = (await planLocalPrune(t.agent)).delete.map((b) => b.filename);
    expect(target).toBeDefined();
    const catalog = t.agent.catalog;
    const info = catalog.info.bind(catalog);
    // The pin request finds the file; before it writes the pin, the prune deletes the backup.
    catalog.info = async (name) => {
      const found = await info(name);
      if (name === target) {
        catalog.info = info;
        expect(await pruneLocal(t.agent)).toContain(target);
      }
      return found;
    };
    let res: Response;
    try {
      res = await t.request(`/api/v1/backups/${target}/pin`, { method: 'POST' });
    } finally {
      catalog.info = info;
    }
    expect(res.status).toBe(404);
    const { error } = (await res.json()) as { error: { code: string; message: string } };
    expect(error).toEqual({ code: 'not_found', message: `no backup named ${target}` });
    // No pin of a backup that is gone: offsite retention would keep its copies by it.
    expect(await catalog.hasRecord(target!)).toBe(false);
    expect(await catalog.pinnedNames()).not.toContain(target);
    expect(await localNames()).not.toContain(target);
  });
});
