/** Removing a folder tree the agent owns even where a folder in it is read-only (a restored 0o555 folder). */
import { chmod, lstat, readdir, rm, unlink } from 'node:fs/promises';

const SLASH = Buffer.from('/');

/**
 * `rm -rf path`. An agent that does not run as root cannot delete the entries of a folder without
 * owner write permission, which a restore now gives back as recorded: if refused (EACCES, EPERM), the
 * tree's folders are made readable, writable and searchable by their owner and the removal runs again.
 * A file that cannot be removed even so (immutable: chattr +i) fails it with that file's own error.
 */
export async function removeTree(path: string | Buffer): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch (error) {
    const cause = await refusal(error);
    if (cause.code !== 'EACCES' && cause.code !== 'EPERM') throw cause;
    await openUpFolders(typeof path === 'string' ? Buffer.from(path) : path);
    await rm(path, { recursive: true, force: true }).catch(async (again: unknown) => {
      throw await refusal(again);
    });
  }
}

/**
 * Why a recursive removal failed. Node's, refused the unlink of a file (EPERM), tries it as a folder and
 * reports that instead ("ENOTDIR: not a directory, scandir '<file>'"): the unlink of that file, which
 * the removal was to do anyway, then says the cause ("EPERM: operation not permitted, unlink '<file>'").
 */
async function refusal(error: unknown): Promise<NodeJS.ErrnoException> {
  const failure = error as NodeJS.ErrnoException;
  if (failure.code !== 'ENOTDIR' || failure.syscall !== 'scandir' || typeof failure.path !== 'string')
    return failure;
  return unlink(failure.path).then(
    () => failure,
    (cause: NodeJS.ErrnoException) => (cause.code === 'ENOENT' ? failure : cause),
  );
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
