/**
 * Full disks under a restore. GEM's database on its own small tmpfs (as a cluster kept elsewhere, or a
 * DATABASE_URL server on another disk), the data dir on the big one:
 * - after data loss the live database is small, but the backup's is not: the pre-flight check estimates
 *   from the backup's manifest and looks at the database's file system, refusing up front;
 * - the database's disk filling up while the staging copy is restored: `no_space` saying so;
 * - the work folder filling up while the backup is extracted: `no_space`, not "the backup is damaged";
 * - the work folder filling up while the agent's settings are copied: `no_space` naming it, not the
 *   database's disk.
 * Each time nothing was changed.
 */
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, startCluster } from '../../agent/db/cluster';
import { runProcess } from '../../agent/system/spawn';
import { backupNow, liveState, runRestore } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { testPostgresOn, withSql } from '../services/postgres';
import { fillTo, freeOn, TmpfsMounts } from '../services/tmpfs';
import { faultReport } from './report';

const report = faultReport('disk-full-restore', 'full disks');
const MiB = 1048576;

let root: string;
let disk: string;
let clusterDir: string;
let binDir: string;
let cluster: ClusterHandle;
let t: TestAgent;
let backupName: string;
const mounts = new TmpfsMounts();

/** Frees the database's tmpfs again, and starts its server if the full disk stopped it (or waits for its recovery). */
async function freeDisk(): Promise<void> {
  await rm(join(disk, 'filler'), { force: true });
  if (!(await cluster.running())) {
    // The stopped server's handle ends its use first: a live one would keep the new one running at the end.
    await cluster.release();
    cluster = await startCluster({ dir: clusterDir, binDir });
  }
  for (let tries = 0; ; tries++) {
    try {
      await withSql(cluster.url('postgres'), (sql) => sql`select 1`);
      return;
    } catch (error) {
      if (tries > 100) throw error;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

beforeAll(async () => {
  binDir = findPgBinDir(process.env.GEM_PG_BIN);
  root = await mkdtemp(join(tmpdir(), 'gem-faults-restore-full-'));
  await chmod(root, 0o755);
  disk = join(root, 'disk');
  await mkdir(disk);
  await mounts.mount(disk, '256m');
  clusterDir = join(disk, 'cluster');
  cluster = await startCluster({ dir: clusterDir, binDir });
  t = await startTestAgent(testPostgresOn(cluster, binDir, 'gem_full'));
  // ~30 MB in the backup's database; the data loss below drops it again.
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table bulk as select g as id, md5(g::text) || md5((g * 7)::text) as v from generate_series(1, 250000) g`,
    ),
  );
  backupName = await backupNow(t.agent, 'before the data loss');
  await withSql(t.agent.databaseUrl, async (sql) => {
    await sql`drop table bulk`;
    await sql`checkpoint`;
  });
});

afterAll(async () => {
  report.print();
  await t?.close().catch(() => {});
  await cluster?.stop().catch(() => {});
  await mounts.unmountAll();
  if (root) await rm(root, { recursive: true, force: true });
});

describe('a restore onto a database disk too small for the backup', () => {
  it("is refused up front from the backup manifest's size, naming the database's file system", async () => {
    const before = await liveState(t.agent);
    const backups = (await t.agent.catalog.list()).length;
    // Twice the live (shrunk) database fits; the backup's database does not (the staging restore
    // would fill the disk under the live database).
    await fillTo(disk, 21 * MiB);
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName));
      report.inject();
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${clusterDir}`,
        ),
      );
      // Refused before the safety backup and the staging: nothing was made, nothing changed.
      expect((await t.agent.catalog.list()).length).toBe(backups);
      expect(await liveState(t.agent)).toEqual(before);
      report.tried(true);
    } finally {
      await freeDisk();
    }
  });
});

describe('the database disk filling up during the staging restore', () => {
  it("fails with no_space saying the database's disk filled up, and nothing was changed", async () => {
    const before = await liveState(t.agent);
    await fillTo(disk, 20 * MiB);
    try {
      // The pre-flight check is told to pass: the staging restore itself runs into the full disk.
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName), {
        skipSafetyBackup: true,
        faults: { requiredBytes: 0 },
      });
      report.inject();
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(/^the database's disk (filled up during the restore|is full)/);
      expect(job.error?.message).toMatch(/nothing was changed: GEM's database is as before; free some space/);
    } finally {
      await freeDisk();
    }
    expect(await liveState(t.agent)).toEqual(before);
    report.tried(true);
  });

  it('when PostgreSQL stopped on its full disk, says the disk is full, not only "connection lost"', async () => {
    const before = await liveState(t.agent);
    let stopped: Promise<void> | undefined;
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName), {
        skipSafetyBackup: true,
        faults: {
          requiredBytes: 0,
          // pg_restore held still while its disk fills and its server stops (as a PANIC on a full
          // disk stops it), then let go: it finds the connection gone.
          onStagingRestore: (pid) => {
            process.kill(pid, 'SIGSTOP');
            stopped = fillTo(disk, MiB)
              .then(() => cluster.stop())
              .finally(() => process.kill(pid, 'SIGCONT'));
          },
        },
      });
      await stopped;
      report.inject();
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(
        new RegExp(
          `^the database's disk is full \\(.* free of .* on the file system of ${clusterDir}\\): PostgreSQL stopped`,
        ),
      );
      expect(job.error?.message).toMatch(/nothing was changed: GEM's database is as before; free some space/);
    } finally {
      await stopped?.catch(() => {});
      await freeDisk();
    }
    expect(await liveState(t.agent)).toEqual(before);
    report.tried(true);
  });
});

describe('the work folder filling up while the backup is extracted', () => {
  it('fails with no_space, not corrupt_backup, and the backup still reads whole', async () => {
    const before = await liveState(t.agent);
    await mkdir(t.agent.paths.work, { recursive: true });
    // Far smaller than the backup's dump.
    await mounts.mount(t.agent.paths.work, '256k');
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName), {
        skipSafetyBackup: true,
        faults: { requiredBytes: 0 },
      });
      report.inject();
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(/^the disk filled up while staging the restore/);
      expect(job.error?.message).toContain(`under ${t.agent.paths.work}; nothing was changed`);
      expect(job.error?.message).not.toMatch(/damaged/);
    } finally {
      await mounts.unmount(t.agent.paths.work);
    }
    expect(await liveState(t.agent)).toEqual(before);
    const res = await t.request(`/api/v1/backups/${backupName}/verify`, { method: 'POST' });
    expect(res.status).toBe(202);
    const verify = await t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    expect(verify.error).toBeUndefined();
    report.tried(true);
  });
});

describe("the work folder filling up while the agent's settings are copied into the staging database", () => {
  it("fails with no_space naming the work folder, not the database's disk, and nothing was changed", async () => {
    const before = await liveState(t.agent);
    const work = t.agent.paths.work;
    await mkdir(work, { recursive: true });
    await mounts.mount(work, '64m');
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName), {
        skipSafetyBackup: true,
        faults: {
          // The dump is staged and restored; then something else fills the work folder's disk.
          beforeSwapStep: async (step) => {
            if (step !== 'copy-settings') return;
            const left = await freeOn(work);
            const filled = await runProcess('fallocate', ['-l', String(left), join(work, 'filler')]);
            if (filled.code !== 0) throw new Error(`fallocate: ${filled.stderr.trim()}`);
          },
        },
      });
      report.inject();
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message, job.error?.message).not.toMatch(/database's disk/);
      expect(job.error?.message).toContain(work);
      expect(job.error?.message).toMatch(/nothing was changed/);
    } finally {
      await mounts.unmount(work);
    }
    expect(await liveState(t.agent)).toEqual(before);
    report.tried(true);
  });
});
