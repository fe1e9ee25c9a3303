/**
 * The watchdog's run-time limit survives a restart: it allows a job of a kind as long as the successful
 * runs the jobs list (jobs.json) remembers, not only those of this process. A backup that always takes
 * longer than minRunMs is not flagged stalled on its first run after the agent started again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthFor } from '../../agent/health/service';
import { healthModule } from '../../agent/http/routes/health';
import { startTestAgent, type TestAgent } from '../services/agent';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { backupNow, call, downloadKeys } from './helpers';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [healthModule] });
  await downloadKeys(t);
}, 60_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('the job watchdog after a restart', () => {
  it('allows a backup the run time of the backups before the restart', async () => {
    await backupNow(t);
    const [before] = t.agent.jobs.list().filter((j) => j.kind === 'backup' && j.state === 'succeeded');
    const took = Date.parse(before!.endedAt!) - Date.parse(before!.startedAt);
    expect(took).toBeGreaterThan(40);
    // A run of an unknown kind is allowed a quarter of that backup's time, one of a known kind three times it.
    const minRunMs = Math.floor(took / 4);

    const again = await startTestAgent(pg, {
      dataDir: t.dataDir,
      databaseUrl: t.agent.databaseUrl,
      modules: [healthModule],
    });
    try {
      healthFor(again.agent, { watchdog: { minRunMs, noProgressMs: 600_000 } });
      // The dump waits for this lock: the backup is surely running when health is asked.
      const unlock = await holdTableLock(again.agent.databaseUrl, 'public.devices');
      let jobId: string;
      try {
        const started = await call(again, 'POST', '/backups');
        expect(started.status).toBe(202);
        jobId = started.body.jobId as string;
        // Well past minRunMs, well within the run time of the backup before the restart.
        await new Promise((r) => setTimeout(r, 2 * minRunMs));
        const health = await call(again, 'GET', '/health');
        expect(again.agent.jobs.get(jobId)!.endedAt).toBeUndefined();
        expect(health.body.areas.jobs.stalled).toEqual([]);
        expect(health.body.areas.jobs.status).toBe('ok');
      } finally {
        await unlock();
      }
      const ended = await again.agent.jobs.waitFor(jobId);
      expect(ended.state).toBe('succeeded');
    } finally {
      await again.close();
    }
  }, 120_000);
});
