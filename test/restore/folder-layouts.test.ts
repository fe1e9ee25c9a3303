// Folder layouts of real installations: a scripts folder configured through a symlink
// (/opt/gem/scripts -> /data/scripts) is restored into the folder it points to, and the link stays; a
// folder that is a mount point (a Docker volume) is refused before anything is staged.
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dropStagingLeftovers, restoreSettled, STAGING_FOLDER_MARK } from '../../agent/restore/swap';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let scratch: string;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
  scratch = await mkdtemp(join(tmpdir(), 'gem-folder-layouts-'));
});

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** Restores `filename` (no safety backup); resolves with the ended job. */
const restoreNow = (filename: string) =>
  runRestore(t.agent, t.agent.catalog.pathOf(filename), { skipSafetyBackup: true });

describe('restoring a folder configured through a symlink', () => {
  it('keeps the link and puts the content back into the folder it points to', async () => {
    const real = join(scratch, 'data', 'scripts');
    await mkdir(join(real, 'drivers'), { recursive: true });
    await writeFile(join(real, 'drivers', 'hue.js'), 'connect()\n');
    await writeFile(join(real, 'lights.js'), 'turnOn()\n');
    const opt = join(scratch, 'opt-gem');
    await mkdir(opt);
    const link = join(opt, 'scripts');
    await symlink(real, link);
    t.agent.sources.scriptsDir = link;

    const filename = await backupNow(t.agent, 'linked');
    await writeFile(join(real, 'lights.js'), 'changed after the backup\n');
    await writeFile(join(real, 'new-after-backup.js'), 'x\n');

    expect((await restoreNow(filename)).error).toBeUndefined();

    expect((await lstat(link)).isSymbolicLink()).toBe(true);
    expect(await readlink(link)).toBe(real);
    expect(await readFile(join(real, 'lights.js'), 'utf8')).toBe('turnOn()\n');
    expect(await readFile(join(real, 'drivers', 'hue.js'), 'utf8')).toBe('connect()\n');
    expect((await readdir(real)).sort()).toEqual(['drivers', 'lights.js']);
    // Nothing left beside the link or the folder once the restore settled.
    await restoreSettled(t.agent.config.dataDir);
    expect(await readdir(opt)).toEqual(['scripts']);
    expect(await readdir(join(scratch, 'data'))).toEqual(['scripts']);
  });

  it("finds a crashed restore's staging leftover beside the folder the link points to", async () => {
    const real = join(scratch, 'data', 'scripts');
    const leftover = `${real}${STAGING_FOLDER_MARK}deadbeef`;
    await mkdir(join(leftover, 'drivers'), { recursive: true });
    const removed = await dropStagingLeftovers(t.agent.sources);
    expect(removed).toContain(leftover);
    expect(await readdir(join(scratch, 'data'))).toEqual(['scripts']);
  });
});

describe('restoring a folder that is a mount point', () => {
  it('is refused before anything is staged, naming the folder and its setting', async () => {
    if (process.getuid?.() !== 0)
      throw new Error('this test runs as root: it mounts a tmpfs as the config folder');
    const filename = await backupNow(t.agent, 'before the mount');
    const mounted = join(scratch, 'volume-config');
    await mkdir(mounted);
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', mounted], {
      encoding: 'utf8',
    });
    expect(mount.stderr).toBe('');
    try {
      await writeFile(join(mounted, 'gem.json'), '{"live":true}\n');
      const configured = t.agent.sources.configDir;
      t.agent.sources.configDir = mounted;
      try {
        expect((await restoreNow(filename)).error).toMatchObject({
          code: 'unprocessable',
          message: expect.stringContaining(`the config folder ${mounted} (GEM_CONFIG_DIR) is a mount point`),
        });
      } finally {
        t.agent.sources.configDir = configured;
      }
      expect(await readdir(mounted)).toEqual(['gem.json']);
      expect(await readdir(scratch)).not.toContainEqual(expect.stringContaining('.gem-restore-staging-'));
      expect(await dropStagingLeftovers(t.agent.sources)).toEqual([]);
    } finally {
      spawnSync('umount', [mounted]);
    }
  });
});
