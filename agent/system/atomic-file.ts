/** Atomic file writes: temp name, fsync, rename, fsync the folder. Nothing is ever visible half-written. */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, readlinkSync, type WriteStream } from 'node:fs';
import { link, lstat, mkdir, open, readdir, rename, rm, utimes } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** Prefix of every temp file we create; startup cleanup removes leftovers with it. */
export const TEMP_PREFIX = '.tmp-';

/** The inode of this process's PID namespace (`pid:[<inode>]` in /proc/self/ns/pid); undefined if unreadable. */
function pidNamespaceInode(): string | undefined {
  try {
    return /^pid:\[(\d+)\]$/.exec(readlinkSync('/proc/self/ns/pid'))?.[1];
  } catch {
    return undefined;
  }
}

const NS_INODE = pidNamespaceInode();

/**
 * A temp name of a writer in another PID namespace (another container on the same data dir) cannot
 * be judged by its pid: it is abandoned only once older than `foreignMaxAgeMs`. A live writer keeps
 * its temp file fresher than that: the data it writes, or `heartbeatMs` touches while it checks it.
 * Mutable for tests.
 */
export const tempTiming = { foreignMaxAgeMs: 15 * 60_000, heartbeatMs: 60_000 };

/**
 * What names this process in temp names and work folders: `p<pid>n<inode of its PID namespace>`
 * (`p<pid>` where the namespace cannot be read), so that a sweep in another container knows not to go by
 * the pid.
 */
function processTag(): string {
  return NS_INODE !== undefined ? `p${process.pid}n${NS_INODE}` : `p${process.pid}`;
}

/** Work folders whose mtime this process refreshes, and the one timer doing it. */
const workFolders = new Set<string>();
let workFolderTimer: NodeJS.Timeout | undefined;

/**
 * This process's work folder under `root` (`<root>/p<pid>n<inode>`; its users make it when needed).
 * While this process runs, the folder's mtime is refreshed every `tempTiming.heartbeatMs` (where it
 * exists; an unref'd timer), so a start-up sweep in another PID namespace, which goes by its age,
 * never removes it from under a job that writes nothing into it for a while.
 */
export function processWorkFolder(root: string): string {
  const folder = join(root, processTag());
  workFolders.add(folder);
  workFolderTimer ??= setInterval(() => {
    const at = new Date();
    for (const f of workFolders) void utimes(f, at, at).catch(() => {});
  }, tempTiming.heartbeatMs);
  workFolderTimer.unref();
  return folder;
}

/**
 * A temp path beside `finalPath`, in the same folder so that rename is atomic. The name carries the
 * writing process's pid and PID namespace (`.p<pid>n<inode>.`; `.p<pid>.` in earlier versions), so a
 * sweep at start removes only what a dead process left.
 */
export function tempPathFor(finalPath: string): string {
  return join(
    dirname(finalPath),
    `${TEMP_PREFIX}${basename(finalPath)}.${processTag()}.${randomBytes(6).toString('hex')}`,
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

/** The owner a temp name or work folder names: pid, and the namespace inode where the name has one. */
function ownerOf(name: string): { pid: number; ns?: string } | undefined {
  const owner = /\.p(\d+)(?:n(\d+))?\./.exec(name) ?? /^p(\d+)(?:n(\d+))?$/.exec(name);
  if (!owner) return undefined;
  return { pid: Number(owner[1]), ...(owner[2] !== undefined ? { ns: owner[2] } : {}) };
}

/** True if `name` was made by a process in another PID namespace than ours (its pid means nothing here). */
function fromOtherNamespace(name: string): boolean {
  const ns = ownerOf(name)?.ns;
  return ns !== undefined && NS_INODE !== undefined && ns !== NS_INODE;
}

/**
 * True if a temp name was left by a process that no longer runs (or names no owner at all). A name of
 * a process in another PID namespace is abandoned only when its file was last modified more than
 * `tempTiming.foreignMaxAgeMs` ago (`mtimeMs`; without it, it is kept).
 */
export function isAbandonedTemp(name: string, mtimeMs?: number): boolean {
  const owner = ownerOf(name);
  if (!owner) return true;
  if (fromOtherNamespace(name))
    return mtimeMs !== undefined && Date.now() - mtimeMs > tempTiming.foreignMaxAgeMs;
  return !processAlive(owner.pid);
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
    // Another namespace's writer is judged by the age of what it wrote (not through a symlink).
    const mtimeMs = fromOtherNamespace(name)
      ? await lstat(join(dir, name)).then(
          (s) => s.mtimeMs,
          () => undefined,
        )
      : undefined;
    if (!isAbandonedTemp(name, mtimeMs)) continue;
    await rm(join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

/** fsync a folder so that a rename inside it survives a power cut. */
export async function fsyncDir(dir: string | Buffer): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * `mkdir -p` whose new folders survive a power cut: the parent of each folder it made is fsynced, so a
 * file later fsynced into a new folder is not lost with that folder's own name. A folder that was
 * there already changes nothing.
 */
export async function mkdirDurable(dir: string, mode?: number): Promise<void> {
  const first = await mkdir(dir, { recursive: true, ...(mode === undefined ? {} : { mode }) });
  if (first === undefined) return;
  const top = resolve(first);
  for (let made = resolve(dir); ; made = dirname(made)) {
    await fsyncDir(dirname(made));
    if (made === top || dirname(made) === made) return;
  }
}

/** Removes a small file, if it is there, and fsyncs its folder so that the removal survives a power cut. */
export async function removeSmallFile(path: string): Promise<void> {
  const gone = await rm(path).then(
    () => true,
    (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return false;
      throw error;
    },
  );
  if (gone) await fsyncDir(dirname(path));
}

/**
 * fsync a file (or folder) by path, text or bytes (a name that is not UTF-8); opened read-only, so a
 * read-only file (a restored 0o444 one) can be synced too.
 */
export async function fsyncFile(path: string | Buffer): Promise<void> {
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
    /** Told the temp file's path before it is made (for a caller that may have to remove it itself). */
    onTempPath?: (tempPath: string) => void;
  } = {},
): Promise<boolean> {
  await mkdirDurable(dirname(finalPath));
  const temp = tempPathFor(finalPath);
  options.onTempPath?.(temp);
  let sink: WriteStream | undefined;
  // A long check (or a stalled source) writes nothing for a while: the temp stays fresh for a sweep
  // in another PID namespace, which goes by its age. Stopped (and its last touch awaited) before the
  // file is published, so the final file's mtime never moves after it is in place.
  let touch: Promise<void> = Promise.resolve();
  const heartbeat = setInterval(() => {
    const at = new Date();
    touch = utimes(temp, at, at).catch(() => {});
  }, tempTiming.heartbeatMs);
  heartbeat.unref();
  try {
    sink = createWriteStream(temp, { mode: options.mode ?? 0o644, flags: 'wx' });
    // biome-ignore lint/suspicious/noExplicitAny: pipeline's variadic overloads do not type a spread tuple
    await (pipeline as any)(...streams, sink, options.signal ? { signal: options.signal } : {});
    await fsyncFile(temp);
    if (options.check) await options.check(temp);
    clearInterval(heartbeat);
    await touch;
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
  } finally {
    clearInterval(heartbeat);
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
  await mkdirDurable(dirname(finalPath));
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
  await mkdirDurable(dirname(finalPath));
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
