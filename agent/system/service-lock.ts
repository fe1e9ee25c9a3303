/**
 * One service per data dir. A second agent started on a data dir another one serves (a supervisor and
 * a manual `npm start`) would adopt its cluster and run its own startup recovery beside it; it is
 * refused before it touches anything. The CLI does not take this lock: it works beside the service.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AppError } from '../errors';
import { acquireLock } from '../jobs/lock';
import { mkdirDurable } from './atomic-file';

/** The service's lock file in the data dir: the job lock's format (pid, start time, boot id). */
export function serviceLockPath(dataDir: string): string {
  return join(dataDir, 'agent.lock');
}

/** The pid a lock file names, if it can be read. */
async function holderPid(path: string): Promise<number | undefined> {
  try {
    const holder = JSON.parse(await readFile(path, 'utf8')) as { pid?: unknown };
    return typeof holder.pid === 'number' ? holder.pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Takes the service lock of `dataDir` or throws a one-line error naming the live agent holding it.
 * A lock left by a dead process (kill -9, a power cut) is taken over by the job lock's safe rule.
 * Returns its release.
 */
export async function acquireServiceLock(dataDir: string): Promise<() => Promise<void>> {
  await mkdirDurable(dataDir, 0o700);
  const path = serviceLockPath(dataDir);
  try {
    return await acquireLock(path, 'serving the data dir');
  } catch (error) {
    if (!(error instanceof AppError && error.code === 'job_running')) throw error;
    const pid = await holderPid(path);
    throw new Error(`another agent${pid ? ` (pid ${pid})` : ''} already serves ${dataDir}; stop it first`);
  }
}
