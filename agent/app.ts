/** createApp(agent): the agent's Hono app, testable with app.request(); serveApp serves it over HTTP. */
import type { AddressInfo } from 'node:net';
import { type ServerType, serve } from '@hono/node-server';
import { Hono } from 'hono';
import type { Agent } from './agent';
import { auditRoutes } from './http/audit';
import { requireToken } from './http/auth';
import { errorBody, onError } from './http/errors';
import { alertsModule } from './http/routes/alerts';
import { backupRoutes } from './http/routes/backups';
import { drModule } from './http/routes/dr';
import { healthModule } from './http/routes/health';
import { jobRoutes } from './http/routes/jobs';
import { keyRoutes } from './http/routes/keys';
import { maintenanceModule } from './http/routes/maintenance';
import { metricsRoutes } from './http/routes/metrics';
import { offsiteModule } from './http/routes/offsite';
import { restoreModule } from './http/routes/restore';
import { retentionModule, settingsModule } from './http/routes/settings';
import { uiRoutes } from './http/routes/ui';
import { AGENT_VERSION } from './version';

/** A part of the API that another module mounts (settings, offsite, DR, ...), under /api/v1. */
export type RouteModule = { path: string; routes: (agent: Agent) => Hono; audited?: boolean };

/** Every part of the API beyond backups, keys and jobs: what the agent serves, and what tests exercise. */
export const API_MODULES: RouteModule[] = [
  restoreModule,
  settingsModule,
  retentionModule,
  maintenanceModule,
  drModule,
  offsiteModule,
  healthModule,
  alertsModule,
];

export function createApp(agent: Agent, modules: RouteModule[] = API_MODULES): Hono {
  const app = new Hono();
  app.onError(onError(agent.log));
  app.notFound((c) => c.json(errorBody('not_found', `no route ${c.req.method} ${c.req.path}`), 404));

  app.get('/healthz', (c) => c.json({ ok: true, version: AGENT_VERSION }));

  const api = new Hono();
  // The audit comes before the token check: a request turned away with 401 is an access too. One
  // pattern per area: in Hono `/backups/*` matches `/backups` as well.
  api.use('/backups/*', auditRoutes(agent.audit));
  api.use('/keys/*', auditRoutes(agent.audit));
  for (const module of modules) {
    if (module.audited) api.use(`${module.path}/*`, auditRoutes(agent.audit));
  }
  api.use('*', requireToken(agent.token));
  api.route('/backups', backupRoutes(agent));
  api.route('/keys', keyRoutes(agent));
  api.route('/jobs', jobRoutes(agent));
  for (const module of modules) api.route(module.path, module.routes(agent));
  app.route('/api/v1', api);
  // Prometheus expects /metrics at the root; it takes the admin token or GEM_METRICS_TOKEN.
  app.route('/metrics', metricsRoutes(agent));
  app.route('/', uiRoutes(agent));
  return app;
}

/**
 * Options of the agent's HTTP server. No request timeout: an upload of a large backup
 * (POST /api/v1/backups/upload) may last far longer than Node's default 300 s. The headers timeout
 * stays Node's 60 s, given explicitly since Node derives its default from requestTimeout (0 would
 * turn it off too): a client that never finishes its headers is still cut off.
 */
export const SERVER_OPTIONS = { requestTimeout: 0, headersTimeout: 60_000 } as const;

/** Serves `app` on hostname:port with SERVER_OPTIONS (main.ts starts the agent with it). */
export function serveApp(
  app: Hono,
  address: { hostname: string; port: number },
  onListening?: (info: AddressInfo) => void,
): ServerType {
  return serve({ fetch: app.fetch, ...address, serverOptions: SERVER_OPTIONS }, onListening);
}
