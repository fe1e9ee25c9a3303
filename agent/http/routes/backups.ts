/** Routes of the local backups: list, create, upload, download, verify, delete. */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { Hono } from 'hono';
import { z } from 'zod';
import type { Agent } from '../../agent';
import { type BackupInfo, checkBackupName, pinnedRefusal } from '../../backup/catalog';
import { startBackup, startVerify } from '../../backup/operations';
import { receiveUpload, uploadTiming } from '../../backup/upload';
import { AppError } from '../../errors';
import { jsonBody } from '../body';
import { ticketsFor } from '../download-tickets';

/** The body of POST /backups; the CLI's `create --label` checks its label by the same rules. */
export const createBody = z
  .object({
    label: z
      .string()
      .trim()
      .min(1)
      .max(64)
      .regex(/^[\w .:-]+$/, 'letters, digits, space and . _ : - only')
      .optional(),
  })
  .strict();

/**
 * A backup file as a streamed attachment with its exact Content-Length (API download and one-time links).
 * `method` HEAD: the headers only. Hono answers HEAD with the GET handler and drops its body unread, never
 * cancelled: a file opened for it stayed open for good (a descriptor per HEAD, and a deleted backup's
 * space never freed), so a HEAD opens nothing.
 */
export async function backupFileResponse(agent: Agent, name: string, method = 'GET'): Promise<Response> {
  const info = await agent.catalog.info(name);
  const headers = {
    'content-type': 'application/octet-stream',
    'content-length': String(info.size),
    'content-disposition': `attachment; filename="${name}"`,
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
  };
  if (method === 'HEAD') return new Response(null, { headers });
  const stream = Readable.toWeb(createReadStream(agent.catalog.pathOf(name), { highWaterMark: 1 << 20 }));
  return new Response(stream as ReadableStream, { headers });
}

/**
 * A backup as the list shows it: its facts, and whether the installation that made it is the active
 * keys' (`ofThisInstallation`, from the header's installation tag: a file holds no installation id).
 */
export type ListedBackup = BackupInfo & { ofThisInstallation: boolean };

function listed(agent: Agent, info: BackupInfo): ListedBackup {
  return { ...info, ofThisInstallation: agent.keyring.isActive(info.installationTag) };
}

/** What GET /backups answers (newest first); `gem-backup list --json` prints the same. */
export const backupList = async (agent: Agent): Promise<ListedBackup[]> =>
  (await agent.catalog.list()).map((info) => listed(agent, info));

/** What unpinning a backup whose file was removed by hand answers: only its record was there. */
export interface UnpinnedRecord {
  filename: string;
  pinned: false;
  /** Its file is not in the local backups. */
  local: false;
}

/**
 * Pins or unpins a backup (the routes, `gem-backup pin|unpin`); answers its entry as the list shows it.
 * A backup whose file was removed by hand (rm) keeps its record, and its pin with it (offsite retention
 * keeps its copies by it, a Sync brings it back): unpinning works from the record. A pin needs the file;
 * a name with neither file nor record is 404 either way. `beforeChange`: called just before the
 * records are written (the CLI's check for a Ctrl-C: it throws to stop with nothing changed).
 */
export async function setPinned(
  agent: Agent,
  filename: string,
  pinned: boolean,
  beforeChange?: () => void,
): Promise<ListedBackup | UnpinnedRecord> {
  const name = checkBackupName(filename);
  if (!pinned && !(await agent.catalog.exists(name)) && (await agent.catalog.hasRecord(name))) {
    beforeChange?.();
    await agent.catalog.updateRecord(name, { pinned: undefined });
    return { filename: name, pinned: false, local: false };
  }
  await agent.catalog.info(name);
  // Written only if the file is still there, under the lock a deletion holds: a pin that comes after a
  // prune deleted the backup is 404, not a pin of nothing.
  await agent.catalog.setPinned(name, pinned, beforeChange);
  return listed(agent, await agent.catalog.info(name));
}

export function backupRoutes(agent: Agent): Hono {
  const app = new Hono();

  app.get('/', async (c) => c.json(await backupList(agent)));

  app.post('/', async (c) => {
    const body = await jsonBody(c, createBody, { optional: true });
    const job = await startBackup(agent, { kind: 'manual', ...(body?.label ? { label: body.label } : {}) });
    return c.json({ jobId: job.id }, 202);
  });

  app.post('/upload', async (c) => {
    const filename = c.req.query('filename');
    if (!filename) {
      throw new AppError(
        'bad_request',
        'filename missing: name the backup in the URL, e.g. POST /api/v1/backups/upload?filename=gem-backup-2026-11-28-231400.tar.gz',
      );
    }
    const name = checkBackupName(filename);
    const declared = c.req.header('content-length');
    const body = c.req.raw.body;
    if (!body)
      throw new AppError('bad_request', 'the request has no body: send the backup file as the raw body');
    const result = await receiveUpload(
      agent,
      name,
      Readable.fromWeb(body as import('node:stream/web').ReadableStream),
      {
        declaredSize: declared === undefined ? undefined : Number(declared),
        // The uploader chose the name: one that contradicts the backup's own date is refused.
        nameFitsHeader: true,
        // A sender gone without a word would hold the temp file until the agent restarts.
        idleMs: uploadTiming.idleMs,
      },
    );
    return c.json(result, 201);
  });

  app.get('/:filename', (c) =>
    backupFileResponse(agent, checkBackupName(c.req.param('filename')), c.req.method),
  );

  // A one-time link (60 s) the page can hand to the browser's own downloader: large files stream to disk.
  app.post('/:filename/download-link', async (c) => {
    const name = checkBackupName(c.req.param('filename'));
    await agent.catalog.info(name);
    return c.json({ url: `/download/${ticketsFor(agent).issue(name)}`, expiresInSeconds: 60 });
  });

  app.post('/:filename/verify', async (c) => {
    const job = await startVerify(agent, c.req.param('filename'));
    return c.json({ jobId: job.id }, 202);
  });

  // Pinned backups are never pruned by retention (local or offsite) and say so in the list.
  const pin = (pinned: boolean) => async (c: import('hono').Context) =>
    c.json(await setPinned(agent, c.req.param('filename') ?? '', pinned));
  app.post('/:filename/pin', pin(true));
  app.delete('/:filename/pin', pin(false));

  app.delete('/:filename', async (c) => {
    const name = checkBackupName(c.req.param('filename'));
    // Not from under a running restore, verify or upload of it: the file would change under the job.
    const user = agent.jobs.active().find((job) => job.target === name);
    if (user)
      throw new AppError(
        'job_running',
        `${name} is in use by a running ${user.kind} job; try again when it ends`,
      );
    // A pin promises the backup stays, here and offsite: deleted with its record, the pin would go too
    // and the next offsite prune could take its copies. The owner unpins it first, knowingly.
    if ((await agent.catalog.info(name)).pinned) throw pinnedRefusal(name, 'it');
    // Asked again with the deletion, under the records' lock: it may have been pinned since.
    if (!(await agent.catalog.delete(name, { unlessPinned: true }))) throw pinnedRefusal(name, 'it');
    return c.json({ deleted: name });
  });

  return app;
}
