// Symbolic links in the scripts and config folders: kept by a backup as links (their target text,
// never followed), checked by verify, restored as links; a hostile archive with a link refused with
// nothing written outside; a FIFO left out and said so (job result, CLI warning).
import { spawnSync } from 'node:child_process';
import { lstat, mkdir, readdir, readFile, readlink, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup, startVerify } from '../../agent/backup/operations';
import { readBackup } from '../../agent/backup/reader';
import { extractionSinks } from '../../agent/restore/extract';
import { runProcess } from '../../agent/system/spawn';
import { type BuiltCli, buildCli } from '../cli/built-cli';
import { seededEnvironment, startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { startAll } from '../services/start-all';
import { tempDirForTest } from '../services/temp-dir';
import {
  type ArchiveEntry,
  hostileFile as file,
  hostile,
  leftovers,
  liveState,
  runRestore,
  sealArchive,
} from './helpers';

let pg: TestPostgres;
let built: BuiltCli;
let t: TestAgent;

beforeAll(async () => {
  ({ pg, built } = await startAll({ pg: () => startPostgres({ fsync: false }), built: buildCli }));
  t = await startTestAgent(pg);
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await built?.remove();
});

/** Runs a backup job as the API and the CLI do; returns its result. */
async function backupJob(): Promise<{
  backup: { filename: string; skipped?: { count: number; paths: string[] } };
}> {
  const job = await t.agent.jobs.waitFor((await startBackup(t.agent, { kind: 'manual' })).id);
  expect(job.error).toBeUndefined();
  return job.result as { backup: { filename: string; skipped?: { count: number; paths: string[] } } };
}

describe('links in the scripts folder', () => {
  it('are backed up as links (same target text, nothing followed), verified, and restored as links', async () => {
    const scripts = t.agent.sources.scriptsDir;
    const outside = await tempDirForTest('gem-links-outside-');
    await writeFile(join(outside, 'secret.txt'), 'outside the folder: never in the backup\n');
    await mkdir(join(scripts, 'drivers'), { recursive: true });
    await writeFile(join(scripts, 'drivers', 'sonos.js'), 'module.exports = "sonos";\n');
    await symlink('drivers/sonos.js', join(scripts, 'sonos-link.js'));
    await symlink(join(outside, 'secret.txt'), join(scripts, 'outside-link.txt'));
    await symlink('nowhere/missing.js', join(scripts, 'dangling.js'));
    await symlink('drivers', join(scripts, 'drivers-link'));
    await symlink('../scripts/drivers', join(scripts, 'drivers', 'up-link'));
    const fifo = join(scripts, 'events.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);

    const { backup } = await backupJob();
    // The FIFO is left out, and the job result says so.
    expect(backup.skipped).toEqual({ count: 1, paths: ['scripts/events.fifo'] });
    await unlink(fifo);
    const atBackup = await liveState(t.agent);
    expect(atBackup.scripts['sonos-link.js']).toBe('link:drivers/sonos.js');

    // The manifest lists each link with its target; nothing behind a link is in the backup.
    const path = t.agent.catalog.pathOf(backup.filename);
    const { manifest } = await readBackup(path, { keys: t.agent.keyring.masterKeys });
    const links = manifest.members.filter((m) => m.type === 'symlink');
    expect(links.map((m) => [m.path, m.target, m.size])).toEqual([
      ['scripts/dangling.js', 'nowhere/missing.js', 0],
      ['scripts/drivers/up-link', '../scripts/drivers', 0],
      ['scripts/drivers-link', 'drivers', 0],
      ['scripts/outside-link.txt', join(outside, 'secret.txt'), 0],
      ['scripts/sonos-link.js', 'drivers/sonos.js', 0],
    ]);
    expect(manifest.members.some((m) => m.path.startsWith('scripts/drivers-link/'))).toBe(false);
    expect(manifest.members.some((m) => m.path.endsWith('.fifo'))).toBe(false);

    const verified = await t.agent.jobs.waitFor((await startVerify(t.agent, backup.filename)).id);
    expect(verified.error).toBeUndefined();

    // Since the backup: links removed, one replaced by a file, one retargeted.
    await unlink(join(scripts, 'sonos-link.js'));
    await writeFile(join(scripts, 'sonos-link.js'), 'a file now\n');
    await unlink(join(scripts, 'dangling.js'));
    await rm(join(scripts, 'drivers-link'));
    await unlink(join(scripts, 'outside-link.txt'));
    await symlink('/etc/hostname', join(scripts, 'outside-link.txt'));

    const job = await runRestore(t.agent, path, { skipSafetyBackup: true });
    expect(job.error).toBeUndefined();
    expect(await liveState(t.agent)).toEqual(atBackup);
    for (const [name, target] of [
      ['sonos-link.js', 'drivers/sonos.js'],
      ['outside-link.txt', join(outside, 'secret.txt')],
      ['dangling.js', 'nowhere/missing.js'],
      ['drivers-link', 'drivers'],
    ]) {
      expect((await lstat(join(scripts, name!))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(scripts, name!))).toBe(target);
    }
    expect(await readFile(join(scripts, 'sonos-link.js'), 'utf8')).toBe('module.exports = "sonos";\n');
    expect(await readdir(outside)).toEqual(['secret.txt']);
    expect(await leftovers(t.agent)).toEqual([]);
  });
});

describe('a hostile archive with a link, sealed with the installation keys', () => {
  const cases: Array<[string, (outside: string) => ArchiveEntry[]]> = [
    [
      'a link to a folder outside, then a file through it',
      (outside) => [
        { header: { name: 'scripts/x', type: 'symlink', linkname: outside } },
        file('scripts/x/passwd'),
      ],
    ],
    [
      'a file under a link, listed before the link',
      (outside) => [
        file('scripts/x/passwd'),
        { header: { name: 'scripts/x', type: 'symlink', linkname: outside } },
      ],
    ],
  ];
  cases.forEach(([what, entries], i) => {
    it(`refuses ${what}, in verify and in a restore, writing nothing outside`, async () => {
      const outside = await tempDirForTest('gem-links-hostile-');
      const before = await liveState(t.agent);
      const name = `gem-backup-2020-02-0${i + 1}-000000.tar.gz`;
      const path = t.agent.catalog.pathOf(name);
      await sealArchive(
        t.agent.keyring.activeKey,
        t.agent.keyring.installationId,
        hostile(t.agent.keyring.installationId, entries(outside)),
        path,
      );
      await expect(readBackup(path, { keys: t.agent.keyring.masterKeys })).rejects.toMatchObject({
        code: 'corrupt_backup',
        message: expect.stringMatching(/unsafe archive entry .*lies under the link scripts\/x/),
      });
      const job = await runRestore(t.agent, path, { skipSafetyBackup: true });
      expect(job.error).toMatchObject({
        code: 'corrupt_backup',
        message: expect.stringMatching(/unsafe archive entry .*lies under the link scripts\/x/),
      });
      expect(await readdir(outside)).toEqual([]);
      expect(await liveState(t.agent)).toEqual(before);
      expect(await leftovers(t.agent)).toEqual([]);
      await rm(path);
    });
  });

  it('refuses a link whose target is not the one the manifest lists', async () => {
    const name = 'gem-backup-2020-02-09-000000.tar.gz';
    const path = t.agent.catalog.pathOf(name);
    const entries = hostile(t.agent.keyring.installationId, [
      { header: { name: 'scripts/l', type: 'symlink', linkname: 'a.js' } },
    ]);
    const header = entries[2]!.header;
    header.linkname = '/etc/shadow';
    await sealArchive(t.agent.keyring.activeKey, t.agent.keyring.installationId, entries, path);
    await expect(readBackup(path, { keys: t.agent.keyring.masterKeys })).rejects.toMatchObject({
      code: 'corrupt_backup',
      message: expect.stringContaining('link scripts/l points to "/etc/shadow", the manifest says "a.js"'),
    });
    await rm(path);
  });
});

describe('the extraction sinks', () => {
  it('make links only once every file is written, never through or over a folder', async () => {
    const root = await tempDirForTest('gem-links-sinks-');
    const outside = await tempDirForTest('gem-links-outside-');
    const scripts = join(root, 'scripts.staging');
    const sinks = extractionSinks({
      dumpPath: join(root, 'dump'),
      folders: { scripts, config: join(root, 'config.staging') },
    });
    await sinks.onDirectory({ path: 'scripts', type: 'directory', size: 0 });
    await sinks.onDirectory({ path: 'config', type: 'directory', size: 0 });
    await sinks.onSymlink({ path: 'scripts/x', type: 'symlink', size: 0, target: outside });
    // Not made yet: a file "through" it finds no folder, and nothing reaches the outside.
    expect(await readdir(scripts)).toEqual([]);
    await expect(sinks.openMember({ path: 'scripts/x/passwd', type: 'file', size: 1 })).rejects.toThrow(
      /does not exist/,
    );
    await sinks.finish();
    expect(await readlink(join(scripts, 'x'))).toBe(outside);

    // A link never replaces a folder (or anything else) already there.
    const again = join(root, 'again');
    const other = extractionSinks({
      dumpPath: join(root, 'dump2'),
      folders: { scripts: again, config: join(root, 'c2') },
    });
    await other.onDirectory({ path: 'scripts', type: 'directory', size: 0 });
    await other.onDirectory({ path: 'config', type: 'directory', size: 0 });
    await other.onDirectory({ path: 'scripts/d', type: 'directory', size: 0 });
    await other.onSymlink({ path: 'scripts/d', type: 'symlink', size: 0, target: outside });
    await expect(other.finish()).rejects.toThrow(/already exists/);
    expect((await lstat(join(again, 'd'))).isDirectory()).toBe(true);
    await expect(
      other.onSymlink({ path: 'scripts', type: 'symlink', size: 0, target: outside }),
    ).rejects.toThrow(/folder root/);
    expect(await readdir(outside)).toEqual([]);
  });
});

describe('gem-backup create', () => {
  it('prints a warning naming a FIFO it left out (a link to it is no warning)', async () => {
    const { dataDir, env } = await seededEnvironment(pg, 'gem-links-cli-');
    try {
      const scripts = env.GEM_SCRIPTS_DIR!;
      expect(spawnSync('mkfifo', [join(scripts, 'gem.fifo')]).status).toBe(0);
      await symlink('gem.fifo', join(scripts, 'fifo-link'));
      const created = await runProcess(process.execPath, [built.path, 'create'], { env, cwd: process.cwd() });
      expect(created.code).toBe(0);
      expect(created.stdout).toMatch(/^created gem-backup-\S+/);
      expect(created.stderr.trim()).toBe(
        'warning: left out 1 entry that is neither a file, a folder nor a link (a FIFO, socket or device): ' +
          'scripts/gem.fifo; a restore will not bring it back',
      );
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
