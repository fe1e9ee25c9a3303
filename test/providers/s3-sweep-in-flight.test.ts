// An S3 sweep given an age leaves alone an incomplete upload that is still sending its parts, however
// long ago it began (another controller's upload of a large backup into the same folder), against moto,
// the one S3 server here with ListMultipartUploads and ListParts.
import {
  CompleteMultipartUploadCommand,
  CreateBucketCommand,
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3Provider } from '../../agent/providers/s3';
import { type MotoService, motoClient, motoProviderOptions, startMoto } from '../services/moto';

const MIB = 1024 * 1024;
const BUCKET = 'gem-sweep-in-flight';
/** The backup another controller is uploading right now: its latest part just arrived. */
const SENDING = 'gem-backup-2026-01-02-030405.tar.gz';
/** A leftover: begun long ago (moto dates every upload 2010), no part ever arrived. */
const LEFT = 'gem-backup-2026-01-01-030405.tar.gz';
const TEN_MINUTES = 10 * 60_000;

let moto: MotoService;
let raw: S3Client;
beforeAll(async () => {
  moto = await startMoto();
  raw = motoClient(moto.endpoint);
  await raw.send(new CreateBucketCommand({ Bucket: BUCKET }));
});
afterAll(async () => {
  raw?.destroy();
  await moto?.stop();
});

function provider(): S3Provider {
  return new S3Provider(
    motoProviderOptions(moto.endpoint, BUCKET, {
      partSize: 5 * MIB,
      prefix: 'gem/',
    }),
  );
}

async function uploadsLeft(): Promise<string[]> {
  const page = await raw.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: 'gem/' }));
  return (page.Uploads ?? []).map((upload) => upload.Key!).sort();
}

describe('an S3 sweep given an age', () => {
  it('keeps an upload whose latest part is younger than the age, whenever it began; it still completes', async () => {
    const key = `gem/${SENDING}`;
    const { UploadId } = await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
    const part = await raw.send(
      new UploadPartCommand({
        Bucket: BUCKET,
        Key: key,
        UploadId,
        PartNumber: 1,
        Body: new Uint8Array(5 * MIB).fill(1),
      }),
    );
    await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: `gem/${LEFT}` }));
    const p = provider();
    expect(await uploadsLeft()).toEqual([`gem/${LEFT}`, key]);

    // Both began in 2010 as moto tells it; only the one without a recent part is a leftover.
    expect(await p.sweepTemp({ olderThanMs: TEN_MINUTES })).toEqual({ removed: [LEFT] });
    expect(await uploadsLeft()).toEqual([key]);
    // The other controller's upload goes on and completes.
    const { ETag } = await raw.send(
      new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumber: 2, Body: 'the end' }),
    );
    await raw.send(
      new CompleteMultipartUploadCommand({
        Bucket: BUCKET,
        Key: key,
        UploadId,
        MultipartUpload: {
          Parts: [
            { PartNumber: 1, ETag: part.ETag },
            { PartNumber: 2, ETag },
          ],
        },
      }),
    );
    expect((await p.stat(SENDING)).size).toBe(5 * MIB + 'the end'.length);
    expect(await uploadsLeft()).toEqual([]);
    await p.close();
  });

  it('without an age still removes every incomplete upload of a backup, parts or not', async () => {
    const key = `gem/${SENDING}`;
    const { UploadId } = await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: key }));
    await raw.send(
      new UploadPartCommand({ Bucket: BUCKET, Key: key, UploadId, PartNumber: 1, Body: 'part one' }),
    );
    await raw.send(new CreateMultipartUploadCommand({ Bucket: BUCKET, Key: `gem/${LEFT}` }));
    const p = provider();
    expect((await p.sweepTemp()).removed.sort()).toEqual([LEFT, SENDING]);
    expect(await uploadsLeft()).toEqual([]);
    await p.close();
  });
});
