// The installation id is the recovery credential: the cloud stores its hash, never the id itself.
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CreateBucketCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeCloudApp } from '../../cloud/node';
import { type MotoService, motoClient, startMoto } from '../services/moto';
import {
  type CloudUnderTest,
  ENROLLMENT_TOKEN,
  enroll,
  newInstallation,
  putBackup,
  sha256,
  signedEmpty,
  startCloud,
} from './harness';
import { type ServedCloud, serveCloud } from './node-cloud';

/** Every file under `dir`, however deep (Miniflare's SQLite databases, their WAL files, R2 blobs). */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

describe('the Worker over R2 and Durable Objects (Miniflare)', () => {
  let cloud: CloudUnderTest;

  beforeAll(async () => {
    cloud = await startCloud();
  });
  afterAll(async () => {
    await cloud?.dispose();
  });

  it('keeps no copy of the installation id in its persisted state, and still verifies its requests', async () => {
    const inst = await newInstallation();
    expect((await enroll(cloud, inst)).status).toBe(201);
    const bytes = randomBytes(3000);
    expect((await putBackup(cloud, inst, bytes, '2026-11-01T00:00:00.000Z')).status).toBe(201);
    expect((await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup')).sha256).toBe(sha256(bytes));
    const hash = createHash('sha256').update(inst.installationId).digest('hex');
    const files = await filesUnder(cloud.stateDir);
    const holding = { id: [] as string[], hash: [] as string[] };
    for (const file of files) {
      const text = (await readFile(file)).toString('latin1');
      if (text.includes(inst.installationId)) holding.id.push(file);
      if (text.includes(hash)) holding.hash.push(file);
    }
    // The search can see into these files: the hash (the slot's object keys) is found there.
    expect(holding.hash.length).toBeGreaterThan(0);
    expect(holding.id).toEqual([]);
  });
});

describe('the Node entry over S3 (moto)', () => {
  const BUCKET = 'gem-dr';
  let moto: MotoService;
  let client: S3Client;
  let cloud: ServedCloud;

  beforeAll(async () => {
    moto = await startMoto();
    client = motoClient(moto.endpoint);
    await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
    cloud = await serveCloud(createNodeCloudApp({ s3: client, bucket: BUCKET, env: { ENROLLMENT_TOKEN } }));
  });
  afterAll(async () => {
    await cloud?.close();
    client?.destroy();
    await moto?.stop();
  });

  /** Every object in the bucket with its text: anyone who can read the bucket reads these. */
  async function bucketTexts(): Promise<{ key: string; text: string }[]> {
    const out = await client.send(new ListObjectsV2Command({ Bucket: BUCKET }));
    const texts: { key: string; text: string }[] = [];
    for (const o of out.Contents ?? []) {
      const got = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: o.Key }));
      texts.push({
        key: o.Key!,
        text: Buffer.from(await got.Body!.transformToByteArray()).toString('latin1'),
      });
    }
    return texts;
  }

  /** The keys of the objects whose bytes hold `text`. */
  async function holding(text: string): Promise<string[]> {
    return (await bucketTexts()).filter((t) => t.text.includes(text)).map((t) => t.key);
  }

  it('writes no object into the bucket that holds the installation id', async () => {
    const inst = await newInstallation();
    const hash = createHash('sha256').update(inst.installationId).digest('hex');
    expect((await enroll(cloud, inst)).status).toBe(201);
    expect((await enroll(cloud, inst)).status).toBe(200);
    expect((await bucketTexts()).map((t) => t.key)).toContain(`state/${hash}.json`);
    expect(await holding(inst.installationId)).toEqual([]);
    const bytes = randomBytes(3000);
    expect((await putBackup(cloud, inst, bytes, '2026-11-01T00:00:00.000Z')).status).toBe(201);
    expect((await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup')).sha256).toBe(sha256(bytes));
    expect(await holding(inst.installationId)).toEqual([]);
  });

  it('forgets the id an earlier enrollment stored beside the key, at the next signed request', async () => {
    const inst = await newInstallation();
    const hash = createHash('sha256').update(inst.installationId).digest('hex');
    // The ledger document as enrollments before this fix wrote it.
    const legacy = {
      key: {
        installationId: inst.installationId,
        publicKey: { kty: 'OKP', crv: 'Ed25519', x: inst.publicJwk.x },
      },
    };
    await client.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: `state/${hash}.json`, Body: JSON.stringify(legacy) }),
    );
    expect((await enroll(cloud, inst)).status).toBe(200);
    expect((await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup')).status).toBe(404);
    const doc = (await bucketTexts()).find((t) => t.key === `state/${hash}.json`)!;
    expect(doc.text).not.toContain(inst.installationId);
    expect(JSON.parse(doc.text).key).toEqual({ publicKey: legacy.key.publicKey });
    // The key is still the enrolled one: a request signed with another is refused.
    const impostor = { ...(await newInstallation()), installationId: inst.installationId };
    expect((await signedEmpty(cloud, impostor, 'HEAD', '/v1/dr/backup')).status).toBe(401);
  });
});
