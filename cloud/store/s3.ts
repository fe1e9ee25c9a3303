// The slot store over any S3-compatible bucket (the self-hosted Node entry).
import { createHash } from 'node:crypto';
import { Readable, Transform } from 'node:stream';
import type { ReadableStream as NodeWebReadableStream } from 'node:stream/web';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { storageUnavailable } from '../errors';
import {
  ContentMismatchError,
  LIST_LIMIT,
  type ListedObject,
  type SlotStore,
  type StoredObject,
} from './slot-store';

/**
 * Slot storage over S3. Not every S3-compatible server checks a sent sha256, so the bytes are hashed
 * here as they stream; a mismatching object (under its fresh, never-referenced key) is deleted.
 */
export class S3SlotStore implements SlotStore {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
  ) {}

  async put(key: string, body: ReadableStream<Uint8Array>, length: number, sha256Hex: string): Promise<void> {
    const hashed = hashing(body);
    try {
      await this.s3.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: hashed.stream, ContentLength: length }),
      );
    } catch (err) {
      // Only bytes that really differ from the signed ones are the client's fault (400, final);
      // storage failing before it read them all (down, refused, timed out) is retryable.
      if (
        hashed.broken() ||
        hashed.received() > length ||
        (hashed.ended() && !hashed.matches(length, sha256Hex))
      ) {
        throw new ContentMismatchError('the body does not match its signed sha256 and length');
      }
      throw storageUnavailable('storing a backup', err);
    }
    if (!hashed.matches(length, sha256Hex)) {
      await this.delete(key);
      throw new ContentMismatchError('the body does not match its signed sha256 and length');
    }
  }

  async head(key: string): Promise<StoredObject | null> {
    try {
      const out = await this.s3.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { size: out.ContentLength ?? 0 };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  async get(key: string, firstBytes?: number) {
    try {
      const out = await this.s3.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Range: firstBytes ? `bytes=0-${firstBytes - 1}` : undefined,
        }),
      );
      const body = out.Body?.transformToWebStream() as ReadableStream<Uint8Array> | undefined;
      return body ? { body, size: out.ContentLength ?? 0 } : null;
    } catch (err) {
      if (isNotFound(err)) return null;
      throw err;
    }
  }

  async delete(key: string): Promise<void> {
    await this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
  }

  async list(prefix: string, limit = LIST_LIMIT): Promise<ListedObject[]> {
    const listed: ListedObject[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix,
          ContinuationToken: token,
          MaxKeys: Math.min(1000, limit - listed.length),
        }),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined) continue;
        listed.push({ key: o.Key, size: o.Size ?? 0, uploaded: o.LastModified ?? new Date(0) });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token && listed.length < limit);
    return listed;
  }

  async createMultipart(key: string): Promise<string> {
    const out = await this.s3.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key: key }));
    if (!out.UploadId) throw new Error('the S3 server gave no upload id');
    return out.UploadId;
  }

  async uploadPart(
    key: string,
    uploadId: string,
    n: number,
    body: ReadableStream<Uint8Array>,
    length: number,
    sha256Hex: string,
  ): Promise<{ etag: string }> {
    const hashed = hashing(body);
    const out = await this.s3.send(
      new UploadPartCommand({
        Bucket: this.bucket,
        Key: key,
        UploadId: uploadId,
        PartNumber: n,
        Body: hashed.stream,
        ContentLength: length,
      }),
    );
    // A mismatching part is simply never recorded, so complete never uses it.
    if (!hashed.matches(length, sha256Hex)) {
      throw new ContentMismatchError(`part ${n} does not match its signed sha256 and length`);
    }
    return { etag: out.ETag ?? '' };
  }

  async completeMultipart(key: string, uploadId: string, parts: { n: number; etag: string }[]) {
    await this.s3.send(
      new CompleteMultipartUploadCommand({
        Bucket: this.bucket,
        Key: key,
        UploadId: uploadId,
        MultipartUpload: { Parts: parts.map((p) => ({ PartNumber: p.n, ETag: p.etag })) },
      }),
    );
    return (await this.head(key)) ?? { size: 0 };
  }

  async abortMultipart(key: string, uploadId: string): Promise<void> {
    try {
      await this.s3.send(
        new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: key, UploadId: uploadId }),
      );
    } catch (err) {
      const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
      // Already aborted or completed: nothing of it is left to abort.
      if (e?.name === 'NoSuchUpload' || isNotFound(err)) return;
      // A server without abort (s3rver answers 405): no retry can do better; its parts are left to
      // the bucket's lifecycle rule for incomplete uploads.
      if (e?.name === 'NotImplemented' || e?.$metadata?.httpStatusCode === 405) {
        console.error(
          'cloud: this S3 server cannot abort multipart uploads; parts left to its lifecycle rule',
        );
        return;
      }
      throw err;
    }
  }
}

function hashing(body: ReadableStream<Uint8Array>) {
  const hash = createHash('sha256');
  let received = 0;
  let digest: string | undefined;
  let ended = false;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      received += chunk.length;
      hash.update(chunk);
      done(null, chunk);
    },
    flush(done) {
      ended = true;
      done();
    },
  });
  const source = Readable.fromWeb(body as unknown as NodeWebReadableStream<Uint8Array>);
  // The client's body breaking off (its connection ended short) is the client's fault, not storage's.
  let broken = false;
  source.on('error', () => {
    broken = true;
  });
  const stream = source.pipe(counter);
  return {
    stream,
    received: () => received,
    /** whether the client's body broke off before its end */
    broken: () => broken,
    /** whether the whole body was read (its digest is then final) */
    ended: () => ended,
    digest: () => {
      digest ??= hash.digest('hex');
      return digest;
    },
    matches(length: number, sha256Hex: string) {
      return received === length && this.digest() === sha256Hex;
    },
  };
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NotFound' || e?.name === 'NoSuchKey' || e?.$metadata?.httpStatusCode === 404;
}
