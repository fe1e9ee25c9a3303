/** Backup operations as jobs, shared by the HTTP API, the CLI and the scheduler. */
import type { Agent } from '../agent';
import { UnfinishedRecoveryFile } from '../dr/unfinished';
import { AppError, describeError } from '../errors';
import type { Job } from '../jobs/runner';
import { checkBackupName } from './catalog';
import { backupDeps, type CreateBackupOptions, createBackup, verifyBackup } from './create';

/** How a step after the backup went, in the job's result: its error, and what it reported (the auto-upload's outcomes). */
export interface FollowUp {
  ok: boolean;
  /** Stopped by the job's cancellation (a person's Cancel), not failed. */
  cancelled?: true;
  error?: string;
  details?: unknown;
}

/**
 * Starts a backup job; after the backup is verified, the after-backup hooks run, each failure recorded.
 * Refused while a DR recovery is unfinished (see refuseDuringRecovery).
 */
export async function startBackup(agent: Agent, options: CreateBackupOptions = {}): Promise<Job> {
  if (options.kind !== 'safety' && options.kind !== 'dr') await refuseDuringRecovery(agent);
  return agent.jobs.start(
    'backup',
    async (ctx) => {
      const backup = await createBackup(backupDeps(agent), ctx, options);
      const followUps: Record<string, FollowUp> = {};
      for (const hook of agent.afterBackup) {
        const name = hook.name || 'hook';
        try {
          const details = await hook(backup, ctx);
          followUps[name] = details === undefined ? { ok: true } : { ok: true, details };
        } catch (error) {
          const details = (error as { details?: unknown }).details;
          // Cancelled when the job's Cancel is what stopped the step (its error says so), not when a
          // failure of its own merely came before or beside the Cancel.
          const cancelled = ctx.signal.aborted && describeError(error).code === 'cancelled';
          followUps[name] = {
            ok: false,
            ...(cancelled ? { cancelled: true as const } : {}),
            error: describeError(error).message,
            ...(details === undefined ? {} : { details }),
          };
          if (cancelled)
            ctx.log.info('a step after the backup was cancelled; the backup itself is good', { step: name });
          else
            ctx.log.warn('a step after the backup failed; the backup itself is good', { step: name, error });
        }
      }
      return { backup, followUps };
    },
    { mutating: true },
  );
}

/**
 * While a DR recovery is unfinished the box carries the recovered installation's identity but still its
 * own data: a backup made then would be that data under the recovered name, and once the recovery
 * finished it would pass for one of the recovered installation's backups. The message names no
 * installation id (the scheduler logs it; the id is the recovery credential).
 */
async function refuseDuringRecovery(agent: Agent): Promise<void> {
  const unfinished = await new UnfinishedRecoveryFile(agent.paths.drRecovery).current(agent.keyring);
  if (!unfinished) return;
  throw new AppError(
    'conflict',
    `no backup is made now, because ${unfinished.reason}; a backup made meanwhile would hold this box's own data under the recovered installation's name`,
  );
}

/** Starts a verify job: decrypt every chunk, check every member; reads only, so it may run beside others. */
export async function startVerify(agent: Agent, filename: string): Promise<Job> {
  const name = checkBackupName(filename);
  await agent.catalog.info(name);
  return agent.jobs.start('verify', (ctx) => verifyBackup(agent, ctx, name), {
    mutating: false,
    target: name,
  });
}
