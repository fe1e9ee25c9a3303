/**
 * A server still recovering (replaying its WAL after a crash) is waited for, not taken as ready: one
 * found running (adopted) while it recovers, and one this start waits on for longer than pg_ctl does.
 * A real cluster whose recovery is made slow: an archive recovery whose restore_command takes
 * seconds before the WAL is replayed, when no connection is let in, as in a crash recovery.
 */
import { appendFile, chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { asClusterOwner, serverStartWait, startCluster } from '../../agent/db/cluster';
import { runProcess } from '../../agent/system/spawn';
import { withSql } from '../services/postgres';
import { until } from '../services/wait';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
const roots: string[] = [];
const clusterDirs: string[] = [];

afterAll(async () => {
  for (const dir of clusterDirs) await pgCtl(dir, 'stop', '-m', 'immediate', '-w');
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

function pgCtl(dir: string, ...args: string[]) {
  const [cmd, argv] = asClusterOwner(join(binDir, 'pg_ctl'), [...args, '-D', dir]);
  return runProcess(cmd, argv, { cwd: '/' });
}

/** A stopped cluster whose next start recovers for several seconds before it lets anyone in. */
async function slowRecoveringCluster(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'gem-cluster-recovery-'));
  roots.push(root);
  await chmod(root, 0o755);
  const dir = join(root, 'data', 'postgres');
  clusterDirs.push(dir);
  const first = await startCluster({ dir, binDir });
  await withSql(first.url('postgres'), (sql) => sql`create table kept as select 1 as id`);
  await first.stop();
  // Its first call, before the WAL is read (the server runs it in its data folder), takes 5 s.
  await appendFile(
    join(dir, 'postgresql.auto.conf'),
    "restore_command = 'test -e slowed || { touch slowed; sleep 5; }; false'\n",
  );
  await writeFile(join(dir, 'recovery.signal'), '');
  return dir;
}

describe('a server still recovering', () => {
  it('found running is waited for until it lets connections in', async () => {
    const dir = await slowRecoveringCluster();
    // Left starting by a process that then died (an agent killed during its start).
    expect((await pgCtl(dir, 'start', '-W', '-l', join(dir, 'server.log'))).code).toBe(0);
    await until(
      async () => (await readFile(join(dir, 'postmaster.pid'), 'utf8').catch(() => '')).includes('starting'),
      'the server starting',
    );
    const cluster = await startCluster({ dir, binDir });
    expect(cluster.startedHere).toBe(false);
    const rows = await withSql(cluster.url('postgres'), (sql) => sql`select count(*)::int as n from kept`);
    expect(rows[0]!.n).toBe(1);
    await cluster.stop();
  }, 120_000);

  it('started here is waited for past pg_ctl wait', async () => {
    const dir = await slowRecoveringCluster();
    serverStartWait.pgCtlSeconds = 1;
    const cluster = await startCluster({ dir, binDir });
    expect(cluster.startedHere).toBe(true);
    const rows = await withSql(cluster.url('postgres'), (sql) => sql`select count(*)::int as n from kept`);
    expect(rows[0]!.n).toBe(1);
    await cluster.stop();
  }, 120_000);
});
