// Several Node cloud processes on one bucket (moto: it honours If-Match / If-None-Match: *) lose no update.
import { randomUUID } from 'node:crypto';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installationHash } from '../../cloud/auth/installation-hash';
import { createNodeCloudApp } from '../../cloud/node';
import type { UploadRecord } from '../../cloud/state/ledger';
import { S3InstallationStates } from '../../cloud/state/s3-ledger';
import { S3RecoveryRateLimiter } from '../../cloud/state/s3-rate-limiter';
import { S3SlotStore } from '../../cloud/store/s3';
import { type MotoService, startMoto } from '../services/moto';
import {
  ENROLLMENT_TOKEN,
  enroll,
  httpRequest,
  newInstallation,
  sha256,
  signedHeaders,
  type TestInstallation,
} from './harness';
import { type ServedCloud, serveCloud } from './node-cloud';

const BUCKET = 'gem-dr';
let moto: MotoService;
const clients: S3Client[] = [];
/** Two "processes": separate S3 clients, apps, queues and memory, one bucket. */
let cloudA: ServedCloud;
let cloudB: ServedCloud;
let gateA: Gate;
let gateB: Gate;
/** A third view of the bucket, to read what the ledger holds through its own API. */
let observer: S3InstallationStates;

/**
 * Holds the next ledger write (PutObject of state/...) of one S3 client until released, and counts
 * what that client sent: a real client whose requests are only delayed, never answered for it.
 */
interface Gate {
  client: S3Client;
  arm(): { reached: Promise<void>; release(): void };
  sent: Record<string, number>;
  refused: number;
}

function gatedClient(): Gate {
  const client = new S3Client({
    endpoint: moto.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: 'moto', secretAccessKey: 'moto' },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  clients.push(client);
  let armed: { reached: () => void; released: Promise<void> } | null = null;
  const gate: Gate = {
    client,
    sent: {},
    refused: 0,
    arm() {
      let reached!: () => void;
      let release!: () => void;
      const reachedP = new Promise<void>((r) => {
        reached = r;
      });
      const released = new Promise<void>((r) => {
        release = r;
      });
      armed = { reached, released };
      return { reached: reachedP, release };
    },
  };
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const name = context.commandName ?? '?';
      const key = String((args.input as { Key?: string }).Key ?? '');
      const ledgerWrite = name === 'PutObjectCommand' && key.startsWith('state/');
      if (ledgerWrite && armed) {
        const held = armed;
        armed = null;
        held.reached();
        await held.released;
      }
      gate.sent[name] = (gate.sent[name] ?? 0) + 1;
      try {
        return await next(args);
      } catch (err) {
        if ((err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 412) {
          gate.refused += 1;
        }
        throw err;
      }
    },
    { step: 'initialize', name: 'testGate' },
  );
  return gate;
}

/** A signed GET of the slot with a chosen request id: admitted (404, no backup yet) or refused (401). */
async function signedGet(cloud: ServedCloud, inst: TestInstallation, jti: string) {
  const headers = await signedHeaders(
    inst,
    'GET',
    '/v1/dr/backup',
    { sha256: sha256(new Uint8Array(0)), length: 0 },
    { jti },
  );
  return httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'GET', headers });
}

/** Whether the installation's ledger holds request id `jti` (admitRequest answers false for one it has seen). */
async function ledgerHolds(inst: TestInstallation, jti: string): Promise<boolean> {
  const state = observer.installation(await installationHash(inst.installationId));
  return !(await state.admitRequest(jti, Date.now() + 3600_000));
}

async function enrolled(): Promise<TestInstallation> {
  const inst = await newInstallation();
  expect((await enroll(cloudB, inst)).status).toBe(201);
  return inst;
}

beforeAll(async () => {
  // One request at a time: moto's If-Match check and store are not one step under its threads (see moto.ts).
  moto = await startMoto({ oneRequestAtATime: true });
  gateA = gatedClient();
  gateB = gatedClient();
  await gateA.client.send(new CreateBucketCommand({ Bucket: BUCKET }));
  const env = { ENROLLMENT_TOKEN, RECOVER_PER_MINUTE: '3' };
  cloudA = await serveCloud(createNodeCloudApp({ s3: gateA.client, bucket: BUCKET, env }));
  cloudB = await serveCloud(createNodeCloudApp({ s3: gateB.client, bucket: BUCKET, env }));
  const observerClient = gatedClient().client;
  observer = new S3InstallationStates(observerClient, BUCKET, new S3SlotStore(observerClient, BUCKET));
});
afterAll(async () => {
  await cloudA?.close();
  await cloudB?.close();
  for (const client of clients) client.destroy();
  await moto?.stop();
});

describe('two Node cloud processes on one bucket', () => {
  it('admit a signed request replayed at both at once exactly once', async () => {
    const inst = await enrolled();
    for (let i = 0; i < 5; i++) {
      const jti = randomUUID();
      const answers = await Promise.all([signedGet(cloudA, inst, jti), signedGet(cloudB, inst, jti)]);
      const statuses = answers.map((a) => a.status).sort();
      expect(statuses).toEqual([401, 404]);
      expect(answers.find((a) => a.status === 401)?.json().error.code).toBe('replayed');
    }
  });

  it('lose none of many signed requests sent to both at once', async () => {
    const inst = await enrolled();
    const jtis = Array.from({ length: 24 }, () => randomUUID());
    const answers = await Promise.all(jtis.map((jti, i) => signedGet(i % 2 ? cloudB : cloudA, inst, jti)));
    expect(answers.map((a) => a.status)).toEqual(jtis.map(() => 404));
    const held = await Promise.all(jtis.map((jti) => ledgerHolds(inst, jti)));
    expect(held).toEqual(jtis.map(() => true));
  });

  it("re-run a write that lost the race, keeping the other process's change", async () => {
    const inst = await enrolled();
    const refusedBefore = gateA.refused;
    const [fromA, fromB] = [randomUUID(), randomUUID()];
    const { reached, release } = gateA.arm();
    // A reads the ledger and is held just before writing its request id back...
    const first = signedGet(cloudA, inst, fromA);
    await reached;
    // ...while B records its own in the meantime...
    expect((await signedGet(cloudB, inst, fromB)).status).toBe(404);
    // ...so A's write is refused (412); A reads again, re-runs, and its write then holds both.
    release();
    expect((await first).status).toBe(404);
    expect(gateA.refused - refusedBefore).toBe(1);
    expect(await ledgerHolds(inst, fromA)).toBe(true);
    expect(await ledgerHolds(inst, fromB)).toBe(true);
  });

  it('abort an abandoned upload once, after the write that forgot it, whoever swept it', async () => {
    const inst = await newInstallation();
    const hash = await installationHash(inst.installationId);
    // The ledgers of both processes, with a short idle limit so an upload is abandoned at once.
    const statesA = new S3InstallationStates(gateA.client, BUCKET, new S3SlotStore(gateA.client, BUCKET), 50);
    const statesB = new S3InstallationStates(gateB.client, BUCKET, new S3SlotStore(gateB.client, BUCKET), 50);
    const objectKey = `slots/${hash}/abandoned`;
    const storeUploadId = await new S3SlotStore(gateB.client, BUCKET).createMultipart(objectKey);
    const upload: UploadRecord = {
      uploadId: 'u1',
      objectKey,
      storeUploadId,
      size: 10,
      sha256: '0'.repeat(64),
      createdAt: new Date().toISOString(),
      agentVersion: 'test',
      partSize: 5 * 1024 * 1024,
      parts: {},
      lastActivityAt: Date.now() - 60_000,
    };
    await statesB.installation(hash).createUpload(upload);
    const abortsA = gateA.sent.AbortMultipartUploadCommand ?? 0;
    const abortsB = gateB.sent.AbortMultipartUploadCommand ?? 0;

    // A sweeps (the upload is abandoned) and is held before its write; nothing aborted yet.
    const { reached, release } = gateA.arm();
    const readA = statesA.installation(hash).slot();
    await reached;
    expect(gateA.sent.AbortMultipartUploadCommand ?? 0).toBe(abortsA);
    // B sweeps too, writes first, and aborts the upload's parts.
    await statesB.installation(hash).slot();
    expect((gateB.sent.AbortMultipartUploadCommand ?? 0) - abortsB).toBe(1);
    // A's write is refused; its re-run finds the upload already forgotten and aborts nothing.
    release();
    expect(await readA).toBeNull();
    expect((gateA.sent.AbortMultipartUploadCommand ?? 0) - abortsA).toBe(0);
    expect(await statesA.installation(hash).upload('u1')).toBeNull();
  });

  it('give up with a retryable 503 when every try lost the race', async () => {
    const hash = await installationHash((await newInstallation()).installationId);
    // One try only: the write B makes while A is held is enough to exhaust A.
    const statesA = new S3InstallationStates(
      gateA.client,
      BUCKET,
      new S3SlotStore(gateA.client, BUCKET),
      undefined,
      { attempts: 1 },
    );
    const { reached, release } = gateA.arm();
    const admitA = statesA.installation(hash).admitRequest(randomUUID(), Date.now() + 600_000);
    const outcome = admitA.then(
      () => null,
      (err: unknown) => err,
    );
    await reached;
    expect(await observer.installation(hash).admitRequest(randomUUID(), Date.now() + 600_000)).toBe(true);
    release();
    expect(await outcome).toMatchObject({ status: 503, code: 'storage_unavailable' });
  });

  it('share one recovery rate limit: the 4th attempt from one address across both is 429', async () => {
    // All four in one minute: start at the beginning of a minute when fewer than 10 s of it are left
    // (the four requests to the local processes take well under a second: 64 ms here).
    const intoMinute = Date.now() % 60_000;
    if (intoMinute > 50_000) await new Promise((r) => setTimeout(r, 60_000 - intoMinute + 100));
    const statuses: number[] = [];
    for (const cloud of [cloudA, cloudB, cloudA, cloudB]) {
      const res = await httpRequest(`${cloud.url}/v1/recover`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: Buffer.from('{}'),
      });
      statuses.push(res.status);
    }
    // The first three are counted and then refused for their body; the fourth never gets that far.
    expect(statuses.slice(0, 3).every((s) => s !== 429)).toBe(true);
    expect(statuses[3]).toBe(429);
  });
});

describe('the recovery rate limit in the bucket', () => {
  it('admits exactly the limit of attempts made at once through two processes, and again next minute', async () => {
    let now = Date.parse('2026-11-01T10:00:05.000Z');
    const clock = () => now;
    const limiterA = new S3RecoveryRateLimiter(gateA.client, BUCKET, {}, clock);
    const limiterB = new S3RecoveryRateLimiter(gateB.client, BUCKET, {}, clock);
    const address = `198.51.100.${Math.floor(Math.random() * 250)}`;
    const answers = await Promise.all(
      Array.from({ length: 10 }, (_, i) => (i % 2 ? limiterB : limiterA).take(address, 3)),
    );
    expect(answers.filter(Boolean)).toHaveLength(3);
    expect(await limiterA.take('203.0.113.77', 3)).toBe(true);
    now += 60_000;
    expect(await limiterB.take(address, 3)).toBe(true);
  });
});
