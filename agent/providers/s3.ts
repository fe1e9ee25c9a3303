// An S3-compatible bucket (AWS, B2, Wasabi, MinIO, ...) as a backup destination.

import { pipeline, Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  ListPartsCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type {
  BackupSource,
  ProviderProperties,
  StorageProvider,
  StoredObject,
  TempSweepOptions,
  TempSweepResult,
} from '../../shared/storage/index';
import { StorageError } from '../../shared/storage/index';
import { isBackupName } from '../../shared/storage/names';
import {
  abortedError,
  asStorageError,
  assertObjectName,
  downloadStream,
  isProbeName,
  NETWORK_CODES,
  oldEnough,
  throwIfAborted,
  tryCleanup,
  verifyingStream,
} from './checks';
import { uploadFile } from './s3-file-upload';
import { ListBound, type ListLimits } from './smb';

export interface S3Options {
  /** Omit for AWS itself; e.g. `https://s3.eu-central-003.backblazeb2.com`. */
  endpoint?: string;
  region: string;
  bucket: string;
  /** Key prefix (a "folder"), e.g. `gem/`; a trailing slash is added if missing. */
  prefix?: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Path-style URLs (`endpoint/bucket/key`), needed by most self-hosted servers. */
  forcePathStyle: boolean;
  /** Multipart part size in bytes (default 8 MiB, at least 5 MiB); larger objects upload in parts. */
  partSize?: number;
  /** TCP (and TLS) connect timeout per request (default 20 s); a server not answering fails as 'unreachable'. */
  connectTimeoutMs?: number;
  /**
   * A request whose socket moves no byte for this long fails as 'unreachable' (default 60 s). Idle, not
   * total, so a slow but moving part upload or download is never cut off.
   */
  idleTimeoutMs?: number;
  /** Total limit of a listing, stat or delete request (default 60 s): these carry no large body. */
  requestTimeoutMs?: number;
  /**
   * An upload during which the server takes no new byte and answers nothing for this long is given up
   * as 'unreachable', permanently: not retried (default 2 min; the SDK's own retries of a frozen server
   * would each wait out the idle timeout, and every retried part takes a few buffered bytes again).
   */
  stallTimeoutMs?: number;
  /**
   * Once every byte of an upload is sent, how long the server may take to answer (the last parts, the
   * CompleteMultipartUpload, the check of what it stored) before the upload is given up as 'unreachable',
   * permanently (default 10 min). Not the stall limit: with nothing left to send, a server that takes no
   * data is not stalled, and AWS documents that completing a multipart upload can take several minutes
   * (it sends whitespace meanwhile, so the idle timeout does not end it; nothing but this bound does).
   * put() says when this wait begins (onAwaitingAnswer): the caller's own watchdog leaves it to this.
   */
  answerTimeoutMs?: number;
  /** How far a listing is read before it is refused (default LIST_LIMITS: 10 000 pages, 100 000 names). */
  listLimits?: ListLimits;
  /** Provider id shown in results (default `s3`). */
  id?: string;
}

const MIB = 1024 * 1024;
/** Parts in flight and their size: 8 MiB × 4 measured faster than 16 MiB × 2 at the same memory (bench/RESULTS.md). */
const DEFAULT_PART_SIZE = 8 * MIB;
const QUEUE_SIZE = 4;
const DEFAULT_STALL_TIMEOUT_MS = 120_000;
/** Several times the "several minutes" AWS allows itself to complete an upload, and still an end. */
const DEFAULT_ANSWER_TIMEOUT_MS = 10 * 60_000;

/** Finds a StorageError we raised ourselves inside whatever the SDK wrapped it in. */
function ownError(error: unknown): StorageError | undefined {
  for (let current = error, depth = 0; current && depth < 5; depth++) {
    if (current instanceof StorageError) return current;
    current = (current as { cause?: unknown }).cause;
  }
  return undefined;
}

/** True if the server answered that it does not implement the operation (s3rver: multipart listing and abort). */
function notImplemented(error: unknown): boolean {
  const err = error as { name?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
  const name = err?.Code ?? err?.name ?? '';
  const status = err?.$metadata?.httpStatusCode;
  return name === 'NotImplemented' || name === 'MethodNotAllowed' || status === 501 || status === 405;
}

/** Stores backups as objects: one PutObject, or a multipart upload that is aborted unless every byte checks out. */
export class S3Provider implements StorageProvider {
  readonly id: string;
  readonly properties: ProviderProperties;
  private readonly client: S3Client;
  private readonly options: S3Options;
  private readonly prefix: string;
  private readonly partSize: number;
  private readonly requestTimeout: number;

  constructor(options: S3Options) {
    this.options = options;
    this.id = options.id ?? 's3';
    const prefix = (options.prefix ?? '').replace(/^\/+/, '');
    this.prefix = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    this.partSize = Math.max(5 * MIB, options.partSize ?? DEFAULT_PART_SIZE);
    this.properties = { atomicReplace: true, maxPartSize: this.partSize };
    // On Node < 22 the SDK warns, once per process (8 lines on stderr of every CLI command), that its
    // releases after January 2027 will need Node 22: news for whoever upgrades the package (the README
    // says so), nothing the owner can act on.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.client = new S3Client({
      endpoint: options.endpoint || undefined,
      region: options.region,
      forcePathStyle: options.forcePathStyle,
      credentials: { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey },
      // Default checksums send streamed bodies aws-chunked, which B2, older MinIO, Wasabi and s3rver
      // store with the framing inside the object: only send/check checksums an operation requires.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 3,
      // The SDK's handler waits forever by default: a frozen server would hang list, stat and delete
      // (and with them Test Connection and a job holding the lock). This version's requestTimeout
      // only warns unless throwOnRequestTimeout is set; it is given per call to metadata requests.
      requestHandler: {
        connectionTimeout: options.connectTimeoutMs ?? 20_000,
        socketTimeout: options.idleTimeoutMs ?? 60_000,
        throwOnRequestTimeout: true,
      },
    });
    this.requestTimeout = options.requestTimeoutMs ?? 60_000;
  }

  /** The folder a listing reads, for its errors: `bucket B (prefix P) at ENDPOINT`. */
  private where(): string {
    const prefix = this.prefix ? ` (prefix ${this.prefix})` : '';
    return `bucket ${this.options.bucket}${prefix} at ${this.options.endpoint || 'Amazon S3'}`;
  }

  private key(name: string): string {
    return this.prefix + name;
  }

  /**
   * Options for a metadata request (list, stat, delete): the total time limit, and the caller's signal.
   * The SDK tries a request that timed out again (3 attempts): its requestTimeout alone let one request
   * take three times the limit, so the limit also ends the whole call (classify: 'unreachable').
   */
  private small(signal: AbortSignal | undefined): { requestTimeout: number; abortSignal: AbortSignal } {
    const limit = AbortSignal.timeout(this.requestTimeout);
    return {
      requestTimeout: this.requestTimeout,
      abortSignal: signal ? AbortSignal.any([signal, limit]) : limit,
    };
  }

  /** Maps SDK and network failures to StorageError codes. */
  private classify(error: unknown, what: string, signal?: AbortSignal): StorageError {
    const own = ownError(error);
    if (own) return own;
    if (signal?.aborted) return abortedError(error);
    const err = error as {
      name?: string;
      Code?: string;
      code?: string;
      message?: string;
      $metadata?: { httpStatusCode?: number };
    };
    const name = err?.Code ?? err?.name ?? '';
    const status = err?.$metadata?.httpStatusCode;
    const message = String(err?.message ?? error);
    const bucket = this.options.bucket;
    if (
      [
        'InvalidAccessKeyId',
        'SignatureDoesNotMatch',
        'InvalidToken',
        'ExpiredToken',
        'InvalidSecurity',
      ].includes(name)
    ) {
      return new StorageError('auth_failed', 'the storage refused the access key or secret', {
        cause: error,
      });
    }
    if (name === 'NoSuchBucket')
      return new StorageError('bucket_missing', `bucket ${bucket} does not exist`, { cause: error });
    if (
      ['PermanentRedirect', 'AuthorizationHeaderMalformed', 'IllegalLocationConstraintException'].includes(
        name,
      ) ||
      status === 301 ||
      (status === 400 && /region/i.test(message))
    ) {
      return new StorageError(
        'wrong_region',
        `bucket ${bucket} is not in region ${this.options.region}: ${message}`,
        {
          cause: error,
        },
      );
    }
    if (name === 'NotFound' || name === 'NoSuchKey' || status === 404) {
      return new StorageError('not_found', `${what} does not exist in bucket ${bucket}`, { cause: error });
    }
    if (name === 'AccessDenied' || name === 'Forbidden' || status === 403) {
      return new StorageError(
        'permission_denied',
        `access to ${what} was denied (keys without permission?)`,
        {
          cause: error,
        },
      );
    }
    // small()'s limit ended the call (the caller's signal did not fire: see above).
    if (name === 'AbortError' && (err as { cause?: { name?: string } })?.cause?.name === 'TimeoutError') {
      const seconds = Math.round(this.requestTimeout / 1000);
      return new StorageError(
        'unreachable',
        `cannot reach ${this.options.endpoint ?? 'S3'}: no answer about ${what} within ${seconds} s`,
        { cause: error },
      );
    }
    if (name === 'AbortError') return abortedError(error);
    const code = err?.code ?? (err as { cause?: { code?: string } })?.cause?.code;
    if (
      (code && NETWORK_CODES.has(code)) ||
      name === 'TimeoutError' ||
      /ECONNREFUSED|ENOTFOUND|socket hang up/.test(message)
    ) {
      return new StorageError('unreachable', `cannot reach ${this.options.endpoint ?? 'S3'}: ${message}`, {
        cause: error,
      });
    }
    if (name === 'QuotaExceeded' || name === 'EntityTooLarge') {
      return new StorageError('no_space', `the storage refused ${what}: ${message}`, { cause: error });
    }
    return asStorageError(error, signal);
  }

  /**
   * Uploads under a stall guard: each new byte the upload hands to the server (a byte counted once,
   * however often its part is retried) re-arms it, and is `onActivity` for the caller's own watchdog;
   * once every byte is sent, the answers still awaited (the last parts', the Complete's, the check's)
   * have answerTimeoutMs instead. When it fires, everything in flight is aborted and the put fails at
   * once, permanently, naming the endpoint. Whatever the server received stays as an incomplete
   * multipart upload until sweepTemp() (or its lifecycle rule): nothing under `name`, unless a Complete
   * the server was still working on goes through (then the whole object, its bytes checked before the
   * Complete was sent). `onProgress` counts only what the server acknowledged (answered parts), and the
   * whole size once the upload is complete: never 100 % while parts are in flight.
   */
  async put(
    name: string,
    source: BackupSource,
    options: {
      signal?: AbortSignal;
      onProgress?: (bytes: number) => void;
      onActivity?: () => void;
      onAwaitingAnswer?: () => void;
    } = {},
  ): Promise<StoredObject> {
    assertObjectName(name);
    const { signal } = options;
    throwIfAborted(signal);
    const stallMs = this.options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    const answerMs = this.options.answerTimeoutMs ?? DEFAULT_ANSWER_TIMEOUT_MS;
    const controller = new AbortController();
    const onAbort = () => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    let stalled: (error: StorageError) => void = () => {};
    const watchdog = new Promise<never>((_, reject) => {
      stalled = reject;
    });
    /** Every byte is sent: only answers are awaited. */
    let sent = false;
    const arm = () => {
      clearTimeout(timer);
      const ms = sent ? answerMs : stallMs;
      timer = setTimeout(() => {
        const where = this.options.endpoint || 'Amazon S3';
        const seconds = Math.round(ms / 1000);
        // Rejected first, so the put reports the stall, not the SDK's reaction to the abort.
        stalled(
          new StorageError(
            'unreachable',
            `${where} stopped answering during the upload of ${name}: ${
              sent
                ? `it took all the data, then gave no answer for ${seconds} s`
                : `it took no data for ${seconds} s`
            }`,
            { permanent: true },
          ),
        );
        controller.abort();
      }, ms);
    };
    let reached = 0;
    arm();
    const sending = (bytes: number) => {
      if (bytes > reached) {
        reached = bytes;
        arm();
        options.onActivity?.();
      }
    };
    const acknowledged = (bytes: number) => options.onProgress?.(bytes);
    const allSent = () => {
      if (sent) return;
      sent = true;
      arm();
      options.onAwaitingAnswer?.();
    };
    const work = this.putUnguarded(name, source, controller.signal, { sending, acknowledged, allSent });
    work.catch(() => {}); // given up on a stall: its late failure (the abort) is not news
    try {
      return await Promise.race([work, watchdog]);
    } catch (error) {
      if (signal?.aborted) throw abortedError(error);
      throw error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * The upload itself. `sending`: bytes handed to requests (each once); `acknowledged`: bytes the server
   * answered for, the whole size once the upload is complete; `allSent`: only answers are awaited.
   */
  private async putUnguarded(
    name: string,
    source: BackupSource,
    signal: AbortSignal,
    report: {
      sending: (bytes: number) => void;
      acknowledged: (bytes: number) => void;
      allSent: () => void;
    },
  ): Promise<StoredObject> {
    const onSent = report.allSent;
    if (source.localPath !== undefined) {
      // Straight from disk: ranged reads per part instead of parts buffered in memory.
      await uploadFile({
        client: this.client,
        bucket: this.options.bucket,
        key: this.key(name),
        path: source.localPath,
        size: source.size,
        sha256: source.sha256,
        partSize: this.partSize,
        queueSize: QUEUE_SIZE,
        metadata: source.sha256 ? { sha256: source.sha256.toLowerCase() } : undefined,
        signal,
        onProgress: report.acknowledged,
        onSending: report.sending,
        onSent,
        classify: (error, failSignal) => this.classify(error, name, failSignal),
      });
      onSent();
      return this.checkStored(name, source, signal);
    }
    // The check fails the body stream at its end on a size/sha256 mismatch, before the single
    // PutObject is sent or the multipart upload is completed, so nothing appears under `name`.
    const body = verifyingStream(source, report.sending);
    // pipeline (unlike pipe) fails `body` when the source fails, so the upload sees the error and aborts.
    pipeline(Readable.fromWeb(source.open() as never), body, () => {});
    // lib-storage sends its requests without a signal: its abort() ends done() but leaves the parts in
    // flight sending (or waiting for an answer until the idle timeout, then retried), and a part the
    // server still stores after our AbortMultipartUpload is kept, unlisted. Each request takes ours.
    const client = Object.create(this.client, {
      send: {
        value: (command: never, options?: object) =>
          this.client.send(command, { ...options, abortSignal: signal }),
      },
    }) as S3Client;
    const upload = new Upload({
      client,
      params: {
        Bucket: this.options.bucket,
        Key: this.key(name),
        Body: body,
        ContentType: 'application/octet-stream',
        Metadata: source.sha256 ? { sha256: source.sha256.toLowerCase() } : undefined,
      },
      partSize: this.partSize,
      queueSize: QUEUE_SIZE,
      leavePartsOnError: false,
    });
    // In Node this fires as each part (or the one PutObject) is answered: what the server acknowledged.
    // Once it counts every byte, only the Complete is left: the whole size is reported once it is done.
    upload.on('httpUploadProgress', ({ loaded }) => {
      if (loaded === undefined) return;
      if (loaded >= source.size) onSent();
      else report.acknowledged(loaded);
    });
    let bodyError: unknown;
    body.once('error', (error) => {
      bodyError = error;
    });
    const onAbort = () => void upload.abort().catch(() => undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await upload.done();
    } catch (error) {
      body.destroy();
      // lib-storage aborts the multipart upload itself only when it gets that far; after a cancel or a
      // stall it may not, so try once more, bounded (a frozen server keeps the parts until sweepTemp()).
      const uploadId = upload.uploadId;
      if (uploadId) {
        await tryCleanup((cleanup) =>
          this.client.send(
            new AbortMultipartUploadCommand({
              Bucket: this.options.bucket,
              Key: this.key(name),
              UploadId: uploadId,
            }),
            { abortSignal: cleanup },
          ),
        );
      }
      // A failing source or check is the cause even if the server then also refused the abort
      // (s3rver does not implement AbortMultipartUpload); report the cause, not the abort.
      throw this.classify(bodyError ?? error, name, signal);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    report.acknowledged(source.size);
    return this.checkStored(name, source, signal);
  }

  /** What the bucket holds under `name` after a put, refused unless its size is the source's. */
  private async checkStored(name: string, source: BackupSource, signal?: AbortSignal): Promise<StoredObject> {
    const stored = await this.stat(name, { signal });
    if (stored.size !== source.size) {
      throw new StorageError(
        'integrity',
        `${name} is ${stored.size} bytes in the bucket, expected ${source.size}`,
      );
    }
    return { ...stored, sha256: stored.sha256 ?? source.sha256?.toLowerCase() };
  }

  async get(name: string, options: { signal?: AbortSignal } = {}): Promise<ReadableStream<Uint8Array>> {
    assertObjectName(name);
    try {
      const result = await this.client.send(
        new GetObjectCommand({ Bucket: this.options.bucket, Key: this.key(name) }),
        options.signal ? { abortSignal: options.signal } : {},
      );
      if (!result.Body) throw new StorageError('io', `the storage returned no body for ${name}`);
      const body = result.Body.transformToWebStream() as ReadableStream<Uint8Array>;
      return downloadStream(body as unknown as AsyncIterable<Uint8Array>, (error) =>
        this.classify(error, name, options.signal),
      );
    } catch (error) {
      throw this.classify(error, name, options.signal);
    }
  }

  async stat(name: string, options: { signal?: AbortSignal } = {}): Promise<StoredObject> {
    assertObjectName(name);
    throwIfAborted(options.signal);
    try {
      const head = await this.client.send(
        new HeadObjectCommand({ Bucket: this.options.bucket, Key: this.key(name) }),
        this.small(options.signal),
      );
      return {
        name,
        size: head.ContentLength ?? 0,
        modifiedAt: head.LastModified?.toISOString(),
        sha256: head.Metadata?.['sha256'],
      };
    } catch (error) {
      throw this.classify(error, name, options.signal);
    }
  }

  async list(options: { signal?: AbortSignal } = {}): Promise<StoredObject[]> {
    const { signal } = options;
    throwIfAborted(signal);
    const names: string[] = [];
    const bound = new ListBound(this.where(), this.options.listLimits);
    let token: string | undefined;
    try {
      do {
        throwIfAborted(signal);
        const page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.options.bucket,
            Prefix: this.prefix || undefined,
            ContinuationToken: token,
          }),
          this.small(signal),
        );
        for (const object of page.Contents ?? []) {
          const name = object.Key?.slice(this.prefix.length) ?? '';
          if (!isBackupName(name)) continue;
          bound.name();
          names.push(name);
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
        bound.page(token !== undefined, token);
      } while (token);
    } catch (error) {
      throw this.classify(error, this.options.bucket, signal);
    }
    // The sha256 lives in each object's metadata, which a listing does not carry.
    const objects: StoredObject[] = [];
    for (let i = 0; i < names.length; i += 8) {
      throwIfAborted(signal);
      const batch = await Promise.allSettled(
        names.slice(i, i + 8).map((name) => this.stat(name, { signal })),
      );
      for (const result of batch) {
        if (result.status === 'fulfilled') objects.push(result.value);
        else if (!(result.reason instanceof StorageError && result.reason.code === 'not_found'))
          throw result.reason;
      }
    }
    return objects;
  }

  async delete(name: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    const { signal } = options;
    await this.stat(name, { signal }); // S3 deletes a missing key silently; the contract says not_found.
    try {
      await this.client.send(
        new DeleteObjectCommand({ Bucket: this.options.bucket, Key: this.key(name) }),
        this.small(signal),
      );
    } catch (error) {
      throw this.classify(error, name, signal);
    }
  }

  /**
   * Aborts the incomplete multipart uploads of backups under the prefix (see StorageProvider.sweepTemp);
   * `removed` holds the backup name of each aborted upload. A server without ListMultipartUploads
   * (s3rver) answers 'skipped' instead of failing. `tempTag` does not apply: an incomplete upload carries
   * no name of ours, so only `olderThanMs` tells a leftover from another controller's upload in flight:
   * an upload's age is that of its latest part (of its start, before its first part arrives).
   */
  async sweepTemp(options: TempSweepOptions = {}): Promise<TempSweepResult> {
    const { signal } = options;
    const bucket = this.options.bucket;
    const skipped = `the S3 server does not implement listing or aborting multipart uploads; incomplete uploads in bucket ${bucket} are not removed (a bucket lifecycle rule "AbortIncompleteMultipartUpload" does it)`;
    // Test Connection probes left by a test that failed half way: complete objects, not uploads.
    const probes = await this.sweepProbes(options);
    const doomed: { name: string; key: string; uploadId: string }[] = [];
    const bound = new ListBound(`the incomplete uploads of ${this.where()}`, this.options.listLimits);
    let keyMarker: string | undefined;
    let uploadIdMarker: string | undefined;
    try {
      do {
        throwIfAborted(signal);
        const page = await this.client.send(
          new ListMultipartUploadsCommand({
            Bucket: bucket,
            Prefix: this.prefix || undefined,
            KeyMarker: keyMarker,
            UploadIdMarker: uploadIdMarker,
          }),
          this.small(signal),
        );
        for (const upload of page.Uploads ?? []) {
          const key = upload.Key ?? '';
          const name = key.slice(this.prefix.length);
          if (!key.startsWith(this.prefix) || !isBackupName(name) || !upload.UploadId) continue;
          if (!oldEnough(upload.Initiated?.getTime(), options.olderThanMs)) continue;
          bound.name();
          doomed.push({ name, key, uploadId: upload.UploadId });
        }
        keyMarker = page.IsTruncated ? page.NextKeyMarker : undefined;
        uploadIdMarker = page.IsTruncated ? page.NextUploadIdMarker : undefined;
        const next = keyMarker === undefined ? undefined : `${keyMarker}\u0000${uploadIdMarker ?? ''}`;
        bound.page(next !== undefined, next);
      } while (keyMarker);
    } catch (error) {
      if (notImplemented(error)) return { removed: probes, skipped };
      throw this.classify(error, bucket, signal);
    }
    const removed: string[] = [...probes];
    for (const { name, key, uploadId } of doomed) {
      throwIfAborted(signal);
      try {
        // Initiated is when the upload began: one still sending the parts of a large backup (another
        // controller's, into this folder) is as old by it. Its latest part says whether it is left over.
        if ((options.olderThanMs ?? 0) > 0) {
          const latest = await this.latestPartAt(key, uploadId, signal);
          if (latest !== undefined && !oldEnough(latest, options.olderThanMs)) continue;
        }
        await this.client.send(
          new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }),
          this.small(signal),
        );
        removed.push(name);
      } catch (error) {
        if (notImplemented(error)) return { removed, skipped };
        const code = (error as { Code?: string; name?: string })?.Code ?? (error as { name?: string })?.name;
        if (code !== 'NoSuchUpload') throw this.classify(error, name, signal); // gone meanwhile is fine
      }
    }
    return { removed };
  }

  /**
   * When the latest part of an incomplete upload arrived (ListParts); undefined when none did yet, or the
   * server cannot list parts or the keys may not (then the upload's own age decides, as before).
   */
  private async latestPartAt(
    key: string,
    uploadId: string,
    signal?: AbortSignal,
  ): Promise<number | undefined> {
    const bound = new ListBound(
      `the parts of an incomplete upload in ${this.where()}`,
      this.options.listLimits,
    );
    let latest: number | undefined;
    let marker: string | undefined;
    try {
      do {
        throwIfAborted(signal);
        const page = await this.client.send(
          new ListPartsCommand({
            Bucket: this.options.bucket,
            Key: key,
            UploadId: uploadId,
            PartNumberMarker: marker,
          }),
          this.small(signal),
        );
        for (const part of page.Parts ?? []) {
          const at = part.LastModified?.getTime();
          if (at !== undefined && !Number.isNaN(at) && (latest === undefined || at > latest)) latest = at;
        }
        marker = page.IsTruncated ? page.NextPartNumberMarker : undefined;
        bound.page(marker !== undefined, marker);
      } while (marker);
    } catch (error) {
      const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
      if (notImplemented(error) || status === 403) return undefined;
      throw error;
    }
    return latest;
  }

  /** Deletes Test Connection probe objects under the prefix at least `olderThanMs` old; returns their names. */
  private async sweepProbes(options: { olderThanMs?: number; signal?: AbortSignal }): Promise<string[]> {
    const { signal } = options;
    const removed: string[] = [];
    const bound = new ListBound(`the connection-test objects of ${this.where()}`, this.options.listLimits);
    let token: string | undefined;
    try {
      do {
        throwIfAborted(signal);
        const page = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.options.bucket,
            Prefix: `${this.prefix}gem-connection-test-`,
            ContinuationToken: token,
          }),
          this.small(signal),
        );
        for (const object of page.Contents ?? []) {
          const name = object.Key?.slice(this.prefix.length) ?? '';
          if (!isProbeName(name) || !oldEnough(object.LastModified?.getTime(), options.olderThanMs)) continue;
          throwIfAborted(signal);
          await this.client.send(
            new DeleteObjectCommand({ Bucket: this.options.bucket, Key: this.key(name) }),
            this.small(signal),
          );
          bound.name();
          removed.push(name);
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
        bound.page(token !== undefined, token);
      } while (token);
    } catch (error) {
      throw this.classify(error, this.options.bucket, signal);
    }
    return removed;
  }

  async close(): Promise<void> {
    this.client.destroy();
  }
}
