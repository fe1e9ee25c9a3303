// snapshotFolder: a folder root reached through a symlink, a missing or wrong root, links inside.
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
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
});
