// Multipart uploads for backups above the Workers request limit: create, signed parts, list, complete, abort.
import { Hono } from 'hono';
import { CreateUploadRequest, type UploadStatusResponse } from '../../shared/api/cloud';
import { toHex } from '../../shared/signing';
import { type CloudVariables, requireSignature } from '../auth/signed';
import { CloudError } from '../errors';
import type { UploadRecord } from '../state/ledger';
import { parseJsonBody } from './json-body';
import { commitToSlot, newBackupKey, refuseFutureBackup, refuseIfOlder } from './slot-commit';

const MIN_PART = 5 * 1024 * 1024; // R2/S3: every part but the last at least 5 MiB
const MAX_PART = 95 * 1024 * 1024; // under the 100 MB Workers request body limit
const MAX_PARTS = 10_000;

/** The multipart routes; every one is signed. */
export const uploadRoutes = new Hono<{ Variables: CloudVariables }>()
  // '/v1/dr/uploads/*' also matches '/v1/dr/uploads' itself: one registration, so one check per request.
  .use('/v1/dr/uploads/*', requireSignature)
  .post('/v1/dr/uploads', async (c) => {
    const { claims, installationHash, state } = c.get('signed');
    const { store, config } = c.get('deps');
    const body = await parseJsonBody(c.req.raw, CreateUploadRequest, claims.bsh);
    if (body.size > config.maxSlotBytes) {
      throw new CloudError(413, 'too_large', `a slot holds at most ${config.maxSlotBytes} bytes`);
    }
    await refuseIfOlder(state, body.createdAt);
    const partSize = Math.min(MAX_PART, Math.max(MIN_PART, body.partSize, Math.ceil(body.size / MAX_PARTS)));
    const objectKey = newBackupKey(installationHash, body.createdAt);
    // The multipart object only appears under its key on complete, so no separate temp key is needed.
    const storeUploadId = await store.createMultipart(objectKey);
    const upload: UploadRecord = {
      uploadId: toHex(crypto.getRandomValues(new Uint8Array(16))),
      objectKey,
      storeUploadId,
      size: body.size,
      sha256: body.sha256,
      createdAt: body.createdAt,
      agentVersion: body.agentVersion,
      partSize,
      parts: {},
      lastActivityAt: Date.now(),
    };
    await state.createUpload(upload);
    return c.json({ uploadId: upload.uploadId, partSize }, 201);
  })
  .put('/v1/dr/uploads/:id/parts/:n', async (c) => {
    const n = Number(c.req.param('n'));
    if (!/^\d+$/.test(c.req.param('n')) || n < 1 || n > MAX_PARTS) {
      throw new CloudError(400, 'bad_part_number', `part numbers run from 1 to ${MAX_PARTS}`);
    }
    const { claims, state } = c.get('signed');
    const upload = await openUpload(state, c.req.param('id'));
    const count = partCount(upload);
    if (n > count) throw new CloudError(400, 'bad_part_number', `this upload has ${count} parts`);
    const expected = Math.min(upload.partSize, upload.size - (n - 1) * upload.partSize);
    if (claims.bln !== expected)
      throw new CloudError(400, 'bad_part_size', `part ${n} must be ${expected} bytes`);
    const body = c.req.raw.body ?? new Blob([]).stream();
    const { etag } = await c
      .get('deps')
      .store.uploadPart(upload.objectKey, upload.storeUploadId, n, body, claims.bln, claims.bsh);
    const part = { size: claims.bln, etag };
    if (!(await state.recordPart(upload.uploadId, n, part))) throw noSuchUpload();
    return c.json({ part: { n, ...part } });
  })
  .get('/v1/dr/uploads/:id', async (c) => {
    return c.json(status(await openUpload(c.get('signed').state, c.req.param('id'))));
  })
  .post('/v1/dr/uploads/:id/complete', async (c) => {
    const { state } = c.get('signed');
    const deps = c.get('deps');
    const upload = await openUpload(state, c.req.param('id'));
    const parts = status(upload).parts;
    const count = partCount(upload);
    if (parts.length !== count) {
      throw new CloudError(400, 'missing_parts', `received ${parts.length} of ${count} parts`);
    }
    if (!(await state.takeUpload(upload.uploadId))) throw noSuchUpload();
    // Checked here rather than at create: the upload is dropped, so a resumed push starts afresh.
    try {
      refuseFutureBackup(upload.createdAt);
    } catch (err) {
      await deps.store.abortMultipart(upload.objectKey, upload.storeUploadId).catch(() => {});
      throw err;
    }
    const stored = await deps.store.completeMultipart(upload.objectKey, upload.storeUploadId, parts);
    if (stored.size !== upload.size) {
      await deps.store.delete(upload.objectKey);
      throw new CloudError(400, 'body_mismatch', `received ${stored.size} bytes, ${upload.size} declared`);
    }
    // Each part's sha256 was checked as it streamed; storage cannot hash a multipart object as a
    // whole, so the slot records the declared sha256. The envelope's chunk tags and header MAC
    // authenticate the content end to end anyway.
    const slot = await commitToSlot(deps, state, {
      objectKey: upload.objectKey,
      createdAt: upload.createdAt,
      size: upload.size,
      sha256: upload.sha256,
      agentVersion: upload.agentVersion,
      uploadedAt: new Date().toISOString(),
    });
    return c.json({ slot }, 201);
  })
  .delete('/v1/dr/uploads/:id', async (c) => {
    const upload = await c.get('signed').state.takeUpload(c.req.param('id'));
    if (!upload) throw noSuchUpload();
    await c.get('deps').store.abortMultipart(upload.objectKey, upload.storeUploadId);
    return c.json({ aborted: true });
  });

async function openUpload(state: CloudVariables['signed']['state'], uploadId: string): Promise<UploadRecord> {
  const upload = /^[0-9a-f]{32}$/.test(uploadId) ? await state.upload(uploadId) : null;
  if (!upload) throw noSuchUpload();
  return upload;
}

function partCount(upload: UploadRecord): number {
  return Math.max(1, Math.ceil(upload.size / upload.partSize));
}

function status(upload: UploadRecord): UploadStatusResponse {
  const parts = Object.entries(upload.parts)
    .map(([n, p]) => ({ n: Number(n), size: p.size, etag: p.etag }))
    .sort((a, b) => a.n - b.n);
  return {
    uploadId: upload.uploadId,
    size: upload.size,
    partSize: upload.partSize,
    createdAt: upload.createdAt,
    parts,
  };
}

function noSuchUpload(): CloudError {
  return new CloudError(404, 'no_upload', 'no such upload in progress');
}
