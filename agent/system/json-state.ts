/**
 * A small JSON state file in the data dir: read again whenever another process (the CLI beside the
 * service) has replaced it, updates serialized across processes by a lock file beside it
 * (`<file>.lock`) and written temp-then-rename (0600).
 */
import { readFile, rename, stat } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { AppError } from '../errors';
import { lockHolderPid, removeAbandonedLockFiles, withJobLock } from '../jobs/lock';
import type { Logger } from '../log';
import { mkdirDurable, writeSmallFileAtomic } from './atomic-file';

interface JsonStateOptions {
  /**
   * A damaged file is renamed `<file>.damaged-<time>` (kept for a look) and the state starts afresh,
   * told here once: for state the agent can rebuild (what it alerted, its last uploads). Without it a
   * damaged file is an error: state that must not be forgotten (a pending Cloud DR deletion).
   */
  setAsideDamaged?: { log: Logger };
  /**
   * How long an update waits while another process holds the file's lock before it fails naming that
   * process (10 s): an update holds it a few milliseconds.
   */
  lockWaitMs?: number;
}

/** How long an update waits for a live holder of the lock by default: an update holds it a few milliseconds. */
const LOCK_WAIT_MS = 10_000;
/** How often a waiting update tries the lock again. */
const LOCK_POLL_MS = 5;

/**
 * Which version of the file is on disk: every write is a rename of a new file, so another process's
 * write changes the inode (and the time); 'missing' when there is none.
 */
async function fileVersion(path: string): Promise<string> {
  const info = await stat(path, { bigint: true }).catch(() => undefined);
  return info ? `${info.ino}:${info.mtimeNs}:${info.size}` : 'missing';
}

/** The lock files whose leftover temps this process has already removed (once per lock). */
const sweptLocks = new Set<string>();

/**
 * Runs `work`, a read-modify-write of the small file at `path` (a state file, the backup records),
 * holding `<path>.lock` against other processes (the lock files of agent/jobs/lock.ts), so the service
 * and a CLI command updating one file at the same moment both keep their change. A lock a killed
 * process left is taken over; a live holder is waited for up to `waitMs`, then one line names the file
 * and the holder's pid.
 */
export async function withFileUpdateLock<R>(
  path: string,
  work: () => Promise<R>,
  waitMs = LOCK_WAIT_MS,
): Promise<R> {
  const lockPath = `${path}.lock`;
  await mkdirDurable(dirname(path));
  if (!sweptLocks.has(lockPath)) {
    // A process killed while creating the lock leaves its temp (`<file>.lock.<nonce>.tmp`) beside it,
    // one killed taking over a lock its claim (`<file>.lock.takeover-<id>`).
    sweptLocks.add(lockPath);
    await removeAbandonedLockFiles(lockPath);
  }
  try {
    return await withJobLock(lockPath, `update of ${basename(path)}`, work, { waitMs, pollMs: LOCK_POLL_MS });
  } catch (error) {
    // The lock's refusal speaks of jobs; for a file the person needs the file and the pid.
    if (!(error instanceof AppError && error.code === 'job_running')) throw error;
    const pid = await lockHolderPid(lockPath);
    const who = pid !== undefined ? `process ${pid}` : 'a process that has not written its pid';
    throw new Error(
      `${path} is being updated by ${who} (lock ${lockPath}) for more than ${waitMs / 1000} s: try again; if that process hangs, stop it`,
    );
  }
}

export class JsonStateFile<T extends object> {
  /** The state as last read or written, and the version of the file it came from. */
  private cache: { state: T; version: string } | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly path: string,
    private readonly initial: () => T,
    private readonly options: JsonStateOptions = {},
  ) {}

  /**
   * A copy of the state; a missing file reads as the initial state, an unreadable one is an error. A file that is not
   * a JSON object (damaged) is an error naming the file, never quoting it: JSON.parse's message shows
   * the text around the fault, and state files hold an installation id (the DR recovery credential).
   */
  get(): Promise<T> {
    return this.stateNow(false);
  }

  /** What get() answers; `locked` when this process holds the file's lock (an update). */
  private async stateNow(locked: boolean): Promise<T> {
    // Read again when the file is not the one last seen: a CLI command beside the service (dr push,
    // keys export) writes the same files, and an update from a stale copy would undo what it wrote.
    const version = await fileVersion(this.path);
    if (this.cache?.version !== version) this.cache = { state: await this.read(version, locked), version };
    return structuredClone(this.cache.state);
  }

  /** The state in the file, which was at `version` when looked at; `locked` as in stateNow(). */
  private read(version: string, locked: boolean): Promise<T> {
    return readFile(this.path, 'utf8').then(
      async (text) => {
        const parsed = this.parse(text);
        if (parsed) return { ...this.initial(), ...parsed };
        const setAside = this.options.setAsideDamaged;
        if (!setAside) {
          throw new Error(`${this.path} is damaged (not a JSON object): move it aside to start it afresh`);
        }
        // Set aside only holding the file's lock: a reader beside an update (or another reader) that
        // renamed without it could take away the good file the update has just written, or find the
        // damaged one gone under its rename (ENOENT). Under the lock it is read again first.
        if (!locked) {
          return withFileUpdateLock(
            this.path,
            async () => this.read(await fileVersion(this.path), true),
            this.options.lockWaitMs,
          );
        }
        // Another process may have written a good file since this one read the damaged bytes: that
        // one is read instead of being set aside.
        const now = await fileVersion(this.path);
        if (now !== version) return this.read(now, true);
        const aside = `${this.path}.damaged-${new Date().toISOString().replaceAll(':', '')}`;
        await rename(this.path, aside);
        setAside.log.warn('a damaged state file was set aside; that state starts afresh', {
          file: this.path,
          setAside: aside,
        });
        return this.initial();
      },
      (error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return this.initial();
        // Unreadable (another process's file this one may not read, a disk error): never taken as empty,
        // or the next update would write the initial state over what the file holds.
        throw new Error(
          `${this.path} cannot be read (${error.code ?? error.message}): its state is kept as it is`,
        );
      },
    );
  }

  /** The file's object, or undefined when it is damaged (not a JSON object). */
  private parse(text: string): Partial<T> | undefined {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return undefined;
    }
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
      ? (parsed as Partial<T>)
      : undefined;
  }

  /**
   * Applies `change` to a copy of what is on disk now and saves it; memory follows disk. This
   * process's updates queue, and across processes the read-modify-write holds `<file>.lock` (the
   * lock files of agent/jobs/lock.ts), so the service and a CLI command updating one file at the
   * same moment both keep their change. A lock a killed process left is taken over by the next
   * update; a live holder is waited for up to `lockWaitMs`, then the update fails naming its pid.
   * Reads take no lock: every write is a rename, so a read always sees a whole file (only one that
   * finds the file damaged takes it, to set it aside).
   */
  update(change: (state: T) => void): Promise<T> {
    const run = this.queue.then(() =>
      withFileUpdateLock(this.path, () => this.applyLocked(change), this.options.lockWaitMs),
    );
    this.queue = run.catch(() => {});
    return run;
  }

  /** The read-modify-write of an update, run holding the lock. */
  private async applyLocked(change: (state: T) => void): Promise<T> {
    const next = await this.stateNow(true);
    change(next);
    // The version of the file as written, taken before the rename keeps its inode and time: a stat
    // after it could see another process's newer file and take it for ours.
    let version = 'missing';
    await writeSmallFileAtomic(this.path, `${JSON.stringify(next, null, 2)}\n`, 0o600, async (temp) => {
      version = await fileVersion(temp);
    });
    this.cache = { state: next, version };
    return structuredClone(next);
  }
}
