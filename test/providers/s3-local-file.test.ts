// The S3 provider's upload straight from a local file (ranged part reads), against a real s3rver, and
// against moto for what s3rver cannot show: a failed multipart upload leaves no incomplete upload behind.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { CreateBucketCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileSource } from '../../agent/offsite/transfer';
import { S3Provider } from '../../agent/providers/s3';
import { isStorageError } from '../../shared/storage/index';
import {
  incompleteUploads,
  type MotoService,
  motoClient,
  motoProviderOptions,
  startMoto,
} from '../services/moto';
import { type S3Service, startS3 } from '../services/s3';
import { startAll } from '../services/start-all';
import { randomFile } from './random-file';

const MIB = 1024 * 1024;
const name = 'gem-backup-2026-05-06-070809.tar.gz';
const MOTO_BUCKET = 'gem-moto';
let s3: S3Service;
let moto: MotoService;
let dir: string;
beforeAll(async () => {
  ({ s3, moto } = await startAll({ s3: startS3, moto: startMoto }));
  dir = await mkdtemp(join(tmpdir(), 'gem-s3-file-'));
  const raw = motoClient(moto.endpoint);
  await raw.send(new CreateBucketCommand({ Bucket: MOTO_BUCKET })).finally(() => raw.destroy());
});
afterAll(async () => {
  await Promise.all([s3?.stop(), moto?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

function provider(prefix: string): S3Provider {
  return new S3Provider({
    endpoint: s3.endpoint,
    region: s3.region,
    bucket: s3.bucket,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    forcePathStyle: true,
    partSize: 5 * MIB,
    prefix,
  });
}

async function rawKeys(prefix: string): Promise<string[]> {
  const client = new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
  try {
    const page = await client.send(new ListObjectsV2Command({ Bucket: s3.bucket, Prefix: prefix }));
    return (page.Contents ?? []).map((object) => object.Key!.slice(prefix.length));
  } finally {
    client.destroy();
  }
}

async function download(p: S3Provider): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of Readable.fromWeb((await p.get(name)) as never)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('s3 provider, local file source', () => {
  it('uploads a file of many parts without piling listeners on its signal (no leak warning)', async () => {
    const warnings: Error[] = [];
    const onWarning = (warning: Error) => warnings.push(warning);
    process.on('warning', onWarning);
    try {
      // Twelve parts: one abort listener per part, left on, passed Node's limit of ten.
      const file = await randomFile(dir, 'many', 56 * MIB);
      const p = provider('file-many/');
      const stored = await p.put(name, fileSource(file.path, file.bytes.length, file.sha256));
      expect(stored).toMatchObject({ name, size: file.bytes.length, sha256: file.sha256 });
      await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on the next tick
      expect(warnings.map((w) => `${w.name}: ${w.message}`)).toEqual([]);
      await p.close();
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('uploads a file of several parts (the last one short) byte for byte, with its sha256 in the metadata', async () => {
    const file = await randomFile(dir, 'multi', 17 * MIB + 123);
    const p = provider('file-multi/');
    let progress = 0;
    const stored = await p.put(name, fileSource(file.path, file.bytes.length, file.sha256), {
      onProgress: (bytes) => {
        progress = bytes;
      },
    });
    expect(stored).toMatchObject({ name, size: file.bytes.length, sha256: file.sha256 });
    expect(progress).toBe(file.bytes.length);
    expect((await download(p)).equals(file.bytes)).toBe(true);
  });

  it('uploads a file of one part as a single object', async () => {
    const file = await randomFile(dir, 'single', 1 * MIB + 7);
    const p = provider('file-single/');
    await p.put(name, fileSource(file.path, file.bytes.length, file.sha256));
    expect((await download(p)).equals(file.bytes)).toBe(true);
    expect((await p.stat(name)).sha256).toBe(file.sha256);
  });

  it('refuses a multipart file whose sha256 differs from the declared one, leaving no object', async () => {
    const file = await randomFile(dir, 'multi-bad', 12 * MIB);
    const p = provider('file-multi-bad/');
    const error = await p.put(name, fileSource(file.path, file.bytes.length, '0'.repeat(64))).catch((e) => e);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await rawKeys('file-multi-bad/')).toEqual([]);
  });

  it('refuses a single-part file whose sha256 differs from the declared one, leaving no object', async () => {
    const file = await randomFile(dir, 'single-bad', 2 * MIB);
    const p = provider('file-single-bad/');
    const error = await p.put(name, fileSource(file.path, file.bytes.length, '0'.repeat(64))).catch((e) => e);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await rawKeys('file-single-bad/')).toEqual([]);
  });

  it('refuses a file whose size is not the declared one, leaving no object', async () => {
    const file = await randomFile(dir, 'short', 11 * MIB);
    const p = provider('file-short/');
    const error = await p
      .put(name, fileSource(file.path, file.bytes.length + 1, file.sha256))
      .catch((e) => e);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await rawKeys('file-short/')).toEqual([]);
  });

  it("stops a multipart upload on cancel with 'aborted', leaving no object", async () => {
    const file = await randomFile(dir, 'cancel', 30 * MIB);
    const p = provider('file-cancel/');
    const controller = new AbortController();
    const error = await p
      .put(name, fileSource(file.path, file.bytes.length, file.sha256), {
        signal: controller.signal,
        onProgress: (bytes) => {
          if (bytes > 6 * MIB) controller.abort();
        },
      })
      .catch((e) => e);
    expect(isStorageError(error, 'aborted')).toBe(true);
    expect(await rawKeys('file-cancel/')).toEqual([]);
  });
});

function motoProvider(prefix: string): S3Provider {
  return new S3Provider(
    motoProviderOptions(moto.endpoint, MOTO_BUCKET, {
      partSize: 5 * MIB,
      prefix,
    }),
  );
}

describe('s3 provider, local file source, failures leave no incomplete upload (moto)', () => {
  it('a wrong sha256: refused, no object, no incomplete upload', async () => {
    const file = await randomFile(dir, 'moto-bad', 12 * MIB);
    const p = motoProvider('moto-bad/');
    const error = await p.put(name, fileSource(file.path, file.bytes.length, '0'.repeat(64))).catch((e) => e);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await p.list()).toEqual([]);
    expect(await incompleteUploads(moto.endpoint, MOTO_BUCKET, 'moto-bad/')).toEqual([]);
  });

  it('a file that grew past its declared size: refused, no object, no incomplete upload', async () => {
    const file = await randomFile(dir, 'moto-short', 11 * MIB);
    const p = motoProvider('moto-short/');
    const error = await p
      .put(name, fileSource(file.path, file.bytes.length - 1, file.sha256))
      .catch((e) => e);
    expect(isStorageError(error, 'integrity')).toBe(true);
    expect(await p.list()).toEqual([]);
    expect(await incompleteUploads(moto.endpoint, MOTO_BUCKET, 'moto-short/')).toEqual([]);
  });

  it('cancelled after the first part: aborted, no object, no incomplete upload', async () => {
    const file = await randomFile(dir, 'moto-cancel', 30 * MIB);
    const p = motoProvider('moto-cancel/');
    const controller = new AbortController();
    const error = await p
      .put(name, fileSource(file.path, file.bytes.length, file.sha256), {
        signal: controller.signal,
        onProgress: (bytes) => {
          if (bytes > 6 * MIB) controller.abort();
        },
      })
      .catch((e) => e);
    expect(isStorageError(error, 'aborted')).toBe(true);
    expect(await p.list()).toEqual([]);
    expect(await incompleteUploads(moto.endpoint, MOTO_BUCKET, 'moto-cancel/')).toEqual([]);
  });

  it('a good file completes and leaves no incomplete upload', async () => {
    const file = await randomFile(dir, 'moto-good', 17 * MIB + 5);
    const p = motoProvider('moto-good/');
    await p.put(name, fileSource(file.path, file.bytes.length, file.sha256));
    expect((await p.stat(name)).sha256).toBe(file.sha256);
    expect(await incompleteUploads(moto.endpoint, MOTO_BUCKET, 'moto-good/')).toEqual([]);
  });
});
