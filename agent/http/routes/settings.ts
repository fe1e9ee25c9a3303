/** Routes of the settings (GET/PUT, secrets masked) and the retention preview. */
import { Hono } from 'hono';
import { SettingsUpdate } from '../../../shared/api/settings';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { planLocalPrune } from '../../backup/retention';
import { jsonBody } from '../body';

export function settingsRoutes(agent: Agent): Hono {
  const app = new Hono();

  app.get('/', async (c) => c.json(await agent.settings.view()));

  /** Sections given replace the stored ones; secrets left out are kept; answers the saved view + warnings. */
  app.put('/', async (c) => {
    const body = await jsonBody(c, SettingsUpdate);
    const { warnings } = await agent.settings.update(body);
    return c.json({ ...(await agent.settings.view()), warnings });
  });

  return app;
}

export function retentionRoutes(agent: Agent): Hono {
  const app = new Hono();
  /** What the next prune would delete locally under the saved maxBackups (nothing is deleted here). */
  app.get('/preview', async (c) => {
    const plan = await planLocalPrune(agent);
    const names = (list: typeof plan.keep) =>
      list.map((b) => ({
        filename: b.filename,
        createdAt: b.createdAt,
        kind: b.kind,
        pinned: b.pinned ?? false,
      }));
    return c.json({
      maxBackups: agent.settings.get().autoBackup.maxBackups,
      delete: names(plan.delete),
      keep: names(plan.keep),
    });
  });
  return app;
}

export const settingsModule: RouteModule = { path: '/settings', routes: settingsRoutes, audited: true };
export const retentionModule: RouteModule = { path: '/retention', routes: retentionRoutes };
