/** Removing a folder tree the agent owns even where a folder in it is read-only (a restored 0o555 folder). */
import { chmod, lstat, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * `rm -rf path`. An agent that does not run as root cannot delete the entries of a folder without
 * owner write permission, which a restore now gives back as recorded: if refused (EACCES, EPERM), the
 * tree's folders are made readable, writable and searchable by their owner and the removal runs again.
 */
export async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw error;
    await openUpFolders(path);
    await rm(path, { recursive: true, force: true });
  }
}

/** Adds u+rwx to every folder under `path` (never through a link: lstat). */
async function openUpFolders(path: string): Promise<void> {
  const info = await lstat(path).catch(() => undefined);
  if (!info?.isDirectory()) return;
  if ((info.mode & 0o700) !== 0o700) await chmod(path, (info.mode & 0o7777) | 0o700).catch(() => {});
  for (const name of await readdir(path).catch(() => [] as string[])) await openUpFolders(join(path, name));
}
