/**
 * vitest globalSetup: one PostgreSQL cluster made by the product's own startCluster (initdb, the
 * password, gem-cluster.conf's include), stopped, once per test run. startPostgres copies it instead
 * of running initdb for every test file: initdb and its bootstrap cost 1.6 s of CPU here, the copy
 * 0.7 s, on two cores that every file shares. Its server's fsync is off (postgresql.auto.conf, see
 * startPostgres). Removed when the run ends.
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { findPgBinDir } from '../../agent/config';
import { startCluster } from '../../agent/db/cluster';

/** The environment variable naming the template's cluster folder (its password file lies beside it). */
export const PG_TEMPLATE_ENV = 'GEM_TEST_PG_TEMPLATE';

export default async function setup(): Promise<() => Promise<void>> {
  const root = await mkdtemp(join(tmpdir(), 'gem-pg-template-'));
  await chmod(root, 0o755);
  const dir = join(root, 'cluster');
  try {
    const cluster = await startCluster({ dir, binDir: findPgBinDir(process.env.GEM_PG_BIN) });
    const sql = postgres(cluster.url('postgres'), { max: 1, onnotice: () => {} });
    try {
      await sql`alter system set fsync = off`;
    } finally {
      await sql.end({ timeout: 5 });
    }
    await cluster.stop();
    // Each copy picks its own free port at its start: a port kept here would send them all to one.
    await rm(join(dir, 'gem-cluster.conf'));
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  process.env[PG_TEMPLATE_ENV] = dir;
  return () => rm(root, { recursive: true, force: true });
}
