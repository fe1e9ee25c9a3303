/** Route that restores a local backup: POST /backups/:filename/restore with {confirm: "<filename>"}. */
import { Hono } from 'hono';
import { z } from 'zod';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { checkBackupName } from '../../backup/catalog';
import { AppError } from '../../errors';
import { startRestore } from '../../restore/restore';
import { jsonBody } from '../body';

const restoreBody = z
  .object({ confirm: z.unknown().optional(), keepPrevious: z.boolean().optional() })
  .passthrough();

/** The restore routes, mounted beside the backup routes. */
export function restoreRoutes(agent: Agent): Hono {
  const app = new Hono();
  app.post('/:filename/restore', async (c) => {
    const name = checkBackupName(c.req.param('filename'));
    const body = await jsonBody(c, z.unknown(), { optional: true });
    const parsed = restoreBody.safeParse(body);
    // A restore replaces everything: it needs the file name typed back, exactly.
    if (!parsed.success || parsed.data.confirm !== name) {
      throw new AppError(
        'bad_request',
        `to restore, send {"confirm": "${name}"}: a restore replaces all current data`,
      );
    }
    const job = await startRestore(agent, name, {
      ...(parsed.data.keepPrevious !== undefined ? { keepPrevious: parsed.data.keepPrevious } : {}),
    });
    return c.json({ jobId: job.id }, 202);
  });
  return app;
}

/** The module main.ts mounts (already audited by the /backups audit middleware). */
export const restoreModule: RouteModule = { path: '/backups', routes: restoreRoutes };
