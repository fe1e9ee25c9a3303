/** Snapshots the scripts and config folders into the work dir, hashing each file as it is copied. */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from '../log';
import type { FolderRoot } from './archive';
import type { ManifestMember } from './manifest';

/** A member plus where its snapshot lies on disk. */
export interface SnapshotMember extends ManifestMember {
  localPath: string;
}

/**
 * Copies `source` into `target` (regular files and folders only; links and special files are
 * skipped with a warning, since restore would refuse them) and returns the manifest members,
 * named `<root>/<relative path>`. Copying first means the archive holds exactly what was hashed
 * even if GEM edits a script while the backup runs.
 */
export async function snapshotFolder(
  root: FolderRoot,
  source: string,
  target: string,
  options: { log?: Logger; signal?: AbortSignal } = {},
): Promise<SnapshotMember[]> {
  const members: SnapshotMember[] = [
    { path: root, type: 'directory', size: 0, mode: 0o755, localPath: target },
  ];
  await mkdir(target, { recursive: true });
  const exists = await lstat(source).then(
    (s) => s.isDirectory(),
    () => false,
  );
  if (!exists) {
    options.log?.warn(`the ${root} folder does not exist; backing it up as empty`, { path: source });
    return members;
  }
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(source, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      options.signal?.throwIfAborted();
      const childRel = rel ? `${rel}/${entry.name}` : entry.name;
      const from = join(source, childRel);
      const to = join(target, childRel);
      const info = await lstat(from);
      if (info.isDirectory()) {
        await mkdir(to);
        members.push({
          path: `${root}/${childRel}`,
          type: 'directory',
          size: 0,
          mode: info.mode & 0o755,
          localPath: to,
        });
        await walk(childRel);
      } else if (info.isFile()) {
        const hash = createHash('sha256');
        let size = 0;
        await pipeline(
          createReadStream(from),
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
          path: `${root}/${childRel}`,
          type: 'file',
          size,
          sha256: hash.digest('hex'),
          mode: info.mode & 0o755,
          localPath: to,
        });
      } else {
        options.log?.warn('skipped a link or special file: backups hold regular files and folders only', {
          path: from,
        });
      }
    }
  };
  await walk('');
  return members;
}
