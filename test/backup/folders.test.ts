// snapshotFolder: a folder root reached through a symlink, a missing or wrong root, links inside,
// a folder swapped for a link while the walk reads it.
import { mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { snapshotFolder } from '../../agent/backup/folders';
import type { Logger } from '../../agent/log';

let base: string;
let warnings: string[];
const log = {
  warn: (msg: string) => warnings.push(msg),
  info: () => {},
  debug: () => {},
  error: () => {},
} as unknown as Logger;

beforeEach(async () => {
  base = await mkdtemp(join(tmpdir(), 'gem-folders-'));
  warnings = [];
});
afterEach(async () => {
  await rm(base, { recursive: true, force: true });
});

describe('snapshotFolder', () => {
  it('follows a symlinked folder root (/opt/gem/scripts -> /data/scripts); links inside are kept as links', async () => {
    const real = join(base, 'data-scripts');
    await mkdir(join(real, 'macros'), { recursive: true });
    await writeFile(join(real, 'lights.js'), 'turnOn()');
    await writeFile(join(real, 'macros', 'night.js'), 'dim()');
    await symlink(join(real, 'lights.js'), join(real, 'alias.js'));
    await symlink(real, join(base, 'scripts'));

    const members = await snapshotFolder('scripts', join(base, 'scripts'), join(base, 'snap'), { log });
    expect(members.map((m) => [m.path, m.type, m.target])).toEqual([
      ['scripts', 'directory', undefined],
      ['scripts/alias.js', 'symlink', join(real, 'lights.js')],
      ['scripts/lights.js', 'file', undefined],
      ['scripts/macros', 'directory', undefined],
      ['scripts/macros/night.js', 'file', undefined],
    ]);
    expect(await readFile(join(base, 'snap', 'macros', 'night.js'), 'utf8')).toBe('dim()');
    expect(warnings).toEqual([]);
  });

  it('fails on a missing folder, naming the folder and its setting; backs it up as empty only when told', async () => {
    const missing = join(base, 'nowhere', 'config');
    await expect(snapshotFolder('config', missing, join(base, 'snap1'), { log })).rejects.toMatchObject({
      code: 'unprocessable',
      message: expect.stringMatching(/config folder .*nowhere\/config \(GEM_CONFIG_DIR\) does not exist/),
      details: { folder: 'config', setting: 'GEM_CONFIG_DIR', path: missing },
    });
    // A dangling link (the disk behind it not mounted) is missing too.
    await symlink(join(base, 'unmounted'), join(base, 'scripts'));
    await expect(snapshotFolder('scripts', join(base, 'scripts'), join(base, 'snap2'))).rejects.toMatchObject(
      {
        code: 'unprocessable',
        message: expect.stringContaining('GEM_SCRIPTS_DIR'),
      },
    );

    const empty = await snapshotFolder('config', missing, join(base, 'snap3'), { log, missing: 'empty' });
    expect(empty.map((m) => m.path)).toEqual(['config']);
    expect(warnings).toEqual([expect.stringContaining('does not exist; backing it up as empty')]);
  });

  it('fails on a folder setting that names a file', async () => {
    await writeFile(join(base, 'scripts'), 'not a folder');
    await expect(snapshotFolder('scripts', join(base, 'scripts'), join(base, 'snap'))).rejects.toMatchObject({
      code: 'unprocessable',
      message: expect.stringContaining('is not a folder'),
    });
  });

  // The agent runs as root; the folder may be writable by a script author, who could swap a folder
  // the walk has seen for a link to /etc between two steps: what is read must stay inside the folder.
  describe('a folder replaced by a link to outside while the walk reads it', () => {
    const SECRET = 'root:$6$secret-hash:19000:0:99999:7:::';
    let scripts: string;
    let outside: string;

    beforeEach(async () => {
      scripts = join(base, 'scripts');
      outside = join(base, 'etc');
      await mkdir(join(scripts, 'sub'), { recursive: true });
      await writeFile(join(scripts, 'sub', 'run.js'), 'run()');
      await writeFile(join(scripts, 'top.js'), 'top()');
      await mkdir(outside);
      await writeFile(join(outside, 'run.js'), SECRET);
      await writeFile(join(outside, 'shadow'), SECRET);
    });

    const swapSub = async () => {
      await rename(join(scripts, 'sub'), join(base, 'moved-away'));
      await symlink(outside, join(scripts, 'sub'));
    };

    /** Every byte of the snapshot on disk, to see nothing from outside was copied. */
    const snapshotText = async (dir: string): Promise<string> => {
      const names = await readdir(dir, { recursive: true, withFileTypes: true });
      const files = names.filter((n) => n.isFile()).map((n) => join(n.parentPath, n.name));
      return (await Promise.all(files.map((f) => readFile(f, 'utf8')))).join('\n');
    };

    it('lists nothing from outside when the folder is swapped after its lstat, and still succeeds', async () => {
      const snap = join(base, 'snap');
      const members = await snapshotFolder('scripts', scripts, snap, {
        log,
        afterLstat: async (path) => {
          if (path === 'scripts/sub') await swapSub();
        },
      });
      const paths = members.map((m) => m.path);
      expect(paths).not.toContain('scripts/sub/shadow');
      expect(paths.filter((p) => p.startsWith('scripts/sub/'))).toEqual([]);
      expect(paths).toEqual(expect.arrayContaining(['scripts', 'scripts/top.js']));
      expect(await snapshotText(snap)).not.toContain('secret-hash');
      expect(warnings).toEqual([expect.stringContaining('removed or replaced')]);
    });

    it('reads nothing from outside when the folder is swapped after a file in it was seen', async () => {
      const snap = join(base, 'snap');
      const members = await snapshotFolder('scripts', scripts, snap, {
        log,
        afterLstat: async (path) => {
          if (path === 'scripts/sub/run.js') await swapSub();
        },
      });
      expect(await snapshotText(snap)).not.toContain('secret-hash');
      expect(members.map((m) => m.path)).not.toContain('scripts/sub/shadow');
      // The file read is the one the walk found, in the folder it opened (now moved away).
      const run = members.find((m) => m.path === 'scripts/sub/run.js');
      expect(await readFile(run!.localPath, 'utf8')).toBe('run()');
    });
  });
});
