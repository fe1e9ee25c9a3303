/** Atomic file writes: temp name, fsync, rename, fsync the folder. Nothing is ever visible half-written. */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, type WriteStream } from 'node:fs';
import { link, lstat, mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** Prefix of every temp file we create; startup cleanup removes leftovers with it. */
export const TEMP_PREFIX = '.tmp-';

/**
 * A temp path beside `finalPath`, in the same folder so that rename is atomic. The name carries the
 * writing process's pid (`.p<pid>.`), so a sweep at start removes only what a dead process left.
 */
export function tempPathFor(finalPath: string): string {
  return join(
    dirname(finalPath),
    `${TEMP_PREFIX}${basename(finalPath)}.p${process.pid}.${randomBytes(6).toString('hex')}`,
  );
}

export function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True if a temp name was left by a process that no longer runs (or names no owner at all). */
export function isAbandonedTemp(name: string): boolean {
  const owner = /\.p(\d+)\./.exec(name) ?? /^p(\d+)$/.exec(name);
  return !owner || !processAlive(Number(owner[1]));
}

/**
 * Removes from `dir` what dead processes left: temp files (by `TEMP_PREFIX`) or, with `all`, any
 * entry (per-process work folders named `p<pid>`). What a live process is still writing stays.
 */
export async function removeAbandoned(dir: string, options: { all?: boolean } = {}): Promise<string[]> {
  const removed: string[] = [];
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!options.all && !name.startsWith(TEMP_PREFIX)) continue;
    if (!isAbandonedTemp(name)) continue;
    await rm(join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

/** fsync a folder so that a rename inside it survives a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsync a file by path; opened read-only, so a read-only file (a restored 0o444 one) can be synced too. */
export async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Streams `source` (and any transforms) into a temp file, fsyncs it, and hands the temp path to
 * `check` before renaming it to `finalPath`. On any failure the temp file is removed and the error
 * rethrown; `finalPath` is untouched.
 *
 * `exclusive`: `finalPath` is never replaced. The complete temp file is hard-linked to it, which fails
 * if the name exists (two uploads of one name, the later one checked a moment before the earlier one
 * landed): then nothing is written and the result is false. On a filesystem without hard links it
 * falls back to a check and a rename, as createSmallFileExclusive does.
 */
export async function writeFileAtomic(
  finalPath: string,
  streams: [Readable, ...NodeJS.ReadWriteStream[]],
  options: {
    mode?: number;
    check?: (tempPath: string) => Promise<void>;
    signal?: AbortSignal;
    exclusive?: boolean;
  } = {},
): Promise<boolean> {
  await mkdir(dirname(finalPath), { recursive: true });
  const temp = tempPathFor(finalPath);
  let sink: WriteStream | undefined;
  try {
    sink = createWriteStream(temp, { mode: options.mode ?? 0o644, flags: 'wx' });
    // biome-ignore lint/suspicious/noExplicitAny: pipeline's variadic overloads do not type a spread tuple
    await (pipeline as any)(...streams, sink, options.signal ? { signal: options.signal } : {});
    await fsyncFile(temp);
    if (options.check) await options.check(temp);
    if (options.exclusive) {
      const published = await linkNew(temp, finalPath);
      await rm(temp, { force: true });
      if (!published) return false;
    } else {
      await rename(temp, finalPath);
    }
    await fsyncDir(dirname(finalPath));
    return true;
  } catch (error) {
    // A source that fails at once can reject the pipeline while the sink is still opening its file:
    // removed before that open, the temp file would be created after it and left behind.
    if (sink && !sink.closed) await once(sink, 'close').catch(() => {});
    await rm(temp, { force: true });
    throw error;
  }
}

/** Writes `data` into a new file at `path` (never one that exists) and fsyncs it: a temp file's content. */
async function writeNewFileSynced(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const handle = await open(path, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Writes a small buffer atomically (keyring, state files). `prepare` runs on the complete temp file
 * just before the rename (e.g. to hand it to another owner).
 */
export async function writeSmallFileAtomic(
  finalPath: string,
  data: string | Uint8Array,
  mode = 0o644,
  prepare?: (tempPath: string) => Promise<void>,
): Promise<void> {
  await mkdir(dirname(finalPath), { recursive: true });
  const temp = tempPathFor(finalPath);
  try {
    await writeNewFileSynced(temp, data, mode);
    await prepare?.(temp);
    await rename(temp, finalPath);
    await fsyncDir(dirname(finalPath));
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** Filesystems without hard links answer link() with one of these. */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/**
 * Creates `finalPath` with `data` only if nothing is there yet: for what must be made exactly once
 * (the keyring, the admin token, the embedded cluster's password), since two processes starting at
 * once on a fresh data dir (the service and a CLI command) must never each keep a different one.
 * The complete, fsynced temp file is hard-linked to the final name, which fails if the name exists:
 * nothing is ever replaced and nothing is visible half-written. Returns false, having written
 * nothing, if the file already existed (the caller reads that one). On a filesystem without hard
 * links it falls back to a rename after a check, which narrows the race to that instant.
 */
export async function createSmallFileExclusive(
  finalPath: string,
  data: string | Uint8Array,
  mode = 0o600,
  prepare?: (tempPath: string) => Promise<void>,
): Promise<boolean> {
  await mkdir(dirname(finalPath), { recursive: true });
  const temp = tempPathFor(finalPath);
  try {
    await writeNewFileSynced(temp, data, mode);
    await prepare?.(temp);
    if (!(await linkNew(temp, finalPath))) return false;
    await fsyncDir(dirname(finalPath));
    return true;
  } finally {
    await rm(temp, { force: true });
  }
}

/**
 * Gives the complete file `temp` the name `finalPath` only if that name is free: a hard link, which
 * fails if it exists. False if it existed (nothing changed). Without hard links: a check, then a
 * rename (the race narrowed to that instant). The caller removes `temp` when it was linked.
 */
async function linkNew(temp: string, finalPath: string): Promise<boolean> {
  try {
    await link(temp, finalPath);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? '';
    if (code === 'EEXIST') return false;
    if (!NO_HARD_LINKS.has(code)) throw error;
    if (await exists(finalPath)) return false;
    await rename(temp, finalPath);
    return true;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}
