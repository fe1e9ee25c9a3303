/** Removing a folder tree the agent owns even where a folder in it is read-only (a restored 0o555 folder). */
import { constants } from 'node:fs';
import { chmod, lstat, open, readdir, rmdir, unlink } from 'node:fs/promises';

const SLASH = Buffer.from('/');

export interface RemoveOptions {
  /** For tests: called with the path of each entry found to be a folder, before it is opened, so that a test can swap it. */
  beforeOpen?: (path: Buffer) => Promise<void> | void;
}

/**
 * `rm -rf path`. An agent that does not run as root cannot delete the entries of a folder without
 * owner write permission, which a restore now gives back as recorded: if refused (EACCES, EPERM), the
 * tree's folders are made readable, writable and searchable by their owner and the removal runs again.
 * A file that cannot be removed even so (immutable: chattr +i) fails it with that file's own error.
 */
export async function removeTree(path: string | Buffer, options: RemoveOptions = {}): Promise<void> {
  const bytes = typeof path === 'string' ? Buffer.from(path) : path;
  try {
    await removeAt(bytes, bytes, options);
  } catch (error) {
    const cause = error as NodeJS.ErrnoException;
    if (cause.code !== 'EACCES' && cause.code !== 'EPERM') throw cause;
    await openUpFolders(bytes);
    await removeAt(bytes, bytes, options);
  }
}

// The tree may be writable by others (a live folder the copy swap empties; the agent runs as root).
// Each folder in it is opened once, never through a link, and its entries are removed through that
// open folder (`/proc/self/fd/<fd>/<name>`, which is openat()), never by a path that crosses a name
// replaced since: a folder swapped for a link once found to be one is removed as the link it became, and
// one swapped while its entries are removed still has those of the folder opened removed, none outside.
const FOLDER = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;

/**
 * Removes the entry reached as `at` (`path`, for errors): unlinked, or, if it is a folder (EISDIR), its
 * entries first, through it opened.
 */
async function removeAt(at: Buffer, path: Buffer, options: RemoveOptions): Promise<void> {
  const unlinked = await unlink(at).then(
    () => true,
    (error: NodeJS.ErrnoException) => (error.code === 'EISDIR' ? false : naming(path)(error) === undefined),
  );
  if (unlinked) return;
  await options.beforeOpen?.(path);
  const folder = await open(at, FOLDER).catch((error: NodeJS.ErrnoException) =>
    // Replaced by a link or a file since: removed as what it is now.
    error.code === 'ELOOP' || error.code === 'ENOTDIR' ? undefined : naming(path)(error),
  );
  if (!folder) {
    await unlink(at).catch(naming(path));
    return;
  }
  try {
    const inside = Buffer.from(`/proc/self/fd/${folder.fd}`);
    for (const name of (await readdir(inside, { encoding: 'buffer' }).catch(naming(path))) ?? [])
      await removeAt(Buffer.concat([inside, SLASH, name]), Buffer.concat([path, SLASH, name]), options);
  } finally {
    await folder.close();
  }
  await rmdir(at).catch(naming(path));
}

/**
 * For an error of a call reaching `path` through its open folder: nothing if the entry is already gone
 * (as `rm -f`); else the error, naming `path` rather than `/proc/self/fd/...`.
 */
function naming(path: Buffer) {
  return (error: NodeJS.ErrnoException): undefined => {
    if (error.code === 'ENOENT') return undefined;
    const named = path.toString();
    if (error.path !== undefined)
      error.message = error.message.replace(`'${String(error.path)}'`, `'${named}'`);
    error.path = named;
    throw error;
  };
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
