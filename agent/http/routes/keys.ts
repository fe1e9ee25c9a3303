/** Routes of the encryption keys: status, export (download), import, banner state. */
import { Hono } from 'hono';
import { z } from 'zod';
import type { Agent } from '../../agent';
import { AppError } from '../../errors';
import { acquireLock } from '../../jobs/lock';
import { buildKeysExport, exportFileName, type KeyringFile, parseKeysExport } from '../../keys/keyring';
import { LastRestoreStore } from '../../restore/last-restore';
import { checkKeysFile } from '../../verification/key-check';
import { jsonBody } from '../body';

/** A keys file as the page and scripts send it: its text, or its JSON object. */
const keysFile = z.custom<string | Record<string, unknown>>(
  (value) =>
    typeof value === 'string' || (typeof value === 'object' && value !== null && !Array.isArray(value)),
  {
    error: (issue) =>
      issue.input === undefined
        ? 'no keys file was sent: give the text of a gem-encryption-keys-YYYY-MM-DD.json export (or its JSON object) as "file"'
        : 'must be the text of a gem-encryption-keys-YYYY-MM-DD.json export, or its JSON object',
  },
);

/** A keys file's passphrase, as either form of the body gives it. */
const passphrase = z.string().max(1024).optional();

// The second form is the keys file itself; a `file` and `passphrase` beside its fields are read as in
// the first (see the routes), so the passphrase is checked there too: a number would reach scrypt (500).
const importBody = z.union([
  z.object({ file: keysFile, passphrase }).strict(),
  z.object({ format: z.string(), passphrase }).passthrough(),
]);

/** The body of a keys export; the CLI's `keys export` checks its passphrase by the same rules. */
export const exportBody = z
  .object({ passphrase: z.string().min(8, 'use at least 8 characters').max(1024).optional() })
  .strict();

async function keyStatus(agent: Agent) {
  const state = await agent.keyState.get();
  return {
    installationId: agent.keyring.installationId,
    activeKeyId: agent.keyring.activeKey.id,
    downloaded: state.lastDownloadedAt !== undefined,
    lastDownloadedAt: state.lastDownloadedAt ?? null,
    bannerCollapsed: state.bannerCollapsed,
  };
}

/**
 * Validates a keys file fully, then makes its keys active (ours kept as retired). Nothing changes on any
 * error. Refused (409) while a Cloud DR push runs or a job holds the job lock, here or in another process:
 * a backup, restore or recovery reads the keys at several points (a backup would dump as one installation
 * and seal as another). `beforeChange`: called just before the first change (the CLI's check for a
 * Ctrl-C: it throws to stop with nothing changed).
 */
export async function importKeysFile(
  agent: Agent,
  text: string,
  passphrase?: string,
  beforeChange?: () => void,
) {
  const imported = await parseKeysExport(text, passphrase);
  await refuseWhileDrPushRuns(agent);
  const release = await acquireLock(agent.jobs.lockPath, 'keys import');
  try {
    return await importUnderLock(agent, imported, beforeChange);
  } finally {
    await release();
  }
}

/** The import itself, once no job can be reading the keys. */
async function importUnderLock(agent: Agent, imported: KeyringFile, beforeChange?: () => void) {
  const before = agent.keyring.activeKey.id;
  // Another installation's identity, with this box's own data until one of its backups is restored:
  // recorded first, so that no DR push can send that data under its name (agent/restore/last-restore).
  const restores = new LastRestoreStore(agent.paths.lastRestore, agent.log);
  const changesIdentity = imported.installationId !== agent.keyring.installationId;
  const { identityChangedAt, identityChangedTo, earlierIdentityChange } = await restores.get();
  beforeChange?.();
  if (changesIdentity)
    await restores.recordIdentityChange(new Date(), imported.installationId, agent.keyring.installationId);
  try {
    await agent.keyring.importKeys(imported);
  } catch (error) {
    // Nothing imported (the keyring, as its file holds it, kept its identity): the record would hold
    // every DR push back until a restore, for an import that did not happen.
    if (changesIdentity && agent.keyring.installationId !== imported.installationId) {
      await restores
        .undoIdentityChange({ identityChangedAt, identityChangedTo, earlierIdentityChange })
        .catch((undo: unknown) => {
          agent.log.warn('could not undo the record of a failed keys import', { error: undo });
        });
    }
    throw error;
  }
  // Not the installation id: it is the Cloud DR recovery credential.
  agent.log.info('keys imported', { previousKeyId: before, activeKeyId: agent.keyring.activeKey.id });
  return {
    imported: true,
    installationId: agent.keyring.installationId,
    activeKeyId: agent.keyring.activeKey.id,
    retiredKeyIds: agent.keyring.masterKeys.slice(1).map((k) => k.id),
  };
}

/**
 * Refuses while a Cloud DR push runs, here or in another process. It would stop at its next upload
 * request (DrService refuses to send once the keyring holds another installation), and cancelling it
 * first, as a recovery does, is not possible from `gem-backup keys import` beside the service: the page
 * and the CLI both wait for its end. A push starting after this look is stopped the same way.
 */
async function refuseWhileDrPushRuns(agent: Agent): Promise<void> {
  const push = (await agent.jobs.listWithOthers()).find((j) => j.kind === 'dr-push' && !j.endedAt);
  if (push) {
    throw new AppError(
      'job_running',
      `a Cloud DR push is running (job ${push.id}): import the keys once it has ended, or cancel it first`,
    );
  }
}

export function keyRoutes(agent: Agent): Hono {
  const app = new Hono();

  app.get('/status', async (c) => c.json(await keyStatus(agent)));

  const exportHeaders = (now: Date) => ({
    'content-type': 'application/json',
    'content-disposition': `attachment; filename="${exportFileName(now)}"`,
    'cache-control': 'no-store',
  });
  const sendExport = async (passphrase: string | undefined) => {
    const now = new Date();
    const text = await buildKeysExport(agent.keyring.toFile(), passphrase, now);
    // The keys are sent even when the download cannot be recorded (a full or read-only disk): a dying
    // controller is when they are needed most. Unrecorded, the page and health keep asking for it.
    await agent.keyState.merge({ lastDownloadedAt: now.toISOString() }).catch((error: unknown) => {
      agent.log.warn('the keys were downloaded, but the download could not be recorded', { error });
    });
    return new Response(text, { headers: exportHeaders(now) });
  };
  // Hono answers HEAD with the GET handler: a HEAD (a link checker, `curl -I`) receives no keys, so it
  // must not count as a download, which would end the "download your keys" warning on the page and in health.
  app.get('/export', (c) =>
    c.req.method === 'HEAD'
      ? new Response(null, { headers: exportHeaders(new Date()) })
      : sendExport(undefined),
  );
  // POST lets the page send a passphrase in the body rather than in a URL that logs may keep.
  app.post('/export', async (c) =>
    sendExport((await jsonBody(c, exportBody, { optional: true }))?.passphrase),
  );

  app.post('/import', async (c) => {
    const body = await jsonBody(c, importBody);
    if (!body) throw new AppError('bad_request', 'a keys file is required');
    let text: string;
    let passphrase: string | undefined;
    if ('file' in body && body.file !== undefined) {
      text = typeof body.file === 'string' ? body.file : JSON.stringify(body.file);
      passphrase = 'passphrase' in body ? (body.passphrase as string | undefined) : undefined;
    } else {
      text = JSON.stringify(body);
    }
    return c.json(await importKeysFile(agent, text, passphrase));
  });

  // "Test my key file": can it open the newest backup? Nothing is imported.
  app.post('/check', async (c) => {
    const body = await jsonBody(c, importBody);
    if (!body) throw new AppError('bad_request', 'a keys file is required');
    const file = 'file' in body && body.file !== undefined ? body.file : undefined;
    const text =
      file === undefined ? JSON.stringify(body) : typeof file === 'string' ? file : JSON.stringify(file);
    const passphrase =
      file !== undefined && 'passphrase' in body ? (body.passphrase as string | undefined) : undefined;
    return c.json(await checkKeysFile(agent, text, passphrase));
  });

  app.put('/banner', async (c) => {
    const body = await jsonBody(c, z.object({ collapsed: z.boolean() }).strict());
    const state = await agent.keyState.merge({ bannerCollapsed: body!.collapsed });
    return c.json({ bannerCollapsed: state.bannerCollapsed });
  });

  return app;
}
