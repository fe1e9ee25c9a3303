/** Routes of alerts: send a test alert to every configured channel, and what was last alerted per area. */
import { Hono } from 'hono';
import type { Agent } from '../../agent';
import { alertsFor } from '../../alerts/notifier';
import type { RouteModule } from '../../app';
import { healthFor } from '../../health/service';

function alertRoutes(agent: Agent): Hono {
  const app = new Hono();
  const notifier = () => alertsFor(agent, healthFor(agent));
  /** `{sent, deliveries: [{channel, ok, error?}]}`; 200 even if a channel failed (the list says which). */
  app.post('/test', async (c) => {
    const { deliveries } = await notifier().sendTest();
    return c.json({ sent: deliveries.some((d) => d.ok), deliveries });
  });
  /** The status each area was last alerted about (what a restart will not repeat). */
  app.get('/state', async (c) => c.json(await notifier().state.get()));
  return app;
}

export const alertsModule: RouteModule = { path: '/alerts', routes: alertRoutes, audited: true };
