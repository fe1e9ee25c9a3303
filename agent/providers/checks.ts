// What every provider does the same way: safe object names, byte-count and sha256 checks while streaming.
import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { StorageError } from '../../shared/storage/index';
import { TEMP_PREFIX } from '../system/atomic-file';

export { TEMP_PREFIX };

/**
 * Refuses names that could leave the destination folder or look like our temp files. Backup names
 * (shared/storage/names.ts) always pass.
 */
export function assertObjectName(name: string): void {
  if (
    name.length === 0 ||
    name.length > 200 ||
    name.startsWith('.') ||
    /[/\\";:*?<>|\u0000-\u001f]/.test(name)
  ) {
    throw new StorageError('io', `not a valid backup object name: ${JSON.stringify(name)}`, {
      permanent: true,
    });
  }
}

/** A unique temp name beside `name`, hidden from list() by its prefix. */
export function tempNameFor(name: string): string {
  return `${TEMP_PREFIX}${name}.${Math.random().toString(16).slice(2, 10)}`;
}

/** Counts and hashes bytes passing through; `verify()` checks them against what the source declared. */
export class SourceCheck extends Transform {
  bytes = 0;
  private readonly hash = createHash('sha256');
  private digest: string | undefined;

  constructor(private readonly onProgress?: (bytes: number) => void) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    this.hash.update(chunk);
    this.onProgress?.(this.bytes);
    callback(null, chunk);
  }

  /** Lower-case hex sha256 of everything that passed; only valid once the stream has ended. */
  sha256(): string {
    this.digest ??= this.hash.digest('hex');
    return this.digest;
  }

  /** Throws StorageError 'integrity' if the byte count or (declared) sha256 differ from the source's. */
  verify(source: { size: number; sha256?: string }): void {
    if (this.bytes !== source.size) {
      throw new StorageError('integrity', `source gave ${this.bytes} bytes, expected ${source.size}`);
    }
    if (source.sha256 !== undefined && this.sha256() !== source.sha256.toLowerCase()) {
      throw new StorageError('integrity', 'source sha256 does not match the declared sha256');
    }
  }
}

/**
 * A transform that verifies the source when it ends and fails the stream on a mismatch, so that an
 * uploader consuming it (S3 multipart) aborts instead of completing.
 */
export function verifyingStream(
  source: { size: number; sha256?: string },
  onProgress?: (bytes: number) => void,
): SourceCheck {
  const check = new SourceCheck(onProgress);
  const flush = (callback: TransformCallback) => {
    try {
      check.verify(source);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  };
  check._flush = flush;
  return check;
}

/** The StorageError for a cancelled operation. */
export function abortedError(cause?: unknown): StorageError {
  return new StorageError('aborted', 'the operation was cancelled', { cause });
}

/** Throws 'aborted' if the signal already fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortedError(signal.reason);
}

/** Wraps anything thrown that is not yet a StorageError, as a retryable 'io' error unless the signal fired. */
export function asStorageError(error: unknown, signal?: AbortSignal): StorageError {
  if (error instanceof StorageError) return error;
  if (signal?.aborted) return abortedError(error);
  const message = error instanceof Error ? error.message : String(error);
  return new StorageError('io', message, { cause: error });
}

/**
 * A web stream over a download whose failures surface as StorageErrors (a dropped connection mid-way
 * is 'io' / 'unreachable', not a raw socket error). `release` runs once, when the stream ends, fails
 * or is cancelled.
 */
export function downloadStream(
  chunks: AsyncIterable<Uint8Array>,
  mapError: (error: unknown) => StorageError,
  release: () => void = () => {},
): ReadableStream<Uint8Array> {
  const iterator = chunks[Symbol.asyncIterator]();
  let released = false;
  const done = () => {
    if (!released) {
      released = true;
      release();
    }
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const next = await iterator.next();
        if (next.done) {
          done();
          controller.close();
        } else {
          controller.enqueue(next.value);
        }
      } catch (error) {
        done();
        controller.error(mapError(error));
      }
    },
    async cancel() {
      await iterator.return?.();
      done();
    },
  });
}
