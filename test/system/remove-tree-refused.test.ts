// removeTree refused by a file it cannot remove (immutable: chattr +i) says so: that file's EPERM, not Node's ENOTDIR.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { removeTree } from '../../agent/system/remove-tree';
import { runProcess } from '../../agent/system/spawn';

let dir: string;
const immutable: string[] = [];

async function chattr(flag: '+i' | '-i', path: string): Promise<void> {
  const result = await runProcess('chattr', [flag, path]);
  expect(result.code, result.stderr).toBe(0);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-remove-tree-refused-'));
});
afterAll(async () => {
  for (const path of immutable) await runProcess('chattr', ['-i', path]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('removeTree refused by an immutable file', () => {
  it.each([
    ['a string', (path: string) => path],
    ['bytes', (path: string) => Buffer.from(path)],
  ])(
    'named by %s: fails with the EPERM of that file, keeps it, and removes the tree once it can go',
    async (_, as) => {
      const tree = join(dir, `tree-${immutable.length}`);
      const file = join(tree, 'drivers', 'driver.js');
      await mkdir(join(tree, 'drivers'), { recursive: true });
      await writeFile(file, '// driver\n');
      await chattr('+i', file);
      immutable.push(file);
      await expect(removeTree(as(tree))).rejects.toMatchObject({
        code: 'EPERM',
        syscall: 'unlink',
        path: file,
        message: `EPERM: operation not permitted, unlink '${file}'`,
      });
      expect(existsSync(file)).toBe(true);
      await chattr('-i', file);
      await removeTree(as(tree));
      expect(existsSync(tree)).toBe(false);
    },
  );
});
