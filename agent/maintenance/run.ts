/** Maintenance as a job: exclusive with other mutating jobs, cancellable, used by the scheduler and the API. */
import type { Agent } from '../agent';
import { AppError } from '../errors';
import type { Job } from '../jobs/runner';
import { type PurgeResult, purgeHistory } from './purge';

/** Starts the history purge with the saved retention days as a mutating job (409 if another one runs). */
export function startMaintenance(agent: Agent, options: { batchSize?: number } = {}): Promise<Job> {
  const retentionDays = agent.settings.get().maintenance.retentionDays;
  return agent.jobs.start(
    'maintenance',
    async (ctx) => {
      // Counted in rows deleted (the total is not known before the purge ends).
      ctx.phase('purging history', 0, 'rows');
      let done = 0;
      const result = await purgeHistory(agent.sql, {
        retentionDays,
        signal: ctx.signal,
        ...(options.batchSize ? { batchSize: options.batchSize } : {}),
        onBatch: (_key, count) => {
          done += count;
          ctx.progress(done);
        },
      });
      ctx.log.info('history purged', { deleted: result.deleted, total: result.total });
      return result;
    },
    { mutating: true },
  );
}

/**
 * Runs the purge now and waits for it: the job's result, or its error (cancelled, failed) thrown.
 * Recorded as the maintenance task's last run, like a scheduled one.
 */
export async function runMaintenanceNow(agent: Agent): Promise<PurgeResult & { jobId: string }> {
  const startedAt = new Date();
  const job = await agent.jobs.waitFor((await startMaintenance(agent)).id);
  await agent.settings.state.recordRun('maintenance', startedAt, {
    ok: job.state === 'succeeded',
    jobId: job.id,
    ...(job.error ? { error: job.error.message } : {}),
  });
  if (job.state !== 'succeeded') {
    const code = job.error?.code === 'cancelled' ? 'cancelled' : 'internal';
    throw new AppError(code, job.error?.message ?? 'the maintenance run failed', {
      details: { jobId: job.id },
    });
  }
  return { ...(job.result as PurgeResult), jobId: job.id };
}
