/**
 * The embedded server's log is bounded: server.log and the one before it (server.log.1), each at most
 * the limit (give or take one check's growth), on a real cluster: an oversized log found at start, and
 * one the running server fills.
 */
import { appendFile, chmod, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, serverLogBound, startCluster } from '../../agent/db/cluster';
import { withSql } from '../services/postgres';
import { until } from '../services/wait';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
const roots: string[] = [];
const clusters: ClusterHandle[] = [];

afterAll(async () => {
  for (const cluster of clusters) await cluster.stop().catch(() => {});
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

async function clusterDir(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'gem-cluster-log-'));
  await chmod(root, 0o755);
  roots.push(root);
  return join(root, 'data', 'postgres');
}

const sizeOf = async (path: string) => (await stat(path).catch(() => undefined))?.size;

describe('the embedded server log', () => {
  it('an oversized log found at start is kept as server.log.1, cut to the limit, and server.log starts afresh', async () => {
    serverLogBound.limitBytes = 64 * 1024;
    const dir = await clusterDir();
    const first = await startCluster({ dir, binDir });
    clusters.push(first);
    await first.stop();
    // Years of a controller's log: far over the limit, its newest lines last.
    const log = join(dir, 'server.log');
    await appendFile(log, `${'old line of the log\n'.repeat(50_000)}the newest line before the restart\n`);
    expect(await sizeOf(log)).toBeGreaterThan(serverLogBound.limitBytes * 10);

    const cluster = await startCluster({ dir, binDir });
    clusters.push(cluster);
    const previous = await readFile(`${log}.1`, 'utf8');
    expect(previous.length).toBeLessThanOrEqual(serverLogBound.limitBytes);
    expect(previous).toMatch(/the newest line before the restart\n$/);
    expect((await stat(`${log}.1`)).mode & 0o777).toBe(0o600);
    const current = await readFile(log, 'utf8');
    expect(current).not.toContain('old line of the log');
    expect(current.length).toBeLessThan(serverLogBound.limitBytes);
    // The server still writes there.
    await withSql(cluster.url('postgres'), (sql) => sql`do $$ begin raise log 'still logging here'; end $$`);
    await until(
      async () => (await readFile(log, 'utf8')).includes('still logging here'),
      'the line in server.log',
    );
    await cluster.stop();
  });

  it('a server that cannot start is refused with what its log says, naming the log', async () => {
    const dir = await clusterDir();
    const first = await startCluster({ dir, binDir });
    clusters.push(first);
    await first.stop();
    await appendFile(join(dir, 'postgresql.auto.conf'), "shared_buffers = 'lots'\n");
    const failed = await startCluster({ dir, binDir }).then(
      () => undefined,
      (error: Error) => error.message,
    );
    expect(failed).toContain(join(dir, 'server.log'));
    expect(failed).toMatch(/invalid value for parameter "shared_buffers": "lots"/);
    expect(failed).toMatch(/postgresql\.auto\.conf" contains errors/);
    // Only what this start wrote: not the lines of the start before.
    expect(failed).not.toContain('database system is shut down');
  });

  it('a running server filling its log is cut while it runs: never more than the log and the one before it', async () => {
    serverLogBound.limitBytes = 64 * 1024;
    serverLogBound.checkMs = 200;
    const dir = await clusterDir();
    const cluster = await startCluster({ dir, binDir });
    clusters.push(cluster);
    const log = join(dir, 'server.log');
    for (let round = 0; round < 6; round++) {
      // ~100 KiB of log lines: the next check cuts them.
      await withSql(cluster.url('postgres'), async (sql) => {
        for (let i = 0; i < 10; i++)
          await sql.unsafe(`do $$ begin raise log 'round ${round}: %', repeat('x', 10000); end $$`);
      });
      await until(
        async () => (await sizeOf(log))! <= serverLogBound.limitBytes,
        'server.log cut to the limit',
      );
      expect(await sizeOf(`${log}.1`)).toBeLessThanOrEqual(serverLogBound.limitBytes);
    }
    expect(await readFile(`${log}.1`, 'utf8')).toMatch(/round 5: x+/);
    // The server still writes into server.log.
    await withSql(cluster.url('postgres'), (sql) => sql`do $$ begin raise log 'after the cuts'; end $$`);
    await until(
      async () => (await readFile(log, 'utf8')).includes('after the cuts'),
      'the line in server.log',
    );
    await cluster.stop();
  });
});
