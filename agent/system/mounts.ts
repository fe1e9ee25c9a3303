/** Mount points, from /proc/self/mountinfo: which folders a restore cannot rename or empty. */
import { readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Every mount point of this process's view (bind mounts included), or undefined where /proc is not there. */
async function mountPoints(): Promise<string[] | undefined> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8').catch(() => undefined);
  if (mountinfo === undefined) return undefined;
  // Field 5 is the mount point, with space, tab, newline and backslash written as octal escapes.
  const decodeField = (field: string) =>
    field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
  return mountinfo
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => decodeField(line.split(' ')[4] ?? ''));
}

/**
 * Whether `path` is a mount point: listed as one in /proc/self/mountinfo, or, where that cannot be
 * read, on another device than its parent.
 */
export async function isMountPoint(path: string): Promise<boolean> {
  const mounts = await mountPoints();
  if (mounts !== undefined) return mounts.includes(path);
  const [own, parent] = await Promise.all([stat(path), stat(dirname(path))]);
  return own.dev !== parent.dev;
}

/** Mount points strictly inside folder `path` (a file or folder mounted into a Docker volume, say). */
export async function mountPointsInside(path: string): Promise<string[]> {
  return ((await mountPoints()) ?? []).filter((mount) => mount.startsWith(`${path}/`));
}
