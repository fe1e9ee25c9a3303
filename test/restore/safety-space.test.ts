/**
 * The safety backup's room, before a restore: it is a backup of the LIVE state, so a database that has
 * grown since the backup being restored (an old, small one) needs more than that backup's file. The
 * backups folder sits on a small tmpfs of its own here; the database grows by ~30 MB after the only
 * backup. A restore that would not fit is refused up front, saying where and why, nothing changed:
 * the safety backup's file in the backups folder, and its dump in the work folder meanwhile. A safety
 * backup that fills the disk despite the check (filled meanwhile) stops the restore with an error that
 * says so, nothing changed, no partial file left.
 */
import { chmod, mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RestoreOptions } from '../../agent/restore/restore';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { fillTo, freeOn, TmpfsMounts } from '../services/tmpfs';
import { backupNow, leftovers, liveState, runRestore } from './helpers';

const MiB = 1048576;

let pg: TestPostgres;
let t: TestAgent;
let root: string;
let backups: string;
let oldBackup: string;
const mounts = new TmpfsMounts();

beforeAll(async () => {
  pg = await startPostgres();
  root = await mkdtemp(join(tmpdir(), 'gem-safety-space-'));
  await chmod(root, 0o755);
  const dataDir = join(root, 'data');
  backups = join(dataDir, 'backups');
  await mkdir(backups, { recursive: true });
  await mounts.mount(backups, '64m');
  t = await startTestAgent(pg, { dataDir });
  oldBackup = await backupNow(t.agent, 'old and small');
  // Since then the database has grown: ~30 MB on disk, far more than the old backup's file.
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table bulk as select g as id, md5(g::text) || md5((g * 7)::text) as v from generate_series(1, 250000) g`,
    ),
  );
}, 180_000);

afterAll(async () => {
  await t?.close().catch(() => {});
  await mounts.unmountAll();
  if (root) await rm(root, { recursive: true, force: true });
  await pg?.stop();
});

/**
 * Restores the old backup (with `options`), which must fail with no_space and a message matching
 * `message`, having changed nothing: the backups folder's files, the live state, no leftovers.
 */
async function refusedForSpace(message: RegExp, options: RestoreOptions = {}): Promise<void> {
  const before = await liveState(t.agent);
  const files = await readdir(backups);
  const job = await runRestore(t.agent, t.agent.catalog.pathOf(oldBackup), options);
  expect(job.error?.code, job.error?.message).toBe('no_space');
  expect(job.error?.message).toMatch(message);
  expect(await readdir(backups)).toEqual(files);
  expect(await liveState(t.agent)).toEqual(before);
  expect(await leftovers(t.agent)).toEqual([]);
}

describe('restoring an old, small backup over a database that has grown since', () => {
  it("is refused up front when the backups folder lacks room for the live state's safety backup", async () => {
    const filler = await fillTo(backups, 4 * MiB);
    try {
      const old = (await t.agent.catalog.list()).find((b) => b.filename === oldBackup)!;
      // The old backup's file fits many times over; a backup of the live database does not.
      expect(old.size * 4).toBeLessThan(4 * MiB);
      const free = await freeOn(backups);
      // Refused before the safety backup and before a member was staged.
      await refusedForSpace(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${backups} ` +
            '\\(the safety backup of the live state, .*\\); nothing was changed; free some space',
        ),
      );
      expect(Math.abs((await freeOn(backups)) - free)).toBeLessThan(MiB);
    } finally {
      await rm(filler, { force: true });
    }
  });

  it("is refused up front when the work folder lacks room for the safety backup's dump, beside the restored one", async () => {
    const work = t.agent.paths.work;
    await mkdir(work, { recursive: true });
    // Room for the old backup's dump, not for a dump of the live database.
    await mounts.mount(work, '4m');
    try {
      await refusedForSpace(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${work} ` +
            "\\(the backup's database dump, about .*; the safety backup's dump and folder copies, about .*\\); nothing was changed",
        ),
      );
    } finally {
      await mounts.unmount(work);
    }
  });

  it('goes through when the backups folder has room for it', async () => {
    const filler = await fillTo(backups, 40 * MiB);
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(oldBackup));
      expect(job.error, job.error?.message).toBeUndefined();
      expect(job.result).toMatchObject({ safetyBackup: expect.any(String) });
      // Back to the grown state, for the tests after this one.
      const safety = (job.result as { safetyBackup: string }).safetyBackup;
      const back = await runRestore(t.agent, t.agent.catalog.pathOf(safety), { skipSafetyBackup: true });
      expect(back.error, back.error?.message).toBeUndefined();
      await leftovers(t.agent);
      await t.agent.catalog.delete(safety);
    } finally {
      await rm(filler, { force: true });
    }
  });
});

describe('the safety backup filling the disk despite the check (filled meanwhile)', () => {
  it('stops the restore with no_space naming the safety backup, nothing changed, no partial file left', async () => {
    const filler = await fillTo(backups, 2 * MiB);
    try {
      const free = await freeOn(backups);
      // The check is told to pass: the safety backup itself runs into the full disk. No temp file, no
      // record of a safety backup, the disk as free as before.
      await refusedForSpace(
        new RegExp(
          '^the disk filled up while writing the safety backup of the live state .*' +
            `its file in ${backups}\\); nothing was changed; free some space`,
        ),
        { faults: { requiredBytes: 0 } },
      );
      expect((await readdir(t.agent.config.dataDir)).filter((f) => f.startsWith('restore-'))).toEqual([]);
      expect(Math.abs((await freeOn(backups)) - free)).toBeLessThan(MiB);
    } finally {
      await rm(filler, { force: true });
    }
  });

  it('says the same when the work folder fills under its dump, and nothing was changed', async () => {
    const work = t.agent.paths.work;
    await mkdir(work, { recursive: true });
    // Room for the old backup's dump, not for the safety backup's dump of the live database.
    await mounts.mount(work, '4m');
    try {
      await refusedForSpace(
        new RegExp(
          `^the disk filled up while writing the safety backup of the live state \\(its dump under ${work}, ` +
            `its file in ${backups}\\); nothing was changed`,
        ),
        { faults: { requiredBytes: 0 } },
      );
      expect(await readdir(work)).toEqual([]);
    } finally {
      await mounts.unmount(work);
    }
  });
});
