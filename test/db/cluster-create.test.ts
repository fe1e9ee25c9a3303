/** A first start of the embedded cluster cut short leaves nothing under the cluster's name: the next start creates it. */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { findPgBinDir } from '../../agent/config';
import { type ClusterHandle, ensureDatabase, startCluster } from '../../agent/db/cluster';
import { withSql } from '../services/postgres';
import { within } from '../services/wait';

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
    it(`an initdb cut short (${when}) is marked unfinished; the next start creates a working one`, async () => {
      const root = await tempRoot();
      const dir = join(root, 'data', 'cluster');
      const bin = await interruptedBin(root, when);
      await expect(startCluster({ dir, binDir: bin })).rejects.toThrow(/initdb failed/);
      // What initdb left is marked unfinished (the old code took a PG_VERSION for a finished cluster).
      expect(existsSync(`${dir}.creating`)).toBe(true);
      expect(existsSync(join(dir, 'PG_VERSION'))).toBe(true);

      const cluster = await startCluster({ dir, binDir });
      clusters.push(cluster);
      expect(cluster.startedHere).toBe(true);
      await expectWorking(cluster);
      expect(existsSync(`${dir}.creating`)).toBe(false);
      await cluster.stop();
      // And it starts again as it is.
      const again = await startCluster({ dir, binDir });
      clusters.push(again);
      await expectWorking(again);
      await again.stop();
    });
  }

  it('an unfinished creation whose process id now names another live process is created again at once', async () => {
    const root = await tempRoot();
    const dir = join(root, 'data', 'cluster');
    await expect(startCluster({ dir, binDir: await interruptedBin(root, 'midway') })).rejects.toThrow(
      /initdb failed/,
    );
    // After a reboot, the pid the marker names is another process's (no start holds the start lock).
    const other = spawn('sleep', ['600'], { stdio: 'ignore' });
    try {
      await writeFile(`${dir}.creating`, `${other.pid}\n`);
      const cluster = await within(startCluster({ dir, binDir }), 30_000, 'the start');
      clusters.push(cluster);
      await expectWorking(cluster);
      expect(existsSync(`${dir}.creating`)).toBe(false);
      await cluster.stop();
    } finally {
      other.kill('SIGKILL');
    }
  });

  it('two starts at once (the service and a CLI command) share one cluster, port and password', async () => {
    const root = await tempRoot();
    const dir = join(root, 'data', 'cluster');
    const [a, b] = await Promise.all([startCluster({ dir, binDir }), startCluster({ dir, binDir })]);
    clusters.push(a);
    expect([a.startedHere, b.startedHere].sort()).toEqual([false, true]);
    expect(b.port).toBe(a.port);
    expect(b.url('postgres')).toBe(a.url('postgres'));
    await expectWorking(a);
    await expectWorking(b);
    expect(existsSync(`${dir}.start.lock`)).toBe(false);
    await a.stop();
  });

  it('two starts at once both make sure of a database: both succeed, one of them created it', async () => {
    const root = await tempRoot();
    const dir = join(root, 'data', 'cluster');
    const cluster = await startCluster({ dir, binDir });
    clusters.push(cluster);
    // Several rounds: the two CREATE DATABASE must land together for the old code to fail.
    for (let round = 0; round < 5; round++) {
      const created = await Promise.all([
        ensureDatabase(cluster.url('postgres'), `gem${round}`),
        ensureDatabase(cluster.url('postgres'), `gem${round}`),
      ]);
      expect(created.sort()).toEqual([false, true]);
    }
    await cluster.stop();
  });

  it('a cluster an earlier version left unfinished (no include of our settings) is refused, not removed', async () => {
    const root = await tempRoot();
    const dir = join(root, 'data', 'cluster');
    await mkdir(join(dir, 'base'), { recursive: true });
    await writeFile(join(dir, 'PG_VERSION'), '15\n');
    await writeFile(join(dir, 'postgresql.conf'), 'port = 5432\n');
    await expect(startCluster({ dir, binDir })).rejects.toThrow(
      /whose creation an earlier version did not finish/,
    );
    expect((await readdir(dir)).sort()).toEqual(['PG_VERSION', 'base', 'postgresql.conf']);
  });

  it('a folder holding other files is refused and left as it was', async () => {
    const root = await tempRoot();
    const dir = join(root, 'data', 'cluster');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'notes.txt'), 'mine\n');
    await expect(startCluster({ dir, binDir })).rejects.toThrow(/holds files but no cluster/);
    expect(await readdir(dir)).toEqual(['notes.txt']);
    expect(existsSync(`${dir}.creating`)).toBe(false);
  });

  it('a cluster folder that is a mount point (a Docker volume) is created in place', async () => {
    if (process.getuid?.() !== 0)
      throw new Error('this test mounts a tmpfs: run the suite as root (as CI does)');
    const root = await tempRoot();
    const dir = join(root, 'data', 'cluster');
    await mkdir(dir, { recursive: true });
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256m', 'tmpfs', dir]);
    if (mounted.status !== 0) throw new Error(`mount -t tmpfs failed: ${mounted.stderr.toString()}`);
    try {
      const cluster = await startCluster({ dir, binDir });
      await expectWorking(cluster);
      await cluster.stop();
      expect(existsSync(join(dir, 'PG_VERSION'))).toBe(true);
    } finally {
      spawnSync('umount', [dir]);
    }
  });
});
