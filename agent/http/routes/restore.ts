/** Route that restores a local backup: POST /backups/:filename/restore with {confirm: "<filename>"}. */
import { Hono } from 'hono';
import { z } from 'zod';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { checkBackupName } from '../../backup/catalog';
import { AppError } from '../../errors';
import { startRestore } from '../../restore/restore';
import { jsonBody } from '../body';
import { validationError } from '../errors';

const restoreBody = z
  .object({
    confirm: z.unknown().optional(),
    keepPrevious: z.boolean().optional(),
    otherInstallation: z.boolean().optional(),
  })
  .strict();

/**
 * The body of a restore request (local or offsite): `{confirm: "<the backup's name>", keepPrevious?,
 * otherInstallation?}` (the last: a backup another installation made than the active keys' is wanted).
 * A restore replaces everything, so it needs the name typed back exactly (400 otherwise); a malformed
 * field is a 422 naming it, not a hint about the confirm, and so is an unknown one (a misspelt
 * `keepPrevous` dropped would restore without keeping the previous state).
 */
export function parseRestoreBody(
  body: unknown,
  name: string,
): { keepPrevious?: boolean; otherInstallation?: boolean } {
  const parsed = restoreBody.safeParse(body ?? {});
  if (!parsed.success) throw validationError(parsed.error);
  if (parsed.data.confirm !== name) {
    throw new AppError(
      'bad_request',
      `to restore, send {"confirm": "${name}"}: a restore replaces all current data`,
    );
  }
  const { keepPrevious, otherInstallation } = parsed.data;
  return {
    ...(keepPrevious !== undefined ? { keepPrevious } : {}),
    ...(otherInstallation !== undefined ? { otherInstallation } : {}),
  };
}

/** The restore routes, mounted beside the backup routes. */
export function restoreRoutes(agent: Agent): Hono {
  const app = new Hono();
  app.post('/:filename/restore', async (c) => {
    const name = checkBackupName(c.req.param('filename'));
    const options = parseRestoreBody(await jsonBody(c, z.unknown(), { optional: true }), name);
    const job = await startRestore(agent, name, options);
    return c.json({ jobId: job.id }, 202);
  });
  return app;
}

/** The module main.ts mounts (already audited by the /backups audit middleware). */
export const restoreModule: RouteModule = { path: '/backups', routes: restoreRoutes };
