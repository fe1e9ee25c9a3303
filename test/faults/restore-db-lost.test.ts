/**
 * PostgreSQL stopped while a restore's pg_restore fills the staging database: the job fails with
 * dependency_down and says that nothing was changed (not "the database could not be restored"), and
 * once the server runs again GEM's database and folders are as before.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, startCluster } from '../../agent/db/cluster';
import { backupNow, liveState, runRestore } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { testPostgresOn, withSql } from '../services/postgres';
import { faultReport } from './report';

const report = faultReport('restore-db-lost', 'database stops');

let root: string;
let clusterDir: string;
let binDir: string;
let cluster: ClusterHandle;
let t: TestAgent;
let backupName: string;

beforeAll(async () => {
  binDir = findPgBinDir(process.env.GEM_PG_BIN);
  root = await mkdtemp(join(tmpdir(), 'gem-faults-dblost-'));
  await chmod(root, 0o755);
  clusterDir = join(root, 'cluster');
  cluster = await startCluster({ dir: clusterDir, binDir });
  // The test's own cluster (not test/services' startPostgres): it is stopped and started again here.
  t = await startTestAgent(testPostgresOn(cluster, binDir, 'gem_dblost'));
  // Big enough that pg_restore is still writing when the server stops under it.
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table history as select g as id, md5(g::text) || md5((g * 7)::text) as v from generate_series(1, 600000) g`,
    ),
  );
  backupName = await backupNow(t.agent, 'before the stop');
  await withSql(
    t.agent.databaseUrl,
    (sql) => sql`update users set display_name = 'changed after the backup'`,
  );
});

afterAll(async () => {
  report.print();
  await t?.close().catch(() => {});
  await cluster?.stop().catch(() => {});
  if (root) await rm(root, { recursive: true, force: true });
});

describe('the database server stops during a restore', () => {
  it('fails with dependency_down, says nothing was changed, and nothing was', async () => {
    const before = await liveState(t.agent);
    let stopped: Promise<void> | undefined;
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName), {
      skipSafetyBackup: true,
      faults: {
        onStagingRestore: () => {
          stopped = new Promise((resolve) => setTimeout(resolve, 400)).then(() => cluster.stop());
        },
      },
    });
    await stopped;
    report.inject();
    expect(job.state).toBe('failed');
    expect(job.error?.code, job.error?.message).toBe('dependency_down');
    expect(job.error?.message).toMatch(
      /^the connection to the database server was lost during the restore \(/,
    );
    expect(job.error?.message).toMatch(/nothing was changed: GEM's database is as before/);
    expect(job.error?.message).not.toMatch(/could not be restored/);
    cluster = await startCluster({ dir: clusterDir, binDir });
    expect(await liveState(t.agent)).toEqual(before);
    report.tried(true);
  });
});
