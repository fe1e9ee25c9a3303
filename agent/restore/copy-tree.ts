/** Copying a folder's entries between file systems, for the swap of a live folder that is a mount point. */
import { constants } from 'node:fs';
import {
  access,
  copyFile,
  type FileHandle,
  lchown,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  readlink,
  symlink,
} from 'node:fs/promises';
import { standInName } from '../backup/manifest';
import { AppError } from '../errors';
import { fsyncFile } from '../system/atomic-file';
import { mountPointsInside } from '../system/mounts';
import { type RemoveOptions, removeTree } from '../system/remove-tree';

const asRoot = process.getuid?.() === 0;
const BLOCK = 4096;

// Names are read and used as bytes: Linux allows any byte but NUL and '/' in a name, and one that is
// not UTF-8 (a Latin-1 "caf\xe9") read as a string would name nothing (lstat: ENOENT).
const SLASH = Buffer.from('/');
const bytesOf = (path: string | Buffer) => (typeof path === 'string' ? Buffer.from(path) : path);
const join = (dir: Buffer, name: Buffer) => Buffer.concat([dir, SLASH, name]);
const entriesOf = (folder: Buffer) => readdir(folder, { encoding: 'buffer' });
/** A path's bytes for a message: as UTF-8 text, bytes that are not shown as `%XX` (manifest.ts). */
const shown = (path: Buffer) => standInName(path);

/**
 * Copies every entry inside folder `from` into the existing folder `to` (on any file system): files
 * with their bytes, mode, times and (as root) owner, folders recursively, symbolic links as links.
 * Each file and folder is fsynced before this returns. An entry of another kind (a socket, a FIFO, a
 * device) is refused with `unprocessable`; an entry already in `to` fails the copy (EEXIST).
 */
export async function copyEntries(
  from: string | Buffer,
  to: string | Buffer,
  options: CopyOptions = {},
): Promise<void> {
  const folder = await open(bytesOf(to), FOLDER);
  try {
    await copyTree(bytesOf(from), bytesOf(to), folder, options);
    await folder.sync();
  } finally {
    await folder.close();
  }
}

export interface CopyOptions {
  /** For tests: called after each entry's lstat, before it is copied, with its path, so that a test can swap it. */
  afterLstat?: (path: Buffer) => Promise<void> | void;
  /** For tests: called after each target entry is made, before its attributes are set, with its path, so that a test can swap it. */
  afterCreate?: (path: Buffer) => Promise<void> | void;
}

// The folder copied from may be writable by others (a live folder; the agent runs as root). Each of its
// folders is opened once, never through a link (but the top one, as configured), and its entries are
// reached through that open folder (`/proc/self/fd/<fd>/<name>`, which is openat()): an entry swapped
// for a link after its lstat is refused, never followed, and no path read crosses a replaced name.
// The folder copied into may be too (the live folder refilled): its entries are made the same way, in
// its folders opened as made, a file created O_EXCL|O_NOFOLLOW, and a file's or folder's owner, mode
// and times are set and fsynced through it open. An entry made there that is swapped for a link (to
// /etc/cron.d, /etc/shadow) never leads a write outside, and fails the copy (`conflict`).
const FOLDER = constants.O_RDONLY | constants.O_DIRECTORY;
const CREATE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const opened = (fd: number) => Buffer.from(`/proc/self/fd/${fd}`);

/** Copies the entries of `from` into `to`, open as `into`; `opening` reaches `from` through its open parent. */
async function copyTree(
  from: Buffer,
  to: Buffer,
  into: FileHandle,
  options: CopyOptions,
  opening?: Buffer,
): Promise<void> {
  const folder = await open(opening ?? from, opening ? FOLDER | constants.O_NOFOLLOW : FOLDER).catch(
    (error: NodeJS.ErrnoException) => {
      throw error.code === 'ELOOP' || error.code === 'ENOTDIR' ? changed(from) : error;
    },
  );
  try {
    const inside = opened(folder.fd);
    const intoInside = opened(into.fd);
    for (const name of await entriesOf(inside)) {
      const source = join(from, name);
      const entry = join(inside, name);
      const target = join(to, name);
      const made = join(intoInside, name);
      const info = await lstat(entry);
      await options.afterLstat?.(source);
      if (info.isDirectory()) {
        await mkdir(made, { mode: 0o700 }).catch(naming(target));
        await options.afterCreate?.(target);
        const copy = await open(made, FOLDER | constants.O_NOFOLLOW).catch((error: NodeJS.ErrnoException) => {
          throw error.code === 'ELOOP' || error.code === 'ENOTDIR' ? changed(target) : naming(target)(error);
        });
        try {
          await copyTree(source, target, copy, options, entry);
          await setAttributes(copy, info, made, target);
        } finally {
          await copy.close();
        }
      } else if (info.isFile()) {
        await copyFileAt(entry, info, source, made, target, options);
      } else if (info.isSymbolicLink()) {
        const text = await readlink(entry, { encoding: 'buffer' }).catch((error: NodeJS.ErrnoException) => {
          throw error.code === 'EINVAL' ? changed(source) : error;
        });
        await symlink(text, made).catch(naming(target));
        await options.afterCreate?.(target);
        // A link has no handle to set it through (and chmod would follow it): its owner and times are
        // set on the name, which lchown and lutimes never follow, in the folder opened as made.
        if (asRoot) await lchown(made, info.uid, info.gid).catch(naming(target));
        await lutimes(made, info.atime, info.mtime).catch(naming(target));
      } else {
        throw uncopyable(source);
      }
    }
  } finally {
    await folder.close();
  }
}

/**
 * Copies file `entry` (reached through its open folder) to `made` (`target`, reached through its open
 * folder): opened without following a link or blocking (a FIFO), and refused unless it is still the
 * file lstat saw (`info`); the copy is created new, never through a link, and written through it open.
 */
async function copyFileAt(
  entry: Buffer,
  info: Attributes & { dev: number; ino: number },
  source: Buffer,
  made: Buffer,
  target: Buffer,
  options: CopyOptions,
) {
  const file = await open(entry, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(
    (error: NodeJS.ErrnoException) => {
      throw error.code === 'ELOOP' ? changed(source) : error;
    },
  );
  try {
    const now = await file.stat();
    if (!now.isFile() || now.dev !== info.dev || now.ino !== info.ino) throw changed(source);
    const copy = await open(made, CREATE, 0o600).catch(naming(target));
    try {
      // Both reached as the files open: the bytes go into the file created, whatever its name is now.
      await copyFile(opened(file.fd), opened(copy.fd)).catch(naming(source, target));
      await options.afterCreate?.(target);
      await setAttributes(copy, info, made, target);
    } finally {
      await copy.close();
    }
  } finally {
    await file.close();
  }
}

type Attributes = { mode: number; uid: number; gid: number; atime: Date; mtime: Date };

/**
 * Gives the file or folder made at `made` (`target`), open as `copy`, the mode, owner (as root only) and
 * times of `info`, and fsyncs it; then refuses it unless `made` still names it (swapped since).
 */
async function setAttributes(copy: FileHandle, info: Attributes, made: Buffer, target: Buffer) {
  try {
    if (asRoot) await copy.chown(info.uid, info.gid);
    // A mode after the owner: chown clears setuid and setgid bits.
    await copy.chmod(info.mode & 0o7777);
    await copy.utimes(info.atime, info.mtime);
    await copy.sync();
  } catch (error) {
    naming(target)(error as NodeJS.ErrnoException);
  }
  const [now, named] = await Promise.all([copy.stat(), lstat(made).catch(() => undefined)]);
  if (named?.dev !== now.dev || named.ino !== now.ino) throw changed(target);
}

/**
 * For an error of a call reaching `path` (and `dest`) through its open folder or as a file open: the
 * error, naming them rather than `/proc/self/fd/...`.
 */
function naming(path: Buffer, dest?: Buffer) {
  return (error: NodeJS.ErrnoException & { dest?: string }): never => {
    const named = path.toString();
    if (error.path !== undefined)
      error.message = error.message.replace(`'${String(error.path)}'`, `'${named}'`);
    else error.message += ` '${named}'`;
    error.path = named;
    if (dest !== undefined && error.dest !== undefined) {
      error.message = error.message.replace(`'${String(error.dest)}'`, `'${dest.toString()}'`);
      error.dest = dest.toString();
    }
    throw error;
  };
}

function changed(path: Buffer): AppError {
  return new AppError(
    'conflict',
    `cannot copy ${shown(path)}: it changed while it was copied (replaced by a link or another entry); ` +
      'try again once nothing else changes the folder',
    { details: { path: shown(path) } },
  );
}

function uncopyable(path: Buffer): AppError {
  return new AppError(
    'unprocessable',
    `cannot copy ${shown(path)}: it is neither a file, a folder nor a link; move it out of the folder and ` +
      'try again (nothing was changed)',
    { details: { path: shown(path) } },
  );
}

/**
 * Refuses (`unprocessable`), before a restore stages anything, a live folder a copy swap could not
 * both copy and empty: one holding a FIFO, socket or device, a mount point (a file or folder mounted
 * into it), or, for an agent not running as root, the folder itself if it may not write to it, or a
 * folder in it that it may not write to and does not own.
 */
export async function checkCopyable(folder: string): Promise<void> {
  const mounts = await mountPointsInside(folder);
  if (mounts.length > 0) {
    throw new AppError(
      'unprocessable',
      `cannot swap ${folder} by copy: ${mounts[0]} inside it is a mount point, which cannot be removed; ` +
        'unmount it or mount it elsewhere and try again (nothing was changed)',
      { details: { path: mounts[0] } },
    );
  }
  await checkEntries(Buffer.from(folder), true);
}

async function checkEntries(folder: Buffer, top = false): Promise<void> {
  if (!asRoot) {
    const info = await lstat(folder);
    // removeTree opens up the folders it removes that the agent owns; any other one, and the folder
    // emptied itself (never removed, so never opened up), must already let it remove entries.
    const writable = await access(folder, constants.W_OK | constants.X_OK).then(
      () => true,
      () => false,
    );
    if (!writable && (top || info.uid !== process.getuid?.())) {
      throw new AppError(
        'unprocessable',
        `cannot swap the folder by copy: the agent may not remove entries of ${shown(folder)}; give its user ` +
          'write access to it and try again (nothing was changed)',
        { details: { path: shown(folder) } },
      );
    }
  }
  for (const name of await entriesOf(folder)) {
    const path = join(folder, name);
    const info = await lstat(path);
    if (info.isDirectory()) await checkEntries(path);
    else if (!info.isFile() && !info.isSymbolicLink()) throw uncopyable(path);
  }
}

/**
 * What copyEntries writes of the entries inside `folder`, at least: each file's bytes rounded up to
 * whole 4 KiB blocks, one block for each folder and link (as a restore's disk check counts a backup's).
 */
export async function copiedBytes(folder: string | Buffer): Promise<number> {
  let bytes = 0;
  for (const name of await entriesOf(bytesOf(folder))) {
    const path = join(bytesOf(folder), name);
    const info = await lstat(path);
    bytes += info.isFile() ? Math.ceil(Math.max(info.size, 1) / BLOCK) * BLOCK : BLOCK;
    if (info.isDirectory()) bytes += await copiedBytes(path);
  }
  return bytes;
}

/** Removes every entry inside `folder`, leaving the folder itself (a mount point stays mounted). */
export async function emptyFolder(folder: string, options: RemoveOptions = {}): Promise<void> {
  const bytes = Buffer.from(folder);
  for (const name of await entriesOf(bytes)) await removeTree(join(bytes, name), options);
  await fsyncFile(bytes);
}
