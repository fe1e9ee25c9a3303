// Multipart uploads for backups above the Workers request limit: create, signed parts, list, complete, abort.
import { Hono } from 'hono';
import { CreateUploadRequest, type UploadStatusResponse } from '../../shared/api/cloud';
import { toHex } from '../../shared/signing';
import { type CloudVariables, requireSignature } from '../auth/signed';
import { CloudError, storageUnavailable } from '../errors';
import { abortDropped, type UploadRecord } from '../state/ledger';
import { ContentMismatchError } from '../store/slot-store';
import { parseJsonBody } from './json-body';
import { newBackupKey, refuseFutureBackup, refuseIfOlder, settleCommit } from './slot-commit';

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
    let etag: string;
    try {
      ({ etag } = await c
        .get('deps')
        .store.uploadPart(upload.objectKey, upload.storeUploadId, n, body, claims.bln, claims.bsh));
    } catch (err) {
      // Storage may hold these refused bytes under part n now, in place of a good part recorded
      // before: un-record it, so the status shows it missing and the agent sends it again.
      await state.forgetPart(upload.uploadId, n);
      // Bytes that differ from the signed ones are the client's fault (400); anything else is storage's,
      // retryable, and its own text (hosts, ports) stays in the log.
      if (err instanceof CloudError || err instanceof ContentMismatchError) throw err;
      throw storageUnavailable('storing a part', err);
    }
    const part = { size: claims.bln, etag };
    if (!(await state.recordPart(upload.uploadId, n, part))) throw noSuchUpload();
    return c.json({ part: { n, ...part } });
  })
  .get('/v1/dr/uploads/:id', async (c) => {
    return c.json(status(await openUpload(c.get('signed').state, c.req.param('id'))));
  })
  .post('/v1/dr/uploads/:id/complete', async (c) => {
    const begunAtMs = Date.now();
    const owner = c.get('signed');
    const { state } = owner;
    const deps = c.get('deps');
    const upload = await openUpload(state, c.req.param('id'));
    // The record stays (claimed) while storage completes: a failure keeps the upload resumable, and
    // an opt-out or abort meanwhile takes the record, which the commit below then does not find.
    const claimed = await state.claimUpload(upload.uploadId);
    if (!claimed) throw noSuchUpload();
    const parts = status(claimed).parts;
    const count = partCount(claimed);
    if (parts.length !== count) {
      await state.releaseUpload(claimed.uploadId);
      throw new CloudError(400, 'missing_parts', `received ${parts.length} of ${count} parts`);
    }
    // Checked here rather than at create: the upload is dropped, so a resumed push starts afresh.
    try {
      refuseFutureBackup(claimed.createdAt);
    } catch (err) {
      await state.takeUpload(claimed.uploadId);
      await abortDropped(deps.store, [claimed], (upload) => state.createUpload(upload));
      throw err;
    }
    const stored = await completeInStore(deps, state, claimed, parts);
    if (stored.size !== claimed.size) {
      await state.takeUpload(claimed.uploadId);
      await deps.store.delete(claimed.objectKey);
      throw new CloudError(400, 'body_mismatch', `received ${stored.size} bytes, ${claimed.size} declared`);
    }
    // Each part's sha256 was checked as it streamed; storage cannot hash a multipart object as a
    // whole, so the slot records the declared sha256. The envelope's chunk tags and header MAC
    // authenticate the content end to end anyway.
    const next = {
      objectKey: claimed.objectKey,
      createdAt: claimed.createdAt,
      size: claimed.size,
      sha256: claimed.sha256,
      agentVersion: claimed.agentVersion,
      uploadedAt: new Date().toISOString(),
    };
    const outcome = await state.finishUpload(claimed.uploadId, next);
    if (!outcome) {
      // Aborted or opted out while storage completed it: the object must not outlive the upload.
      await deps.store.delete(claimed.objectKey);
      throw noSuchUpload();
    }
    const slot = await settleCommit(deps, owner, next, outcome, begunAtMs);
    return c.json({ slot }, 201);
  })
  .delete('/v1/dr/uploads/:id', async (c) => {
    const { state } = c.get('signed');
    const upload = await state.takeUpload(c.req.param('id'));
    if (!upload) throw noSuchUpload();
    try {
      await c.get('deps').store.abortMultipart(upload.objectKey, upload.storeUploadId);
    } catch (err) {
      // Recorded again, so the agent's retry (or the idle sweep) aborts it: forgotten here, its
      // stored parts would stay with nothing left to name them.
      await state.createUpload(upload);
      throw storageUnavailable('aborting a multipart upload', err);
    }
    return c.json({ aborted: true });
  });

/**
 * Completes the multipart object in storage. When storage fails and the object did not appear, the
 * claim is released (the upload and its parts stay) and the answer is a retryable 503.
 */
async function completeInStore(
  deps: CloudVariables['deps'],
  state: CloudVariables['signed']['state'],
  upload: UploadRecord,
  parts: { n: number; etag: string }[],
): Promise<{ size: number }> {
  try {
    return await deps.store.completeMultipart(upload.objectKey, upload.storeUploadId, parts);
  } catch (err) {
    // Storage may have completed it and lost only its answer.
    const landed = await deps.store.head(upload.objectKey).catch(() => null);
    if (landed) return landed;
    if (!(await state.releaseUpload(upload.uploadId))) throw noSuchUpload();
    console.error(
      'cloud: completing a multipart upload failed',
      err instanceof Error ? err.message : String(err),
    );
    throw new CloudError(
      503,
      'storage_unavailable',
      'storage could not complete the upload; its parts are kept: check the upload status and complete it again',
    );
  }
}

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
