/** The one interface for every place a backup can live: local folder, SFTP, S3, SMB, the DR slot. */

/** A source that can be opened again from the start, so that a retry replays the same bytes. */
export interface BackupSource {
  /** Exact size in bytes. */
  readonly size: number;
  /** Lower-case hex sha256 of the whole content, when known in advance. */
  readonly sha256?: string;
  /** A fresh stream of the whole content, from the first byte. */
  open(): ReadableStream<Uint8Array>;
  /**
   * A local file holding exactly the bytes open() gives, when there is one: a provider whose tool reads
   * files itself (smbclient) uses it instead of spooling. It must still check size and sha256.
   */
  readonly localPath?: string;
}

/** What a provider knows of one stored object. */
export interface StoredObject {
  name: string;
  size: number;
  /** When the object was written, as the provider reports it. */
  modifiedAt?: string;
  /** Lower-case hex sha256, where the provider stores or computes it. */
  sha256?: string;
}

export interface ProviderProperties {
  /** put() replaces an existing object atomically (readers see the old or the new, never a mix). */
  atomicReplace: boolean;
  /**
   * put() with `exclusive` makes its commit (the final rename) fail with 'exists', replacing nothing, when
   * the name is taken, in the same step on the server: no other writer can slip in between a look and
   * the write. Absent or false: `exclusive` is ignored and the caller must look first.
   */
  exclusivePut?: boolean;
  /** Largest single part in bytes, for providers that upload in parts; undefined if unbounded. */
  maxPartSize?: number;
}

/** put()'s options (see StorageProvider.put). */
export interface PutOptions {
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
  /**
   * Called by a provider whose `onProgress` counts only what the server acknowledged (S3: answered
   * parts) as more bytes leave: a caller's no-progress watchdog counts it as progress.
   */
  onActivity?: () => void;
  exclusive?: boolean;
  /**
   * Called by a provider that, once every byte is sent, waits for the server's answers under a time
   * bound of its own (S3: completing a multipart upload may take minutes): a caller's no-progress
   * watchdog leaves the wait to it.
   */
  onAwaitingAnswer?: () => void;
  /**
   * Eight lower-case hex characters the temp name carries (providers that write a temp name: SFTP,
   * SMB), so that sweepTemp() with the same `tempTag` can tell this installation's leftovers from those
   * of another controller writing into the same folder. Ignored by providers without temp names.
   */
  tempTag?: string;
}

/**
 * Contract every provider keeps (checked by the conformance suite in ./conformance.ts):
 * - put() never leaves a partial object under the final name: temp name + rename, or multipart + complete.
 *   If the source fails or the byte count / sha256 does not match, nothing new is visible under `name`.
 * - get() of a missing object and stat()/delete() of a missing object reject with code 'not_found'.
 * - list() returns only complete objects (never temp names), in no particular order.
 * - every error thrown is a StorageError with a stable code and a permanent flag.
 */
export interface StorageProvider {
  readonly id: string;
  readonly properties: ProviderProperties;
  put(name: string, source: BackupSource, options?: PutOptions): Promise<StoredObject>;
  get(name: string, options?: { signal?: AbortSignal }): Promise<ReadableStream<Uint8Array>>;
  /** `signal` (optional; providers may ignore it) ends a call still waiting on the server as 'aborted'. */
  stat(name: string, options?: { signal?: AbortSignal }): Promise<StoredObject>;
  list(options?: { signal?: AbortSignal }): Promise<StoredObject[]>;
  delete(name: string, options?: { signal?: AbortSignal }): Promise<void>;
  /**
   * Removes what failed put()s of this product left behind, and nothing else: temp files named
   * `.tmp-gem-backup-…` as put() names them (SFTP, SMB, local folder) or, on S3, incomplete multipart
   * uploads under the configured prefix whose key is a backup name (ListMultipartUploads +
   * AbortMultipartUpload). Foreign files, other temp-looking names and complete backups are never
   * touched. Only leftovers at least `olderThanMs` old (default 0: all) are removed, so a sweep
   * cannot pull the ground from under an upload still in progress, except those whose temp name carries
   * `tempTag` (put()'s: the caller's own, when it knows none of its own uploads is in flight). Once
   * `signal` fires no further removal starts. `skipped` says why nothing could be swept when the server does not support it
   * (e.g. an S3 server without ListMultipartUploads).
   */
  sweepTemp?(options?: TempSweepOptions): Promise<TempSweepResult>;
  /** Releases connections; the provider may not be used afterwards. */
  close?(): Promise<void>;
}

/** Which leftovers sweepTemp() removes (see there). */
export interface TempSweepOptions {
  olderThanMs?: number;
  tempTag?: string;
  signal?: AbortSignal;
}

/** What sweepTemp() removed: temp file names, or on S3 the backup name of each aborted multipart upload. */
export interface TempSweepResult {
  removed: string[];
  /** Set when the server cannot be swept (the operation is not implemented there). */
  skipped?: string;
}

export type StorageErrorCode =
  | 'not_found'
  | 'auth_failed'
  | 'permission_denied'
  | 'unreachable'
  | 'path_missing'
  | 'bucket_missing'
  | 'wrong_region'
  | 'bad_key_format'
  | 'integrity'
  | 'no_space'
  | 'tool_missing'
  | 'aborted'
  /** An exclusive put found the name taken (see ProviderProperties.exclusivePut). */
  | 'exists'
  | 'io';

/** Every provider failure; `permanent` errors are never retried (auth, missing bucket, integrity, not found). */
export class StorageError extends Error {
  readonly code: StorageErrorCode;
  readonly permanent: boolean;
  constructor(code: StorageErrorCode, message: string, options?: { permanent?: boolean; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'StorageError';
    this.code = code;
    this.permanent = options?.permanent ?? PERMANENT_CODES.has(code);
  }
}

const PERMANENT_CODES = new Set<StorageErrorCode>([
  'not_found',
  'auth_failed',
  'permission_denied',
  'path_missing',
  'bucket_missing',
  'wrong_region',
  'bad_key_format',
  'integrity',
  'tool_missing',
  'aborted',
  'exists',
]);

export function isStorageError(error: unknown, code?: StorageErrorCode): error is StorageError {
  return error instanceof StorageError && (code === undefined || error.code === code);
}
