// Uploads a local backup file to S3 straight from disk: each part is a ranged read stream, none is held in memory.
import { createHash } from 'node:crypto';
import { createReadStream, type Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { pipeline, Transform, type TransformCallback } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  type S3Client,
  UploadPartCommand,
} from '@aws-sdk/client-s3';
import { StorageError } from '../../shared/storage/index';
import { abortedError, hashFile, throwIfAborted, tryCleanup } from './checks';
import { withRetry } from './retry';

/** S3 allows at most 10 000 parts per upload; a larger file gets larger parts. */
const MAX_PARTS = 10_000;
/**
 * Read size of each part stream: parts in flight each buffer a few reads (file stream, counter,
 * socket), so small reads keep memory flat however large the file (1 MiB reads: peak RSS grew with size).
 */
const PART_READ_SIZE = 256 * 1024;

export interface FileUploadOptions {
  client: S3Client;
  bucket: string;
  key: string;
  /** The local file; it must hold `size` bytes whose sha256 is `sha256` (when given). */
  path: string;
  size: number;
  sha256?: string;
  partSize: number;
  /** Parts in flight at once. */
  queueSize: number;
  metadata?: Record<string, string>;
  signal?: AbortSignal;
  /**
   * Bytes the server has acknowledged: a part's once its UploadPart is answered. The whole size only once
   * the upload is complete (the Complete, or the single PutObject, answered): never 100 % while parts
   * or the Complete are still in flight.
   */
  onProgress?: (bytes: number) => void;
  /**
   * Bytes handed to part requests so far, each byte counted once: a retried part counts only past where
   * its earlier tries got, so a server that takes no new byte moves nothing (the provider's stall guard
   * reads it).
   */
  onSending?: (bytes: number) => void;
  /**
   * Called once every byte of a multipart upload is handed to its part requests: what remains is
   * waiting for answers (the last parts', the Complete's), which the provider bounds apart from stalls.
   */
  onSent?: () => void;
  /** Maps an SDK or network failure to a StorageError. */
  classify: (error: unknown, signal?: AbortSignal) => StorageError;
}

/** Counts the bytes of one part as the SDK reads them, so a short read is caught and progress reported. */
class PartCounter extends Transform {
  bytes = 0;
  constructor(private readonly onBytes: (n: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    this.onBytes(chunk.length);
    callback(null, chunk);
  }
}

/**
 * A controller that also fires when `parent` does, and `unlink` to stop following it once its use ended:
 * a listener per part left on the upload's signal piles up (over ten: Node's "possible memory leak"
 * warning on every large upload).
 */
function linkedController(parent: AbortSignal | undefined): {
  controller: AbortController;
  unlink: () => void;
} {
  const controller = new AbortController();
  const follow = () => controller.abort(parent?.reason);
  if (parent?.aborted) follow();
  else parent?.addEventListener('abort', follow, { once: true });
  return { controller, unlink: () => parent?.removeEventListener('abort', follow) };
}

/** What identifies the file's content on disk: any write or replacement changes one of these. */
function fingerprint(s: Stats): string {
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}

/**
 * Uploads the file as one PutObject (up to one part's size: hashed in the stream, which fails before
 * the request completes on a mismatch) or as a multipart upload whose parts are ranged reads of the
 * file, sent `queueSize` at a time; the whole file is hashed by one sequential read meanwhile, and the
 * upload is completed only if that hash and size match the source, every part sent exactly its
 * length, and the file was not changed while the parts were read (same inode, size, mtime and ctime
 * before and after). Otherwise the multipart upload is aborted and nothing appears under `key`.
 * A part that fails transiently is sent again from a re-opened range.
 */
export async function uploadFile(options: FileUploadOptions): Promise<void> {
  const { client, bucket, key, path, size, signal } = options;
  throwIfAborted(signal);
  const before = await stat(path).catch((error: unknown) => {
    throw new StorageError('io', `reading the backup failed: ${String(error)}`, { cause: error });
  });
  if (before.size !== size) {
    throw new StorageError('integrity', `source gave ${before.size} bytes, expected ${size}`);
  }
  const partSize = Math.max(options.partSize, Math.ceil(size / MAX_PARTS));
  if (size <= partSize) return putSingle(options);

  // One controller for everything in flight: the caller's cancel or the first failure stops it all.
  const controller = new AbortController();
  const onAbort = () => controller.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  let sent = 0;
  /** Per part, the most bytes any of its tries sent. */
  const reached: number[] = [];
  const sending = (index: number, bytes: number) => {
    const before = reached[index] ?? 0;
    if (bytes <= before) return;
    reached[index] = bytes;
    sent += bytes - before;
    options.onSending?.(sent);
    if (sent === size) options.onSent?.();
  };
  /** Bytes of the parts the server answered; the last of them counts once the Complete is answered. */
  let acknowledged = 0;
  let uploadId: string | undefined;
  try {
    const created = await client.send(
      new CreateMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        ContentType: 'application/octet-stream',
        Metadata: options.metadata,
      }),
      { abortSignal: controller.signal },
    );
    uploadId = created.UploadId;
    if (!uploadId) throw new StorageError('io', 'the storage returned no multipart upload id');
    const id = uploadId;
    const count = Math.ceil(size / partSize);
    const etags: string[] = new Array(count);
    let next = 0;
    const sendPart = async (index: number): Promise<void> => {
      const start = index * partSize;
      const length = Math.min(partSize, size - start);
      etags[index] = await withRetry(
        async () => {
          const counter = new PartCounter(() => sending(index, counter.bytes));
          const file = createReadStream(path, {
            start,
            end: start + length - 1,
            highWaterMark: PART_READ_SIZE,
          });
          // The SDK does not watch its body for errors: a failed read must end the request, or it waits.
          const { controller: request, unlink } = linkedController(controller.signal);
          let readError: unknown;
          pipeline(file, counter, (error) => {
            if (error) {
              readError = error;
              request.abort(error);
            }
          });
          try {
            const result = await client
              .send(
                new UploadPartCommand({
                  Bucket: bucket,
                  Key: key,
                  UploadId: id,
                  PartNumber: index + 1,
                  Body: counter,
                  ContentLength: length,
                }),
                { abortSignal: request.signal },
              )
              .catch((error: unknown) => {
                if (readError !== undefined && !controller.signal.aborted) {
                  throw new StorageError('io', `reading the backup failed: ${String(readError)}`, {
                    cause: readError,
                  });
                }
                throw error;
              });
            if (counter.bytes !== length) {
              throw new StorageError(
                'integrity',
                `part ${index + 1} sent ${counter.bytes} bytes of ${length}`,
              );
            }
            if (!result.ETag)
              throw new StorageError('io', `the storage returned no ETag for part ${index + 1}`);
            return result.ETag;
          } catch (error) {
            file.destroy();
            counter.destroy();
            throw options.classify(error, controller.signal);
          } finally {
            unlink();
          }
        },
        { attempts: 3, baseDelayMs: 500, signal: controller.signal },
      );
      acknowledged += length;
      if (acknowledged < size) options.onProgress?.(acknowledged);
    };
    const worker = async (): Promise<void> => {
      while (next < count) {
        throwIfAborted(controller.signal);
        await sendPart(next++);
      }
    };
    const failFast = <T>(work: Promise<T>): Promise<T> =>
      work.catch((error: unknown) => {
        controller.abort(error);
        throw error;
      });
    const hashing = failFast(
      hashFile(path, { signal: controller.signal }).catch((error: unknown) => {
        if (controller.signal.aborted) throw abortedError(error);
        throw new StorageError('io', `reading the backup failed: ${String(error)}`, { cause: error });
      }),
    );
    const workers = Array.from({ length: Math.min(options.queueSize, count) }, () => failFast(worker()));
    // The first failure is the cause; the others are the abort it triggered.
    const settled = await Promise.allSettled([hashing, ...workers]);
    const failed = settled.find(
      (result): result is PromiseRejectedResult =>
        result.status === 'rejected' &&
        !(result.reason instanceof StorageError && result.reason.code === 'aborted'),
    );
    const rejected = failed ?? settled.find((result) => result.status === 'rejected');
    if (rejected) throw (rejected as PromiseRejectedResult).reason;
    const whole = await hashing;
    if (whole.bytes !== size) {
      throw new StorageError('integrity', `source gave ${whole.bytes} bytes, expected ${size}`);
    }
    if (options.sha256 !== undefined && whole.sha256 !== options.sha256.toLowerCase()) {
      throw new StorageError('integrity', 'source sha256 does not match the declared sha256');
    }
    const after = await stat(path);
    if (fingerprint(after) !== fingerprint(before)) {
      throw new StorageError('integrity', 'the backup file changed while it was uploaded');
    }
    throwIfAborted(signal);
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        UploadId: id,
        MultipartUpload: { Parts: etags.map((ETag, index) => ({ ETag, PartNumber: index + 1 })) },
      }),
      signal ? { abortSignal: signal } : {},
    );
    options.onProgress?.(size);
  } catch (error) {
    controller.abort(error);
    const id = uploadId;
    if (id) {
      // Bounded: a frozen server keeps the parts until sweepTemp().
      await tryCleanup((cleanup) =>
        client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: id }), {
          abortSignal: cleanup,
        }),
      );
    }
    if (signal?.aborted) throw abortedError(error);
    throw options.classify(error, signal);
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * A file of at most one part: read whole (at most one part's size in memory), checked, then sent as one
 * PutObject. A streamed PutObject cannot be checked in time: a server may store what it received of a
 * request the client broke off (s3rver does).
 */
async function putSingle(options: FileUploadOptions): Promise<void> {
  const { path, size, signal } = options;
  let body: Buffer;
  try {
    body = await readFile(path, signal ? { signal } : {});
  } catch (error) {
    if (signal?.aborted) throw abortedError(error);
    throw new StorageError('io', `reading the backup failed: ${String(error)}`, { cause: error });
  }
  if (body.length !== size) {
    throw new StorageError('integrity', `source gave ${body.length} bytes, expected ${size}`);
  }
  if (options.sha256 !== undefined) {
    const sha256 = createHash('sha256').update(body).digest('hex');
    if (sha256 !== options.sha256.toLowerCase()) {
      throw new StorageError('integrity', 'source sha256 does not match the declared sha256');
    }
  }
  // Handed to the request whole: sent for the stall guard, acknowledged once the server answers.
  options.onSending?.(size);
  try {
    await options.client.send(
      new PutObjectCommand({
        Bucket: options.bucket,
        Key: options.key,
        Body: body,
        ContentLength: size,
        ContentType: 'application/octet-stream',
        Metadata: options.metadata,
      }),
      signal ? { abortSignal: signal } : {},
    );
  } catch (error) {
    throw options.classify(error, signal);
  }
  options.onProgress?.(size);
}
