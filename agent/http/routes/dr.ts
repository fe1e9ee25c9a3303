/** Cloud DR routes: GET /dr/status, POST /dr/push (a job), POST /dr/recover {installationId, confirm?} (a job). */
import { Hono } from 'hono';
import { z } from 'zod';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { drServiceFor } from '../../dr/service';
import { RecoveryInstallationId } from '../../dr/unfinished';
import { AppError } from '../../errors';
import { jsonBody } from '../body';

// Upper case and spaces or dashes between groups are accepted, as on the CLI (an id read from a note).
// `confirm`: the same id again, needed on a box that is not a fresh install (as a restore's name typed back).
const RecoverBody = z
  .object({ installationId: RecoveryInstallationId, confirm: RecoveryInstallationId.optional() })
  .strict();
/** `dataIsCurrent`: after a keys import with no restore since, the owner says the data here is the installation's. */
const PushBody = z.object({ dataIsCurrent: z.boolean().optional() }).strict();

/** The DR routes over the agent's one DR service, looked up per request: mounting creates nothing. */
function drRoutes(agent: Agent): Hono {
  const app = new Hono();
  const dr = () => drServiceFor(agent);
  app.get('/status', async (c) => c.json(await dr().status()));
  app.post('/push', async (c) => {
    const body = await jsonBody(c, PushBody, { optional: true });
    const job = await dr().startPush('manual', { dataIsCurrent: body?.dataIsCurrent ?? false });
    return c.json({ jobId: job.id }, 202);
  });
  app.post('/recover', async (c) => {
    const body = await jsonBody(c, RecoverBody);
    if (!body) throw new AppError('bad_request', 'send {"installationId": "..."}');
    if (body.confirm !== undefined && body.confirm !== body.installationId) {
      throw new AppError('bad_request', '"confirm" must be the same installation id as "installationId"');
    }
    const job = await dr().startRecover(body.installationId, {
      confirmed: body.confirm !== undefined,
      howToConfirm: 'to recover over it, send {"installationId": "<id>", "confirm": "<the same id>"}',
    });
    return c.json({ jobId: job.id }, 202);
  });
  return app;
}

/** The module main.ts mounts; audited, since a recovery replaces keys and data. */
export const drModule: RouteModule = { path: '/dr', routes: drRoutes, audited: true };
