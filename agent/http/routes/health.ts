/** Routes of health: the per-area report, and the scheduled verification's state and run-now. */
import { Hono } from 'hono';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { healthFor } from '../../health/service';
import { startVerification } from '../../verification/run';
import { verificationStateFor } from '../../verification/state';

function healthRoutes(agent: Agent): Hono {
  const app = new Hono();
  /** `{status, checkedAt, areas: {backups, offsite, dr, verification, disk, keys, jobs}}`, each `{status, reason, ...}`. */
  app.get('/', async (c) => c.json(await healthFor(agent).evaluate()));
  /** The last scheduled verification and each copy's last result. */
  app.get('/verification', async (c) => c.json(await verificationStateFor(agent).get()));
  /** Runs the full verification (local, offsite copies, cloud slot) now; `202 {jobId}`. */
  app.post('/verification/run', async (c) => {
    const job = await startVerification(agent);
    return c.json({ jobId: job.id }, 202);
  });
  return app;
}

export const healthModule: RouteModule = { path: '/health', routes: healthRoutes };
