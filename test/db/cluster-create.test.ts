/** A first start of the embedded cluster cut short leaves nothing under the cluster's name: the next start creates it. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, startCluster } from '../../agent/db/cluster';
import { withSql } from '../services/postgres';

const binDir = findPgBinDir(process.env.GEM_PG_BIN);
const roots: string[] = [];
const clusters: ClusterHandle[] = [];

afterAll(async () => {
  for (const cluster of clusters) await cluster.stop().catch(() => {});
  for (const root of roots) await rm(root, { recursive: true, force: true });
});

async function tempRoot(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'gem-cluster-create-'));
  await chmod(root, 0o755);
  roots.push(root);
  return root;
}

/**
 * A bin folder like the real one whose initdb is cut short as a power cut or a stopped service would
 * cut it: `midway` kills the real initdb as soon as it wrote PG_VERSION (it goes on for a while after
 * that); `after` lets it finish and then fails, as if the agent died before adding its own settings.
 * Run as user postgres when we are root, like the real one.
 */
async function interruptedBin(root: string, when: 'midway' | 'after'): Promise<string> {
  const bin = join(root, 'bin');
  await mkdir(bin, { mode: 0o755 });
  await symlink(join(binDir, 'pg_ctl'), join(bin, 'pg_ctl'));
  const real = join(binDir, 'initdb');
  const script =
    when === 'midway'
      ? [
          '#!/bin/sh',
          `"${real}" "$@" >/dev/null 2>&1 &`,
          'pid=$!',
          'while [ "$1" != "-D" ]; do shift; done',
          'while [ ! -s "$2/PG_VERSION" ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done',
          'kill -9 $pid',
          'exit 1',
        ]
      : ['#!/bin/sh', `"${real}" "$@" >/dev/null 2>&1`, 'exit 1'];
  await writeFile(join(bin, 'initdb'), `${script.join('\n')}\n`, { mode: 0o755 });
  return bin;
}

async function expectWorking(cluster: ClusterHandle): Promise<void> {
  await withSql(cluster.url('postgres'), async (sql) => {
    expect((await sql`select 1 as one`)[0]).toEqual({ one: 1 });
  });
}

describe('creating the embedded cluster', () => {
  for (const when of ['midway', 'after'] as const) {
    it(`an initdb cut short (${when}) leaves no cluster under its name; the next start creates a working one`, async () => {
      const root = await tempRoot();
      const dir = join(root, 'data', 'cluster');
      const bin = await interruptedBin(root, when);
      await expect(startCluster({ dir, binDir: bin })).rejects.toThrow(/initdb failed/);
      // Nothing half-made under the final name, and no temp folder left beside it.
      expect(existsSync(dir)).toBe(false);
      expect((await readdir(join(root, 'data'))).filter((name) => name.startsWith('.tmp-'))).toEqual([]);

      const cluster = await startCluster({ dir, binDir });
      clusters.push(cluster);
      expect(cluster.startedHere).toBe(true);
      await expectWorking(cluster);
      await cluster.stop();
      // And it starts again as it is.
      const again = await startCluster({ dir, binDir });
      clusters.push(again);
      await expectWorking(again);
      await again.stop();
    });
  }

  it('a temp cluster folder a dead process left is removed when the cluster is created', async () => {
    const root = await tempRoot();
    const data = join(root, 'data');
    await mkdir(data, { mode: 0o700 });
    // A shell that printed its pid and exited: a process that no longer runs (an agent killed mid-creation).
    const dead = spawnSync('sh', ['-c', 'echo $$']).stdout.toString().trim();
    expect(dead).toMatch(/^\d+$/);
    const leftover = join(data, `.tmp-cluster.p${dead}.0123456789ab`);
    await mkdir(join(leftover, 'base'), { recursive: true });
    await writeFile(join(leftover, 'PG_VERSION'), '15\n');
    const cluster = await startCluster({ dir: join(data, 'cluster'), binDir });
    clusters.push(cluster);
    await expectWorking(cluster);
    expect(existsSync(leftover)).toBe(false);
    await cluster.stop();
  });
});
