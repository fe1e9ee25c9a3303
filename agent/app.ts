/** createApp(agent): the agent's Hono app, testable with app.request(); serveApp serves it over HTTP. */
import { maxHeaderSize, STATUS_CODES } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { type ServerType, serve } from '@hono/node-server';
import { Hono } from 'hono';
import type { Agent } from './agent';
import type { ErrorCode } from './errors';
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
const API_MODULES: RouteModule[] = [
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
 * (POST /api/v1/backups/upload) may last far longer than Node's default 300 s (one whose sender goes
 * silent is ended by receiveUpload's idle limit, uploadTiming). The headers timeout
 * stays Node's 60 s, given explicitly since Node derives its default from requestTimeout (0 would
 * turn it off too): a client that never finishes its headers is still cut off.
 */
const SERVER_OPTIONS = { requestTimeout: 0, headersTimeout: 60_000 } as const;

/** Serves `app` on hostname:port with SERVER_OPTIONS (main.ts starts the agent with it). */
export function serveApp(
  app: Hono,
  address: { hostname: string; port: number },
  onListening?: (info: AddressInfo) => void,
): ServerType {
  const server = serve({ fetch: app.fetch, ...address, serverOptions: SERVER_OPTIONS }, onListening);
  server.on('clientError', answerClientError);
  return server;
}

/**
 * A request Node turns away before the app sees it (headers over 16 KB, not HTTP, headers too slow),
 * answered in the API's error shape instead of Node's bare status line. As Node does it: only on a
 * socket that can still take an answer and is not midway through one, then closed.
 */
function answerClientError(error: Error & { code?: string }, socket: Duplex): void {
  const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (error.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
    socket.destroy();
    return;
  }
  const [status, code, message]: [number, ErrorCode, string] =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? [
          431,
          'too_large',
          `the request headers are larger than the ${maxHeaderSize / 1024} KB the agent accepts`,
        ]
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'bad_request', 'the request headers did not arrive in time']
        : [400, 'bad_request', 'the request is not valid HTTP'];
  const body = JSON.stringify(errorBody(code, message));
  socket.write(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
  socket.destroy();
}
