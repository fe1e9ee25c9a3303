// A slot storage outage answers a retryable 503 with a fixed message; only bytes that differ answer 400.
import { randomBytes } from 'node:crypto';
import type { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3InstallationStates } from '../../cloud/state/s3-ledger';
import { S3SlotStore } from '../../cloud/store/s3';
import { type S3Service, startS3 } from '../services/s3';
import {
  enroll,
  httpRequest,
  newInstallation,
  putBackup,
  sha256,
  signedEmpty,
  signedHeaders,
  type TestInstallation,
} from './harness';
import { nodeCloudDeps, type ServedCloud, s3ClientFor, serveCloud } from './node-cloud';

// Installation state and backups live on two S3 servers, so the backups' one can go down alone.
let stateS3: S3Service;
let slotS3: S3Service;
const clients: S3Client[] = [];
let cloud: ServedCloud;
let inst: TestInstallation;
/** A multipart upload begun while storage was up. */
let uploadId: string;
let slotStopped = false;

/** Takes the backups' storage down (once; the cases below run without it). */
async function stopSlotStorage(): Promise<void> {
  if (!slotStopped) await slotS3.stop();
  slotStopped = true;
}

async function signedJson(path: string, value: unknown) {
  const body = Buffer.from(JSON.stringify(value));
  const headers = await signedHeaders(inst, 'POST', path, { sha256: sha256(body), length: body.length });
  return httpRequest(`${cloud.url}${path}`, {
    method: 'POST',
    headers: { ...headers, 'content-type': 'application/json' },
    body,
  });
}

function s3Client(s3: S3Service): S3Client {
  const client = s3ClientFor(s3);
  clients.push(client);
  return client;
}

beforeAll(async () => {
  stateS3 = await startS3({ bucket: 'gem-dr-state' });
  slotS3 = await startS3({ bucket: 'gem-dr-slots' });
  const store = new S3SlotStore(s3Client(slotS3), slotS3.bucket);
  const states = new S3InstallationStates(s3Client(stateS3), stateS3.bucket, store);
  cloud = await serveCloud(nodeCloudDeps(store, (hash) => states.installation(hash)));
  inst = await newInstallation();
  expect((await enroll(cloud, inst)).status).toBe(201);
  const created = await signedJson('/v1/dr/uploads', {
    size: 12 * 1024 * 1024,
    sha256: sha256(randomBytes(16)),
    createdAt: '2026-11-04T00:00:00.000Z',
    agentVersion: 'test',
    partSize: 5 * 1024 * 1024,
  });
  expect(created.status).toBe(201);
  uploadId = created.json().uploadId;
});
afterAll(async () => {
  await cloud?.close();
  for (const client of clients) client.destroy();
  await slotS3?.stop();
  await stateS3?.stop();
});

describe('PUT /v1/dr/backup when storage fails', () => {
  it('answers 400 body_mismatch for wrong bytes, and 503 storage_unavailable when storage is down', async () => {
    const first = randomBytes(10_000);
    expect((await putBackup(cloud, inst, first, '2026-11-01T00:00:00.000Z')).status).toBe(201);

    // Wrong bytes for the signed sha256, storage up: the client's fault, final.
    const next = randomBytes(10_000);
    const mismatchHeaders = await signedHeaders(
      inst,
      'PUT',
      '/v1/dr/backup',
      { sha256: sha256(next), length: next.length },
      { backupCreatedAt: '2026-11-02T00:00:00.000Z' },
    );
    const flipped = Buffer.from(next);
    flipped[0]! ^= 1;
    const mismatch = await httpRequest(`${cloud.url}/v1/dr/backup`, {
      method: 'PUT',
      headers: mismatchHeaders,
      body: flipped,
    });
    expect(mismatch.status).toBe(400);
    expect(mismatch.json().error.code).toBe('body_mismatch');

    // Storage down, a correctly signed body: retryable, and nothing of storage's own text leaks.
    await stopSlotStorage();
    const outage = await putBackup(cloud, inst, next, '2026-11-03T00:00:00.000Z');
    expect(outage.status).toBe(503);
    const { error } = outage.json();
    expect(error).toEqual({
      code: 'storage_unavailable',
      message: 'the backup storage is not available; try again later',
    });
    const text = outage.body.toString('utf8');
    const slotPort = new URL(slotS3.endpoint).port;
    expect(text).not.toContain(slotPort);
    expect(text).not.toContain('127.0.0.1');
    expect(text).not.toMatch(/ECONNREFUSED|refused by storage/);

    // The slot still holds the earlier backup; its record was never touched.
    const head = await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup');
    expect(head.status).toBe(200);
  });
});

describe('PUT /v1/dr/uploads/:id/parts/:n when storage fails', () => {
  it('answers 503 storage_unavailable with the same fixed message, and the part is not recorded', async () => {
    await stopSlotStorage();
    const part = randomBytes(5 * 1024 * 1024);
    const path = `/v1/dr/uploads/${uploadId}/parts/1`;
    const headers = await signedHeaders(inst, 'PUT', path, { sha256: sha256(part), length: part.length });
    const outage = await httpRequest(`${cloud.url}${path}`, { method: 'PUT', headers, body: part });
    expect(outage.status).toBe(503);
    expect(outage.json().error).toEqual({
      code: 'storage_unavailable',
      message: 'the backup storage is not available; try again later',
    });
    expect(outage.body.toString('utf8')).not.toContain(new URL(slotS3.endpoint).port);
    const statusPath = `/v1/dr/uploads/${uploadId}`;
    const empty = { sha256: sha256(new Uint8Array(0)), length: 0 };
    const status = await httpRequest(`${cloud.url}${statusPath}`, {
      method: 'GET',
      headers: await signedHeaders(inst, 'GET', statusPath, empty),
    });
    expect(status.status).toBe(200);
    expect(status.json().parts).toEqual([]);
  });
});
