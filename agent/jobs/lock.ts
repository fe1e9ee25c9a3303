/** A lock file so that the agent and the CLI never run two mutating jobs at once on the same data dir. */
import { open, readFile, rm } from 'node:fs/promises';
import { AppError } from '../errors';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock or throws `job_running`; a lock left by a dead process is taken over. */
export async function acquireLock(path: string, what: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(JSON.stringify({ pid: process.pid, what, since: new Date().toISOString() }));
      await handle.close();
      return async () => {
        await rm(path, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const holder = await readFile(path, 'utf8')
        .then((t) => JSON.parse(t) as { pid: number; what: string })
        .catch(() => undefined);
      if (holder && holder.pid !== process.pid && alive(holder.pid)) {
        throw new AppError(
          'job_running',
          `another job is running (${holder.what}, process ${holder.pid}); try again when it ends`,
        );
      }
      if (holder && holder.pid === process.pid) {
        throw new AppError('job_running', `another job is running (${holder.what}); try again when it ends`);
      }
      await rm(path, { force: true });
    }
  }
  throw new AppError('job_running', 'could not take the job lock; try again');
}

/**
 * Runs `work` holding the job lock, waiting (up to `waitMs`) while another job holds it: for work
 * that runs inside a non-exclusive job but must not overlap a mutating one (the DR push's
 * temporary backup, which would otherwise race a scheduled backup or maintenance for the lock).
 */
export async function withJobLock<T>(
  path: string,
  what: string,
  work: () => Promise<T>,
  options: { signal?: AbortSignal; waitMs?: number; pollMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (options.waitMs ?? 30 * 60_000);
  for (;;) {
    options.signal?.throwIfAborted();
    try {
      const release = await acquireLock(path, what);
      try {
        return await work();
      } finally {
        await release();
      }
    } catch (error) {
      if (!(error instanceof AppError && error.code === 'job_running') || Date.now() >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, options.pollMs ?? 5_000));
    }
  }
}
