// The same cloud app on Node against a real S3-compatible server (s3rver): the self-hosted entry.
import { randomBytes } from 'node:crypto';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeCloudApp } from '../../cloud/node';
import { type S3Service, startS3 } from '../services/s3';
import {
  awayFromMinuteEnd,
  ENROLLMENT_TOKEN,
  enroll,
  generatedBytes,
  generatedSha256,
  httpRequest,
  newInstallation,
  putBackup,
  sha256,
  signedEmpty,
  signedHeaders,
  type TestInstallation,
} from './harness';
import { type ServedCloud, s3ClientFor, serveCloud } from './node-cloud';

const MiB = 1024 * 1024;
let s3: S3Service;
let client: S3Client;
let cloud: ServedCloud;
let inst: TestInstallation;

beforeAll(async () => {
  s3 = await startS3({ bucket: 'gem-dr' });
  client = s3ClientFor(s3);
  cloud = await serveCloud(createNodeCloudApp({ s3: client, bucket: s3.bucket, env: { ENROLLMENT_TOKEN } }));
  inst = await newInstallation();
  expect((await enroll(cloud, inst)).status).toBe(201);
});
afterAll(async () => {
  await cloud?.close();
  client?.destroy();
  await s3?.stop();
});

async function slotKeys(): Promise<string[]> {
  const out = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: 'slots/' }));
  return (out.Contents ?? []).map((o) => o.Key!);
}

describe('the cloud on Node over S3', () => {
  it('enrolls, stores, refuses a flipped byte and a replay, and serves the backup back', async () => {
    expect((await enroll(cloud, inst)).status).toBe(200);
    const bytes = randomBytes(100_000);
    expect((await putBackup(cloud, inst, bytes, '2026-11-01T00:00:00.000Z')).status).toBe(201);

    const next = randomBytes(1000);
    const headers = await signedHeaders(
      inst,
      'PUT',
      '/v1/dr/backup',
      { sha256: sha256(next), length: next.length },
      { backupCreatedAt: '2026-11-02T00:00:00.000Z' },
    );
    const flipped = Buffer.from(next);
    flipped[0]! ^= 1;
    expect(
      (await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: flipped })).status,
    ).toBe(400);
    expect(
      (await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: next })).status,
    ).toBe(401);

    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.sha256).toBe(sha256(bytes));
    expect(await slotKeys()).toHaveLength(1);
  });

  it('behind a trusted proxy (TRUST_PROXY=1) limits recoveries by the forwarded client, not the proxy', async () => {
    const proxied = await serveCloud(
      createNodeCloudApp({
        s3: client,
        bucket: s3.bucket,
        env: { ENROLLMENT_TOKEN, TRUST_PROXY: '1', RECOVER_PER_MINUTE: '2' },
      }),
    );
    try {
      const attempt = (forwardedFor: string) =>
        httpRequest(`${proxied.url}/v1/recover`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-forwarded-for': forwardedFor },
          body: Buffer.from('{}'),
        }).then((res) => res.status);
      await awayFromMinuteEnd();
      // A client that sends its own X-Forwarded-For first is still counted by what the proxy appended.
      const one = [
        await attempt('203.0.113.1'),
        await attempt('9.9.9.9, 203.0.113.1'),
        await attempt('203.0.113.1'),
      ];
      expect(one, JSON.stringify(one)).toHaveLength(3);
      expect(one.slice(0, 2)).not.toContain(429);
      expect(one[2], JSON.stringify(one)).toBe(429);
      expect(await attempt('203.0.113.2')).not.toBe(429);
      // A proxy that adds the client's port (IP:port) counts the address, not each connection.
      const ported = [
        await attempt('203.0.113.3:40001'),
        await attempt('203.0.113.3:40002'),
        await attempt('203.0.113.3:40003'),
      ];
      expect(ported.slice(0, 2)).not.toContain(429);
      expect(ported[2], JSON.stringify(ported)).toBe(429);
    } finally {
      await proxied.close();
    }
  });

  it('completes a multipart upload and replaces the slot with it', async () => {
    const size = 6 * MiB + 100;
    const digest = await generatedSha256(size, 9);
    const body = Buffer.from(
      JSON.stringify({
        size,
        sha256: digest,
        createdAt: '2026-11-03T00:00:00.000Z',
        agentVersion: 't',
        partSize: 5 * MiB,
      }),
    );
    const h = await signedHeaders(inst, 'POST', '/v1/dr/uploads', {
      sha256: sha256(body),
      length: body.length,
    });
    const created = await httpRequest(`${cloud.url}/v1/dr/uploads`, { method: 'POST', headers: h, body });
    expect(created.status).toBe(201);
    const { uploadId, partSize } = created.json();
    for (const n of [1, 2]) {
      const from = (n - 1) * partSize;
      const length = Math.min(partSize, size - from);
      const path = `/v1/dr/uploads/${uploadId}/parts/${n}`;
      const ph = await signedHeaders(inst, 'PUT', path, {
        sha256: await generatedSha256(length, 9, from),
        length,
      });
      const res = await httpRequest(`${cloud.url}${path}`, {
        method: 'PUT',
        headers: ph,
        body: generatedBytes(length, 9, from),
      });
      expect(res.status).toBe(200);
    }
    expect((await signedEmpty(cloud, inst, 'POST', `/v1/dr/uploads/${uploadId}/complete`)).status).toBe(201);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.size).toBe(size);
    expect(got.sha256).toBe(digest);
    expect(await slotKeys()).toHaveLength(1);
  });
});
