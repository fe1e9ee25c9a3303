/** One DR push: enroll, pin the escrow key, pick or make a backup, send it with an escrow header (single or multipart, resumable). */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Agent } from '../agent';
import { type BackupInfo, datedInFuture } from '../backup/catalog';
import { backupDeps, createBackup } from '../backup/create';
import { readHeaderOfFile } from '../backup/reader';
import { AppError, describeError, isAppError } from '../errors';
import { withJobLock } from '../jobs/lock';
import type { JobContext } from '../jobs/runner';
import { LastRestoreStore } from '../restore/last-restore';
import { AGENT_VERSION } from '../version';
import type { DrClient, SignedBody } from './client';
import { chooseEscrowKey, type EscrowKey, escrowHeader } from './escrow';
import type { DrStateStore, DrUploadInProgress } from './state';
import { UploadSource } from './upload-source';

/** A local backup at most this old is uploaded as is instead of making a new one. */
export const REUSE_MAX_AGE_MS = 24 * 3600_000;

export interface PushTuning {
  /** Backups larger than this go multipart (the Workers request limit is 100 MB). */
  multipartThreshold: number;
  /** Part size asked for; the cloud answers the one to use (5..95 MiB). */
  partSize: number;
  /** Tries per part (and per single upload) before the push fails; a later push resumes. */
  partAttempts: number;
  retryDelayMs: number;
  /**
   * Parts on the wire at once. Two keep the cloud busy while the next part is hashed and its request
   * set up; more gained nothing against a Worker that is itself the bottleneck, and would hold more
   * parts half-sent when a push is cut.
   */
  partsInFlight: number;
}

export const DEFAULT_TUNING: PushTuning = {
  multipartThreshold: 64 * 1024 * 1024,
  partSize: 32 * 1024 * 1024,
  partAttempts: 3,
  retryDelayMs: 2000,
  partsInFlight: 2,
};

export interface PushResult {
  backup: string;
  createdAt: string;
  size: number;
  /** Hex sha256 of the bytes uploaded (escrow header + payload). */
  sha256: string;
  reused: boolean;
  temporary: boolean;
  multipart: boolean;
  resumed: boolean;
  partsSent: number;
  partsSkipped: number;
  /** Requests sent again after a dropped connection or a 5xx. */
  retries: number;
}

/** The job notice naming the backup a push sends, before it is hashed or sent: as in PushResult. */
export const PUSH_BACKUP_NOTICE = 'dr-push-backup';
export type PushBackupNotice = Pick<
  PushResult,
  'backup' | 'createdAt' | 'size' | 'reused' | 'temporary' | 'resumed'
>;

interface PushDeps {
  agent: Agent;
  /** Signs as the installation the push started as (DrClient.pinnedTo), not as the keyring's now. */
  client: DrClient;
  /** That installation's DR state. */
  state: DrStateStore;
  tuning: PushTuning;
  now?: () => Date;
  /**
   * Asked right before the first byte is sent; throwing stops the push (an unfinished recovery, the
   * keys of another installation imported meanwhile).
   */
  beforeUpload?: () => Promise<void>;
}

/** Pushes one backup to the installation's slot. Nothing local changes but a temporary backup, removed after. */
export async function pushToCloud(deps: PushDeps, ctx: JobContext): Promise<PushResult> {
  const { agent, state } = deps;
  // The cloud is asked first (enrollment, escrow key): when it is down, no backup is made or sent.
  // What only reads local files (the state, the catalog, the backup's header) runs meanwhile.
  ctx.phase('connect');
  const connected = Promise.all([ensureEnrolled(deps), pinnedEscrowKey(deps)]).then(([, key]) => key);
  connected.catch(() => {}); // awaited below; this only keeps an early failure from going unhandled meanwhile
  const resumable = await resumableUpload(deps, connected);
  let upload: DrUploadInProgress | undefined = resumable;
  let backup: { name: string; createdAt: string; temporary: boolean; reused: boolean };
  if (resumable) {
    backup = {
      name: resumable.backupName,
      createdAt: resumable.createdAt,
      temporary: resumable.temporary,
      reused: !resumable.temporary,
    };
  } else {
    backup = await chooseBackup(deps, ctx, connected);
  }

  const path = agent.catalog.pathOf(backup.name);
  let source: UploadSource | undefined;
  try {
    if (upload) {
      await connected;
      source = await UploadSource.open(path, Buffer.from(upload.header, 'base64'), upload.oldHeaderLength);
    } else {
      const [header, escrowKey] = await Promise.all([readHeaderOfFile(path), connected]);
      const bytes = await escrowHeader(header, agent.keyring, escrowKey);
      source = await UploadSource.open(path, bytes, header.bytes.length);
    }
    // Which backup goes, before a byte of it is hashed or sent (the CLI's `dr push` says so).
    const chosen: PushBackupNotice = {
      backup: backup.name,
      createdAt: backup.createdAt,
      size: source.size,
      reused: backup.reused,
      temporary: backup.temporary,
      resumed: resumable !== undefined,
    };
    ctx.notice(PUSH_BACKUP_NOTICE, chosen);
    ctx.throwIfCancelled();
    const size = source.size;
    const multipart = upload !== undefined || size > deps.tuning.multipartThreshold;
    let sha256 = upload?.sha256;
    // A new multipart push also hashes its first part (at the part size it asks for) in the same read
    // as the whole; the other parts are hashed while earlier ones are on the wire.
    let partHashes: PartHashes | undefined;
    if (!sha256) {
      ctx.phase('hash', size);
      let hashed = 0;
      const onBytes = (n: number) => {
        hashed += n;
        ctx.progress(hashed);
      };
      if (multipart) {
        const hashes = await source.sha256WithParts(deps.tuning.partSize, onBytes, 1);
        sha256 = hashes.sha256;
        partHashes = { partSize: deps.tuning.partSize, parts: hashes.parts };
      } else {
        sha256 = await source.sha256(0, size, onBytes);
      }
    }
    await deps.beforeUpload?.();
    ctx.phase('upload', size);
    let sent = { partsSent: 0, partsSkipped: 0, retries: 0 };
    if (!multipart) {
      const s = source;
      sent.retries = await withRetries(deps, ctx, 'the backup', () =>
        deps.client.putBackup(signedRange(s, 0, size, sha256!, ctx), backup.createdAt, ctx.signal),
      );
      sent.partsSent = 1;
    } else {
      sent = await sendMultipart(deps, ctx, source, {
        upload,
        backup,
        sha256,
        oldHeaderLength: upload?.oldHeaderLength ?? source.oldHeaderLength,
        partHashes,
      });
      await state.update((s) => {
        delete s.upload;
      });
    }
    upload = undefined;
    if (backup.temporary) await agent.catalog.delete(backup.name).catch(() => {});
    return {
      backup: backup.name,
      createdAt: backup.createdAt,
      size,
      sha256,
      reused: backup.reused,
      temporary: backup.temporary,
      multipart,
      resumed: resumable !== undefined,
      ...sent,
    };
  } catch (error) {
    // A temporary backup stays only while a multipart upload of it can be resumed: not once the keyring
    // holds another installation (resumableUpload).
    const pending = (await state.get()).upload;
    const resumable =
      pending?.backupName === backup.name && pending.installationId === agent.keyring.installationId;
    if (backup.temporary && !resumable) {
      await agent.catalog.delete(backup.name).catch(() => {});
    }
    throw error;
  } finally {
    await source?.close();
  }
}

async function ensureEnrolled(deps: PushDeps): Promise<void> {
  const { installationId, signingKey } = deps.client.identity();
  const current = (await deps.state.get()).enrollment;
  const x = signingKey.publicJwk.x;
  if (current?.installationId === installationId && current.publicKeyX === x) return;
  await deps.client.enroll();
  await deps.state.update((s) => {
    s.enrollment = { installationId, publicKeyX: x, at: new Date().toISOString() };
  });
  // Not the installation id: it is the recovery credential, and logs are not the place for it.
  deps.agent.log.info('enrolled with the DR cloud');
}

async function pinnedEscrowKey(deps: PushDeps): Promise<EscrowKey> {
  const published = (await deps.client.escrowKeys()) as EscrowKey[];
  const pinned = (await deps.state.get()).escrow;
  const { key, changed } = chooseEscrowKey(published, pinned, deps.agent.log);
  if (changed) {
    await deps.state.update((s) => {
      s.escrow = {
        kid: key.kid,
        publicJwk: { kty: key.kty, crv: key.crv, x: key.x, kid: key.kid },
        pinnedAt: new Date().toISOString(),
      };
    });
  }
  return key;
}

/**
 * The upload a previous push left half done, if its backup is still here and its verify has not failed
 * since; otherwise it is dropped.
 */
async function resumableUpload(
  deps: PushDeps,
  connected: Promise<unknown>,
): Promise<DrUploadInProgress | undefined> {
  const upload = (await deps.state.get()).upload;
  if (!upload) return undefined;
  const { agent } = deps;
  const current = await new LastRestoreStore(agent.paths.lastRestore, agent.log).current({
    filename: upload.backupName,
    createdAt: upload.createdAt,
  });
  const listed = (await agent.catalog.list()).find((b) => b.filename === upload.backupName);
  // A verify that failed since the first attempt (rot found meanwhile): the parts still to send would
  // carry the damage into the slot, over a good copy. chooseBackup never picks such a backup either.
  const failed = listed?.verifyResult === 'failed';
  if (current && upload.installationId === deps.client.identity().installationId && listed && !failed) {
    return upload;
  }
  await connected;
  agent.log.info(
    !current
      ? 'dropping an unfinished DR upload of a backup made before the last restore'
      : failed
        ? 'dropping an unfinished DR upload of a backup whose verify failed'
        : 'dropping an unfinished DR upload whose backup is gone',
    { backup: upload.backupName },
  );
  // A temporary backup made for it was kept only for the resume.
  if ((!current || failed) && upload.temporary) await agent.catalog.delete(upload.backupName).catch(() => {});
  await deps.client.abortUpload(upload.uploadId).catch(() => {});
  await deps.state.update((s) => {
    delete s.upload;
  });
  return undefined;
}

/**
 * A local backup of this installation younger than 24 h, else a new temporary one (kind 'dr'). Never a
 * backup whose last verify failed, nor a safety backup: that holds the data a restore replaced, not
 * what runs now; nor one older than the copy in the slot.
 */
async function chooseBackup(
  deps: PushDeps,
  ctx: JobContext,
  connected: Promise<unknown>,
): Promise<{ name: string; createdAt: string; temporary: boolean; reused: boolean }> {
  const { agent } = deps;
  const now = (deps.now ?? (() => new Date()))().getTime();
  const held = new Set(agent.keyring.masterKeys.map((k) => k.id));
  // The copy this box put in the slot (or recovered from it): the cloud refuses anything older
  // (older_backup). After a restore of an older backup that backup is what runs, yet cannot go: a new one does.
  const s = await deps.state.get();
  const inSlot = Math.max(
    ...[s.lastSuccess?.createdAt, s.recovered?.createdAt].map((at) => Date.parse(at ?? '') || 0),
  );
  const candidates = (await agent.catalog.list()).filter(
    (b: BackupInfo) =>
      agent.keyring.isActive(b.installationTag) &&
      b.kind !== 'safety' &&
      b.verifyResult !== 'failed' &&
      now - Date.parse(b.createdAt) <= REUSE_MAX_AGE_MS &&
      // Dated after the clock (made while it was ahead): not recent, however it compares.
      !datedInFuture(b, now) &&
      Date.parse(b.createdAt) >= inSlot &&
      b.keyIds.some((id) => held.has(id)),
  );
  // Not one made before the last restore (other than the one it restored): it holds data that no
  // longer runs (a rebuilt box's own sample data, backed up after its keys import, under the recovered identity).
  const restores = new LastRestoreStore(agent.paths.lastRestore, ctx.log);
  let recent: BackupInfo | undefined;
  for (const b of candidates) {
    if (await restores.current(b)) {
      recent = b;
      break;
    }
  }
  if (recent) {
    ctx.log.info('uploading an existing local backup', { backup: recent.filename });
    return { name: recent.filename, createdAt: recent.createdAt, temporary: false, reused: true };
  }
  // Only once the cloud has answered: a backup is never made for a push that cannot happen.
  await connected;
  ctx.throwIfCancelled();
  ctx.log.info('no local backup from the last 24 hours: making a temporary one');
  // The push itself reads only, but making a backup must not overlap another mutating job.
  const made = await withJobLock(
    agent.jobs.lockPath,
    'dr-push backup',
    () => createBackup(backupDeps(agent), ctx, { kind: 'dr', label: 'temporary copy for Cloud DR' }),
    { signal: ctx.signal },
  );
  return { name: made.filename, createdAt: made.createdAt, temporary: true, reused: false };
}

function signedRange(
  source: UploadSource,
  start: number,
  end: number,
  sha256: string,
  ctx: JobContext,
  doneBefore = 0,
): SignedBody {
  return {
    sha256,
    length: end - start,
    open: () => {
      let done = doneBefore;
      const stream = source.stream(start, end);
      stream.on('data', (chunk: Buffer) => {
        done += chunk.length;
        ctx.progress(done);
      });
      return stream;
    },
  };
}

/** The sha256 of each part of an upload cut at `partSize`, in part order. */
interface PartHashes {
  partSize: number;
  parts: string[];
}

/** Sends the parts the cloud lacks, each retried; persists the upload first so a later push can resume. */
async function sendMultipart(
  deps: PushDeps,
  ctx: JobContext,
  source: UploadSource,
  input: {
    upload: DrUploadInProgress | undefined;
    backup: { name: string; createdAt: string; temporary: boolean };
    sha256: string;
    oldHeaderLength: number;
    /** Leading part hashes taken with the whole hash; used only if the cloud kept the part size asked for. */
    partHashes?: PartHashes | undefined;
  },
): Promise<{ partsSent: number; partsSkipped: number; retries: number }> {
  const { client, state } = deps;
  let upload = input.upload;
  let received = new Map<number, number>();
  if (upload) {
    const status = await client.uploadStatus(upload.uploadId);
    if (status) {
      received = new Map(status.parts.map((p) => [p.n, p.size]));
      ctx.log.info('resuming a DR upload', { uploadId: upload.uploadId, partsHeld: received.size });
    } else {
      ctx.log.info('the unfinished DR upload expired on the cloud; starting it again');
      upload = { ...upload, uploadId: '' };
    }
  }
  if (!upload || upload.uploadId === '') {
    const created = await client.createUpload({
      size: source.size,
      sha256: input.sha256,
      createdAt: input.backup.createdAt,
      agentVersion: AGENT_VERSION,
      partSize: deps.tuning.partSize,
    });
    upload = {
      uploadId: created.uploadId,
      backupName: input.backup.name,
      temporary: input.backup.temporary,
      installationId: client.identity().installationId,
      size: source.size,
      sha256: input.sha256,
      createdAt: input.backup.createdAt,
      partSize: created.partSize,
      header: Buffer.from(source.header).toString('base64'),
      oldHeaderLength: input.oldHeaderLength,
    };
    const saved = upload;
    await state.update((s) => {
      s.upload = saved;
    });
  }
  const { uploadId, partSize } = upload;
  const count = Math.max(1, Math.ceil(source.size / partSize));
  const known = input.partHashes?.partSize === partSize ? input.partHashes.parts : [];
  const progress = new PartProgress(ctx);
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  // After a failed request the rest of the push sends one part at a time: a flaky link is not given
  // more to drop, and a push that fails leaves few parts half-sent.
  let troubled = false;
  let partsSent = 0;
  let partsSkipped = 0;
  let retries = 0;
  for (let n = 1; n <= count && !failure; n++) {
    const start = (n - 1) * partSize;
    const end = Math.min(source.size, start + partSize);
    if (received.get(n) === end - start) {
      partsSkipped++;
      progress.done(end - start);
      continue;
    }
    let sha: string;
    try {
      // Hashed here, while the parts before it are still being sent.
      sha = known[n - 1] ?? (await source.sha256(start, end));
      while (!failure && inFlight.size > 0 && (troubled || inFlight.size >= deps.tuning.partsInFlight)) {
        await Promise.race(inFlight);
      }
      ctx.throwIfCancelled();
    } catch (error) {
      failure ??= { error };
    }
    if (failure) break;
    const part = n;
    const sending = withRetries(
      deps,
      ctx,
      `part ${part}`,
      () => client.putPart(uploadId, part, progress.body(part, source, start, end, sha!), ctx.signal),
      () => {
        troubled = true;
      },
    ).then(
      (tries) => {
        retries += tries;
        partsSent++;
        progress.finished(part, end - start);
      },
      (error: unknown) => {
        failure ??= { error };
      },
    );
    const tracked = sending.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  }
  // Every part on the wire settles before the push reports, so the state a later push resumes from is final.
  await Promise.all(inFlight);
  if (failure) throw failure.error;
  ctx.throwIfCancelled();
  await client.completeUpload(uploadId, ctx.signal);
  return { partsSent, partsSkipped, retries };
}

/** Upload progress over parts sent side by side: the parts done plus what each part on the wire has sent. */
class PartProgress {
  private completed = 0;
  private readonly current = new Map<number, number>();

  constructor(private readonly ctx: JobContext) {}

  done(bytes: number): void {
    this.completed += bytes;
    this.report();
  }

  finished(n: number, bytes: number): void {
    this.current.delete(n);
    this.done(bytes);
  }

  /** Part `n`'s signed body; each attempt counts its bytes afresh. */
  body(n: number, source: UploadSource, start: number, end: number, sha256: string): SignedBody {
    return {
      sha256,
      length: end - start,
      open: () => {
        this.current.set(n, 0);
        const stream = source.stream(start, end);
        stream.on('data', (chunk: Buffer) => {
          this.current.set(n, (this.current.get(n) ?? 0) + chunk.length);
          this.report();
        });
        return stream;
      },
    };
  }

  private report(): void {
    let sum = this.completed;
    for (const bytes of this.current.values()) sum += bytes;
    this.ctx.progress(sum);
  }
}

/** Retries what failed on the way (network, 5xx); a refusal (4xx) fails at once. Returns the retries it took. */
async function withRetries(
  deps: PushDeps,
  ctx: JobContext,
  what: string,
  send: () => Promise<void>,
  onFailure?: () => void,
): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    try {
      await send();
      return attempt - 1;
    } catch (error) {
      onFailure?.();
      if (!isAppError(error, 'dependency_down') || attempt >= deps.tuning.partAttempts) throw error;
      ctx.log.warn(`sending ${what} failed; trying again`, { attempt, error: describeError(error) });
      await sleep(deps.tuning.retryDelayMs * attempt, undefined, { signal: ctx.signal }).catch(() => {
        throw new AppError('cancelled', 'the job was cancelled');
      });
    }
  }
}
