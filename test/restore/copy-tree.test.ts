// The restore's checks of a live folder for an agent that does not run as root: the copy swap refuses a
// mount point it could not empty, and any swap a folder whose parent it may not stage in, before
// anything is staged or removed. The copy swap's copy and emptying of a live folder whose entries are
// swapped for links to outside while they run (the agent runs as root; the folder may be others').
import {
  chmod,
  chown,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyEntries, emptyFolder } from '../../agent/restore/copy-tree';
import { NOBODY, runAsNobody } from '../services/as-nobody';
import { folderFingerprint } from './helpers';

let dir: string;

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('this test runs as root: it hands its folder to uid 65534');
  dir = await mkdtemp(join(tmpdir(), 'gem-copy-tree-'));
  await chown(dir, NOBODY, NOBODY);
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** As nobody, in a child process: checkCopyable on `folder`, then emptyFolder as the swap's empty step; resolves with what failed. */
function checkThenEmptyAsNobody(folder: string) {
  const module = pathToFileURL(resolve('agent/restore/copy-tree.ts')).href;
  const code = `import(${JSON.stringify(module)}).then(async (m) => { await m.checkCopyable(process.env.FOLDER); await m.emptyFolder(process.env.FOLDER); })`;
  return runAsNobody(code, { FOLDER: folder, HOME: dir });
}

describe('checkCopyable, for an agent not running as root', () => {
  it('refuses a read-only folder it owns, which the swap could not empty, and nothing is removed', async () => {
    // A volume's root the agent's user owns, read-only (0o555): its entries cannot be unlinked, and the
    // swap empties it entry by entry (a folder inside would lose its files before its own removal failed).
    const volume = join(dir, 'volume');
    await mkdir(join(volume, 'devices'), { recursive: true });
    await writeFile(join(volume, 'devices', 'hue.json'), '{"bridge":"10.0.0.2"}\n');
    await writeFile(join(volume, 'gem.json'), '{}\n');
    for (const path of [
      volume,
      join(volume, 'devices'),
      join(volume, 'devices', 'hue.json'),
      join(volume, 'gem.json'),
    ])
      await chown(path, NOBODY, NOBODY);
    await chmod(volume, 0o555);
    const before = await folderFingerprint(volume);

    const result = await checkThenEmptyAsNobody(volume);
    expect(await folderFingerprint(volume)).toEqual(before);
    expect(result.stderr).toMatch(/^unprocessable cannot swap/);
  });
});

/** As nobody, in a child process: checkStageable on the scripts folder `live`; resolves with what failed. */
function checkStageableAsNobody(live: string) {
  const module = pathToFileURL(resolve('agent/restore/swap.ts')).href;
  const code = `import(${JSON.stringify(module)}).then((m) => m.checkStageable({ root: 'scripts', live: process.env.FOLDER }))`;
  return runAsNobody(code, { FOLDER: live, HOME: dir });
}

describe('checkStageable, for an agent not running as root', () => {
  it('refuses a folder whose parent it may not write, saying so without telling it to chown the parent', async () => {
    // GEM_SCRIPTS_DIR=/opt/gem-scripts as an agent user: the folder is the user's, /opt is root's.
    const opt = join(dir, 'opt');
    const live = join(opt, 'gem-scripts');
    await mkdir(live, { recursive: true });
    await chown(live, NOBODY, NOBODY);
    await chmod(opt, 0o755);
    const result = await checkStageableAsNobody(live);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('permission_denied');
    expect(result.stderr).toContain(
      `cannot restore the scripts folder ${live}: a restore stages it beside the live folder and renames it into place, and the agent's user nobody may not create folders in ${opt}`,
    );
    expect(result.stderr).toContain('otherwise set GEM_SCRIPTS_DIR to a folder inside one that user owns');
    expect(result.stderr).not.toContain('chown');
    // A parent it owns: nothing to say.
    await chown(opt, NOBODY, NOBODY);
    expect(await checkStageableAsNobody(live)).toEqual({ code: 0, stderr: '' });
  });
});

// A script author who may write in the live scripts folder swaps an entry the root agent has lstat()ed
// for a link to outside: nothing from outside may be copied (the copy aside is owned by that author).
describe('copyEntries, an entry swapped for a link to outside after its lstat', () => {
  const SECRET = 'root:$6$secret-hash:19000:0:99999:7:::';
  let live: string;
  let outside: string;
  let copy: string;

  beforeAll(async () => {
    live = join(dir, 'swapped-live');
    outside = join(dir, 'swapped-etc');
    await mkdir(outside);
    await writeFile(join(outside, 'shadow'), SECRET);
    await writeFile(join(outside, 'run.js'), SECRET);
  });

  const plant = async (name: string) => {
    await rm(live, { recursive: true, force: true });
    await mkdir(join(live, 'sub'), { recursive: true });
    await writeFile(join(live, 'sub', 'run.js'), 'run()');
    await writeFile(join(live, 'top.js'), 'top()');
    copy = join(dir, `copy-${name}`);
    await mkdir(copy);
  };

  /** Every byte of the copy, to see nothing from outside was copied. */
  const copiedText = async (): Promise<string> => {
    const names = await readdir(copy, { recursive: true, withFileTypes: true });
    const files = names.filter((n) => n.isFile()).map((n) => join(n.parentPath, n.name));
    return (await Promise.all(files.map((f) => readFile(f, 'utf8')))).join('\n');
  };

  /** Copies `live` into `copy`, swapping `swapped` (a path under live) for a link to `to` right after its lstat. */
  const copySwapping = (swapped: string, to: string) =>
    copyEntries(live, copy, {
      afterLstat: async (path) => {
        if (path.toString() !== join(live, swapped)) return;
        await rename(join(live, swapped), join(dir, `moved-${swapped.replaceAll('/', '-')}`));
        await symlink(to, join(live, swapped));
      },
    });

  it('refuses a file swapped for a link to a secret file, copying none of its bytes', async () => {
    await plant('during');
    const failure = await copySwapping('top.js', join(outside, 'shadow')).catch((error: unknown) => error);
    expect(await copiedText()).not.toContain('secret-hash');
    expect(failure).toMatchObject({
      code: 'conflict',
      message: expect.stringContaining(`cannot copy ${join(live, 'top.js')}: it changed while it was copied`),
    });
  });

  it('refuses a folder swapped for a link to an outside folder, copying nothing from it', async () => {
    await plant('folder');
    const failure = await copySwapping('sub', outside).catch((error: unknown) => error);
    expect(await copiedText()).not.toContain('secret-hash');
    expect(await readdir(join(copy, 'sub')).catch(() => [])).not.toContain('shadow');
    expect(failure).toMatchObject({
      code: 'conflict',
      message: expect.stringContaining(`cannot copy ${join(live, 'sub')}: it changed while it was copied`),
    });
  });
});

// Refilling the live folder, the agent (root) writes into a folder a script author may write in: an
// entry the copy has just made, swapped for a link to outside, must not lead root's writes outside.
describe('copyEntries, a target entry swapped for a link to outside once made', () => {
  let live: string;
  let outside: string;
  let copy: string;

  const plant = async (name: string) => {
    live = join(dir, `made-${name}`);
    outside = join(dir, `made-${name}-etc`);
    copy = join(dir, `made-${name}-copy`);
    await mkdir(join(live, 'sub'), { recursive: true });
    await writeFile(join(live, 'sub', 'run.js'), 'run()');
    await writeFile(join(live, 'top.js'), 'top()', { mode: 0o644 });
    await mkdir(outside);
    await writeFile(join(outside, 'shadow'), 'root:$6$secret-hash:19000:0:99999:7:::', { mode: 0o600 });
    await chmod(join(outside, 'shadow'), 0o600);
    await mkdir(copy);
  };

  /** Copies `live` into `copy`, swapping `swapped` (a path under copy) for a link to `to` right after it is made. */
  const copySwapping = (swapped: string, to: string) =>
    copyEntries(live, copy, {
      afterCreate: async (path) => {
        if (path.toString() !== join(copy, swapped)) return;
        await rename(join(copy, swapped), `${copy}-moved`);
        await symlink(to, join(copy, swapped));
      },
    });

  it('creates nothing in the outside folder a made folder was swapped for, and fails', async () => {
    await plant('folder');
    const failure = await copySwapping('sub', outside).catch((error: unknown) => error);
    expect(await readdir(outside)).toEqual(['shadow']);
    expect(failure).toMatchObject({
      code: 'conflict',
      message: expect.stringContaining(`cannot copy ${join(copy, 'sub')}: it changed while it was copied`),
    });
  });

  it('leaves the mode of the outside file a made file was swapped for, and fails', async () => {
    await plant('file');
    const failure = await copySwapping('top.js', join(outside, 'shadow')).catch((error: unknown) => error);
    expect((await stat(join(outside, 'shadow'))).mode & 0o7777).toBe(0o600);
    expect(failure).toMatchObject({
      code: 'conflict',
      message: expect.stringContaining(`cannot copy ${join(copy, 'top.js')}: it changed while it was copied`),
    });
  });
});

// The swap empties the live folder as root: a folder in it swapped for a link to outside while the
// removal walks it must not lead the removal outside (Node's recursive rm walks by path).
describe('emptyFolder, a folder swapped for a link to outside while it is removed', () => {
  let live: string;
  let outside: string;

  const plant = async (name: string) => {
    live = join(dir, `emptied-${name}`);
    outside = join(dir, `emptied-${name}-etc`);
    await mkdir(join(live, 'sub'), { recursive: true });
    await mkdir(outside);
    for (const file of ['a.js', 'b.js', 'c.js']) {
      await writeFile(join(live, 'sub', file), 'run()');
      await writeFile(join(outside, file), 'keep me');
    }
    await mkdir(join(live, 'sub', 'inner'));
    await writeFile(join(live, 'sub', 'inner', 'd.js'), 'run()');
    await writeFile(join(live, 'top.js'), 'top()');
  };

  /** Empties `live`, swapping its `sub` for a link to `outside` once folder `when` is found to be one. */
  const emptySwapping = (when: string) =>
    emptyFolder(live, {
      beforeOpen: async (path) => {
        if (path.toString() !== join(live, when)) return;
        await rename(join(live, 'sub'), `${live}-moved`);
        await symlink(outside, join(live, 'sub'));
      },
    });

  it('removes the link a folder became once found to be one, and nothing outside', async () => {
    await plant('folder');
    const failure = await emptySwapping('sub').catch((error: unknown) => error);
    expect((await readdir(outside)).sort()).toEqual(['a.js', 'b.js', 'c.js']);
    expect(failure).toBeUndefined();
    expect(await readdir(live)).toEqual([]);
  });

  it('removes nothing outside when the folder is swapped while its entries are removed', async () => {
    await plant('during');
    const failure = await emptySwapping('sub/inner').catch((error: unknown) => error);
    expect((await readdir(outside)).sort()).toEqual(['a.js', 'b.js', 'c.js']);
    // The files removed are those of the folder opened (moved away); the link left names the cause.
    expect(await readdir(`${live}-moved`)).toEqual([]);
    expect(failure).toMatchObject({ code: 'ENOTDIR', path: join(live, 'sub') });
  });
});
