/** Copying a folder's entries between file systems, for the swap of a live folder that is a mount point. */
import { constants } from 'node:fs';
import {
  access,
  chmod,
  copyFile,
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

/** Gives `to` the mode, owner (as root only) and times of `info`; never through a link. */
async function copyAttributes(
  to: Buffer,
  info: { mode: number; uid: number; gid: number; atime: Date; mtime: Date },
  isLink: boolean,
) {
  if (asRoot) await lchown(to, info.uid, info.gid);
  // A mode after the owner: chown clears setuid and setgid bits.
  if (!isLink) await chmod(to, info.mode & 0o7777);
  await lutimes(to, info.atime, info.mtime);
}

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
  await copyTree(bytesOf(from), bytesOf(to), options);
}

export interface CopyOptions {
  /** For tests: called after each entry's lstat, before it is copied, with its path, so that a test can swap it. */
  afterLstat?: (path: Buffer) => Promise<void> | void;
}

// The folder copied from may be writable by others (a live folder; the agent runs as root). Each of its
// folders is opened once, never through a link (but the top one, as configured), and its entries are
// reached through that open folder (`/proc/self/fd/<fd>/<name>`, which is openat()): an entry swapped
// for a link after its lstat is refused, never followed, and no path read crosses a replaced name.
const FOLDER = constants.O_RDONLY | constants.O_DIRECTORY;
const opened = (fd: number) => Buffer.from(`/proc/self/fd/${fd}`);

async function copyTree(from: Buffer, to: Buffer, options: CopyOptions, opening?: Buffer): Promise<void> {
  const folder = await open(opening ?? from, opening ? FOLDER | constants.O_NOFOLLOW : FOLDER).catch(
    (error: NodeJS.ErrnoException) => {
      throw error.code === 'ELOOP' || error.code === 'ENOTDIR' ? changed(from) : error;
    },
  );
  try {
    const inside = opened(folder.fd);
    for (const name of await entriesOf(inside)) {
      const source = join(from, name);
      const entry = join(inside, name);
      const target = join(to, name);
      const info = await lstat(entry);
      await options.afterLstat?.(source);
      if (info.isDirectory()) {
        await mkdir(target, { mode: 0o700 });
        await copyTree(source, target, options, entry);
        await copyAttributes(target, info, false);
        await fsyncFile(target);
      } else if (info.isFile()) {
        await copyFileAt(entry, info, source, target);
        await copyAttributes(target, info, false);
        await fsyncFile(target);
      } else if (info.isSymbolicLink()) {
        const text = await readlink(entry, { encoding: 'buffer' }).catch((error: NodeJS.ErrnoException) => {
          throw error.code === 'EINVAL' ? changed(source) : error;
        });
        await symlink(text, target);
        await copyAttributes(target, info, true);
      } else {
        throw uncopyable(source);
      }
    }
  } finally {
    await folder.close();
  }
  await fsyncFile(to);
}

/**
 * Copies file `entry` (reached through its open folder) to `target`: opened without following a link
 * or blocking (a FIFO), and refused unless it is still the file lstat saw (`info`).
 */
async function copyFileAt(entry: Buffer, info: { dev: number; ino: number }, source: Buffer, target: Buffer) {
  const file = await open(entry, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(
    (error: NodeJS.ErrnoException) => {
      throw error.code === 'ELOOP' ? changed(source) : error;
    },
  );
  try {
    const now = await file.stat();
    if (!now.isFile() || now.dev !== info.dev || now.ino !== info.ino) throw changed(source);
    await copyFile(opened(file.fd), target, constants.COPYFILE_EXCL);
  } finally {
    await file.close();
  }
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
