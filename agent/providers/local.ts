// A folder on this machine (or a mounted disk) as a backup destination.
import { createReadStream } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type {
  BackupSource,
  ProviderProperties,
  StorageProvider,
  StoredObject,
  TempSweepOptions,
  TempSweepResult,
} from '../../shared/storage/index';
import { StorageError } from '../../shared/storage/index';
import { isBackupName } from '../../shared/storage/names';
import { writeFileAtomic } from '../system/atomic-file';
import {
  asStorageError,
  assertObjectName,
  downloadStream,
  isOwnTempName,
  oldEnough,
  SourceCheck,
  throwIfAborted,
} from './checks';

export interface LocalFolderOptions {
  /** Absolute path of the folder; created on first put if missing. */
  folder: string;
  /** Provider id shown in results (default `local`). */
  id?: string;
}

function classify(error: unknown, name: string, signal?: AbortSignal): StorageError {
  if (error instanceof StorageError) return error;
  const code = (error as NodeJS.ErrnoException)?.code;
  if (code === 'ENOENT') return new StorageError('not_found', `${name} does not exist`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM') {
    return new StorageError('permission_denied', `no permission for ${name}`, { cause: error });
  }
  if (code === 'ENOSPC' || code === 'EDQUOT')
    return new StorageError('no_space', 'the disk is full', { cause: error });
  if (code === 'ABORT_ERR')
    return new StorageError('aborted', 'the operation was cancelled', { cause: error });
  return asStorageError(error, signal);
}

/** Stores backups as plain files in one folder: temp file, byte-count and sha256 check, fsync, rename. */
export class LocalFolderProvider implements StorageProvider {
  readonly id: string;
  readonly properties: ProviderProperties = { atomicReplace: true };
  private readonly folder: string;

  constructor(options: LocalFolderOptions | string) {
    const resolved = typeof options === 'string' ? { folder: options } : options;
    this.folder = resolved.folder;
    this.id = resolved.id ?? 'local';
  }

  async put(
    name: string,
    source: BackupSource,
    options: { signal?: AbortSignal; onProgress?: (bytes: number) => void } = {},
  ): Promise<StoredObject> {
    assertObjectName(name);
    throwIfAborted(options.signal);
    const path = join(this.folder, name);
    const check = new SourceCheck(options.onProgress);
    try {
      await writeFileAtomic(path, [Readable.fromWeb(source.open() as never), check], {
        mode: 0o600,
        signal: options.signal,
        check: async () => check.verify(source),
      });
    } catch (error) {
      throw classify(error, name, options.signal);
    }
    return { ...(await this.stat(name)), sha256: check.sha256() };
  }

  async get(name: string, options: { signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    assertObjectName(name);
    await this.stat(name);
    const stream = createReadStream(
      join(this.folder, name),
      options.signal ? { signal: options.signal } : {},
    );
    return downloadStream(
      stream,
      (error) => classify(error, name, options.signal),
      () => stream.destroy(),
    );
  }

  async stat(name: string): Promise<StoredObject> {
    assertObjectName(name);
    try {
      const info = await stat(join(this.folder, name));
      if (!info.isFile()) throw new StorageError('not_found', `${name} is not a file`);
      return { name, size: info.size, modifiedAt: info.mtime.toISOString() };
    } catch (error) {
      throw classify(error, name);
    }
  }

  async list(): Promise<StoredObject[]> {
    let names: string[];
    try {
      names = await readdir(this.folder);
    } catch (error) {
      // A folder nothing was written to yet holds no backups.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw classify(error, this.folder);
    }
    const objects: StoredObject[] = [];
    for (const name of names.filter(isBackupName)) {
      try {
        objects.push(await this.stat(name));
      } catch (error) {
        if (!(error instanceof StorageError && error.code === 'not_found')) throw error; // deleted meanwhile
      }
    }
    return objects;
  }

  /** Removes temp files a crash mid-put left in the folder (see StorageProvider.sweepTemp). */
  async sweepTemp(options: TempSweepOptions = {}): Promise<TempSweepResult> {
    let names: string[];
    try {
      names = await readdir(this.folder);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { removed: [] };
      throw classify(error, this.folder);
    }
    const removed: string[] = [];
    for (const name of names.filter(isOwnTempName)) {
      throwIfAborted(options.signal);
      try {
        const info = await stat(join(this.folder, name));
        if (!info.isFile() || !oldEnough(info.mtimeMs, options.olderThanMs)) continue;
        await rm(join(this.folder, name));
        removed.push(name);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw classify(error, name); // gone meanwhile
      }
    }
    return { removed };
  }

  async delete(name: string): Promise<void> {
    await this.stat(name);
    try {
      await rm(join(this.folder, name));
    } catch (error) {
      throw classify(error, name);
    }
  }
}
