// Recovery with the installation id alone, the escrow key endpoint, rate limits and abandoned-upload cleanup.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RECOVER_FILE_KEY_HEADER, RECOVER_KEYRING_HEADER } from '../../shared/api/cloud';
import {
  generateFileKey,
  newCore,
  openStream,
  type Stanza,
  sealStream,
  unwrapWithX25519,
  wrapForX25519,
} from '../../shared/envelope';
import {
  awayFromMinuteEnd,
  type CloudUnderTest,
  enroll,
  httpRequest,
  multipartIsOpen,
  newInstallation,
  putBackup,
  sha256,
  signedHeaders,
  startCloud,
  storedUpload,
  type TestInstallation,
} from './harness';

let cloud: CloudUnderTest;
let inst: TestInstallation;
let escrowPrivate: JWK;
let escrowPublic: JWK;
const plaintext = randomBytes(200_000);
const keyring = new TextEncoder().encode(
  JSON.stringify({ installationId: 'x', masterKeys: [{ id: 'k1', key: 'secret' }] }),
);

async function x25519Pair(kid: string): Promise<{ privateJwk: JWK; publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair('ECDH-ES', { crv: 'X25519', extractable: true });
  return {
    privateJwk: { ...(await exportJWK(privateKey)), kid },
    publicJwk: { ...(await exportJWK(publicKey)), kid },
  };
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const c of stream as unknown as AsyncIterable<Uint8Array>) chunks.push(c);
  return Buffer.concat(chunks);
}

function recover(installationId: string, recipient: JWK, address = '198.51.100.7') {
  return httpRequest(`${cloud.url}/v1/recover`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'cf-connecting-ip': address },
    body: Buffer.from(JSON.stringify({ installationId, recipient })),
  });
}

beforeAll(async () => {
  const escrow = await x25519Pair('escrow-2026');
  const retired = await x25519Pair('escrow-2025');
  escrowPrivate = escrow.privateJwk;
  escrowPublic = escrow.publicJwk;
  cloud = await startCloud({
    ESCROW_PRIVATE_KEYS: JSON.stringify([escrow.privateJwk, retired.privateJwk]),
    // Long enough that the abandoned-uploads case reads its upload's status before the alarm, under load.
    UPLOAD_IDLE_SECONDS: '5',
  });
  inst = await newInstallation();
  expect((await enroll(cloud, inst)).status).toBe(201);
});
afterAll(async () => {
  await cloud?.dispose();
});

describe('recovery', () => {
  it('publishes the escrow public keys, current first, without their private parts', async () => {
    const res = await httpRequest(`${cloud.url}/v1/escrow-key`, { method: 'GET' });
    expect(res.status).toBe(200);
    const { keys, ...current } = res.json();
    // The answer is the current key itself (API.md), and the list of all, current first.
    expect(current).toEqual({ kty: 'OKP', crv: 'X25519', x: escrowPublic.x, kid: 'escrow-2026' });
    expect(keys.map((k: JWK) => k.kid)).toEqual(['escrow-2026', 'escrow-2025']);
    expect(keys[0]).toEqual(current);
    expect(res.body.toString()).not.toContain(escrowPrivate.d);
  });

  it('hands a fresh install its keyring and file key wrapped to a one-time key, with the backup unchanged', async () => {
    const fileKey = generateFileKey();
    const stanzas = [
      await wrapForX25519(fileKey, escrowPublic, 'escrow'),
      await wrapForX25519(keyring, escrowPublic, 'escrow-keyring'),
    ];
    const core = newCore({ installationId: inst.installationId, meta: { kind: 'dr' }, chunkSize: 16384 });
    const sealed = await collect(
      sealStream(new Blob([plaintext]).stream() as ReadableStream<Uint8Array>, { core, stanzas, fileKey }),
    );
    expect((await putBackup(cloud, inst, sealed, core.createdAt)).status).toBe(201);

    const oneTime = await x25519Pair('recovery');
    const res = await recover(inst.installationId, oneTime.publicJwk);
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(sha256(sealed));
    const fileKeyJwe = res.headers[RECOVER_FILE_KEY_HEADER.toLowerCase()] as string;
    const keyringJwe = res.headers[RECOVER_KEYRING_HEADER.toLowerCase()] as string;
    expect(Buffer.from(await unwrapWithX25519(keyringJwe, oneTime.privateJwk))).toEqual(Buffer.from(keyring));
    const recoveredKey = await unwrapWithX25519(fileKeyJwe, oneTime.privateJwk);
    const opened = await openStream(
      new Blob([new Uint8Array(res.body)]).stream() as ReadableStream<Uint8Array>,
      {
        resolveFileKey: async () => recoveredKey,
      },
    );
    expect(sha256(await collect(opened.plaintext))).toBe(sha256(plaintext));
    expect(JSON.stringify(res.headers)).not.toContain(escrowPrivate.d);
  });

  it('answers 422 not_recoverable, not a 500, for a backup whose escrow data does not open or verify', async () => {
    const cases: [string, (fileKey: Uint8Array) => Promise<{ stanzas: Stanza[]; sealKey: Uint8Array }>][] = [
      [
        "the file key's stanza names the current escrow key but was wrapped to another",
        async (fileKey) => {
          const other = await x25519Pair('escrow-2026');
          return {
            stanzas: [
              await wrapForX25519(fileKey, other.publicJwk, 'escrow'),
              await wrapForX25519(keyring, escrowPublic, 'escrow-keyring'),
            ],
            sealKey: fileKey,
          };
        },
      ],
      [
        'the header was sealed with another file key than the escrowed one (its MAC does not verify)',
        async (fileKey) => ({
          stanzas: [
            await wrapForX25519(fileKey, escrowPublic, 'escrow'),
            await wrapForX25519(keyring, escrowPublic, 'escrow-keyring'),
          ],
          sealKey: generateFileKey(),
        }),
      ],
    ];
    const oneTime = await x25519Pair('recovery');
    for (const [what, build] of cases) {
      const owner = await newInstallation();
      expect((await enroll(cloud, owner)).status).toBe(201);
      const { stanzas, sealKey } = await build(generateFileKey());
      const core = newCore({ installationId: owner.installationId, meta: { kind: 'dr' }, chunkSize: 16384 });
      const sealed = await collect(
        sealStream(new Blob([plaintext]).stream() as ReadableStream<Uint8Array>, {
          core,
          stanzas,
          fileKey: sealKey,
        }),
      );
      expect((await putBackup(cloud, owner, sealed, core.createdAt)).status, what).toBe(201);
      const res = await recover(owner.installationId, oneTime.publicJwk, '198.51.100.21');
      expect(res.status, what).toBe(422);
      expect(res.json().error.code, what).toBe('not_recoverable');
    }
  });

  it('answers an unknown id and an enrolled id without a backup the same way', async () => {
    const oneTime = await x25519Pair('recovery');
    const empty = await newInstallation();
    expect((await enroll(cloud, empty)).status).toBe(201);
    const unknown = await recover(randomBytes(16).toString('hex'), oneTime.publicJwk, '198.51.100.8');
    const noSlot = await recover(empty.installationId, oneTime.publicJwk, '198.51.100.8');
    expect(unknown.status).toBe(404);
    expect(noSlot.status).toBe(404);
    expect(unknown.body.toString()).toBe(noSlot.body.toString());
  });

  it('limits recovery attempts per client address', async () => {
    const oneTime = await x25519Pair('recovery');
    await awayFromMinuteEnd();
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++)
      statuses.push(
        (await recover(randomBytes(16).toString('hex'), oneTime.publicJwk, '203.0.113.9')).status,
      );
    expect(statuses.slice(0, 5)).toEqual([404, 404, 404, 404, 404]);
    expect(statuses.slice(5)).toEqual([429, 429]);
    // Another address is not affected.
    expect((await recover(randomBytes(16).toString('hex'), oneTime.publicJwk, '203.0.113.10')).status).toBe(
      404,
    );
  });

  it('limits an IPv6 client by its /64: the addresses of one home share one limit', async () => {
    const oneTime = await x25519Pair('recovery');
    await awayFromMinuteEnd();
    const statuses: number[] = [];
    for (let i = 1; i <= 6; i++)
      statuses.push(
        (await recover(randomBytes(16).toString('hex'), oneTime.publicJwk, `2001:db8:7:7::${i}`)).status,
      );
    expect(statuses).toEqual([404, 404, 404, 404, 404, 429]);
    const sameHome = await recover(
      randomBytes(16).toString('hex'),
      oneTime.publicJwk,
      '2001:db8:7:7:ffff::1',
    );
    expect(sameHome.status).toBe(429);
    const nextDoor = await recover(randomBytes(16).toString('hex'), oneTime.publicJwk, '2001:db8:7:8::1');
    expect(nextDoor.status).toBe(404);
  });
});

describe('abandoned uploads', () => {
  it('are aborted by the installation alarm once idle past the limit', async () => {
    const body = Buffer.from(
      JSON.stringify({
        size: 6 * 1024 * 1024,
        sha256: sha256(new Uint8Array(0)),
        createdAt: '2027-01-01T00:00:00.000Z',
        agentVersion: 't',
        partSize: 5 * 1024 * 1024,
      }),
    );
    const headers = await signedHeaders(inst, 'POST', '/v1/dr/uploads', {
      sha256: sha256(body),
      length: body.length,
    });
    const created = await httpRequest(`${cloud.url}/v1/dr/uploads`, { method: 'POST', headers, body });
    expect(created.status).toBe(201);
    const { uploadId } = created.json();
    const record = await storedUpload(cloud, inst.installationId, uploadId);
    expect(record).not.toBeNull();
    expect(await multipartIsOpen(cloud, record!)).toBe(true);
    const status = async () => {
      const h = await signedHeaders(inst, 'GET', `/v1/dr/uploads/${uploadId}`, {
        sha256: sha256(new Uint8Array(0)),
        length: 0,
      });
      return (await httpRequest(`${cloud.url}/v1/dr/uploads/${uploadId}`, { method: 'GET', headers: h }))
        .status;
    };
    expect(await status()).toBe(200);
    let last = 200;
    for (let i = 0; i < 80 && last === 200; i++) {
      await sleep(250);
      last = await status();
    }
    expect(last).toBe(404);
    // Forgetting the record is not enough: the stored multipart upload (and its parts) is aborted.
    expect(await multipartIsOpen(cloud, record!)).toBe(false);
  });
});
