/**
 * A lock file across processes around a short read-modify-write of a small file: the JSON state files
 * that the service and a CLI command beside it (dr push, keys export) both update. `<file>.lock` is
 * created exclusively (0600) holding the holder's pid, and the time that process started (from /proc,
 * so a pid a later process took over is not mistaken for the holder). A lock whose holder is dead is
 * broken by the next process that wants it, never by two at once.
 */
import { readFileSync } from 'node:fs';
import { mkdir, open, stat, unlink } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/** A lock with no pid in it (its maker killed between creating it and writing) is stale once this old. */
const NO_PID_GRACE_MS = 2_000;
/** How long an update waits for a live holder by default: a state update holds it a few milliseconds. */
export const DEFAULT_LOCK_WAIT_MS = 10_000;
const MAX_BACKOFF_MS = 50;

/** When process `pid` started (clock ticks after boot, field 22 of /proc/<pid>/stat); undefined without /proc. */
function processStart(pid: number): string | undefined {
  try {
    const line = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 2 (the command) is in parentheses and may hold spaces: count the fields after it.
    return line.slice(line.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

const STARTED = processStart(process.pid);

/** A lock file (or a claim to break one) as read: which file it is, and who holds it. */
interface Seen {
  /** The file itself: inode, time and size, so a new file under the same name is never taken for it. */
  id: string;
  pid?: number;
  started?: string;
  ageMs: number;
}

/** Ids of the lock files (and break claims) this process holds now: a file with our pid not here is a predecessor's. */
const held = new Set<string>();
/** Per lock, the tail of this process's holds: they run one after another, never polling against each other. */
const queues = new Map<string, Promise<unknown>>();
/** Files this process is making now: until one's id is known, a file with our pid may be it. */
let making = 0;

const sleep = (ms: number) => new Promise((done) => setTimeout(done, ms));

function code(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException).code;
}

/** Reads a lock file through one handle (its content and its identity agree); undefined if there is none. */
async function look(path: string): Promise<Seen | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if (code(error) === 'ENOENT') return undefined;
    // Unreadable (another user's lock): no pid, so it goes by its age.
    const info = await stat(path, { bigint: true }).catch(() => undefined);
    if (!info) return undefined;
    return { id: `${info.ino}-${info.mtimeNs}-${info.size}`, ageMs: Date.now() - Number(info.mtimeMs) };
  }
  try {
    const info = await handle.stat({ bigint: true });
    const text = await handle.readFile('utf8');
    const id = `${info.ino}-${info.mtimeNs}-${info.size}`;
    const ageMs = Date.now() - Number(info.mtimeMs);
    const holder = /^(\d+)\n(?:(\d+)\n)?$/.exec(text);
    if (!holder) return { id, ageMs };
    return { id, pid: Number(holder[1]), ...(holder[2] ? { started: holder[2] } : {}), ageMs };
  } finally {
    await handle.close();
  }
}

/**
 * Whether the holder is gone: its process no longer runs (ESRCH; EPERM is another user's live process),
 * or the pid now names a process that started at another time, or it is this process's pid on a file
 * this process does not hold (a predecessor's, after a restart). No pid at all: stale once old enough.
 */
function stale(seen: Seen): boolean {
  if (seen.pid === undefined) return seen.ageMs > NO_PID_GRACE_MS;
  if (seen.pid === process.pid) return !held.has(seen.id) && making === 0;
  if (seen.started !== undefined) {
    const started = processStart(seen.pid);
    if (started !== undefined && started !== seen.started) return true;
  }
  try {
    process.kill(seen.pid, 0);
    return false;
  } catch (error) {
    return code(error) === 'ESRCH';
  }
}

/** Creates `path` exclusively holding this process; its id, or undefined if `path` exists. */
async function create(path: string): Promise<string | undefined> {
  let handle: Awaited<ReturnType<typeof open>>;
  let id: string;
  making++;
  try {
    try {
      handle = await open(path, 'wx', 0o600);
    } catch (error) {
      if (code(error) === 'EEXIST') return undefined;
      throw error;
    }
    try {
      await handle.writeFile(`${process.pid}\n${STARTED !== undefined ? `${STARTED}\n` : ''}`);
      const info = await handle.stat({ bigint: true });
      id = `${info.ino}-${info.mtimeNs}-${info.size}`;
      held.add(id);
    } catch (error) {
      await handle.close().catch(() => {});
      await unlink(path).catch(() => {});
      throw error;
    }
  } finally {
    making--;
  }
  await handle.close();
  // Still ours under that name: a maker stalled for seconds before writing its pid could have seen
  // its empty file broken as a killed one's meanwhile; then it is not held, and it is tried again.
  const now = await look(path);
  if (now?.id === id) return id;
  held.delete(id);
  return undefined;
}

/** Removes `path` if it still is the file `id` (held by this process); another's file is left alone. */
async function removeIfStill(path: string, id: string): Promise<void> {
  const now = await look(path).catch(() => undefined);
  if (now?.id === id) await unlink(path).catch(() => {});
}

/**
 * Removes the stale lock `seen` at `path`, if no other process is doing so. The right to remove it is
 * a claim `<path>.break-<id>` created exclusively: whoever makes it first reads the lock again and
 * removes it only if it still is that same stale file. No one else may remove a file with that id
 * (its holder is dead, and the claim is held), so what was read stays true until the unlink, and a
 * new lock taken meanwhile is never removed. A claim whose maker died is itself broken the same way.
 * True when the lock at `path` is gone (or another file now); false when it is not (a live process is
 * breaking it, or it cannot be removed).
 */
async function breakStale(path: string, seen: Seen, depth = 0): Promise<boolean> {
  if (depth > 4) return false;
  const claimPath = `${path}.break-${seen.id}`;
  const claim = await create(claimPath);
  if (claim) {
    try {
      const now = await look(path);
      if (now?.id !== seen.id) return true;
      if (!stale(now)) return false;
      // A lock that cannot be removed (the folder's permissions) is waited for, up to the bound.
      return await unlink(path).then(
        () => true,
        (error: unknown) => code(error) === 'ENOENT',
      );
    } finally {
      await removeIfStill(claimPath, claim);
      held.delete(claim);
    }
  }
  const other = await look(claimPath);
  if (!other) return false; // that breaker just finished: look at the lock again
  if (!stale(other)) return false;
  await breakStale(claimPath, other, depth + 1);
  return false;
}

function heldTooLong(file: string, lockPath: string, seen: Seen, waitMs: number): Error {
  const who = seen.pid !== undefined ? `process ${seen.pid}` : 'a process that has not written its pid';
  return new Error(
    `${file} is being updated by ${who} (lock ${lockPath}) for more than ${waitMs / 1000} s: try again; if that process hangs, stop it`,
  );
}

/** Takes the lock at `lockPath`, waiting for a live holder up to `waitMs`; returns its release. */
async function acquire(file: string, lockPath: string, waitMs: number): Promise<() => Promise<void>> {
  await mkdir(dirname(lockPath), { recursive: true });
  const deadline = Date.now() + waitMs;
  let backoff = 2;
  for (;;) {
    const id = await create(lockPath);
    if (id) {
      return async () => {
        try {
          await removeIfStill(lockPath, id);
        } finally {
          held.delete(id);
        }
      };
    }
    const seen = await look(lockPath);
    if (!seen) continue; // released meanwhile
    if (stale(seen) && (await breakStale(lockPath, seen))) continue;
    if (Date.now() >= deadline) throw heldTooLong(file, lockPath, seen, waitMs);
    // A little jitter, so that processes waiting together do not retry in step.
    await sleep(backoff * (0.5 + Math.random()));
    backoff = Math.min(MAX_BACKOFF_MS, backoff * 2);
  }
}

/**
 * Runs `work` holding the lock `<file>.lock` against other processes (and other holders in this one,
 * which queue). Waits for a live holder up to `waitMs` (10 s), then fails naming the file and the pid.
 */
export async function withFileLock<T>(
  file: string,
  work: () => Promise<T>,
  options: { waitMs?: number } = {},
): Promise<T> {
  const lockPath = `${file}.lock`;
  const key = resolve(lockPath);
  const before = queues.get(key) ?? Promise.resolve();
  const mine = before.then(async () => {
    const release = await acquire(file, lockPath, options.waitMs ?? DEFAULT_LOCK_WAIT_MS);
    try {
      return await work();
    } finally {
      await release();
    }
  });
  const tail = mine.catch(() => {});
  queues.set(key, tail);
  void tail.then(() => {
    if (queues.get(key) === tail) queues.delete(key);
  });
  return mine;
}
