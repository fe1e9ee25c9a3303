// Moving one backup between the local catalog and a destination, checked on arrival, with retries for transient failures.
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pipeline as pipeStreams, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  EnvelopeError,
  type EnvelopeHeader,
  HeaderScanner,
  type MasterKey,
  unwrapWithMasterKeys,
} from '../../shared/envelope';
import { installationTag } from '../../shared/envelope/installation-tag';
import type {
  BackupSource,
  StorageProvider,
  StoredObject,
  TempSweepResult,
} from '../../shared/storage/index';
import { isStorageError, StorageError } from '../../shared/storage/index';
import type { Agent } from '../agent';
import { type BackupInfo, createdAtFromName } from '../backup/catalog';
import { envelopeToAppError, readHeaderOfFile } from '../backup/reader';
import { type LocalCandidate, type PruneCandidate, planPrune } from '../backup/retention';
import { type ReceivedBackup, receiveUpload, usableSpace } from '../backup/upload';
import { AppError } from '../errors';
import { hashFile } from '../providers/checks';
import { type RetryOptions, withRetry } from '../providers/retry';

/** How transfers retry: attempts and backoff (tests shorten them); signal and onRetry are per call. */
export type RetryPolicy = Pick<RetryOptions, 'attempts' | 'baseDelayMs' | 'maxDelayMs'>;

interface TransferOptions {
  signal?: AbortSignal;
  onProgress?: (bytes: number) => void;
  retry?: RetryPolicy;
  onRetry?: RetryOptions['onRetry'];
  /** An attempt that moves no byte for this long is given up as 'unreachable' and retried (default 5 min). */
  stallTimeoutMs?: number;
  /**
   * Asked before each retry: false (the destination was turned off or changed meanwhile) ends the
   * transfer with DestinationLeftAlone instead of trying it again.
   */
  stillConfigured?: () => boolean;
  /**
   * The caller just listed the destination and saw no object of this name: uploadBackup skips its
   * look for another backup already under the name (see NameTakenError).
   */
  absent?: true;
}

/** A transfer not tried again because its destination was turned off or changed during the job. */
export class DestinationLeftAlone extends Error {
  constructor() {
    super('the destination was turned off or changed during the job');
    this.name = 'DestinationLeftAlone';
  }
}

/** Throws DestinationLeftAlone before a retry (attempt > 1) once the destination is no longer the one configured. */
function checkBeforeRetry(attempt: number, options: TransferOptions): void {
  if (attempt > 1 && options.stillConfigured && !options.stillConfigured()) throw new DestinationLeftAlone();
}

const DEFAULT_STALL_TIMEOUT_MS = 5 * 60_000;

/**
 * Runs one transfer attempt under a stall watchdog: a server that freezes mid-transfer may never answer
 * again (nor let the provider clean up), so after `stallMs` without progress the attempt's own signal is
 * aborted and the attempt is given up at once as a retryable 'unreachable', whatever the provider does.
 * `onActivity` re-arms it without progress: bytes leaving that the provider's progress counts only once
 * the server acknowledges them (S3's parts). An attempt that calls `onAwaitingAnswer` (every byte sent;
 * the provider bounds its wait for the answers itself) stops the watchdog for good: the answers it then
 * gets still move its progress, but no byte is left to send.
 */
export async function guardStall<T>(
  attempt: (
    signal: AbortSignal,
    onProgress: (bytes: number) => void,
    onAwaitingAnswer: () => void,
    onActivity: () => void,
  ) => Promise<T>,
  options: Pick<TransferOptions, 'signal' | 'onProgress' | 'stallTimeoutMs'>,
): Promise<T> {
  const stallMs = options.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
  const controller = new AbortController();
  const onOuterAbort = () => controller.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  let stalled: (error: StorageError) => void = () => {};
  const watchdog = new Promise<never>((_, reject) => {
    stalled = reject;
  });
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      // Rejected first, so the race reports the stall, not the provider's reaction to the abort.
      stalled(
        new StorageError(
          'unreachable',
          `the server stopped answering: no progress for ${Math.round(stallMs / 1000)} s`,
        ),
      );
      controller.abort();
    }, stallMs);
  };
  arm();
  let awaiting = false;
  const work = attempt(
    controller.signal,
    (bytes) => {
      if (!awaiting) arm();
      options.onProgress?.(bytes);
    },
    () => {
      awaiting = true;
      clearTimeout(timer);
    },
    () => {
      if (!awaiting) arm();
    },
  );
  work.catch(() => {}); // given up on a stall: its late failure is not news
  try {
    return await Promise.race([work, watchdog]);
  } catch (error) {
    if (options.signal?.aborted && !(error instanceof StorageError && error.code === 'aborted')) {
      throw new StorageError('aborted', 'the operation was cancelled', { cause: error });
    }
    throw error;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onOuterAbort);
  }
}

/**
 * A local file as a provider source: each open() (each retry) reads it again from the first byte;
 * `localPath` lets a provider whose tool reads files itself skip spooling.
 */
export function fileSource(path: string, size: number, sha256: string): BackupSource {
  return {
    size,
    sha256,
    localPath: path,
    open: () =>
      Readable.toWeb(createReadStream(path, { highWaterMark: 1 << 20 })) as ReadableStream<Uint8Array>,
  };
}

/**
 * What a person reads when a different backup already holds a backup's name at a destination: another
 * controller's (two back up into one folder), or this installation's own older one (the clock was set
 * back since it was made, so a new backup got the name again).
 */
export function nameTakenMessage(name: string, installation: string, ours = false): string {
  if (ours) {
    return `a different backup named ${name} is already there, made earlier by this installation (the controller's clock was set back since then): it is left as it is and this backup is not uploaded there. Check the controller's clock (time zone, NTP); backups made once the clock is past that time upload as usual`;
  }
  return `a different backup named ${name} is already there (of installation ${installation}…; two controllers back up into this folder and made backups in the same second): it is left as it is and this backup is not uploaded there. Give each controller its own folder`;
}

/**
 * A different backup (another header) already under the name at the destination: another controller
 * writing to the same folder made one in the same second. Never replaced: the upload is refused.
 */
export class NameTakenError extends StorageError {
  constructor(
    readonly backup: string,
    /** The other backup's installation, as its header names it (the id's first 8 hex characters). */
    readonly installation: string,
    /** The other backup was made by the installation that made this one (a clock set back). */
    readonly ours = false,
  ) {
    super('integrity', nameTakenMessage(backup, installation, ours), { permanent: true });
    this.name = 'NameTakenError';
  }
}

/** Whether a header read failed on what the object holds (no GEM backup), not on reaching it. */
export function notABackup(error: unknown): boolean {
  if (error instanceof EnvelopeError) return true;
  return error instanceof AppError && error.code === 'not_a_backup';
}

/**
 * Reads just the header of a remote backup (no key needed), then stops the download; reads at most
 * HEADER_SCAN_LIMIT bytes (headers are a few KiB).
 */
export async function readRemoteHeader(
  provider: StorageProvider,
  name: string,
  signal?: AbortSignal,
): Promise<EnvelopeHeader> {
  const stream = await provider.get(name, signal ? { signal } : {});
  const reader = stream.getReader();
  const scanner = new HeaderScanner();
  try {
    while (!scanner.full) {
      const { done, value } = await reader.read();
      if (done) break;
      const found = scanner.push(value);
      if (found) return found.header;
    }
    throw new AppError('not_a_backup', `${name} is not a GEM backup (no readable header)`);
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

/** Whether two headers are the same bytes: the same backup (its copies), not merely the same name. */
export function sameHeader(a: EnvelopeHeader, b: EnvelopeHeader): boolean {
  return Buffer.from(a.bytes).equals(Buffer.from(b.bytes));
}

/**
 * Throws NameTakenError if the destination holds, under `name`, a readable backup whose header is not
 * the local file's. Nothing there, an earlier copy of this very backup, or an object that is no backup:
 * the upload may go on (and replace it).
 */
async function refuseNameTaken(
  provider: StorageProvider,
  name: string,
  path: string,
  options: TransferOptions,
): Promise<void> {
  const retry = { ...options.retry, signal: options.signal, onRetry: options.onRetry };
  const existing = await withRetry(() => provider.stat(name, { signal: options.signal }), retry).catch(
    (error: unknown) => {
      if (isStorageError(error, 'not_found')) return undefined;
      throw error;
    },
  );
  if (!existing) return;
  const remote = await withRetry(
    () => guardStall((signal) => readRemoteHeader(provider, name, signal), options),
    retry,
  ).catch((error: unknown) => {
    if (notABackup(error)) return undefined;
    throw error;
  });
  if (!remote) return;
  const local = await readHeaderOfFile(path);
  if (!sameHeader(remote, local)) {
    const ours = remote.core.installationTag === local.core.installationTag;
    throw new NameTakenError(name, remote.core.installationPrefix, ours);
  }
}

/**
 * Uploads a local backup to `provider` under the same name, then checks the size (and sha256 where the
 * provider reports one) that put() found on the server against the local file, whose sha256 comes
 * from the catalog. Transient failures are retried from a
 * re-opened file; the provider never leaves a partial object under the name. A different backup
 * already under the name is never replaced: NameTakenError (unless `absent` says nothing is there).
 */
export async function uploadBackup(
  agent: Pick<Agent, 'catalog' | 'keyring'>,
  provider: StorageProvider,
  name: string,
  options: TransferOptions = {},
): Promise<StoredObject> {
  const path = agent.catalog.pathOf(name);
  const { size } = await stat(path);
  // Recorded when the backup was made; a file from elsewhere is hashed once here and recorded.
  let sha256 = await agent.catalog.knownSha256(name);
  if (sha256 === undefined) {
    sha256 = (await hashFile(path, { signal: options.signal })).sha256;
    await agent.catalog.recordSha256(name, sha256);
  }
  const source = fileSource(path, size, sha256);
  const tempTag = uploadTempTag(agent.keyring.installationId);
  const retry = { ...options.retry, signal: options.signal, onRetry: options.onRetry };
  const send = (exclusive: boolean) =>
    withRetry((attempt) => {
      checkBeforeRetry(attempt, options);
      return guardStall(
        (signal, onProgress, onAwaitingAnswer, onActivity) =>
          provider.put(name, source, {
            signal,
            onProgress,
            onAwaitingAnswer,
            onActivity,
            tempTag,
            ...(exclusive ? { exclusive } : {}),
          }),
        options,
      );
    }, retry);
  // A put replaces the final name: a different backup under it (another controller's, made in the same
  // second) would be destroyed. Where the commit itself can refuse a taken name (SMB), it does, and
  // only then is the name looked at (our own earlier copy is replaced, another backup never); elsewhere
  // the name is looked at first.
  const exclusive = provider.properties.exclusivePut === true;
  if (!exclusive && !options.absent) await refuseNameTaken(provider, name, path, options);
  const stored = await send(exclusive).catch(async (error: unknown) => {
    if (!exclusive || !isStorageError(error, 'exists')) throw error;
    await refuseNameTaken(provider, name, path, options);
    return send(false);
  });
  // put() answers what the server holds after its own check (stat / allinfo / HEAD): no second session.
  if (stored.size !== size) {
    throw new StorageError('integrity', `${name} is ${stored.size} bytes remotely, ${size} bytes here`);
  }
  if (stored.sha256 !== undefined && stored.sha256.toLowerCase() !== sha256) {
    throw new StorageError('integrity', `the remote sha256 of ${name} differs from the local file's`);
  }
  return { ...stored, sha256: stored.sha256 ?? sha256 };
}

/**
 * Sweeps leave younger leftovers alone, in case some other upload is still writing them (another job's, or
 * another controller's backing up into the same folder), unless their temp name says they are this
 * installation's own and the sweep knows none of its uploads is in flight (Sync Now: see uploadTempTag).
 */
export const SWEEP_AGE_MS = 10 * 60_000;

/**
 * The `tempTag` an installation's uploads give their temp names: the first 8 hex characters of its
 * installation tag (never the installation id, which is the DR recovery credential), so that its sweeps
 * can tell its own leftovers from those of another controller writing into the same folder.
 */
export function uploadTempTag(installationId: string): string {
  return installationTag(installationId).slice(0, 8);
}

/**
 * Removes the temp leftovers of earlier failed uploads at a destination (provider.sweepTemp), under the
 * same stall watchdog as a transfer so that a hung server cannot hold the job; nothing if the provider
 * has no sweep.
 */
export async function sweepLeftovers(
  provider: StorageProvider,
  options: Pick<TransferOptions, 'signal' | 'stallTimeoutMs'> & { olderThanMs: number; tempTag?: string },
): Promise<TempSweepResult> {
  const sweep = provider.sweepTemp?.bind(provider);
  if (!sweep) return { removed: [] };
  const { olderThanMs, tempTag } = options;
  return guardStall((signal) => sweep({ olderThanMs, ...(tempTag ? { tempTag } : {}), signal }), options);
}

/**
 * A remote copy that sends more than the size the destination gives for it (its listing, HEAD or stat):
 * not what it says, so not used, and not asked for again (permanent).
 */
function longerThanListed(name: string, size: number): StorageError {
  return new StorageError(
    'integrity',
    `the copy of ${name} at the destination sends more than the ${size} bytes it is listed with, so it is not what it says; the download was stopped and nothing was kept. Check the destination, or use another backup`,
    { permanent: true },
  );
}

/**
 * Passes on at most `size` bytes of a download, counting them for `onProgress`; the first byte past
 * them fails it (longerThanListed) before it is written, so a server that goes on cannot fill the disk.
 */
function atMost(name: string, size: number, onProgress?: (bytes: number) => void): Transform {
  let bytes = 0;
  return new Transform({
    transform(chunk: Buffer, _e, cb) {
      bytes += chunk.length;
      if (bytes > size) return cb(longerThanListed(name, size));
      onProgress?.(bytes);
      cb(null, chunk);
    },
  });
}

/**
 * Copies a remote backup into the local catalog through receiveUpload (size checked, header read,
 * verified end to end when we hold its key; nothing listed on failure). Transient failures retry.
 */
export async function downloadToCatalog(
  agent: Pick<Agent, 'catalog' | 'keyring'>,
  provider: StorageProvider,
  name: string,
  options: TransferOptions = {},
): Promise<ReceivedBackup> {
  const retry = { ...options.retry, signal: options.signal, onRetry: options.onRetry };
  const remote = await withRetry(() => provider.stat(name, { signal: options.signal }), retry);
  return withRetry((attempt) => {
    checkBeforeRetry(attempt, options);
    return guardStall(async (signal, onProgress) => {
      const stream = await provider.get(name, { signal });
      // pipeline (unlike pipe) fails the limited body when the download fails, so receiveUpload sees it.
      const body = pipeStreams(Readable.fromWeb(stream as never), atMost(name, remote.size), () => {});
      return receiveUpload(agent, name, body, {
        declaredSize: remote.size,
        signal,
        onProgress,
      }).catch((error: unknown) => {
        // Refused before reading a byte (no room for it, the name taken meanwhile), the download would
        // stay open at the destination: an SFTP connection never given back, an smbclient blocked for good.
        // Destroyed, the pipeline cancels it. After a failed read it is already gone, and this does nothing.
        body.destroy();
        throw error;
      });
    }, options);
  }, retry);
}

/**
 * Refuses a backup none of `keys` opens, from its header alone, with the error its read would give
 * (no_key, naming the keys it was made with). Any other failure to open it is left to the read.
 */
export async function refuseWithoutKey(keys: readonly MasterKey[], header: EnvelopeHeader): Promise<void> {
  await unwrapWithMasterKeys(header.stanzas, keys).catch((error: unknown) => {
    if (error instanceof EnvelopeError && error.code === 'no_key') throw envelopeToAppError(error, header);
  });
}

/**
 * Holds a download's first bytes until they make a whole envelope header and passes them on once
 * `check` accepts it, so that a backup refused for its header is refused after a few KiB, not after the
 * whole download. Bytes that cannot start a backup fail it as readHeaderOfFile refuses such a file
 * (not_a_backup). No header within HEADER_SCAN_LIMIT, or the end inside it: passed on unchecked, for the
 * restore's own read to say what is wrong.
 */
function headerFirst(check: (header: EnvelopeHeader) => Promise<void>): Transform {
  // Until the header is checked (or given up on); then chunks pass straight through.
  let scanner: HeaderScanner | undefined = new HeaderScanner();
  return new Transform({
    transform(chunk: Buffer, _e, cb) {
      if (!scanner) return cb(null, chunk);
      let found: ReturnType<HeaderScanner['push']>;
      try {
        found = scanner.push(chunk);
      } catch (error) {
        return cb(envelopeToAppError(error) as Error);
      }
      if (!found && !scanner.full) return cb();
      const bytes = found?.bytes ?? scanner.held();
      scanner = undefined;
      if (!found) return cb(null, bytes);
      check(found.header).then(
        () => cb(null, bytes),
        (error: unknown) => cb(error as Error),
      );
    },
    flush(cb) {
      cb(null, scanner?.held());
    },
  });
}

/**
 * Copies a remote backup to `path` (a private work file), checking its size; for restores straight from a
 * destination. Refused with 507 no_space before a byte is written when the size the destination gives
 * does not fit in the free space minus the database's reserve (as receiveUpload); a server that sends
 * more than that size is stopped at the first byte past it (a permanent 'integrity' failure).
 * `checkHeader` sees the backup's header as soon as it has arrived, before a byte is written: what it
 * throws ends the download there (not retried unless a StorageError), as do bytes that are no backup.
 */
export async function downloadToFile(
  provider: StorageProvider,
  name: string,
  path: string,
  options: TransferOptions & { checkHeader?: (header: EnvelopeHeader) => Promise<void> } = {},
): Promise<number> {
  const retry = { ...options.retry, signal: options.signal, onRetry: options.onRetry };
  const remote = await withRetry(() => provider.stat(name, { signal: options.signal }), retry);
  const { room } = await usableSpace(dirname(path));
  if (remote.size > room) {
    const mb = (n: number) => `${Math.max(0, Math.floor(n / 1048576))} MB`;
    throw new AppError(
      'no_space',
      `not enough free disk space to download ${name} for the restore: it is ${mb(remote.size)}, only ${mb(room)} may be used (some space is kept free for the database); free some space and try again`,
    );
  }
  return withRetry(
    () =>
      guardStall(async (signal, onProgress) => {
        let bytes = 0;
        const counter = atMost(name, remote.size, (sent) => {
          bytes = sent;
          onProgress(sent);
        });
        const stream = await provider.get(name, { signal });
        const checked = options.checkHeader ? [headerFirst(options.checkHeader)] : [];
        const file = createWriteStream(path, { mode: 0o600 });
        await pipeline([Readable.fromWeb(stream as never), counter, ...checked, file], { signal });
        if (bytes !== remote.size) {
          throw new StorageError(
            'io',
            `the download of ${name} was cut short: ${bytes} of ${remote.size} bytes`,
          );
        }
        return bytes;
      }, options),
    retry,
  );
}

// When a backup was made, read from its name: beside backupNameFor, whose inverse it is; still importable from here.
export { createdAtFromName };

/** One backup as retention sees it across both sides: local facts (kind, pinned, verification, foreign) win. */
export interface SyncCandidate extends PruneCandidate {
  local?: BackupInfo;
  remote?: StoredObject;
}

/** The union of local and remote backups, by name, each dated by its name when it is a backup name. */
export function syncCandidates(local: LocalCandidate[], remote: StoredObject[]): SyncCandidate[] {
  const byName = new Map<string, SyncCandidate>();
  for (const object of remote) {
    byName.set(object.name, {
      filename: object.name,
      createdAt: createdAtFromName(object.name) ?? object.modifiedAt ?? '',
      remote: object,
    });
  }
  for (const info of local) {
    const entry = byName.get(info.filename);
    byName.set(info.filename, {
      filename: info.filename,
      // Dated like a remote-only copy, by its name (the creation time floored to the second, bumped
      // a second forward when taken): by its exact time, a local backup made at 02:00:00.8 would sort
      // before a remote-only one made at 02:00:00.5 and named 02:00:01 (bumped), the newer pruned.
      createdAt: createdAtFromName(info.filename) ?? info.createdAt,
      kind: info.kind,
      ...(info.pinned ? { pinned: true } : {}),
      ...(info.verifyResult ? { verifyResult: info.verifyResult } : {}),
      // Another installation's backup uploaded here by hand: its copy at the destination is not ours either.
      ...(info.foreign ? { foreign: true } : {}),
      local: info,
      ...(entry?.remote ? { remote: entry.remote } : {}),
    });
  }
  return [...byName.values()];
}

/**
 * The remote backups retention removes at a destination under `maxBackups` (oldest first), knowing
 * kinds, pins and foreign backups from the local catalog (localCandidates); `protect` names are never removed.
 */
export function planRemotePrune(
  local: LocalCandidate[],
  remote: StoredObject[],
  maxBackups: number,
  protect: string[] = [],
): string[] {
  const remoteNames = new Set(remote.map((o) => o.name));
  const candidates = syncCandidates(
    local.filter((b) => remoteNames.has(b.filename)),
    remote,
  );
  return planPrune(candidates, { maxBackups, protect }).delete.map((c) => c.filename);
}
