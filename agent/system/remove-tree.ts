/** Removing a folder tree the agent owns even where a folder in it is read-only (a restored 0o555 folder). */
import { chmod, lstat, readdir, rm } from 'node:fs/promises';

const SLASH = Buffer.from('/');

/**
 * `rm -rf path`. An agent that does not run as root cannot delete the entries of a folder without
 * owner write permission, which a restore now gives back as recorded: if refused (EACCES, EPERM), the
 * tree's folders are made readable, writable and searchable by their owner and the removal runs again.
 */
export async function removeTree(path: string | Buffer): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') throw error;
    await openUpFolders(typeof path === 'string' ? Buffer.from(path) : path);
    await rm(path, { recursive: true, force: true });
  }
}

/**
 * Adds u+rwx to every folder under `path` (never through a link: lstat). Names are read and used as
 * bytes: one that is not UTF-8 (a Latin-1 "caf\xe9") read as a string would name nothing.
 */
async function openUpFolders(path: Buffer): Promise<void> {
  const info = await lstat(path).catch(() => undefined);
  if (!info?.isDirectory()) return;
  if ((info.mode & 0o700) !== 0o700) await chmod(path, (info.mode & 0o7777) | 0o700).catch(() => {});
  for (const name of await readdir(path, { encoding: 'buffer' }).catch(() => [] as Buffer[]))
    await openUpFolders(Buffer.concat([path, SLASH, name]));
}
