// A single PUT whose ledger record a later push's sweep revoked: its commit answers 503 storage_unavailable ("send it again"), the slot keeps the other push's intact object, and the agent's client takes it as retryable.
import { createHash, randomBytes } from 'node:crypto';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DrClient } from '../../agent/dr/client';
import { AppError } from '../../agent/errors';
import type { SigningKey } from '../../agent/keys/keyring';
import type { InstallationStateApi } from '../../cloud/state/ledger';
import { S3InstallationStates } from '../../cloud/state/s3-ledger';
import { S3SlotStore } from '../../cloud/store/s3';
import { SLOT_HEADERS } from '../../shared/api/cloud';
import { type S3Service, startS3 } from '../services/s3';
import { until } from '../services/wait';
import { enroll, newInstallation, putBackup, sha256, signedEmpty, type TestInstallation } from './harness';
import { nodeCloudDeps, type ServedCloud, s3ClientFor, serveCloud } from './node-cloud';

let s3: S3Service;
let client: S3Client;
let cloud: ServedCloud;
let states: S3InstallationStates;
/** a commit of a backup created at `createdAt` waits for `open` before it reaches the ledger */
let commitGate: { createdAt: string; open: Promise<void> } | null = null;

/** The real ledger, with a commit held at the gate (the fault-injection style of orphans.test). */
function gated(state: InstallationStateApi): InstallationStateApi {
  return {
    ...state,
    async commitSlot(next, opts) {
      if (commitGate?.createdAt === next.createdAt) await commitGate.open;
      return state.commitSlot(next, opts);
    },
  };
}

beforeAll(async () => {
  s3 = await startS3({ bucket: 'gem-dr' });
  client = s3ClientFor(s3);
  const store = new S3SlotStore(client, s3.bucket);
  states = new S3InstallationStates(client, s3.bucket, store);
  cloud = await serveCloud(nodeCloudDeps(store, (hash) => gated(states.installation(hash))));
});
afterAll(async () => {
  await cloud?.close();
  client?.destroy();
  await s3?.stop();
});

const hashOf = (inst: TestInstallation) => createHash('sha256').update(inst.installationId).digest('hex');

async function keysOf(inst: TestInstallation): Promise<string[]> {
  const out = await client.send(
    new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: `slots/${hashOf(inst)}/` }),
  );
  return (out.Contents ?? []).map((o) => o.Key!);
}

/** The sha256 of an object as the bucket holds it, read straight from storage. */
async function storedSha256(key: string): Promise<string> {
  const out = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return sha256(await out.Body!.transformToByteArray());
}

/** The agent's DR client signing as `inst` (the agent's own request code, not the test harness's). */
function agentClient(inst: TestInstallation): DrClient {
  const signingKey = { publicJwk: inst.publicJwk, privateJwk: inst.privateJwk } as SigningKey;
  return new DrClient({
    baseUrl: cloud.url,
    identity: () => ({ installationId: inst.installationId, signingKey }),
    timeoutMs: 10_000,
  });
}

const body = (bytes: Buffer) => ({ sha256: sha256(bytes), length: bytes.length, open: () => bytes });

/**
 * Push `held` (the NEWER backup) begins first, stores its object and is held just before its commit;
 * push `other` begins later, commits, and its orphan sweep revokes the held put's record (begun
 * before the sweeping push) and deletes its object. Then the held commit runs.
 */
async function revokedByAnotherPush(
  inst: TestInstallation,
  send: (bytes: Buffer, createdAt: string) => Promise<unknown>,
): Promise<{ held: Promise<unknown>; heldBytes: Buffer; other: Buffer; release: () => void }> {
  const heldAt = '2026-11-02T00:00:00.000Z';
  let release: () => void = () => {};
  commitGate = {
    createdAt: heldAt,
    open: new Promise<void>((r) => {
      release = r;
    }),
  };
  const heldBytes = randomBytes(3000);
  const held = send(heldBytes, heldAt);
  await until(async () => (await keysOf(inst)).length === 1, 'the held push to store its object');
  // The other push is older by its backup's time but begins later: the slot takes it (empty so far).
  const other = randomBytes(4000);
  expect((await putBackup(cloud, inst, other, '2026-11-01T00:00:00.000Z')).status).toBe(201);
  // Its sweep took the held push's object away: only its own is left.
  expect(await keysOf(inst)).toHaveLength(1);
  return { held, heldBytes, other, release };
}

/** The slot points at the other push's object, which is whole; nothing else is stored. */
async function slotHoldsOnly(inst: TestInstallation, other: Buffer): Promise<void> {
  const slot = await states.installation(hashOf(inst)).slot();
  expect(slot?.createdAt).toBe('2026-11-01T00:00:00.000Z');
  expect(await keysOf(inst)).toEqual([slot!.objectKey]);
  expect(await storedSha256(slot!.objectKey)).toBe(sha256(other));
  const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
  expect(got.status).toBe(200);
  expect(got.sha256).toBe(sha256(other));
  expect(got.headers[SLOT_HEADERS.createdAt.toLowerCase()]).toBe('2026-11-01T00:00:00.000Z');
}

describe('a single PUT revoked by a concurrent push’s sweep (Node entry over S3, real ledger)', () => {
  it('its commit answers 503 storage_unavailable, the slot keeps the other push’s intact object; sent again, it lands', async () => {
    const inst = await newInstallation();
    expect((await enroll(cloud, inst)).status).toBe(201);
    const { held, heldBytes, other, release } = await revokedByAnotherPush(inst, (bytes, at) =>
      putBackup(cloud, inst, bytes, at),
    );
    release();
    commitGate = null;
    const answer = (await held) as Awaited<ReturnType<typeof putBackup>>;
    expect(answer.status).toBe(503);
    expect(answer.json()).toEqual({
      error: {
        code: 'storage_unavailable',
        message: 'the backup was cleared away before it was committed; send it again',
      },
    });
    await slotHoldsOnly(inst, other);

    // "Send it again": the same backup in a new request is committed (it is the newer one).
    expect((await putBackup(cloud, inst, heldBytes, '2026-11-02T00:00:00.000Z')).status).toBe(201);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.sha256).toBe(sha256(heldBytes));
    expect(await keysOf(inst)).toHaveLength(1);
  });

  it('the agent’s DR client takes that answer as dependency_down, the class its push retries', async () => {
    const inst = await newInstallation();
    expect((await enroll(cloud, inst)).status).toBe(201);
    const dr = agentClient(inst);
    const { held, heldBytes, other, release } = await revokedByAnotherPush(inst, (bytes, at) =>
      dr.putBackup(body(bytes), at).then(
        () => undefined,
        (error: unknown) => error,
      ),
    );
    release();
    commitGate = null;
    const error = await held;
    expect(error).toBeInstanceOf(AppError);
    expect(error).toMatchObject({
      code: 'dependency_down',
      details: { cloudStatus: 503, cloudCode: 'storage_unavailable' },
    });
    await slotHoldsOnly(inst, other);

    // What the push's retry does: the same call again, which lands.
    await dr.putBackup(body(heldBytes), '2026-11-02T00:00:00.000Z');
    expect((await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup')).sha256).toBe(sha256(heldBytes));
  });
});
