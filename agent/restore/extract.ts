/** Safe extraction sinks for readBackup: files, folders and links (made last), strictly inside their staging folder. */
import { constants, createWriteStream } from 'node:fs';
import { type FileHandle, lchown, lstat, lutimes, mkdir, open, realpath, symlink } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { FOLDER_ROOTS, type FolderRoot } from '../backup/archive';
import { DUMP_NAME, type ManifestMember, memberBytes, targetBytes } from '../backup/manifest';
import { AppError } from '../errors';

/** Write buffer of the dump file: with the default 16 KiB each chunk was its own write (extraction 130-180 ms over the check for 51 MB, now 20-30). */
const DUMP_WRITE_BUFFER = 1 << 20;

/**
 * The mode bits a restored entry gets back: read, write and execute for owner, group and others, as
 * recorded (set with chmod, so the process umask does not strip them); setuid, setgid and sticky never.
 */
const MODE_BITS = 0o777;

/** A staging root takes its live folder's mode whole, setgid (a shared group folder) included. */
const ROOT_MODE_BITS = 0o7777;

/** The live folder a staging root will replace, as it is now. */
export interface LiveFolder {
  mode: number;
  uid: number;
  gid: number;
}

/** Where each part of a backup goes: the dump to a file, each folder root to its staging folder. */
export interface ExtractTargets {
  dumpPath: string;
  folders: Record<FolderRoot, string>;
  /**
   * The live folders (absent where none exists yet). A staging root takes its live folder's mode,
   * since the folder is the installation's, not the backup's; and an agent running as root gives
   * every restored entry the live folder's owner and group, so GEM's own user keeps its scripts.
   */
  live?: Partial<Record<FolderRoot, LiveFolder>>;
}

/** What the sinks use of a member's tar header (the reader passes the entry's header as it reads it). */
export interface EntryHeader {
  mtime?: Date | undefined;
}

/** How a restored file or folder is flushed to disk; the default fsyncs it. */
export type SyncEntry = (handle: FileHandle, path: string, kind: 'file' | 'folder') => Promise<void>;

export interface ExtractOptions {
  /** Replaces the fsync of each restored file and folder (a test passes a wrapper that records each one). */
  sync?: SyncEntry;
}

/** The sinks for readBackup, and `finish`, run once readBackup succeeded and before the staging folders are swapped in. */
export interface ExtractionSinks {
  openMember: (member: ManifestMember, header?: EntryHeader) => Promise<Writable>;
  onDirectory: (member: ManifestMember, header?: EntryHeader) => Promise<void>;
  /** Records a symbolic link; it is made in `finish`, after every file and folder, never through or over anything. */
  onSymlink: (member: ManifestMember, header?: EntryHeader) => Promise<void>;
  /** Makes the links, then gives each folder its header's mtime (after its entries were written) and fsyncs every staging folder. */
  finish: () => Promise<void>;
}

const fsync: SyncEntry = (handle) => handle.sync();

function refuse(name: string, why: string): AppError {
  return new AppError('corrupt_backup', `unsafe archive entry ${JSON.stringify(name.slice(0, 200))}: ${why}`);
}

const SLASH = Buffer.from('/');

/** `dir` and `segments` joined by '/', as bytes (a name may be any bytes but NUL and '/'). */
function joinBytes(dir: Buffer, segments: Buffer[]): Buffer {
  return Buffer.concat([dir, ...segments.flatMap((s) => [SLASH, s])]);
}

/**
 * Splits a member into its staging root and the bytes of its relative segments (its `rawPath`'s for
 * a name that is not clean UTF-8, else its name's). Names were already checked by readBackup; this
 * checks again, since an extraction sink must never trust its caller: no empty, `.` or `..` segment,
 * no NUL, and (in a name, not raw bytes) no backslash.
 */
function locate(
  targets: ExtractTargets,
  member: Pick<ManifestMember, 'path' | 'rawPath'>,
): { top: FolderRoot; root: Buffer; segments: Buffer[] } {
  const name = member.path;
  const { root: top, rel } = memberBytes(member);
  if (!(FOLDER_ROOTS as readonly string[]).includes(top)) throw refuse(name, 'outside scripts/ and config/');
  if (member.rawPath === undefined && name.slice(top.length + 1).includes('\\'))
    throw refuse(name, 'unsafe path segment');
  const segments: Buffer[] = [];
  if (name.includes('/') || member.rawPath !== undefined) {
    for (let start = 0; ; ) {
      const end = rel.indexOf(0x2f, start);
      segments.push(rel.subarray(start, end === -1 ? rel.length : end));
      if (end === -1) break;
      start = end + 1;
    }
  }
  const dot = (s: Buffer) => s.length <= 2 && s.every((b) => b === 0x2e);
  if (segments.some((s) => s.length === 0 || dot(s) || s.includes(0)))
    throw refuse(name, 'unsafe path segment');
  return { top: top as FolderRoot, root: Buffer.from(targets.folders[top as FolderRoot]), segments };
}

/**
 * Checks that the folder `segments` name under `root` is, after resolving every link, exactly `root`
 * joined with them: a symlink planted anywhere in the staging folder can then never redirect a write
 * elsewhere.
 */
async function checkInside(name: string, root: Buffer, segments: Buffer[]): Promise<void> {
  const realRoot = await realpath(root, { encoding: 'buffer' });
  const realDir = await realpath(joinBytes(root, segments), { encoding: 'buffer' }).catch(() => {
    throw refuse(name, 'its folder does not exist in the archive');
  });
  const expected = joinBytes(realRoot, segments);
  const inside =
    realDir.equals(realRoot) ||
    (realDir.length > realRoot.length &&
      realDir.subarray(0, realRoot.length).equals(realRoot) &&
      realDir[realRoot.length] === 0x2f);
  if (!realDir.equals(expected) || !inside) {
    throw refuse(name, 'its folder escapes the staging folder through a link');
  }
}

/** A valid header mtime, or nothing (a header without one leaves the extraction time). */
function mtimeOf(header: EntryHeader | undefined): Date | undefined {
  const mtime = header?.mtime;
  return mtime instanceof Date && !Number.isNaN(mtime.getTime()) ? mtime : undefined;
}

/** What a restored file or folder gets back once its content is in place. */
interface Attributes {
  mode: number;
  mtime: Date | undefined;
  /** Set (before the mode, which a chown may clear bits of) when the agent runs as root. */
  owner?: { uid: number; gid: number } | undefined;
}

/**
 * A restored file's sink: every byte written, then its mode and mtime set and the file fsynced before
 * it closes, so the staging copy is on disk before the swap commits and the previous copy is deleted.
 */
function fileSink(handle: FileHandle, path: Buffer, attributes: Attributes, sync: SyncEntry): Writable {
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await handle.close();
  };
  const writeAll = async (chunk: Buffer) => {
    for (let done = 0; done < chunk.length; ) {
      const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, null);
      done += bytesWritten;
    }
  };
  return new Writable({
    write(chunk: Buffer, _encoding, callback) {
      writeAll(chunk).then(() => callback(), callback);
    },
    final(callback) {
      (async () => {
        if (attributes.owner) await handle.chown(attributes.owner.uid, attributes.owner.gid);
        await handle.chmod(attributes.mode);
        if (attributes.mtime) await handle.utimes(new Date(), attributes.mtime);
        await sync(handle, path.toString(), 'file');
        await close();
      })().then(() => callback(), callback);
    },
    destroy(error, callback) {
      close().then(
        () => callback(error),
        () => callback(error),
      );
    },
  });
}

/**
 * Sets a folder's owner and mode (a staging root: its live folder's, or its own where none exists)
 * and mtime (if its header had one) and fsyncs it: its entries are then on disk.
 */
async function finishFolder(
  path: Buffer,
  { mode, mtime, owner }: Partial<Attributes>,
  sync: SyncEntry,
): Promise<void> {
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
  try {
    if (owner) await handle.chown(owner.uid, owner.gid);
    if (mode !== undefined) await handle.chmod(mode);
    if (mtime) await handle.utimes(new Date(), mtime);
    await sync(handle, path.toString(), 'folder');
  } finally {
    await handle.close();
  }
}

/** The openMember / onDirectory sinks for readBackup that write into `targets` and nowhere else. */
export function extractionSinks(targets: ExtractTargets, options: ExtractOptions = {}): ExtractionSinks {
  const sync = options.sync ?? fsync;
  // Every staging folder, in creation order, with its header's mode and mtime: set (and synced) in
  // finish, after the entries written into it (they would change the mtime again, and a read-only mode
  // would refuse them when the agent does not run as root).
  const asRoot = process.getuid?.() === 0;
  const rootAttributes = (root: FolderRoot): Partial<Attributes> => {
    const live = targets.live?.[root];
    if (!live) return {};
    return { mode: live.mode & ROOT_MODE_BITS, owner: asRoot ? { uid: live.uid, gid: live.gid } : undefined };
  };
  const ownerOf = (root: FolderRoot) => rootAttributes(root).owner;
  // Keyed by the path's bytes (as latin1 text: one character a byte).
  const folders = new Map<string, { path: Buffer; attributes: Partial<Attributes> }>(
    FOLDER_ROOTS.map((root) => {
      const path = Buffer.from(targets.folders[root]);
      return [path.toString('latin1'), { path, attributes: rootAttributes(root) }];
    }),
  );
  const setFolder = (path: Buffer, attributes: Partial<Attributes>) =>
    folders.set(path.toString('latin1'), { path, attributes });
  const links: Array<{ member: ManifestMember; mtime: Date | undefined }> = [];
  /**
   * Makes one link, once every file and folder is written: no write can then go through it. Its
   * folder must resolve to exactly where it belongs (no link above it), and symlink() never replaces
   * anything already there (a folder, a file, another link). The target's text is kept as it is.
   */
  const makeLink = async (member: ManifestMember, mtime: Date | undefined) => {
    const { top, root, segments } = locate(targets, member);
    if (segments.length === 0) throw refuse(member.path, 'a link where the folder root belongs');
    // Its bytes: rawTarget's for a target that is not valid UTF-8, else the target text's.
    const target = targetBytes(member);
    if (typeof member.target !== 'string' || target.length === 0 || target.includes(0))
      throw refuse(member.path, 'not a valid link target');
    const path = joinBytes(root, segments);
    await checkInside(member.path, root, segments.slice(0, -1));
    await symlink(target, path).catch((error: NodeJS.ErrnoException) => {
      throw error.code === 'EEXIST' ? refuse(member.path, 'it already exists') : error;
    });
    const owner = ownerOf(top);
    if (owner) await lchown(path, owner.uid, owner.gid);
    if (mtime) await lutimes(path, new Date(), mtime);
  };
  return {
    async onSymlink(member, header) {
      // Checked now (a bad name fails the read early); made in finish.
      const { segments } = locate(targets, member);
      if (segments.length === 0) throw refuse(member.path, 'a link where the folder root belongs');
      links.push({ member, mtime: mtimeOf(header) });
    },

    async onDirectory(member, header) {
      const { top, root, segments } = locate(targets, member);
      if (segments.length === 0) {
        await mkdir(root, { recursive: false, mode: 0o755 }).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'EEXIST') throw error;
        });
        const info = await lstat(root);
        if (!info.isDirectory()) throw refuse(member.path, 'the staging folder is not a folder');
        setFolder(root, { ...rootAttributes(top), mtime: mtimeOf(header) });
        return;
      }
      const path = joinBytes(root, segments);
      await checkInside(member.path, root, segments.slice(0, -1));
      await mkdir(path, { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
        throw error.code === 'EEXIST' ? refuse(member.path, 'it already exists') : error;
      });
      const info = await lstat(path);
      if (!info.isDirectory() || info.isSymbolicLink())
        throw refuse(member.path, 'not a folder after creation');
      setFolder(path, {
        mode: (member.mode ?? 0o755) & MODE_BITS,
        mtime: mtimeOf(header),
        owner: ownerOf(top),
      });
    },

    async openMember(member, header) {
      if (member.path === DUMP_NAME) {
        // The dump is a work file pg_restore reads next, never swapped in: it needs no fsync.
        const handle = await open(
          targets.dumpPath,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        // A deep buffer: chunks arriving while one write is in flight go out together (writev).
        return createWriteStream('', { fd: handle, autoClose: true, highWaterMark: DUMP_WRITE_BUFFER });
      }
      const { top, root, segments } = locate(targets, member);
      if (segments.length === 0) throw refuse(member.path, 'a file where the folder root belongs');
      const path = joinBytes(root, segments);
      await checkInside(member.path, root, segments.slice(0, -1));
      // O_EXCL + O_NOFOLLOW: never follow or overwrite anything already there (a planted link).
      const handle = await open(
        path,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        0o600,
      ).catch((error: NodeJS.ErrnoException) => {
        throw error.code === 'EEXIST' || error.code === 'ELOOP'
          ? refuse(member.path, 'it already exists')
          : error;
      });
      const attributes = {
        mode: (member.mode ?? 0o644) & MODE_BITS,
        mtime: mtimeOf(header),
        owner: ownerOf(top),
      };
      return fileSink(handle, path, attributes, sync);
    },

    async finish() {
      // Links first (a link changes its folder's mtime, and a read-only folder mode would refuse it).
      for (const { member, mtime } of links) await makeLink(member, mtime);
      // Deepest first: a folder is synced after the folders inside it.
      for (const { path, attributes } of [...folders.values()].reverse())
        await finishFolder(path, attributes, sync);
    },
  };
}
