/** Route of the database maintenance: run the history purge now and answer its counts. */
import { Hono } from 'hono';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { runMaintenanceNow } from '../../maintenance/run';
import { noOptions } from '../body';

function maintenanceRoutes(agent: Agent): Hono {
  const app = new Hono();
  /**
   * Runs the purge as a mutating job (409 if another one runs; cancellable through
   * POST /api/v1/jobs/:id/cancel) and waits for it: `{deleted, total, cutoff, jobId}`. It purges by
   * the saved retention days: a body naming an option is a 422.
   */
  app.post('/run', async (c) => {
    await noOptions(c);
    const { deleted, total, cutoff, jobId } = await runMaintenanceNow(agent);
    return c.json({ deleted, total, cutoff, jobId });
  });
  return app;
}

export const maintenanceModule: RouteModule = {
  path: '/maintenance',
  routes: maintenanceRoutes,
  audited: true,
};
