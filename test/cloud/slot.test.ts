// The DR Worker's slot under real HTTP and real Ed25519 keys: enrollment, upload, refusals, replay, races.
import { randomBytes } from 'node:crypto';
import { base64url, CompactSign } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SLOT_HEADERS } from '../../shared/api/cloud';
import {
  type CloudUnderTest,
  enroll,
  httpRequest,
  newInstallation,
  putBackup,
  refusedUnread,
  sha256,
  signedEmpty,
  signedHeaders,
  startCloud,
  type TestInstallation,
} from './harness';

let cloud: CloudUnderTest;
let inst: TestInstallation;
let other: TestInstallation;
const first = randomBytes(300_000);
const firstCreatedAt = '2026-11-01T10:00:00.000Z';

beforeAll(async () => {
  cloud = await startCloud();
  inst = await newInstallation();
  other = await newInstallation();
  expect((await enroll(cloud, inst)).status).toBe(201);
  expect((await enroll(cloud, other)).status).toBe(201);
});
afterAll(async () => {
  await cloud?.dispose();
});

/** The slot as the owner sees it, and the objects under its prefix. */
async function slotState() {
  const head = await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup');
  return {
    status: head.status,
    createdAt: head.headers[SLOT_HEADERS.createdAt.toLowerCase()],
    sha256: head.headers[SLOT_HEADERS.sha256.toLowerCase()],
    objects: await cloud.listSlotObjects(inst.installationId),
  };
}

describe('enrollment', () => {
  it('accepts the same key again and refuses another key for an enrolled id', async () => {
    expect((await enroll(cloud, inst)).status).toBe(200);
    const conflict = await enroll(cloud, inst, other.publicJwk);
    expect(conflict.status).toBe(409);
    expect(conflict.json().error.code).toBe('already_enrolled');
  });

  it('refuses a wrong enrollment token', async () => {
    const res = await httpRequest(`${cloud.url}/v1/installations`, {
      method: 'POST',
      headers: { authorization: 'Bearer nope', 'content-type': 'application/json' },
      body: Buffer.from(JSON.stringify({ installationId: inst.installationId, publicKey: inst.publicJwk })),
    });
    expect(res.status).toBe(401);
    expect(res.json()).toEqual({ error: { code: 'unauthorized', message: expect.any(String) } });
  });
});

describe('the slot', () => {
  it('stores an upload, shows its metadata and gives it back byte for byte', async () => {
    const put = await putBackup(cloud, inst, first, firstCreatedAt);
    expect(put.status).toBe(201);
    expect(put.json().slot).toMatchObject({
      createdAt: firstCreatedAt,
      size: first.length,
      sha256: sha256(first),
    });
    const state = await slotState();
    expect(state).toMatchObject({ status: 200, createdAt: firstCreatedAt, sha256: sha256(first) });
    expect(state.objects).toHaveLength(1);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.status).toBe(200);
    expect(got.sha256).toBe(sha256(first));
    expect(got.size).toBe(first.length);
  });

  it('refuses a replayed request and leaves the slot as it was', async () => {
    const bytes = randomBytes(1000);
    const headers = await signedHeaders(
      inst,
      'PUT',
      '/v1/dr/backup',
      { sha256: sha256(bytes), length: bytes.length },
      { backupCreatedAt: '2026-11-01T11:00:00.000Z' },
    );
    const before = await slotState();
    const replay = await httpRequest(`${cloud.url}/v1/dr/backup`, {
      method: 'GET',
      headers: await getHeaders(),
    });
    expect(replay.status).toBe(200);
    const again = await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'GET', headers: lastGetHeaders! });
    expect(again.status).toBe(401);
    expect(again.json().error.code).toBe('replayed');
    // A signed upload whose first delivery failed (a flipped byte) cannot be replayed either.
    const flipped = Buffer.from(bytes);
    flipped[10]! ^= 1;
    const bad = await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: flipped });
    expect(bad.status).toBe(400);
    const replayed = await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: bytes });
    expect(replayed.status).toBe(401);
    expect(await slotState()).toEqual(before);
  });

  it('refuses forged, stale, future, unsigned-algorithm and misdirected requests, slot unchanged', async () => {
    const before = await slotState();
    const bytes = randomBytes(2000);
    const body = { sha256: sha256(bytes), length: bytes.length };
    const createdAt = '2026-11-02T00:00:00.000Z';
    const put = (headers: Record<string, string>, payload: Uint8Array = bytes) =>
      httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: payload });

    // Signed by another installation's key but naming ours.
    const forged = await signedHeaders(
      { ...other, installationId: inst.installationId },
      'PUT',
      '/v1/dr/backup',
      body,
      {
        backupCreatedAt: createdAt,
      },
    );
    expect((await put(forged)).status).toBe(401);

    // A flipped body byte: the signed sha256 no longer matches; nothing replaces the slot.
    const flipped = Buffer.from(bytes);
    flipped[1999]! ^= 0x80;
    const flippedAnswer = await put(
      await signedHeaders(inst, 'PUT', '/v1/dr/backup', body, { backupCreatedAt: createdAt }),
      flipped,
    );
    expect(flippedAnswer.status).toBe(400);
    expect(flippedAnswer.json().error.code).toBe('body_mismatch');

    const stale = new Date(Date.now() - 10 * 60_000);
    expect(
      (
        await put(
          await signedHeaders(inst, 'PUT', '/v1/dr/backup', body, { backupCreatedAt: createdAt, now: stale }),
        )
      ).status,
    ).toBe(401);
    const future = new Date(Date.now() + 10 * 60_000);
    const futureAnswer = await put(
      await signedHeaders(inst, 'PUT', '/v1/dr/backup', body, { backupCreatedAt: createdAt, now: future }),
    );
    expect(futureAnswer.status).toBe(401);

    // alg: none, and HS256 keyed with the public key.
    const claims = {
      iss: inst.installationId,
      mth: 'PUT',
      pth: '/v1/dr/backup',
      bsh: body.sha256,
      bln: body.length,
      iat: Math.floor(Date.now() / 1000),
      jti: randomBytes(16).toString('hex'),
      bca: createdAt,
    };
    const none = `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'gem-request+jwt' }))}.${base64url.encode(JSON.stringify(claims))}.`;
    expect(
      (await put({ authorization: `GEM-Signature ${none}`, 'content-length': String(bytes.length) })).status,
    ).toBe(401);
    for (const secret of [
      new TextEncoder().encode(JSON.stringify(inst.publicJwk)),
      base64url.decode(inst.publicJwk.x!),
    ]) {
      const hs = await new CompactSign(
        new TextEncoder().encode(JSON.stringify({ ...claims, jti: randomBytes(16).toString('hex') })),
      )
        .setProtectedHeader({ alg: 'HS256', typ: 'gem-request+jwt' })
        .sign(secret);
      const answer = await put({
        authorization: `GEM-Signature ${hs}`,
        'content-length': String(bytes.length),
      });
      expect(answer.status).toBe(401);
    }

    // Signed for another path.
    expect(
      (await put(await signedHeaders(inst, 'PUT', '/v1/dr/uploads', body, { backupCreatedAt: createdAt })))
        .status,
    ).toBe(401);
    // No signature at all.
    expect((await put({ 'content-length': String(bytes.length) })).status).toBe(401);

    expect(await slotState()).toEqual(before);
  });

  it('lets the installation in again right after a request from the future was refused', async () => {
    const bytes = randomBytes(100);
    const future = new Date(Date.now() + 60 * 60_000);
    const headers = await signedHeaders(
      inst,
      'PUT',
      '/v1/dr/backup',
      { sha256: sha256(bytes), length: bytes.length },
      { backupCreatedAt: '2026-11-01T09:00:00.000Z', now: future },
    );
    expect(
      (await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: bytes })).status,
    ).toBe(401);
    expect((await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup')).status).toBe(200);
  });

  it('never lets an older backup replace a newer one', async () => {
    const older = await putBackup(cloud, inst, randomBytes(100), '2026-10-01T00:00:00.000Z');
    expect(older.status).toBe(409);
    expect(older.json().error.code).toBe('older_backup');
    expect((await slotState()).createdAt).toBe(firstCreatedAt);
  });

  it('ends 20 concurrent uploads holding exactly one complete backup, the newest', async () => {
    const uploads = Array.from({ length: 20 }, (_, i) => ({
      bytes: randomBytes(200_000 + i),
      createdAt: new Date(Date.UTC(2026, 10, 5, 12, 0, i)).toISOString(),
    }));
    const shuffled = [...uploads].sort(() => Math.random() - 0.5);
    const answers = await Promise.all(shuffled.map((u) => putBackup(cloud, inst, u.bytes, u.createdAt)));
    for (const a of answers) expect([201, 409]).toContain(a.status);
    const newest = uploads[19]!;
    const state = await slotState();
    expect(state).toMatchObject({ status: 200, createdAt: newest.createdAt, sha256: sha256(newest.bytes) });
    expect(state.objects).toHaveLength(1);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.sha256).toBe(sha256(newest.bytes));
  });

  it('deletes the slot on opt-out; GET is then 404 and an old upload replayed is refused', async () => {
    const bytes = randomBytes(5000);
    const createdAt = '2026-11-06T00:00:00.000Z';
    const headers = await signedHeaders(
      inst,
      'PUT',
      '/v1/dr/backup',
      { sha256: sha256(bytes), length: bytes.length },
      { backupCreatedAt: createdAt },
    );
    expect(
      (await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: bytes })).status,
    ).toBe(201);
    const del = await signedEmpty(cloud, inst, 'DELETE', '/v1/dr/backup');
    expect(del.status).toBe(200);
    const got = await signedEmpty(cloud, inst, 'GET', '/v1/dr/backup');
    expect(got.status).toBe(404);
    expect((await signedEmpty(cloud, inst, 'HEAD', '/v1/dr/backup')).status).toBe(404);
    const replayed = await httpRequest(`${cloud.url}/v1/dr/backup`, { method: 'PUT', headers, body: bytes });
    expect(replayed.status).toBe(401);
    expect(await cloud.listSlotObjects(inst.installationId)).toEqual([]);
  });

  it('refuses a backup larger than the slot allows before reading it', async () => {
    const headers = () =>
      signedHeaders(
        inst,
        'PUT',
        '/v1/dr/backup',
        { sha256: sha256(new Uint8Array(1)), length: 300_000_000 },
        { backupCreatedAt: '2026-11-07T00:00:00.000Z' },
      );
    // The 413 arrives while the client is still sending: the Worker did not wait for the body.
    const res = await refusedUnread(cloud, 'PUT', '/v1/dr/backup', headers, 413);
    expect(JSON.parse(res.body).error.code).toBe('too_large');
  });
});

let lastGetHeaders: Record<string, string> | undefined;
async function getHeaders() {
  lastGetHeaders = await signedHeaders(inst, 'GET', '/v1/dr/backup', {
    sha256: sha256(new Uint8Array(0)),
    length: 0,
  });
  return lastGetHeaders;
}
