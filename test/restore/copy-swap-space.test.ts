/**
 * The disk check of a restore whose live folder is swapped by copy (a mount point: a Docker volume):
 * its live entries are copied aside beside it, on its parent's file system, before the staged ones are
 * copied in, so that file system must have room for the live folder's contents as well as its staging
 * copy, and the folder's own file system room for the staged entries once its live ones are gone. A
 * folder of a container image's layer (overlayfs) may turn out to be swapped by copy too (its rename
 * refused): it is counted so, and its entries of the image's layer free nothing when it is emptied.
 * GEM's folders sit on a small tmpfs of their own here, the config folder a volume mounted into it; a
 * restore that would not fit is refused up front, nothing changed.
 */

import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { fillTo, TmpfsMounts } from '../services/tmpfs';
import { backupNow, leftovers, liveState, runRestore } from './helpers';

const MiB = 1048576;

let pg: TestPostgres;
let t: TestAgent;
let root: string;
let gemDisk: string;
let volume: string;
let backupName: string;
const mounts = new TmpfsMounts();

beforeAll(async () => {
  pg = await startPostgres();
  root = await mkdtemp(join(tmpdir(), 'gem-copy-swap-space-'));
  await chmod(root, 0o755);
  const dataDir = join(root, 'data');
  gemDisk = join(dataDir, 'gem');
  await mkdir(gemDisk, { recursive: true });
  // The live scripts folder and the volume's mount point (so the staging folders) on 16 MiB.
  await mounts.mount(gemDisk, '16m');
  t = await startTestAgent(pg, { dataDir });
  volume = join(gemDisk, 'volume');
  await mkdir(volume);
  await mounts.mount(volume, '32m');
  await writeFile(join(volume, 'gem.json'), '{"live":"at backup"}\n');
  t.agent.sources.configDir = volume;
  backupName = await backupNow(t.agent, 'config on a volume');
}, 180_000);

afterAll(async () => {
  await t?.close().catch(() => {});
  await mounts.unmountAll();
  if (root) await rm(root, { recursive: true, force: true });
  await pg?.stop();
});

describe('a live folder swapped by copy', () => {
  it("is refused up front when its parent's file system has room for its staging copy but not for the copy aside", async () => {
    // Recordings written into the volume since the backup: 10 MiB to copy aside at the swap.
    const recordings = join(volume, 'recordings.bin');
    await writeFile(recordings, Buffer.alloc(10 * MiB, 1));
    const filler = await fillTo(gemDisk, 4 * MiB);
    try {
      const before = await liveState(t.agent);
      const backups = (await t.agent.catalog.list()).length;
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(backupName));
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${gemDisk}/`,
        ),
      );
      // Refused before the safety backup and before a member was staged: nothing made, nothing changed.
      expect((await t.agent.catalog.list()).length).toBe(backups);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      await rm(filler, { force: true });
      await rm(recordings, { force: true });
    }
  });
});

describe('a live folder swapped by copy, on a disk of its own', () => {
  it('is refused up front when the staged entries would not fit into it once emptied', async () => {
    // A backup of the volume holding 6 MiB that it no longer does, and the volume since made 4 MiB.
    const recordings = join(volume, 'recordings.bin');
    await writeFile(recordings, Buffer.alloc(6 * MiB, 1));
    const name = await backupNow(t.agent, 'a full volume');
    await rm(recordings);
    const remount = (size: string) =>
      expect(spawnSync('mount', ['-o', `remount,size=${size}`, volume], { encoding: 'utf8' }).stderr).toBe(
        '',
      );
    remount('4m');
    try {
      const before = await liveState(t.agent);
      const backups = (await t.agent.catalog.list()).length;
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(name));
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${volume} \\(the config folder's restored entries, `,
        ),
      );
      expect((await t.agent.catalog.list()).length).toBe(backups);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      remount('32m');
    }
  });

  it('is restored when the staged entries fit once its own live entries are gone', async () => {
    // 6 MiB at the backup, 6 MiB others now, on an 8 MiB volume: the swap empties it before the fill.
    const recordings = join(volume, 'recordings.bin');
    await writeFile(recordings, Buffer.alloc(6 * MiB, 1));
    const name = await backupNow(t.agent, 'recordings of the day');
    const atBackup = await liveState(t.agent);
    await rm(recordings);
    await writeFile(join(volume, 'recordings-later.bin'), Buffer.alloc(6 * MiB, 2));
    expect(spawnSync('mount', ['-o', 'remount,size=8m', volume], { encoding: 'utf8' }).stderr).toBe('');
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(name), { skipSafetyBackup: true });
      expect(job.error).toBeUndefined();
      expect(await liveState(t.agent)).toEqual(atBackup);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      await rm(recordings, { force: true });
      expect(spawnSync('mount', ['-o', 'remount,size=32m', volume], { encoding: 'utf8' }).stderr).toBe('');
    }
  });
});

describe("a folder of a container's own file system (overlayfs)", () => {
  let merged: string | undefined;
  let configured: string | undefined;
  let upperDisk: string;
  let filename: string;

  beforeAll(async () => {
    // GEM in a container, its scripts (10 MiB of them) part of the image: a lower layer of the overlay,
    // whose writable layer is on a small disk.
    const layers = join(root, 'overlay');
    upperDisk = join(layers, 'rw');
    for (const dir of ['lower/scripts', 'rw', 'merged']) await mkdir(join(layers, dir), { recursive: true });
    await writeFile(join(layers, 'lower/scripts/firmware.bin'), Buffer.alloc(10 * MiB, 2));
    await mounts.mount(upperDisk, '32m');
    for (const dir of ['upper', 'work']) await mkdir(join(upperDisk, dir));
    const options = `lowerdir=${layers}/lower,upperdir=${upperDisk}/upper,workdir=${upperDisk}/work`;
    const mount = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', options, join(layers, 'merged')], {
      encoding: 'utf8',
    });
    expect(mount.stderr).toBe('');
    merged = join(layers, 'merged');
    mounts.adopt(merged);
    configured = t.agent.sources.scriptsDir;
    t.agent.sources.scriptsDir = join(merged, 'scripts');
    filename = await backupNow(t.agent, 'scripts in the image');
  });

  afterAll(() => {
    if (configured) t.agent.sources.scriptsDir = configured;
  });

  it('is counted as copied aside: refused up front when its staging copy fits but the copy aside does not', async () => {
    const filler = await fillTo(upperDisk, 14 * MiB);
    try {
      const before = await liveState(t.agent);
      const backups = (await t.agent.catalog.list()).length;
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename));
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${merged}/`,
        ),
      );
      expect((await t.agent.catalog.list()).length).toBe(backups);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      await rm(filler, { force: true });
    }
  });

  it('is counted as filled again: its image entries emptied free nothing, the staged ones are written beside them', async () => {
    // Room for the staging copy and the copy aside (20 MiB), not for the staged entries copied in too.
    const filler = await fillTo(upperDisk, 24 * MiB);
    try {
      const before = await liveState(t.agent);
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), { skipSafetyBackup: true });
      expect(job.error?.code, job.error?.message).toBe('no_space');
      expect(job.error?.message).toMatch(
        new RegExp(
          `^not enough free disk space to restore: about .* needed, .* free on the file system of ${merged}/`,
        ),
      );
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      await rm(filler, { force: true });
    }
  });
});
