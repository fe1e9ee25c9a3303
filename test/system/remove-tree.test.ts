// removeTree: an agent that does not run as root still removes a replaced copy holding read-only folders;
// one running as root never removes outside the tree when a folder in it is swapped for a link.
import {
  chmod,
  chown,
  mkdir,
  mkdtemp,
  readdir,
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
import { removeTree } from '../../agent/system/remove-tree';
import { NOBODY, runAsNobody } from '../services/as-nobody';

let dir: string;

beforeAll(async () => {
  if (process.getuid?.() !== 0)
    throw new Error('this test runs as root: it hands its tree to uid 65534 (nobody)');
  dir = await mkdtemp(join(tmpdir(), 'gem-remove-tree-'));
  await chown(dir, NOBODY, NOBODY);
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A restored folder as a restore now leaves it: a 0o555 folder with a file, and a 0o000 one inside. */
async function plantTree(name: string): Promise<string> {
  const root = join(dir, name);
  const readOnly = join(root, 'drivers');
  const closed = join(readOnly, 'vendor');
  await mkdir(closed, { recursive: true });
  await writeFile(join(readOnly, 'driver.js'), '// driver\n');
  await writeFile(join(closed, 'blob.bin'), 'x');
  for (const path of [root, readOnly, closed, join(readOnly, 'driver.js'), join(closed, 'blob.bin')]) {
    await chown(path, NOBODY, NOBODY);
  }
  await chmod(closed, 0o000);
  await chmod(readOnly, 0o555);
  return root;
}

/** Runs `how` on `path` in a child process as nobody; resolves with its exit code and stderr. */
function removeAsNobody(how: 'rm' | 'removeTree', path: string) {
  const module = pathToFileURL(resolve('agent/system/remove-tree.ts')).href;
  const code =
    how === 'rm'
      ? `require('node:fs/promises').rm(process.env.TREE, { recursive: true, force: true })`
      : `import(${JSON.stringify(module)}).then((m) => m.removeTree(process.env.TREE))`;
  return runAsNobody(code, { TREE: path, HOME: dir });
}

describe('removeTree', () => {
  it('is needed: a plain rm as a non-root owner fails on a read-only folder', async () => {
    const tree = await plantTree('plain');
    const result = await removeAsNobody('rm', tree);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('EACCES');
    await expect(stat(tree)).resolves.toBeDefined();
  });

  it('opens up read-only folders whose names are not UTF-8 (read by their bytes)', async () => {
    // A Latin-1 "dr\xe9" (0o555) holding "v\xff\xfe" (0o000): read as text, such a name becomes
    // U+FFFD, names nothing, and its folder stays closed (EACCES).
    const tree = join(dir, 'raw');
    const readOnly = Buffer.concat([Buffer.from(`${tree}/dr`), Buffer.from([0xe9])]);
    const closed = Buffer.concat([readOnly, Buffer.from('/v'), Buffer.from([0xff, 0xfe])]);
    const file = Buffer.concat([closed, Buffer.from('/blob'), Buffer.from([0xfa])]);
    await mkdir(closed, { recursive: true });
    await writeFile(file, 'x');
    for (const path of [tree, readOnly, closed, file]) await chown(path, NOBODY, NOBODY);
    await chmod(closed, 0o000);
    await chmod(readOnly, 0o555);
    const plain = await removeAsNobody('rm', tree);
    expect(plain.stderr).toContain('EACCES');
    const result = await removeAsNobody('removeTree', tree);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    await expect(stat(tree)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('removes the whole tree as its non-root owner, read-only folders included', async () => {
    const tree = await plantTree('tree');
    const result = await removeAsNobody('removeTree', tree);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    await expect(stat(tree)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('removeTree, a folder in the tree swapped for a link to outside once found to be one', () => {
  it('removes the link it became, and nothing outside', async () => {
    const tree = join(dir, 'swapped');
    const outside = join(dir, 'swapped-etc');
    await mkdir(join(tree, 'drivers'), { recursive: true });
    await writeFile(join(tree, 'drivers', 'driver.js'), '// driver\n');
    await mkdir(outside);
    await writeFile(join(outside, 'driver.js'), 'keep me');
    const failure = await removeTree(tree, {
      beforeOpen: async (path) => {
        if (path.toString() !== join(tree, 'drivers')) return;
        await rename(join(tree, 'drivers'), join(dir, 'swapped-moved'));
        await symlink(outside, join(tree, 'drivers'));
      },
    }).catch((error: unknown) => error);
    expect((await readdir(outside)).sort()).toEqual(['driver.js']);
    expect(failure).toBeUndefined();
    await expect(stat(tree)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
