// PUT/GET/HEAD/DELETE /v1/dr/backup: the installation's one slot.
import { Hono } from 'hono';
import type { SlotMetadata } from '../../shared/api/cloud';
import { AGENT_VERSION_HEADER, BACKUP_CREATED_AT_HEADER, SLOT_HEADERS } from '../../shared/api/cloud';
import { type CloudVariables, requireSignature } from '../auth/signed';
import { CloudError, storageUnavailable } from '../errors';
import { optOut } from './opt-out';
import { commitToSlot, newBackupKey, refuseFutureBackup, refuseIfOlder } from './slot-commit';
import { readSlotObject } from './slot-read';

/** The slot routes; every one is signed. */
export const slotRoutes = new Hono<{ Variables: CloudVariables }>()
  .use('/v1/dr/backup', requireSignature)
  .put('/v1/dr/backup', async (c) => {
    const owner = c.get('signed');
    const { claims, installationHash, state } = owner;
    const { store, config } = c.get('deps');
    const createdAt = claims.bca;
    if (!createdAt) throw new CloudError(400, 'bad_request', 'the backup created-at (bca) must be signed');
    const header = c.req.header(BACKUP_CREATED_AT_HEADER);
    if (header !== undefined && header !== createdAt) {
      throw new CloudError(400, 'bad_request', `${BACKUP_CREATED_AT_HEADER} differs from the signed one`);
    }
    refuseFutureBackup(createdAt);
    if (claims.bln > config.maxSlotBytes) {
      throw new CloudError(413, 'too_large', `a slot holds at most ${config.maxSlotBytes} bytes`);
    }
    // Cheap early refusal; the commit below checks again, serialized, after the bytes are in.
    await refuseIfOlder(state, createdAt);
    const key = newBackupKey(installationHash, createdAt);
    // Recorded before a byte is stored: a sweep by a concurrent push keeps this object until the commit.
    const begunAtMs = Date.now();
    await state.beginPut(key, begunAtMs);
    const body = c.req.raw.body ?? new Blob([]).stream();
    await store.put(key, body, claims.bln, claims.bsh);
    const slot = await commitToSlot(
      c.get('deps'),
      owner,
      {
        objectKey: key,
        createdAt,
        size: claims.bln,
        sha256: claims.bsh,
        agentVersion: (c.req.header(AGENT_VERSION_HEADER) ?? 'unknown').slice(0, 64),
        uploadedAt: new Date().toISOString(),
      },
      begunAtMs,
    );
    return c.json({ slot }, 201);
  })
  .get('/v1/dr/backup', async (c) => {
    const { state } = c.get('signed');
    const slot = await state.slot();
    if (!slot) throw new CloudError(404, 'no_backup', 'this installation has no backup in the cloud');
    const headers = slotHeaders(slot);
    if (c.req.method === 'HEAD') return new Response(null, { status: 200, headers });
    const obj = await readSlotObject(c.get('deps'), state, slot);
    if (!obj) throw new CloudError(404, 'no_backup', 'this installation has no backup in the cloud');
    // The headers of the backup actually served: a push may have replaced the first one read.
    return new Response(obj.body, { status: 200, headers: slotHeaders(obj.slot) });
  })
  .delete('/v1/dr/backup', async (c) => {
    try {
      return c.json({ deleted: await optOut(c.get('deps'), c.get('signed')) });
    } catch (err) {
      if (err instanceof CloudError) throw err;
      throw storageUnavailable('deleting a slot at opt-out', err);
    }
  });

function slotHeaders(slot: SlotMetadata): Headers {
  return new Headers({
    'content-type': 'application/octet-stream',
    'content-length': String(slot.size),
    [SLOT_HEADERS.createdAt]: slot.createdAt,
    [SLOT_HEADERS.size]: String(slot.size),
    [SLOT_HEADERS.sha256]: slot.sha256,
    [SLOT_HEADERS.agentVersion]: slot.agentVersion,
    [SLOT_HEADERS.uploadedAt]: slot.uploadedAt,
  });
}
