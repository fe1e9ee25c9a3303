// What every provider does the same way: safe object names, byte-count and sha256 checks while streaming.
import { createHash, randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { Transform, type TransformCallback } from 'node:stream';
import { StorageError, type TempSweepOptions } from '../../shared/storage/index';
import { TEMP_PREFIX } from '../system/atomic-file';

/** Bytes per read of hashFile. */
const HASH_READ = 1 << 20;

/**
 * Lower-case hex sha256 and byte count of a local file, read once from start to end in 1 MiB reads
 * (it often shares the cores with a transfer tool): two reused buffers, the next read in flight while
 * this one is hashed, so no fresh memory per read (page faults, garbage) and no stream machinery.
 * Read errors are thrown as they are.
 */
export async function hashFile(
  path: string,
  options: { signal?: AbortSignal | undefined; onProgress?: ((bytes: number) => void) | undefined } = {},
): Promise<{ sha256: string; bytes: number }> {
  const { signal } = options;
  signal?.throwIfAborted();
  const hash = createHash('sha256');
  const buffers = [Buffer.allocUnsafeSlow(HASH_READ), Buffer.allocUnsafeSlow(HASH_READ)];
  const handle = await open(path, 'r');
  let bytes = 0;
  let reading = handle.read(buffers[0]!, 0, HASH_READ, 0);
  try {
    for (let turn = 1; ; turn ^= 1) {
      const { bytesRead, buffer } = await reading;
      if (bytesRead === 0) break;
      signal?.throwIfAborted();
      // Read on at a fixed offset (the next read's), so a short read cannot skip bytes.
      const next = bytes + bytesRead;
      reading = handle.read(buffers[turn]!, 0, HASH_READ, next);
      hash.update(buffer.subarray(0, bytesRead));
      bytes = next;
      options.onProgress?.(bytes);
    }
  } finally {
    // A read still in flight (after an abort or a failure) settles before its buffer and fd go.
    await reading.catch(() => {});
    await handle.close();
  }
  return { sha256: hash.digest('hex'), bytes };
}

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

/** What put()'s `tempTag` must be: it goes into the hex part of the temp name. */
const TEMP_TAG = /^[0-9a-f]{8}$/;

/**
 * A unique temp name beside `name`, hidden from list() by its prefix: `.tmp-<name>.<tag><8 random hex>`,
 * `tag` (put()'s `tempTag`, eight hex characters) naming whose upload it is to sweepTemp().
 */
export function tempNameFor(name: string, tag = ''): string {
  if (tag && !TEMP_TAG.test(tag)) {
    throw new StorageError('io', `not a valid temp tag: ${JSON.stringify(tag)}`, { permanent: true });
  }
  return `${TEMP_PREFIX}${name}.${tag}${randomBytes(4).toString('hex')}`;
}

const OWN_TEMP_NAME = /^\.tmp-gem-backup-\d{4}-\d{2}-\d{2}-\d{6}\.tar\.gz\.(?:p\d+\.)?[0-9a-f]+$/;
/** Test Connection's probe object (agent/offsite/connection.ts probeName) and its put() temp name. */
const PROBE_NAME = /^gem-connection-test-[0-9a-f]{12}\.probe$/;
const PROBE_TEMP_NAME = /^\.tmp-gem-connection-test-[0-9a-f]{12}\.probe\.(?:p\d+\.)?[0-9a-f]+$/;

/** True for Test Connection's probe object, which a test that failed half way may leave behind. */
export function isProbeName(name: string): boolean {
  return PROBE_NAME.test(name);
}

/**
 * True for a leftover our own put() makes (tempNameFor, or writeFileAtomic for the local folder):
 * `.tmp-` + a backup name + `.` + (for local files, `p<pid>.`) + random hex; and Test Connection's probe
 * (`gem-connection-test-<hex>.probe`) and its temp name. Anything else, even `.tmp-other`, is not ours to remove.
 */
export function isOwnTempName(name: string): boolean {
  return OWN_TEMP_NAME.test(name) || PROBE_NAME.test(name) || PROBE_TEMP_NAME.test(name);
}

/**
 * True if a sweep with these options removes the leftover `name` (one isOwnTempName accepts) modified at
 * `modifiedAt`: its temp name carries the sweep's `tempTag`, or it is old enough.
 */
export function sweepTakes(
  name: string,
  modifiedAt: string | number | undefined,
  options: Pick<TempSweepOptions, 'olderThanMs' | 'tempTag'>,
): boolean {
  const { tempTag } = options;
  // The random part follows the tag: a name carrying it has more hex after it.
  const hex = name.slice(name.lastIndexOf('.') + 1);
  if (tempTag && TEMP_TAG.test(tempTag) && hex.length > tempTag.length && hex.startsWith(tempTag))
    return true;
  return oldEnough(modifiedAt, options.olderThanMs);
}

/** True if a leftover modified at `modifiedAt` (ISO or ms) is old enough for a sweep with `olderThanMs`. */
export function oldEnough(modifiedAt: string | number | undefined, olderThanMs = 0): boolean {
  if (olderThanMs <= 0) return true;
  const at = typeof modifiedAt === 'string' ? Date.parse(modifiedAt) : modifiedAt;
  // Without a usable time we cannot tell an upload in progress from a leftover: keep it.
  return at !== undefined && !Number.isNaN(at) && Date.now() - at >= olderThanMs;
}

/** How long a failed put() spends trying to remove its own temp object before leaving it to sweepTemp. */
export const CLEANUP_TIMEOUT_MS = 10_000;

/**
 * Runs a best-effort cleanup for at most `ms` (it gets a signal that fires then); never throws. What
 * it could not remove (server down or frozen) is left for the next sweepTemp().
 */
export async function tryCleanup(
  work: (signal: AbortSignal) => Promise<unknown>,
  ms = CLEANUP_TIMEOUT_MS,
): Promise<boolean> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new Error('cleanup timed out'));
    }, ms);
  });
  try {
    await Promise.race([work(controller.signal), timeout]);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
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

/** Socket and resolver error codes that mean the server could not be reached (transient, retried). */
export const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ETIMEDOUT',
  'ECONNRESET',
  'EPIPE',
]);
