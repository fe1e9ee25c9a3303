/** Small tmpfs file systems for disk-space tests (root only): mounted, filled, and unmounted again. */
import { statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { expect } from 'vitest';
import { runProcess } from '../../agent/system/spawn';

/** The tmpfs mounts one test file made, unmounted in the reverse order at its end. */
export class TmpfsMounts {
  private readonly mounted: string[] = [];

  /** Mounts a tmpfs of `size` (mount's words: 16m, 256k) on `dir`, mode 755. */
  async mount(dir: string, size: string): Promise<void> {
    const result = await runProcess('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=755`, 'tmpfs', dir]);
    if (result.code !== 0) throw new Error(`mounting a tmpfs needs root: ${result.stderr.trim()}`);
    this.mounted.push(dir);
  }

  /** Records a mount made otherwise (an overlayfs on top of one), to be unmounted with the others. */
  adopt(dir: string): void {
    this.mounted.push(dir);
  }

  /** Unmounts `dir`, mounted here. */
  async unmount(dir: string): Promise<void> {
    await runProcess('umount', [dir]);
    this.mounted.splice(this.mounted.lastIndexOf(dir), 1);
  }

  /** Unmounts every mount still made here, the newest first. */
  async unmountAll(): Promise<void> {
    for (const dir of this.mounted.reverse()) await runProcess('umount', [dir]);
    this.mounted.length = 0;
  }
}

/** The bytes free on the file system of `dir`. */
export async function freeOn(dir: string): Promise<number> {
  const s = await statfs(dir);
  return Number(s.bavail) * Number(s.bsize);
}

/** Fills the file system of `dir` until `left` bytes are free, with the file `dir/filler`; returns its path. */
export async function fillTo(dir: string, left: number): Promise<string> {
  const filler = join(dir, 'filler');
  const size = (await freeOn(dir)) - left;
  expect(size).toBeGreaterThan(0);
  const result = await runProcess('fallocate', ['-l', String(size), filler]);
  if (result.code !== 0) throw new Error(`fallocate: ${result.stderr.trim()}`);
  return filler;
}
