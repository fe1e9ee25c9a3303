// Multipart uploads after a refused part, a failed completion and an opt-out: nothing is lost, nothing outlives the opt-out.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type CloudUnderTest,
  enroll,
  generatedBytes,
  httpRequest,
  multipartIsOpen,
  newInstallation,
  sha256,
  signedEmpty,
  signedHeaders,
  startCloud,
  storedUpload,
  type TestInstallation,
} from './harness';

const MiB = 1024 * 1024;
let cloud: CloudUnderTest;
let inst: TestInstallation;

beforeAll(async () => {
  cloud = await startCloud();
  inst = await newInstallation();
  expect((await enroll(cloud, inst)).status).toBe(201);
});
afterAll(async () => {
  await cloud?.dispose();
});

async function collect(total: number, seed: number): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const piece of generatedBytes(total, seed)) chunks.push(piece);
  return Buffer.concat(chunks);
}

async function signedJson(method: string, path: string, value: unknown) {
  const body = Buffer.from(JSON.stringify(value));
  const headers = await signedHeaders(inst, method, path, { sha256: sha256(body), length: body.length });
  return httpRequest(`${cloud.url}${path}`, {
    method,
    headers: { ...headers, 'content-type': 'application/json' },
    body,
  });
}

/** Sends `sent` as part n, signed for `signedFor` (the same bytes unless a test flips one). */
async function putPart(uploadId: string, n: number, signedFor: Buffer, sent = signedFor) {
  const path = `/v1/dr/uploads/${uploadId}/parts/${n}`;
  const headers = await signedHeaders(inst, 'PUT', path, {
    sha256: sha256(signedFor),
    length: signedFor.length,
  });
  return httpRequest(`${cloud.url}${path}`, { method: 'PUT', headers, body: sent });
}

/** A 6 MiB backup as an open upload with its two parts (5 MiB + 1 MiB) sent. */
async function uploadWithParts(seed: number, createdAt: string) {
  const whole = await collect(6 * MiB, seed);
  const created = await signedJson('POST', '/v1/dr/uploads', {
    size: whole.length,
    sha256: sha256(whole),
    createdAt,
    agentVersion: 't',
    partSize: 5 * MiB,
  });
  expect(created.status).toBe(201);
  const uploadId: string = created.json().uploadId;
  const p1 = whole.subarray(0, 5 * MiB);
  const p2 = whole.subarray(5 * MiB);
  expect((await putPart(uploadId, 1, p1)).status).toBe(200);
  expect((await putPart(uploadId, 2, p2)).status).toBe(200);
  return { whole, uploadId, p1, p2 };
}

const complete = (uploadId: string) =>
  signedEmpty(cloud, inst, 'POST', `/v1/dr/uploads/${uploadId}/complete`);
async function uploadStatus(uploadId: string) {
  const path = `/v1/dr/uploads/${uploadId}`;
  const headers = await signedHeaders(inst, 'GET', path, { sha256: sha256(new Uint8Array(0)), length: 0 });
  return httpRequest(`${cloud.url}${path}`, { method: 'GET', headers });
}

describe('multipart uploads that go wrong', () => {
  it('a re-sent part refused for its hash is un-recorded; sent again, the upload completes', async () => {
    const { whole, uploadId, p1 } = await uploadWithParts(21, '2026-03-01T00:00:00.000Z');
    const bad = Buffer.from(p1);
    bad.writeUInt8(bad.readUInt8(100) ^ 1, 100);
    const refused = await putPart(uploadId, 1, p1, bad);
    expect(refused.status).toBe(400);
    expect(refused.json().error.code).toBe('body_mismatch');
    // Storage holds the refused bytes under part 1 now: the status shows part 1 missing.
    const st = await uploadStatus(uploadId);
    expect(st.status).toBe(200);
    expect(st.json().parts.map((p: { n: number }) => p.n)).toEqual([2]);
    const early = await complete(uploadId);
    expect(early.status).toBe(400);
    expect(early.json().error.code).toBe('missing_parts');
    expect((await putPart(uploadId, 1, p1)).status).toBe(200);
    expect((await complete(uploadId)).status).toBe(201);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.status).toBe(200);
    expect(got.sha256).toBe(sha256(whole));
  });

  it('a completion storage fails keeps the upload and answers a retryable 503', async () => {
    const { whole, uploadId, p1 } = await uploadWithParts(22, '2026-03-02T00:00:00.000Z');
    const record = await storedUpload(cloud, inst.installationId, uploadId);
    expect(record).not.toBeNull();
    // Part 1 replaced behind the Worker's back: the etag it recorded no longer completes.
    const bucket = (await cloud.mf.getR2Bucket('SLOTS')) as unknown as R2Bucket;
    await bucket
      .resumeMultipartUpload(record!.objectKey, record!.storeUploadId)
      .uploadPart(1, new Uint8Array(5 * MiB));
    const failed = await complete(uploadId);
    expect(failed.status).toBe(503);
    expect(failed.json().error.code).toBe('storage_unavailable');
    // The upload is still there with its parts, so the agent can resume it.
    const st = await uploadStatus(uploadId);
    expect(st.status).toBe(200);
    expect(st.json().parts.map((p: { n: number }) => p.n)).toEqual([1, 2]);
    expect((await putPart(uploadId, 1, p1)).status).toBe(200);
    expect((await complete(uploadId)).status).toBe(201);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.status).toBe(200);
    expect(got.sha256).toBe(sha256(whole));
  });

  it('an upload opened before the opt-out cannot fill the slot again', async () => {
    const { uploadId } = await uploadWithParts(23, '2026-03-03T00:00:00.000Z');
    const record = await storedUpload(cloud, inst.installationId, uploadId);
    expect(await multipartIsOpen(cloud, record!)).toBe(true);
    const del = await signedEmpty(cloud, inst, 'DELETE', '/v1/dr/backup');
    expect(del.status).toBe(200);
    const late = await complete(uploadId);
    expect(late.status).toBe(404);
    expect(late.json().error.code).toBe('no_upload');
    expect((await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup')).status).toBe(404);
    expect(await cloud.listSlotObjects(inst.installationId)).toEqual([]);
    // The opt-out aborted the stored multipart upload as well.
    expect(await multipartIsOpen(cloud, record!)).toBe(false);
  });
});
