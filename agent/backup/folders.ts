/** Snapshots the scripts and config folders into the work dir, hashing each file as it is copied. */
import { createHash } from 'node:crypto';
import { constants, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, readdir, readlink, realpath, stat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AppError } from '../errors';
import type { Logger } from '../log';
import type { FolderRoot } from './archive';
import { type ManifestMember, needsRawName, standInName } from './manifest';

const SLASH = Buffer.from('/');

/** A path's bytes for a log line: as UTF-8 text, bytes that are not shown as `%XX`. */
function shown(path: Buffer): string {
  return standInName(path);
}

/** A member plus where its snapshot lies on disk. */
export interface SnapshotMember extends ManifestMember {
  /** A name that is not clean UTF-8 is a Buffer of its bytes (see manifest.ts, rawPath). */
  localPath: string | Buffer;
  /** The source's own modification time, for the tar header (restore puts it back); not in the manifest. */
  mtime?: Date;
}

/** The setting that places each folder (agent/config.ts), named in errors about it. */
export const FOLDER_SETTINGS: Record<FolderRoot, string> = {
  scripts: 'GEM_SCRIPTS_DIR',
  config: 'GEM_CONFIG_DIR',
};

export interface SnapshotOptions {
  log?: Logger;
  signal?: AbortSignal;
  /**
   * A `source` that does not exist: 'fail' (the default) throws `unprocessable` naming the folder
   * and its setting, since a backup holding it as empty would, once restored, replace the live
   * folder by an empty one; 'empty' backs it up as an empty folder with a warning.
   */
  missing?: 'fail' | 'empty';
  /**
   * Called with each entry left out because it is neither a file, a folder nor a link (a FIFO, a
   * socket, a device), by its member name (`scripts/run/gem.sock`): the job result lists them.
   */
  onSkipped?: (path: string) => void;
  /**
   * For tests: called after each entry's lstat, before it is read, with its member name
   * (`scripts/sub`), so that a test can swap the entry in between.
   */
  afterLstat?: (path: string) => Promise<void> | void;
}

/**
 * Copies `source` into `target` (regular files and folders; symbolic links are listed as links with
 * their target text, never followed; FIFOs, sockets and devices are skipped, each reported to
 * `onSkipped` and logged) and returns the manifest members,
 * named `<root>/<relative path>`. Copying first means the archive holds exactly what was hashed
 * even if GEM edits a script while the backup runs. `source` itself may be a symlink to the real
 * folder (a common layout: /opt/gem/scripts -> /data/scripts): it is resolved once, up front.
 */
export async function snapshotFolder(
  root: FolderRoot,
  source: string,
  target: string,
  options: SnapshotOptions = {},
): Promise<SnapshotMember[]> {
  const members: SnapshotMember[] = [
    { path: root, type: 'directory', size: 0, mode: 0o755, localPath: target },
  ];
  await mkdir(target, { recursive: true });
  // Resolved once: the walk below then reads one tree even if the link is switched meanwhile.
  const base = await realpath(source).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT' || error.code === 'ENOTDIR') return undefined;
    throw error;
  });
  if (base === undefined) {
    if (options.missing === 'empty') {
      options.log?.warn(`the ${root} folder does not exist; backing it up as empty`, { path: source });
      return members;
    }
    throw new AppError(
      'unprocessable',
      `the ${root} folder ${source} (${FOLDER_SETTINGS[root]}) does not exist: mount or create it, or ` +
        `correct ${FOLDER_SETTINGS[root]}; no backup was made, as restoring it would empty the live folder`,
      { details: { folder: root, setting: FOLDER_SETTINGS[root], path: source } },
    );
  }
  const rootInfo = await stat(base);
  members[0]!.mtime = rootInfo.mtime;
  if (!rootInfo.isDirectory()) {
    throw new AppError(
      'unprocessable',
      `the ${root} folder ${source} (${FOLDER_SETTINGS[root]}) is not a folder: correct ${FOLDER_SETTINGS[root]}`,
      { details: { folder: root, setting: FOLDER_SETTINGS[root], path: source } },
    );
  }
  // A script GEM deletes while the backup runs is skipped, as GNU tar does ("file removed before we
  // read it"): the manifest lists only what was copied, so the backup stays whole.
  const vanished = (path: Buffer) =>
    options.log?.warn('skipped a file or folder removed or replaced while the backup read it', {
      path: shown(path),
    });
  // Names are read and used as bytes: Linux allows any byte but NUL and '/' in a name, and one that is
  // not UTF-8 (a Latin-1 "caf\xe9") read as a string would name nothing. A name that is not clean
  // UTF-8 text is listed by its stand-in, its bytes in rawPath (manifest.ts).
  const baseBytes = Buffer.from(base);
  const targetBytes = Buffer.from(target);
  const under = (dir: Buffer, rel: Buffer) => (rel.length === 0 ? dir : Buffer.concat([dir, SLASH, rel]));
  const named = (rel: Buffer): { path: string; rawPath?: string } =>
    needsRawName(rel)
      ? { path: `${root}/${standInName(rel)}`, rawPath: rel.toString('base64url') }
      : { path: `${root}/${rel.toString('utf8')}` };
  // A clean name's copy keeps a string path (as before); another's, its bytes.
  const local = (path: Buffer, rel: Buffer) => (needsRawName(rel) ? path : path.toString('utf8'));
  // Each folder is opened once, never through a link, and its entries are reached through that open
  // folder (`/proc/self/fd/<fd>/<name>`, which is openat()): the agent runs as root and the folder
  // may be writable by others, so a folder swapped for a link to /etc after its lstat fails to open
  // (vanished), and one swapped while its entries are read is still the folder opened. No path the
  // walk reads by crosses a name that may have been replaced since it was looked at.
  const walk = async (rel: Buffer, opening: Buffer): Promise<void> => {
    const folder = await open(
      opening,
      constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW,
    ).catch((error: NodeJS.ErrnoException) => {
      // Removed, or replaced by a link or a file, since its lstat: the folder itself stays in the
      // backup, empty, as it was listed.
      if (rel.length === 0 || !['ENOENT', 'ELOOP', 'ENOTDIR'].includes(error.code ?? '')) throw error;
      vanished(under(baseBytes, rel));
      return undefined;
    });
    if (!folder) return;
    try {
      await walkOpened(rel, Buffer.from(`/proc/self/fd/${folder.fd}`));
    } finally {
      await folder.close();
    }
  };
  const walkOpened = async (rel: Buffer, folder: Buffer): Promise<void> => {
    const entries = await readdir(folder, { encoding: 'buffer' }).catch((error: NodeJS.ErrnoException) => {
      if (rel.length === 0 || error.code !== 'ENOENT') throw error;
      vanished(under(baseBytes, rel));
      return [] as Buffer[];
    });
    entries.sort(Buffer.compare);
    for (const entry of entries) {
      options.signal?.throwIfAborted();
      const childRel = rel.length === 0 ? entry : Buffer.concat([rel, SLASH, entry]);
      const from = under(baseBytes, childRel);
      const to = under(targetBytes, childRel);
      const at = Buffer.concat([folder, SLASH, entry]);
      const info = await lstat(at).catch((error: NodeJS.ErrnoException) => {
        if (error.code !== 'ENOENT') throw error;
        return undefined;
      });
      if (!info) {
        vanished(from);
        continue;
      }
      await options.afterLstat?.(named(childRel).path);
      if (info.isDirectory()) {
        await mkdir(to);
        members.push({
          ...named(childRel),
          type: 'directory',
          size: 0,
          mode: info.mode & 0o777,
          localPath: local(to, childRel),
          mtime: info.mtime,
        });
        await walk(childRel, at);
      } else if (info.isFile()) {
        // Opened without following a link and without blocking: the name may have been replaced
        // since lstat (by a link, a FIFO); what is read is checked to be the regular file it was.
        const handle = await open(at, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(
          (error: NodeJS.ErrnoException) => {
            if (error.code !== 'ENOENT' && error.code !== 'ELOOP') throw error;
            return undefined;
          },
        );
        if (!handle) {
          vanished(from);
          continue;
        }
        const opened = await handle.stat().catch(() => undefined);
        if (!opened?.isFile()) {
          await handle.close();
          vanished(from);
          continue;
        }
        // Size and sha256 are those of the bytes copied (a file growing or shrinking meanwhile
        // included), and the archive is packed from the copy: member and manifest always agree.
        const hash = createHash('sha256');
        let size = 0;
        await pipeline(
          handle.createReadStream(),
          new Transform({
            transform(chunk: Buffer, _e, cb) {
              hash.update(chunk);
              size += chunk.length;
              cb(null, chunk);
            },
          }),
          createWriteStream(to, { flags: 'wx' }),
        );
        members.push({
          ...named(childRel),
          type: 'file',
          size,
          sha256: hash.digest('hex'),
          mode: info.mode & 0o777,
          localPath: local(to, childRel),
          // Of the file opened, as it was before the read (as tar records it).
          mtime: opened.mtime,
        });
      } else if (info.isSymbolicLink()) {
        // Kept as a link: its text as it is (relative or absolute, dangling or not), never followed.
        const linkTarget = await readlink(at, { encoding: 'buffer' }).catch(
          (error: NodeJS.ErrnoException) => {
            if (error.code !== 'ENOENT' && error.code !== 'EINVAL') throw error;
            return undefined;
          },
        );
        if (linkTarget === undefined) {
          vanished(from);
          continue;
        }
        // A target that is not valid UTF-8 is listed by its stand-in, its bytes in rawTarget.
        const text = linkTarget.toString('utf8');
        const raw = Buffer.from(text, 'utf8').equals(linkTarget) ? undefined : linkTarget;
        members.push({
          ...named(childRel),
          type: 'symlink',
          size: 0,
          ...(raw ? { target: standInName(raw), rawTarget: raw.toString('base64url') } : { target: text }),
          localPath: local(from, childRel),
          mtime: info.mtime,
        });
      } else {
        options.onSkipped?.(named(childRel).path);
        options.log?.warn('skipped a FIFO, socket or device: backups hold files, folders and links only', {
          path: shown(from),
        });
      }
    }
  };
  await walk(Buffer.alloc(0), baseBytes);
  return members;
}
