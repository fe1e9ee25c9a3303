/** createApp(agent): the agent's Hono app, testable with app.request(). */
import { Hono } from 'hono';
import type { Agent } from './agent';
import { auditRoutes } from './http/audit';
import { requireToken } from './http/auth';
import { errorBody, onError } from './http/errors';
import { backupRoutes } from './http/routes/backups';
import { jobRoutes } from './http/routes/jobs';
import { keyRoutes } from './http/routes/keys';
import { uiRoutes } from './http/routes/ui';
import { AGENT_VERSION } from './version';

/** A part of the API that another module mounts (settings, offsite, DR, ...), under /api/v1. */
export type RouteModule = { path: string; routes: (agent: Agent) => Hono; audited?: boolean };

export function createApp(agent: Agent, modules: RouteModule[] = []): Hono {
  const app = new Hono();
  app.onError(onError(agent.log));
  app.notFound((c) => c.json(errorBody('not_found', `no route ${c.req.method} ${c.req.path}`), 404));

  app.get('/healthz', (c) => c.json({ ok: true, version: AGENT_VERSION }));

  const api = new Hono();
  api.use('*', requireToken(agent.token));
  api.use('/backups/*', auditRoutes(agent.audit));
  api.use('/backups', auditRoutes(agent.audit));
  api.use('/keys/*', auditRoutes(agent.audit));
  api.route('/backups', backupRoutes(agent));
  api.route('/keys', keyRoutes(agent));
  api.route('/jobs', jobRoutes(agent));
  for (const module of modules) {
    if (module.audited) api.use(`${module.path}/*`, auditRoutes(agent.audit));
    api.route(module.path, module.routes(agent));
  }
  app.route('/api/v1', api);
  app.route('/', uiRoutes(agent));
  return app;
}
