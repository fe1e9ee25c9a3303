// Offsite routes: Test Connection, Sync Now, and the remote list with download, restore and delete.
import { Hono } from 'hono';
import { z } from 'zod';
import type { Agent } from '../../agent';
import type { RouteModule } from '../../app';
import { checkBackupName } from '../../backup/catalog';
import { offsiteServiceFor, parseOffsiteKind } from '../../offsite/index';
import { jsonBody, noOptions } from '../body';
import { parseRestoreBody } from './restore';

/** The routes under /api/v1/offsite/:provider (sftp | s3 | smb; anything else is 404). */
function offsiteRoutes(agent: Agent): Hono {
  const offsite = offsiteServiceFor(agent);
  const app = new Hono();

  // Test Connection: 200 with {ok, message, details} whether or not it connects; a body is the form's unsaved section
  // (422 when it is malformed, or changes the host or port without the saved password: see applySettingsUpdate).
  app.post('/:provider/test', async (c) => {
    const kind = parseOffsiteKind(c.req.param('provider'));
    const body = await jsonBody(c, z.unknown(), { optional: true });
    return c.json(await offsite.test(kind, body));
  });

  // Two-way, with the saved retention: a body naming an option (a dry run, one direction) is a 422.
  app.post('/:provider/sync', async (c) => {
    const kind = parseOffsiteKind(c.req.param('provider'));
    await noOptions(c);
    const job = await offsite.startSync(kind);
    return c.json({ jobId: job.id }, 202);
  });

  app.get('/:provider/backups', async (c) => {
    const kind = parseOffsiteKind(c.req.param('provider'));
    return c.json({ backups: await offsite.listRemote(kind) });
  });

  app.post('/:provider/backups/:filename/download', async (c) => {
    const kind = parseOffsiteKind(c.req.param('provider'));
    const job = await offsite.startDownload(kind, c.req.param('filename'));
    return c.json({ jobId: job.id }, 202);
  });

  app.post('/:provider/backups/:filename/restore', async (c) => {
    const kind = parseOffsiteKind(c.req.param('provider'));
    const name = checkBackupName(c.req.param('filename'));
    const options = parseRestoreBody(await jsonBody(c, z.unknown(), { optional: true }), name);
    const job = await offsite.startRestore(kind, name, options);
    return c.json({ jobId: job.id }, 202);
  });

  app.delete('/:provider/backups/:filename', async (c) => {
    const kind = parseOffsiteKind(c.req.param('provider'));
    const name = checkBackupName(c.req.param('filename'));
    await offsite.deleteRemote(kind, name);
    return c.json({ deleted: name });
  });

  return app;
}

/** The module main.ts mounts; audited, since it deletes remote copies and restores. */
export const offsiteModule: RouteModule = { path: '/offsite', routes: offsiteRoutes, audited: true };
