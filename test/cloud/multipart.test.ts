// Large DR uploads: a 20 MB single PUT and a 120 MB multipart upload, streamed, resumed after a dropped part.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SLOT_HEADERS } from '../../shared/api/cloud';
import {
  type CloudUnderTest,
  enroll,
  generatedBytes,
  generatedSha256,
  httpRequest,
  newInstallation,
  sha256,
  signedEmpty,
  signedHeaders,
  startCloud,
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

/** Sends bytes [from, from+length) of the seeded stream as part n. */
async function putPart(
  uploadId: string,
  n: number,
  seed: number,
  from: number,
  length: number,
  signal?: AbortSignal,
) {
  const path = `/v1/dr/uploads/${uploadId}/parts/${n}`;
  const headers = await signedHeaders(inst, 'PUT', path, {
    sha256: await generatedSha256(length, seed, from),
    length,
  });
  return httpRequest(`${cloud.url}${path}`, {
    method: 'PUT',
    headers,
    body: generatedBytes(length, seed, from),
    signal,
  });
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

describe('large backups', () => {
  it('takes a 20 MB backup in one streamed PUT and gives it back identical', async () => {
    const size = 20 * MiB + 12345;
    const digest = await generatedSha256(size, 1);
    const createdAt = '2026-11-10T00:00:00.000Z';
    const headers = await signedHeaders(
      inst,
      'PUT',
      '/v1/dr/backup',
      { sha256: digest, length: size },
      { backupCreatedAt: createdAt },
    );
    const put = await httpRequest(`${cloud.url}/v1/dr/backup`, {
      method: 'PUT',
      headers,
      body: generatedBytes(size, 1),
    });
    expect(put.status).toBe(201);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.size).toBe(size);
    expect(got.sha256).toBe(digest);
  });

  it('takes a 120 MB backup in signed parts, resuming after a part is dropped mid-way', async () => {
    const size = 120 * MiB + 777;
    const seed = 2;
    const digest = await generatedSha256(size, seed);
    const createdAt = '2026-11-11T00:00:00.000Z';
    const created = await signedJson('POST', '/v1/dr/uploads', {
      size,
      sha256: digest,
      createdAt,
      agentVersion: '0.1.0-test',
      partSize: 50 * MiB,
    });
    expect(created.status).toBe(201);
    const { uploadId, partSize } = created.json();
    expect(partSize).toBe(50 * MiB);
    const count = Math.ceil(size / partSize);
    expect(count).toBe(3);
    const partLength = (n: number) => Math.min(partSize, size - (n - 1) * partSize);

    expect((await putPart(uploadId, 1, seed, 0, partLength(1))).status).toBe(200);

    // Drop the connection half-way through part 2.
    const abort = new AbortController();
    let sent = 0;
    const dropping = (async function* () {
      for await (const piece of generatedBytes(partLength(2), seed, partSize)) {
        sent += piece.length;
        if (sent > 20 * MiB) {
          abort.abort();
          return;
        }
        yield piece;
      }
    })();
    const path2 = `/v1/dr/uploads/${uploadId}/parts/2`;
    const headers2 = await signedHeaders(inst, 'PUT', path2, {
      sha256: await generatedSha256(partLength(2), seed, partSize),
      length: partLength(2),
    });
    await expect(
      httpRequest(`${cloud.url}${path2}`, {
        method: 'PUT',
        headers: headers2,
        body: dropping,
        signal: abort.signal,
      }),
    ).rejects.toThrow();

    // The slot still holds the previous backup while the upload is incomplete.
    const head = await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup');
    expect(head.headers[SLOT_HEADERS.createdAt.toLowerCase()]).toBe('2026-11-10T00:00:00.000Z');

    // Resume: ask what arrived, send the rest.
    const statusHeaders = await signedHeaders(inst, 'GET', `/v1/dr/uploads/${uploadId}`, {
      sha256: sha256(new Uint8Array(0)),
      length: 0,
    });
    const status = (
      await httpRequest(`${cloud.url}/v1/dr/uploads/${uploadId}`, { method: 'GET', headers: statusHeaders })
    ).json();
    expect(status.parts.map((p: { n: number }) => p.n)).toEqual([1]);

    const early = await signedEmpty(cloud, inst, 'POST', `/v1/dr/uploads/${uploadId}/complete`);
    expect(early.status).toBe(400);

    // Part numbers outside 1..10000 (small bodies: a large refused body would only see a reset).
    expect((await putPart(uploadId, 0, seed, 0, 4096)).status).toBe(400);
    expect((await putPart(uploadId, 10001, seed, 0, 4096)).status).toBe(400);
    for (const n of [2, 3])
      expect((await putPart(uploadId, n, seed, (n - 1) * partSize, partLength(n))).status).toBe(200);

    const done = await signedEmpty(cloud, inst, 'POST', `/v1/dr/uploads/${uploadId}/complete`);
    expect(done.status).toBe(201);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.size).toBe(size);
    expect(got.sha256).toBe(digest);
    expect(got.headers[SLOT_HEADERS.createdAt.toLowerCase()]).toBe(createdAt);
    expect(await cloud.listSlotObjects(inst.installationId)).toHaveLength(1);
  });

  it('refuses a part whose bytes differ from its signature and does not record it', async () => {
    const size = 6 * MiB;
    const created = await signedJson('POST', '/v1/dr/uploads', {
      size,
      sha256: await generatedSha256(size, 3),
      createdAt: '2026-11-12T00:00:00.000Z',
      agentVersion: '0.1.0-test',
      partSize: 5 * MiB,
    });
    const { uploadId } = created.json();
    const path = `/v1/dr/uploads/${uploadId}/parts/1`;
    // Signed for seed 3, sent from seed 4.
    const headers = await signedHeaders(inst, 'PUT', path, {
      sha256: await generatedSha256(5 * MiB, 3),
      length: 5 * MiB,
    });
    const bad = await httpRequest(`${cloud.url}${path}`, {
      method: 'PUT',
      headers,
      body: generatedBytes(5 * MiB, 4),
    });
    expect(bad.status).toBe(400);
    const statusHeaders = await signedHeaders(inst, 'GET', `/v1/dr/uploads/${uploadId}`, {
      sha256: sha256(new Uint8Array(0)),
      length: 0,
    });
    const status = (
      await httpRequest(`${cloud.url}/v1/dr/uploads/${uploadId}`, { method: 'GET', headers: statusHeaders })
    ).json();
    expect(status.parts).toEqual([]);
    expect((await signedEmpty(cloud, inst, 'DELETE', `/v1/dr/uploads/${uploadId}`)).status).toBe(200);
    expect((await signedEmpty(cloud, inst, 'GET', `/v1/dr/uploads/${uploadId}`)).status).toBe(404);
  });

  it('refuses a part whose last byte alone differs, and complete then refuses the upload', async () => {
    // The Worker hashes a part in pieces as it streams to storage: the piece that ends the part counts too.
    const size = 6 * MiB + 333;
    const seed = 5;
    const created = await signedJson('POST', '/v1/dr/uploads', {
      size,
      sha256: await generatedSha256(size, seed),
      createdAt: '2026-11-12T12:00:00.000Z',
      agentVersion: '0.1.0-test',
      partSize: 5 * MiB,
    });
    expect(created.status).toBe(201);
    const { uploadId } = created.json();
    const chunks: Uint8Array[] = [];
    for await (const piece of generatedBytes(5 * MiB, seed)) chunks.push(piece);
    const good = Buffer.concat(chunks);
    const bad = Buffer.from(good);
    bad.writeUInt8(bad.readUInt8(bad.length - 1) ^ 0x01, bad.length - 1);
    const path = `/v1/dr/uploads/${uploadId}/parts/1`;
    const headers = await signedHeaders(inst, 'PUT', path, { sha256: sha256(good), length: good.length });
    const refused = await httpRequest(`${cloud.url}${path}`, { method: 'PUT', headers, body: bad });
    expect(refused.status).toBe(400);
    expect((await putPart(uploadId, 2, seed, 5 * MiB, MiB + 333)).status).toBe(200);
    const done = await signedEmpty(cloud, inst, 'POST', `/v1/dr/uploads/${uploadId}/complete`);
    expect(done.status).toBe(400);
    expect(done.json().error.code).toBe('missing_parts');
    // The same part with its signed bytes is taken, and the upload completes with them.
    const headers2 = await signedHeaders(inst, 'PUT', path, { sha256: sha256(good), length: good.length });
    expect(
      (await httpRequest(`${cloud.url}${path}`, { method: 'PUT', headers: headers2, body: good })).status,
    ).toBe(200);
    const completed = await signedEmpty(cloud, inst, 'POST', `/v1/dr/uploads/${uploadId}/complete`);
    expect(completed.status).toBe(201);
  });

  it('refuses an upload larger than the slot allows before any part is sent', async () => {
    const created = await signedJson('POST', '/v1/dr/uploads', {
      size: 300_000_000,
      sha256: sha256(new Uint8Array(0)),
      createdAt: '2026-11-13T00:00:00.000Z',
      agentVersion: '0.1.0-test',
      partSize: 50 * MiB,
    });
    expect(created.status).toBe(413);
  });
});
