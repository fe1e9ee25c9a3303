/** GET /metrics: the Prometheus text format, for the admin token or the metrics-only token (GEM_METRICS_TOKEN). */
import { Hono } from 'hono';
import type { Agent } from '../../agent';
import { AppError } from '../../errors';
import { healthFor } from '../../health/service';
import { collectMetrics } from '../../metrics/collect';
import { metricsFor } from '../../metrics/recorder';
import { CONTENT_TYPE } from '../../metrics/text-format';
import { tokensMatch } from '../auth';

/** Mounted at the root (`app.route('/metrics', metricsRoutes(agent))`): Prometheus expects /metrics. */
export function metricsRoutes(agent: Agent): Hono {
  const app = new Hono();
  const recorder = metricsFor(agent);
  app.get('/', async (c) => {
    const match = /^Bearer\s+(\S+)$/i.exec(c.req.header('authorization') ?? '');
    const given = match?.[1];
    const allowed =
      given !== undefined &&
      (tokensMatch(given, agent.token) ||
        (agent.config.metricsToken !== undefined && tokensMatch(given, agent.config.metricsToken)));
    if (!allowed) {
      throw new AppError(
        'unauthorized',
        given ? 'invalid token' : 'missing token (Authorization: Bearer <token>)',
      );
    }
    const text = await collectMetrics(agent, recorder, healthFor(agent));
    return c.body(text, 200, { 'content-type': CONTENT_TYPE, 'cache-control': 'no-store' });
  });
  return app;
}
