// Folder layouts of real installations: a scripts folder configured through a symlink
// (/opt/gem/scripts -> /data/scripts) is restored into the folder it points to, and the link stays; a
// folder that is a mount point (a Docker volume) cannot be renamed, so its entries are swapped by copy,
// undone on failure and rolled back after a crash.
import { spawnSync } from 'node:child_process';
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { recoverInterruptedRestore } from '../../agent/restore/restore';
import {
  dropStagingLeftovers,
  isMountPoint,
  restoreSettled,
  STAGING_FOLDER_MARK,
} from '../../agent/restore/swap';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { backupNow, crashingRestore, leftovers, liveState, runRestore } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let scratch: string;
// The crash child bundled once for the file (test/faults/built-child.ts): it starts without tsx's loader.
let children: BuiltChildren<'crash-child'>;

beforeAll(async () => {
  // fsync off (no kill or check here depends on how long a write takes); a killed child still finds
  // every write the server acknowledged.
  ({ pg, children } = await startAll({
    pg: () => startPostgres({ fsync: false }),
    children: () => buildChildren({ 'crash-child': 'test/restore/crash-child.ts' }),
  }));
  t = await startTestAgent(pg);
  scratch = await mkdtemp(join(tmpdir(), 'gem-folder-layouts-'));
});

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await children?.remove();
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

describe('restoring a folder that is a mount point (a Docker volume)', () => {
  let mounted: string;
  let configured: string;
  let filename: string;
  let atBackup: Awaited<ReturnType<typeof liveState>>;

  /** The live state after changes made since the backup: an entry edited, two added (one a link), one removed. */
  async function changeSinceBackup(tag: string) {
    await writeFile(join(mounted, 'gem.json'), `{"live":"${tag}"}\n`);
    await writeFile(join(mounted, `added-${tag}.json`), '{}\n');
    // Added after the backup: an undo must still put this link back.
    await symlink('gem.json', join(mounted, `link-${tag}.json`));
    await rm(join(mounted, 'devices'), { recursive: true, force: true });
    return liveState(t.agent);
  }

  beforeAll(async () => {
    if (process.getuid?.() !== 0)
      throw new Error('these tests run as root: they mount a tmpfs as the config folder');
    mounted = join(scratch, 'volume-config');
    await mkdir(mounted);
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=2750', 'tmpfs', mounted], {
      encoding: 'utf8',
    });
    expect(mount.stderr).toBe('');
    expect(await isMountPoint(mounted)).toBe(true);
    await mkdir(join(mounted, 'devices'));
    await writeFile(join(mounted, 'devices', 'hue.json'), '{"bridge":"10.0.0.2"}\n');
    await writeFile(join(mounted, 'gem.json'), '{"live":"at backup"}\n');
    configured = t.agent.sources.configDir;
    t.agent.sources.configDir = mounted;
    filename = await backupNow(t.agent, 'config on a volume');
    atBackup = await liveState(t.agent);
  });

  afterAll(async () => {
    if (configured) t.agent.sources.configDir = configured;
    if (mounted) spawnSync('umount', [mounted]);
  });

  it('is restored by copying: the mount stays, with its mode, and holds exactly the backup', async () => {
    await changeSinceBackup('restored');
    const job = await restoreNow(filename);
    expect(job.error).toBeUndefined();
    expect(await isMountPoint(mounted)).toBe(true);
    expect((await stat(mounted)).mode & 0o7777).toBe(0o2750);
    expect(await liveState(t.agent)).toEqual(atBackup);
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('is put back as it was when the restore fails after emptying it', async () => {
    const before = await changeSinceBackup('undone');
    // What the folder held when the failure struck, checked after the job (an expect inside the hook
    // would only be one more failure of the step, which the restore reports like the injected one).
    let atFailure: string[] | undefined;
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: async (step) => {
          if (step !== 'fill-live-folder:config') return;
          atFailure = await readdir(mounted);
          throw new Error('injected failure before the refill');
        },
      },
    });
    expect(job.error).toMatchObject({
      code: 'restore_failed',
      message: expect.stringContaining('step fill-live-folder:config: injected failure before the refill'),
    });
    // The failure struck with the folder emptied: the undo had to refill it.
    expect(atFailure).toEqual([]);
    expect(await liveState(t.agent)).toEqual(before);
    expect(await leftovers(t.agent)).toEqual([]);
  });

  it('is refused before anything is staged when it holds an entry that cannot be copied (a FIFO)', async () => {
    const fifo = join(mounted, 'events.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    try {
      const before = await liveState(t.agent);
      const job = await restoreNow(filename);
      expect(job.error).toMatchObject({
        code: 'unprocessable',
        message: expect.stringContaining(`cannot copy ${fifo}`),
      });
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      await rm(fifo, { force: true });
    }
  });

  it('is refused before anything is staged when something is mounted inside it', async () => {
    // A file mounted into the volume (a Docker file mount) cannot be removed: the swap could not empty it.
    const inside = join(mounted, 'bound.json');
    const source = join(scratch, 'bound-source.json');
    await writeFile(inside, '{}\n');
    await writeFile(source, '{"bound":true}\n');
    expect(spawnSync('mount', ['--bind', source, inside]).status).toBe(0);
    try {
      const before = await liveState(t.agent);
      const job = await restoreNow(filename);
      expect(job.error).toMatchObject({
        code: 'unprocessable',
        message: expect.stringContaining(`${inside} inside it is a mount point`),
      });
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      spawnSync('umount', [inside]);
      await rm(inside, { force: true });
      await rm(source, { force: true });
    }
  });

  /** The folders set aside beside the mount point (whole copies, not `.part` ones). */
  const copiesAside = async () =>
    (await readdir(scratch))
      .filter((name) => name.startsWith('volume-config.gem-previous-') && !name.endsWith('.part'))
      .map((name) => join(scratch, name));

  it('loses nothing when the undo cannot empty it: the copy aside stays, the next start finishes', async () => {
    // An entry the agent cannot remove (immutable here; a file of another user for a non-root agent)
    // fails the emptying, then the undo's emptying too: the copy aside must outlive that.
    await changeSinceBackup('stuck');
    const stuck = join(mounted, 'stuck.json');
    await writeFile(stuck, '{"stuck":true}\n');
    expect(spawnSync('chattr', ['+i', stuck]).status).toBe(0);
    try {
      const before = await liveState(t.agent);
      const job = await restoreNow(filename);
      expect(job.error).toMatchObject({
        code: 'restore_failed',
        message: expect.stringContaining('and undoing it failed'),
      });
      expect(await copiesAside()).toHaveLength(1);
      // The database, another part, was put back at once.
      expect((await liveState(t.agent)).database).toEqual(before.database);
      expect(spawnSync('chattr', ['-i', stuck]).status).toBe(0);
      await recoverInterruptedRestore(t.agent);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    } finally {
      spawnSync('chattr', ['-i', stuck]);
      await rm(stuck, { force: true });
    }
  });

  it('never leaves a half-removed copy aside for the next start to refill it from', async () => {
    // The undo refills the folder, then removes the copy aside; that removal fails half-way here (an
    // immutable file in the copy), as a crash in the middle of it would stop it.
    const before = await changeSinceBackup('discard');
    let pinned: string | undefined;
    try {
      const job = await runRestore(t.agent, t.agent.catalog.pathOf(filename), {
        skipSafetyBackup: true,
        faults: {
          afterSwapStep: async (step) => {
            if (step !== 'copy-live-folder:config') return;
            const [aside] = await copiesAside();
            pinned = join(aside!, 'gem.json');
            expect(spawnSync('chattr', ['+i', pinned]).status).toBe(0);
          },
          beforeSwapStep: (step) => {
            if (step === 'fill-live-folder:config') throw new Error('injected failure before the refill');
          },
        },
      });
      expect(job.error).toMatchObject({
        code: 'restore_failed',
        message: expect.stringContaining('and undoing it failed'),
      });
      expect(await liveState(t.agent)).toEqual(before);
      expect(await copiesAside()).toEqual([]);
      await recoverInterruptedRestore(t.agent);
      expect(await liveState(t.agent)).toEqual(before);
    } finally {
      // Wherever the pinned file is now (its copy was moved to a staging name to be removed).
      for (const name of await readdir(scratch)) {
        spawnSync('chattr', ['-i', join(scratch, name, 'gem.json')]);
      }
    }
    await dropStagingLeftovers(t.agent.sources);
    expect(pinned).toBeDefined();
    expect(await leftovers(t.agent)).toEqual([]);
  });

  for (const crashAt of ['fill-live-folder:config', 'commit']) {
    it(`is rolled back at the next start when the process dies before ${crashAt}`, async () => {
      const before = await changeSinceBackup(crashAt);
      await crashingRestore(t.agent, {
        pgBinDir: pg.binDir,
        backupPath: t.agent.catalog.pathOf(filename),
        crashAt,
        entry: children.paths['crash-child'],
      });
      // The crash left the folder half-swapped: emptied, or already holding the backup's entries.
      expect(await liveState(t.agent)).not.toEqual(before);
      await recoverInterruptedRestore(t.agent);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
    });
  }
});
