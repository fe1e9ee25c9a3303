// The folder part of the swap where a plain rename does not do: an undo puts the previous folder back
// whatever took its name meanwhile, so the live folder is never left holding neither state; a folder of a
// container's own file system (overlayfs), which cannot be renamed, is swapped by copy.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recoverInterruptedRestore } from '../../agent/restore/restore';
import { restoreSettled } from '../../agent/restore/swap';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { backupNow, crashingRestore, folderFingerprint, leftovers, liveState, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let scratch: string;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  scratch = await mkdtemp(join(tmpdir(), 'gem-swap-folders-'));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe('a swap whose live folder is made again while it is set aside', () => {
  it('puts the previous folder back and says the live system is unchanged', async () => {
    const filename = await backupNow(t.agent, 'before');
    await writeFile(join(t.agent.sources.configDir, 'gem.json'), '{"changed":true}\n');
    const before = await liveState(t.agent);
    const live = t.agent.sources.configDir;
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
      skipSafetyBackup: true,
      faults: {
        // GEM (restarted by its supervisor when its database went away) makes its config folder again
        // and writes into it, between the swap's two renames: the staged folder cannot take the name.
        afterSwapStep: async (step) => {
          if (step !== 'move-live-folder:config') return;
          await mkdir(live);
          await writeFile(join(live, 'gem.json'), '{"default":true}\n');
        },
      },
    });
    expect(job.state).toBe('failed');
    expect(job.error?.message).toContain('live system is unchanged');
    expect(await liveState(t.agent)).toEqual(before);
    await recoverInterruptedRestore(t.agent);
    expect(await leftovers(t.agent)).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before);
  });
});

describe("restoring a folder of a container's own file system (overlayfs)", () => {
  let merged: string | undefined;
  let configured: string | undefined;
  let filename: string;
  let atBackup: Awaited<ReturnType<typeof liveState>>;

  /** The live scripts after changes made since the backup: one edited, one added, a folder removed. */
  async function changeSinceBackup(tag: string) {
    await writeFile(join(merged!, 'scripts/lights.js'), `changed ${tag}\n`);
    await writeFile(join(merged!, `scripts/added-${tag}.js`), 'x\n');
    await rm(join(merged!, 'scripts/drivers'), { recursive: true, force: true });
    return liveState(t.agent);
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('these tests run as root: they mount an overlayfs');
    // GEM in a container, its scripts folder part of the image: a lower layer of the overlay.
    const layers = join(scratch, 'overlay');
    for (const dir of ['lower/scripts/drivers', 'upper', 'work', 'merged'])
      await mkdir(join(layers, dir), { recursive: true });
    await writeFile(join(layers, 'lower/scripts/lights.js'), 'turnOn()\n');
    await writeFile(join(layers, 'lower/scripts/drivers/hue.js'), 'connect()\n');
    const options = `lowerdir=${layers}/lower,upperdir=${layers}/upper,workdir=${layers}/work`;
    const mount = spawnSync('mount', ['-t', 'overlay', 'overlay', '-o', options, join(layers, 'merged')], {
      encoding: 'utf8',
    });
    expect(mount.stderr).toBe('');
    merged = join(layers, 'merged');
    configured = t.agent.sources.scriptsDir;
    t.agent.sources.scriptsDir = join(merged, 'scripts');
    filename = await backupNow(t.agent, 'scripts in the image');
    atBackup = await liveState(t.agent);
  });

  afterAll(() => {
    if (configured) t.agent.sources.scriptsDir = configured;
    if (merged) spawnSync('umount', [merged]);
  });

  it("is swapped by copy: a folder of the image's layer cannot be renamed (EXDEV)", async () => {
    await changeSinceBackup('restored');
    const steps: string[] = [];
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
      skipSafetyBackup: true,
      faults: { beforeSwapStep: (step) => void steps.push(step) },
    });
    expect(job.error).toBeUndefined();
    expect(steps).toContain('fill-live-folder:scripts');
    expect(await liveState(t.agent)).toEqual(atBackup);
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('is put back as it was when the copy swap fails after emptying it', async () => {
    const before = await changeSinceBackup('undone');
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: (step) => {
          if (step === 'fill-live-folder:scripts') throw new Error('injected failure before the refill');
        },
      },
    });
    expect(job.error?.message).toContain('live system is unchanged');
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('is rolled back at the next start when the process dies before commit: the journal says it was copied', async () => {
    const before = await changeSinceBackup('crashed');
    await crashingRestore(t.agent, {
      pgBinDir: pg.binDir,
      backupPath: t.agent.catalog.pathOf(filename),
      crashAt: 'commit',
    });
    expect(await liveState(t.agent)).not.toEqual(before);
    await recoverInterruptedRestore(t.agent);
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});

describe('restoring a folder configured through a symlink to a folder that does not exist yet', () => {
  it('makes the folder the link points to, and the link stays', async () => {
    // A new machine set up for a disaster recovery: /opt/gem/scripts -> /data/scripts, not made yet.
    const filename = await backupNow(t.agent, 'scripts to recover');
    const atBackup = await folderFingerprint(t.agent.sources.scriptsDir);
    const configured = t.agent.sources.scriptsDir;
    const data = join(scratch, 'recovered', 'data');
    const opt = join(scratch, 'recovered', 'opt');
    await mkdir(data, { recursive: true });
    await mkdir(opt);
    // Relative, as such links often are: resolved from the folder the link is in.
    await symlink('../data/scripts', join(opt, 'scripts'));
    t.agent.sources.scriptsDir = join(opt, 'scripts');
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), { skipSafetyBackup: true });
      expect(job.error).toBeUndefined();
      expect((await lstat(join(opt, 'scripts'))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(opt, 'scripts'))).toBe('../data/scripts');
      expect(await folderFingerprint(join(data, 'scripts'))).toEqual(atBackup);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      t.agent.sources.scriptsDir = configured;
    }
  });
});

describe('keeping the previous state aside', () => {
  it('removes the older previous states restores made, never a look-alike a person made', async () => {
    const filename = await backupNow(t.agent, 'kept aside');
    const database = t.agent.sources.conn.database;
    const admin = databaseUrl(t.agent.sources.conn, 'postgres');
    // A person kept an earlier previous state under a name of their own, as a restore's look-alike.
    const mineDb = `${database}_gem_previous_mine`;
    const mineFolder = `${t.agent.sources.scriptsDir}.gem-previous-1a2b3c4d.bak`;
    await withSql(admin, (sql) => sql.unsafe(`create database "${mineDb}"`));
    await mkdir(mineFolder);
    await writeFile(join(mineFolder, 'lights.js'), 'kept by hand\n');
    // An older previous state a restore made (an 8-hex id): only the newest one is kept aside.
    const olderDb = `${database}_gem_previous_0badc0de`;
    const olderFolder = `${t.agent.sources.scriptsDir}.gem-previous-0badc0de`;
    await withSql(admin, (sql) => sql.unsafe(`create database "${olderDb}"`));
    await mkdir(olderFolder);
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
        skipSafetyBackup: true,
        keepPrevious: true,
      });
      expect(job.error).toBeUndefined();
      await restoreSettled(t.agent.config.dataDir);
      const databases = await withSql(
        admin,
        (sql) => sql<{ datname: string }[]>`select datname from pg_database`,
      );
      const names = databases.map((row) => row.datname);
      expect(names).toContain(mineDb);
      expect(names).not.toContain(olderDb);
      expect(await folderFingerprint(mineFolder)).toMatchObject({
        'lights.js': expect.stringMatching(/^file:/),
      });
      expect(existsSync(olderFolder)).toBe(false);
    } finally {
      await withSql(admin, (sql) => sql.unsafe(`drop database if exists "${mineDb}"`));
      await withSql(admin, (sql) => sql.unsafe(`drop database if exists "${olderDb}"`));
      await rm(mineFolder, { recursive: true, force: true });
      await rm(olderFolder, { recursive: true, force: true });
      const kept = (await leftovers(t.agent)).filter(
        (name) => name.includes('gem_previous_') || name.includes('.gem-previous-'),
      );
      for (const name of kept) {
        if (name.includes('_gem_previous_'))
          await withSql(admin, (sql) => sql.unsafe(`drop database "${name}"`));
      }
      for (const dir of [t.agent.sources.scriptsDir, t.agent.sources.configDir]) {
        for (const name of kept.filter((n) => n.includes('.gem-previous-')))
          await rm(join(dirname(dir), name), { recursive: true, force: true });
      }
    }
  });
});

describe('a live folder whose parent is on a read-only file system', () => {
  let mountPoint: string | undefined;
  let configured: string | undefined;

  afterAll(() => {
    if (configured) t.agent.sources.configDir = configured;
    if (mountPoint) spawnSync('umount', [mountPoint]);
  });

  it('is refused in the check, before anything is staged or backed up, saying why', async () => {
    if (process.getuid?.() !== 0) throw new Error('this test runs as root: it mounts a tmpfs');
    // GEM's config on a volume mounted read-only into the controller (its parent is the volume).
    mountPoint = join(scratch, 'ro-volume');
    await mkdir(mountPoint);
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mountPoint], {
      encoding: 'utf8',
    });
    expect(mount.stderr).toBe('');
    const live = join(mountPoint, 'config');
    await mkdir(join(live, 'devices'), { recursive: true });
    await writeFile(join(live, 'gem.json'), '{"site":"ro"}\n');
    configured = t.agent.sources.configDir;
    t.agent.sources.configDir = live;
    const filename = await backupNow(t.agent, 'config on a volume');
    await writeFile(join(live, 'gem.json'), '{"site":"ro","changed":true}\n');
    expect(spawnSync('mount', ['-o', 'remount,ro', mountPoint], { encoding: 'utf8' }).stderr).toBe('');
    const before = await liveState(t.agent);
    const backupsBefore = (await t.agent.catalog.list()).map((b) => b.filename);

    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename));
    expect(job.state).toBe('failed');
    expect(job.error).toMatchObject({
      code: 'unprocessable',
      message: expect.stringContaining(
        `cannot restore the config folder ${live}: a restore stages it beside the live folder and renames it into place, and ${mountPoint} is on a read-only file system.`,
      ),
    });
    expect(job.error?.message).toMatch(/Nothing was changed$/);
    expect(await liveState(t.agent)).toEqual(before);
    // No safety backup was taken for a restore that could not go ahead.
    expect((await t.agent.catalog.list()).map((b) => b.filename)).toEqual(backupsBefore);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});
