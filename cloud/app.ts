// The DR cloud's Hono app, independent of where it runs (Worker or Node): routes, deps, errors.
import { Hono } from 'hono';
import type { CloudVariables } from './auth/signed';
import type { CloudDeps } from './deps';
import { CloudError, errorResponse } from './errors';
import { enrollRoutes } from './routes/enroll';
import { escrowRoutes } from './routes/escrow';
import { recoverRoutes } from './routes/recover';
import { slotRoutes } from './routes/slot';
import { uploadRoutes } from './routes/uploads';

/** Builds the app; `resolveDeps` gives the platform for one request from its env (the Worker's bindings). */
export function createCloudApp<Env extends object = object>(resolveDeps: (env: Env) => CloudDeps) {
  const app = new Hono<{ Bindings: Env; Variables: CloudVariables }>();
  app.use('*', async (c, next) => {
    c.set('deps', resolveDeps(c.env));
    await next();
  });
  app.get('/v1/health', (c) => c.json({ ok: true }));
  app.route('/', enrollRoutes);
  app.route('/', escrowRoutes);
  app.route('/', slotRoutes);
  app.route('/', uploadRoutes);
  app.route('/', recoverRoutes);
  app.notFound(() => {
    throw new CloudError(404, 'not_found', 'no such route');
  });
  app.onError((err, c) => errorResponse(err, c));
  return app;
}
