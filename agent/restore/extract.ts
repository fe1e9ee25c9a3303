/** Safe extraction sinks for readBackup: regular files and folders only, strictly inside their staging folder. */
import { constants, createWriteStream } from 'node:fs';
import { lstat, mkdir, open, realpath } from 'node:fs/promises';
import { dirname, join, sep } from 'node:path';
import type { Writable } from 'node:stream';
import { FOLDER_ROOTS, type FolderRoot } from '../backup/archive';
import { DUMP_NAME, type ManifestMember } from '../backup/manifest';
import { AppError } from '../errors';

/** Write buffer of the dump file: with the default 16 KiB each chunk was its own write (extraction 130-180 ms over the check for 51 MB, now 20-30). */
const DUMP_WRITE_BUFFER = 1 << 20;

/** Where each part of a backup goes: the dump to a file, each folder root to its staging folder. */
export interface ExtractTargets {
  dumpPath: string;
  folders: Record<FolderRoot, string>;
}

function refuse(name: string, why: string): AppError {
  return new AppError('corrupt_backup', `unsafe archive entry ${JSON.stringify(name.slice(0, 200))}: ${why}`);
}

/**
 * Splits a member name into its staging root and relative segments. Names were already checked by
 * readBackup; this checks again, since an extraction sink must never trust its caller.
 */
function locate(targets: ExtractTargets, name: string): { root: string; segments: string[] } {
  const segments = name.split('/');
  const top = segments.shift() as FolderRoot;
  if (!(FOLDER_ROOTS as readonly string[]).includes(top)) throw refuse(name, 'outside scripts/ and config/');
  if (segments.some((s) => s === '' || s === '.' || s === '..' || s.includes('\\') || s.includes('\0'))) {
    throw refuse(name, 'unsafe path segment');
  }
  return { root: targets.folders[top], segments };
}

/**
 * Checks that `dir` is, after resolving every link, exactly `root` joined with `segments`: a
 * symlink planted anywhere in the staging folder can then never redirect a write elsewhere.
 */
async function checkInside(name: string, root: string, segments: string[], dir: string): Promise<void> {
  const realRoot = await realpath(root);
  const realDir = await realpath(dir).catch(() => {
    throw refuse(name, 'its folder does not exist in the archive');
  });
  const expected = segments.length === 0 ? realRoot : join(realRoot, ...segments);
  if (realDir !== expected || !(realDir === realRoot || realDir.startsWith(realRoot + sep))) {
    throw refuse(name, 'its folder escapes the staging folder through a link');
  }
}

/** The openMember / onDirectory sinks for readBackup that write into `targets` and nowhere else. */
export function extractionSinks(targets: ExtractTargets): {
  openMember: (member: ManifestMember) => Promise<Writable>;
  onDirectory: (member: ManifestMember) => Promise<void>;
} {
  return {
    async onDirectory(member) {
      const { root, segments } = locate(targets, member.path);
      if (segments.length === 0) {
        await mkdir(root, { recursive: false, mode: 0o755 }).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'EEXIST') throw error;
        });
        const info = await lstat(root);
        if (!info.isDirectory()) throw refuse(member.path, 'the staging folder is not a folder');
        return;
      }
      const path = join(root, ...segments);
      await checkInside(member.path, root, segments.slice(0, -1), dirname(path));
      await mkdir(path, { mode: (member.mode ?? 0o755) & 0o755 }).catch((error: NodeJS.ErrnoException) => {
        throw error.code === 'EEXIST' ? refuse(member.path, 'it already exists') : error;
      });
      const info = await lstat(path);
      if (!info.isDirectory() || info.isSymbolicLink())
        throw refuse(member.path, 'not a folder after creation');
    },

    async openMember(member) {
      if (member.path === DUMP_NAME) {
        const handle = await open(
          targets.dumpPath,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        // A deep buffer: chunks arriving while one write is in flight go out together (writev).
        return createWriteStream('', { fd: handle, autoClose: true, highWaterMark: DUMP_WRITE_BUFFER });
      }
      const { root, segments } = locate(targets, member.path);
      if (segments.length === 0) throw refuse(member.path, 'a file where the folder root belongs');
      const path = join(root, ...segments);
      await checkInside(member.path, root, segments.slice(0, -1), dirname(path));
      // O_EXCL + O_NOFOLLOW: never follow or overwrite anything already there (a planted link).
      const handle = await open(
        path,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
        (member.mode ?? 0o644) & 0o755,
      ).catch((error: NodeJS.ErrnoException) => {
        throw error.code === 'EEXIST' || error.code === 'ELOOP'
          ? refuse(member.path, 'it already exists')
          : error;
      });
      return createWriteStream('', { fd: handle, autoClose: true });
    },
  };
}
