// Retention on real backups: a failing backup prunes nothing; a good one prunes exactly the oldest.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupDeps, createBackup } from '../../agent/backup/create';
import { startBackup } from '../../agent/backup/operations';
import { planLocalPrune, planNextBackupPrune, pruneLocal } from '../../agent/backup/retention';
import { retentionModule, settingsModule } from '../../agent/http/routes/settings';
import { type Job, standaloneContext } from '../../agent/jobs/runner';
import { Keyring } from '../../agent/keys/keyring';
import { silentLogger } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

async function backup(kind: 'manual' | 'scheduled' | 'safety', now?: Date): Promise<Job> {
  const job = await startBackup(t.agent, { kind, ...(now ? { now } : {}) });
  return t.agent.jobs.waitFor(job.id);
}
const localNames = async () => (await t.agent.catalog.list()).map((b) => b.filename).sort();

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [settingsModule, retentionModule] });
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('retention of local backups', () => {
  it('with 10 backups and max 3: a failing backup deletes nothing, a good one prunes exactly the oldest', async () => {
    const day = (n: number) => new Date(Date.UTC(2026, 0, n, 2, 0, 0));
    const regular: string[] = [];
    for (let i = 1; i <= 10; i++) {
      const job = await backup(i % 2 ? 'manual' : 'scheduled', day(i));
      expect(job.state, job.error?.message).toBe('succeeded');
      regular.push((job.result as { backup: { filename: string } }).backup.filename);
    }
    // Four safety backups: only the newest three are kept, and they do not count toward maxBackups.
    const safety: string[] = [];
    for (let i = 1; i <= 4; i++) {
      const job = await backup('safety', day(20 + i));
      safety.push((job.result as { backup: { filename: string } }).backup.filename);
    }
    expect(await localNames()).toEqual([...regular, ...safety.slice(1)].sort());

    // A pinned old backup and files that are not ours.
    await t.agent.catalog.updateRecord(regular[1]!, { pinned: true });
    await writeFile(join(t.agent.paths.backups, 'notes.txt'), 'not a backup\n');
    await writeFile(join(t.agent.paths.backups, 'gem-backup-old-copy.tar.gz'), 'not ours either\n');

    const put = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ autoBackup: { enabled: true, schedule: 'daily', maxBackups: 3 } }),
    });
    expect(put.status).toBe(200);

    // The preview names what the next prune would delete, and deletes nothing.
    const preview = (await (await t.request('/api/v1/retention/preview')).json()) as {
      delete: Array<{ filename: string }>;
    };
    const unpinnedOld = regular.slice(0, 7).filter((n) => n !== regular[1]);
    expect(preview.delete.map((b) => b.filename)).toEqual(unpinnedOld);
    expect((await localNames()).length).toBe(13);

    // A failing backup (the database is unreachable): every old backup is still there.
    const conn = t.agent.sources.conn;
    t.agent.sources.conn = { ...conn, port: 1 };
    const failed = await backup('scheduled');
    t.agent.sources.conn = conn;
    expect(failed.state).toBe('failed');
    expect(await localNames()).toEqual([...regular, ...safety.slice(1)].sort());

    // A good one: the oldest unpinned regular backups go, newest 3 (the new one included), pinned and safety stay.
    const good = await backup('scheduled');
    expect(good.state).toBe('succeeded');
    const result = good.result as {
      backup: { filename: string };
      followUps: Record<string, { ok: boolean; details?: { deleted: string[] } }>;
    };
    const expected = [result.backup.filename, ...regular.slice(8), regular[1]!, ...safety.slice(1)].sort();
    // The job's result names what the prune deleted (the page tells it).
    const gone = [...regular, ...safety.slice(1)].filter((name) => !expected.includes(name));
    expect(result.followUps.retention?.ok).toBe(true);
    expect([...(result.followUps.retention?.details?.deleted ?? [])].sort()).toEqual(gone.sort());
    expect(await localNames()).toEqual(expected);
    const files = await readdir(t.agent.paths.backups);
    expect(files).toContain('notes.txt');
    expect(files).toContain('gem-backup-old-copy.tar.gz');
    for (const gone of unpinnedOld) expect(files).not.toContain(gone);
    expect(unpinnedOld.length + regular.slice(7, 8).length).toBe(7);
  });

  it('leaves a backup that a running job (a verify) has as its target; the next prune takes it', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
    const regular = (await t.agent.catalog.list()).filter((b) => b.kind !== 'safety' && !b.pinned);
    expect(regular.length).toBeGreaterThan(1);
    const oldest = regular.at(-1)!.filename;
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const verify = await t.agent.jobs.start('verify', () => held, { mutating: false, target: oldest });
    try {
      const deleted = await pruneLocal(t.agent);
      expect(deleted).not.toContain(oldest);
      expect(deleted.length).toBe(regular.length - 2);
      expect(await localNames()).toContain(oldest);
    } finally {
      release();
      await t.agent.jobs.waitFor(verify.id);
    }
    expect(await pruneLocal(t.agent)).toEqual([oldest]);
    expect(await localNames()).not.toContain(oldest);
  });

  it('stops deleting once the number kept is raised during the prune (a settings save meanwhile)', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 5 } });
    while ((await t.agent.catalog.list()).filter((b) => b.kind !== 'safety' && !b.pinned).length < 5)
      expect((await backup('manual')).state).toBe('succeeded');
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
    const before = await localNames();
    const catalog = t.agent.catalog;
    const remove = catalog.delete.bind(catalog);
    // The first deletion is followed by a save raising the number back to 5, as a person might do.
    catalog.delete = async (name, options) => {
      catalog.delete = remove;
      const deleted = await remove(name, options);
      await t.agent.settings.update({ autoBackup: { maxBackups: 5 } });
      return deleted;
    };
    try {
      const deleted = await pruneLocal(t.agent);
      expect(deleted).toHaveLength(1);
      expect(await localNames()).toEqual(before.filter((name) => name !== deleted[0]));
    } finally {
      catalog.delete = remove;
    }
  });

  it('counts a backup another process deleted meanwhile as pruned, and drops its record as for its own deletion', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 3 } });
    while ((await t.agent.catalog.list()).filter((b) => b.kind !== 'safety' && !b.pinned).length < 3)
      expect((await backup('manual')).state).toBe('succeeded');
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
    // What the prune deletes, oldest first: the second of them goes by another hand meanwhile.
    const doomed = (await planLocalPrune(t.agent)).delete.map((b) => b.filename);
    expect(doomed.length).toBeGreaterThanOrEqual(2);
    const gone = doomed[1]!;
    const records = async () =>
      Object.keys(JSON.parse(await readFile(t.agent.paths.backupRecords, 'utf8')) as object);
    expect(await records()).toContain(gone);
    const before = await localNames();
    const catalog = t.agent.catalog;
    const remove = catalog.delete.bind(catalog);
    // While the prune deletes its first backup, another process (a person's rm) deletes the second one.
    catalog.delete = async (name, options) => {
      catalog.delete = remove;
      const rm = await runProcess('rm', [catalog.pathOf(gone)]);
      expect(rm.code, rm.stderr).toBe(0);
      return remove(name, options);
    };
    try {
      // Not a failure: the backup is gone, as the prune wanted; it is named with those deleted.
      expect(await pruneLocal(t.agent)).toEqual(doomed);
    } finally {
      catalog.delete = remove;
    }
    expect(await localNames()).toEqual(before.filter((name) => !doomed.includes(name)));
    // Its record went as a deleted backup's does: none is left for a later file of that name to inherit.
    const left = await records();
    for (const name of doomed) expect(left).not.toContain(name);
  });

  it("never counts or deletes another installation's backup (uploaded by hand), even a newer one", async () => {
    const elsewhere = await mkdtemp(join(tmpdir(), 'gem-other-installation-'));
    try {
      const other = await Keyring.loadOrCreate(join(elsewhere, 'keyring.json'));
      // Another controller's backup in our folder, newer than anything of ours.
      const foreign = await createBackup(
        backupDeps(t.agent, { keyring: other }),
        standaloneContext(silentLogger),
        { now: new Date(Date.now() + 3600_000) },
      );
      await t.agent.settings.update({ autoBackup: { maxBackups: 2 } });
      for (let i = 0; i < 3; i++) expect((await backup('manual')).state).toBe('succeeded');
      const ours = (await t.agent.catalog.list())
        .filter(
          (b) => b.installationTag === t.agent.keyring.installationTag && b.kind !== 'safety' && !b.pinned,
        )
        .map((b) => b.filename);
      expect(ours.length).toBe(2);
      expect(await localNames()).toContain(foreign.filename);
      expect(await pruneLocal(t.agent)).toEqual([]);
      await t.agent.catalog.delete(foreign.filename);
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
  });

  it('tries every old backup when one cannot be deleted (immutable): the others go, the job names both', async () => {
    await t.agent.settings.update({ autoBackup: { maxBackups: 4 } });
    while ((await t.agent.catalog.list()).filter((b) => b.kind !== 'safety' && !b.pinned).length < 4)
      expect((await backup('manual')).state).toBe('succeeded');
    await t.agent.settings.update({ autoBackup: { maxBackups: 1 } });
    // What the next backup's prune deletes, oldest first; the second of them cannot be deleted.
    const doomed = (await planNextBackupPrune(t.agent, 1)).map((b) => b.filename);
    expect(doomed.length).toBeGreaterThanOrEqual(3);
    const stuck = doomed[1]!;
    const immutable = await runProcess('chattr', ['+i', t.agent.catalog.pathOf(stuck)]);
    expect(immutable.code, immutable.stderr).toBe(0);
    try {
      const job = await backup('manual');
      expect(job.state, job.error?.message).toBe('succeeded');
      const retention = (
        job.result as {
          followUps: Record<string, { ok: boolean; error?: string; details?: Record<string, unknown> }>;
        }
      ).followUps.retention;
      const others = doomed.filter((name) => name !== stuck);
      expect(retention?.ok).toBe(false);
      // The error names the backup that stayed and why, then what went.
      const said = /^could not delete (\S+) \(.+\); deleted (.+)$/.exec(retention?.error ?? '');
      expect(said?.slice(1), retention?.error).toEqual([stuck, others.join(', ')]);
      expect(retention?.details?.deleted).toEqual(others);
      expect(retention?.details?.failed).toEqual([{ filename: stuck, error: expect.any(String) }]);
      const left = await localNames();
      expect(left).toContain(stuck);
      for (const name of others) expect(left).not.toContain(name);
    } finally {
      await runProcess('chattr', ['-i', t.agent.catalog.pathOf(stuck)]);
    }
    await t.agent.catalog.delete(stuck);
  });
});
