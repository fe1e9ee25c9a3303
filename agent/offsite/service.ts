// OffsiteService: the agent's offsite destinations: test, list, sync, download, restore, delete, auto-upload.
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { S3Input, SftpInput, SmbInput } from '../../shared/api/settings';
import { type EnvelopeHeader, stanzaKeyIds } from '../../shared/envelope';
import { StorageError, type StorageProvider, type StoredObject } from '../../shared/storage/index';
import { isBackupName } from '../../shared/storage/names';
import type { AfterBackupHook, Agent } from '../agent';
import { type BackupInfo, checkBackupName, pinnedRefusal } from '../backup/catalog';
import { readHeaderOfFile } from '../backup/reader';
import { busyBackupNames, localCandidates, planPrune } from '../backup/retention';
import { AppError, describeError } from '../errors';
import { validationError } from '../http/errors';
import type { Job, JobContext } from '../jobs/runner';
import type { Logger } from '../log';
import { createProvider } from '../providers/index';
import { withRetry } from '../providers/retry';
import { checkInstallation, type RestoreOptions, restoreFromFile } from '../restore/restore';
import { applySettingsUpdate } from '../settings/model';
import { TEMP_PREFIX } from '../system/atomic-file';
import { type ConnectionTestResult, testConnection } from './connection';
import {
  DESTINATION_TITLES,
  type DestinationOptions,
  type DestinationSettings,
  destinationDrift,
  destinationOptions,
  OFFSITE_KINDS,
  type OffsiteKind,
} from './destinations';
import {
  type DestinationSkip,
  describeDestinationError,
  destinationAppError,
  destinationError,
  destinationSkip,
  keptRaisedMessage,
} from './messages';
import { type DestinationState, OffsiteStateStore, type SyncRecord, type UploadRecord } from './state';
import {
  createdAtFromName,
  DestinationLeftAlone,
  downloadToCatalog,
  downloadToFile,
  NameTakenError,
  nameTakenMessage,
  notABackup,
  planRemotePrune,
  type RetryPolicy,
  readRemoteHeader,
  refuseWithoutKey,
  SWEEP_AGE_MS,
  type SyncCandidate,
  sameHeader,
  sweepLeftovers,
  syncCandidates,
  uploadBackup,
  uploadTempTag,
} from './transfer';

// Moved to transfer.ts (uploadBackup reads it too); still importable from here.
export { readRemoteHeader };

export interface OffsiteServiceOptions {
  /** Retries of transient failures (default 4 attempts from 1 s, doubling). */
  retry?: RetryPolicy;
  /** A transfer moving no byte for this long is given up and retried (default 5 min; tests shorten it). */
  stallTimeoutMs?: number;
  /** Extra provider options per destination (timeouts; tests shorten them). */
  providerOverrides?: { [K in OffsiteKind]?: Partial<DestinationOptions[K]> };
}

/** A remote backup as `GET /api/v1/offsite/:provider/backups` lists it, newest first. */
export interface RemoteBackup {
  filename: string;
  size: number;
  createdAt?: string;
  modifiedAt?: string;
  sha256?: string;
  /**
   * True if the local catalog has this backup: one of the same name, unless the copy's header was read
   * and is not the local file's (another controller's backup made in the same second, or one of ours
   * from before the clock was set back).
   */
  local: boolean;
  /** Pinned (in the records, its local file here or not): its delete is refused until it is unpinned. */
  pinned?: boolean;
  /**
   * The first 8 characters of the id of the installation that made it: the local copy's, else the
   * remote header's (read once per object). Not the whole id: that is the installation's DR recovery
   * credential. Absent when unknown: the header could not be read (unreachable, not a backup).
   */
  installation?: string;
  /**
   * Whether it is of the installation whose keys are active. False for another controller's copy in a
   * shared folder, and for this box's own copies made before a keys import (under its old identity):
   * a restore of one of those brings back other data than the active installation's. Absent when unknown.
   */
  ofThisInstallation?: boolean;
}

/** Whose a remote backup is, as its header says (readable without a key). */
interface RemoteOwner {
  /** The header's installation tag and prefix (FORMAT.md "Version 2": a file holds no installation id). */
  installationTag: string;
  installation: string;
  keyIds: string[];
}

/** How many headers not yet known one list may still read (shared by its looks, counted down). */
interface HeaderReads {
  reads: number;
}

/** A remote object's identity for the header cache: destination, name, size, time. */
function remoteHeaderKey(provider: StorageProvider, object: StoredObject): string {
  return `${provider.id}\n${object.name}\n${object.size}\n${object.modifiedAt ?? ''}`;
}

/** One destination's outcome after a new backup. */
/** Whether an upload's failure is the abort of its job's cancellation, not a failure of its own. */
function stoppedByCancel(error: unknown): boolean {
  const { code } = describeError(error);
  return code === 'aborted' || code === 'cancelled';
}

/** An auto-upload the job's cancellation stopped: what its outcome says. */
export const UPLOAD_CANCELLED = 'the next backup or Sync Now sends this backup';

export interface AutoUploadResult {
  ok: boolean;
  size?: number;
  pruned?: string[];
  /** Temp leftovers of earlier failed uploads removed before this upload (absent when none). */
  sweptTemp?: number;
  error?: { code: string; message: string };
  /** Turned off (or changed) during the job: left alone from then on; not a failure (no size: not uploaded). */
  skipped?: DestinationSkip;
  /** The number of backups kept was raised during the job: its prune stopped there (keptRaisedMessage). */
  pruneStopped?: string;
}

export interface SyncResult {
  uploaded: string[];
  downloaded: string[];
  deleted: { remote: string[]; local: string[] };
  /**
   * Temp leftovers of failed uploads removed: earlier ones at the start, and after the transfers those of
   * this sync's attempts given up and retried (absent when none).
   */
  sweptTemp?: number;
  /** Turned off (or changed) during the sync: it stopped there and pruned nothing more on either side. */
  skipped?: DestinationSkip;
  /** The number of backups kept was raised during the sync: it deleted nothing more on either side. */
  pruneStopped?: string;
  /** Remote copies found damaged (not fetched, not counted as kept), each with why. */
  damaged?: { filename: string; reason: string }[];
  /** Transfers not tried: a transfer before them found the destination not answering, so the sync stopped there. */
  notAttempted?: string[];
}

/**
 * What a sync says of the damaged copies it found at a destination: their names, what to do (delete them,
 * or upload a good copy under the name), and that they were not counted as kept.
 */
export function damagedCopiesMessage(
  kind: OffsiteKind,
  damaged: { filename: string; reason: string }[],
): string {
  const one = damaged.length === 1;
  const list = damaged.map((d) => `${d.filename} (${d.reason})`).join('; ');
  return `${one ? 'a copy' : `${damaged.length} copies`} at the ${DESTINATION_TITLES[kind]} ${one ? 'is' : 'are'} damaged: ${list}. Delete ${one ? 'it' : 'them'} there (Delete on the page, or DELETE /api/v1/offsite/${kind}/backups/<name>), or upload a good copy under the name; ${one ? 'it is' : 'they are'} not counted among the backups kept`;
}

/** Why a copy is damaged, without the "the backup is damaged: " its message starts with. */
function damageOf(error: AppError): string {
  return error.message.replace(/^the backup is damaged: /, '');
}

/**
 * Whether a sync moves this backup: ours on one side only. Another installation's, here or there, is
 * neither fetched nor spread (at the destination no prune of ours would ever delete it), and a backup
 * that failed verification is not spread.
 */
function needsTransfer(candidate: SyncCandidate): boolean {
  if (candidate.foreign) return false;
  if (candidate.local && !candidate.remote) return candidate.local.verifyResult !== 'failed';
  return candidate.remote !== undefined && candidate.local === undefined;
}

/** A download refused for what the remote copy holds (damaged), not for reaching it. */
function isDamagedCopy(error: unknown): error is AppError {
  return error instanceof AppError && error.code === 'corrupt_backup';
}

/** A job's re-check of one destination before each step that uploads to or deletes at it. */
export interface DestinationWatch {
  /**
   * True while the destination is on and the same place as when the job started; from the first check
   * that finds it turned off or changed, false for the rest of the job (logged once, naming the step).
   */
  stillConfigured(step: string): boolean;
  /** Why the job left it alone, once it did. */
  readonly skipped: DestinationSkip | undefined;
}

/** A prune's re-check of the number of backups kept, which a PUT may raise while the job runs. */
export interface KeepCountWatch {
  /**
   * True while the saved maxBackups is at most the one the job planned with (a lowered count deletes
   * no more in this job); from the first check that finds it raised, false for the rest of the job
   * (logged once): the plan made with the old count may delete what the new one keeps.
   */
  stillPrunes(name: string): boolean;
  /** Why the prune stopped, once it did. */
  readonly stopped: string | undefined;
}

const INPUT = { sftp: SftpInput, s3: S3Input, smb: SmbInput } as const;

export class OffsiteService {
  readonly state: OffsiteStateStore;
  /**
   * The header of a remote object (destination, name, size, time), read without a key; null: it is
   * not a backup (no readable header). Read once per object and remembered while the destination
   * lists it. Whose it is, is asked of the keyring at each use: a keys import changes the answer for
   * the same header.
   */
  private readonly remoteHeaders = new Map<string, EnvelopeHeader | null>();
  /** Per destination kind, our backups' names last found taken there by a different backup (health reads it). */
  private readonly taken = new Map<string, Set<string>>();
  /**
   * Remote copies a sync found damaged (keyed as remoteHeaders: destination, name, size, time), with
   * why: a later sync names them again without fetching them, until they change or go.
   */
  private readonly damagedCopies = new Map<string, string>();

  constructor(
    private readonly agent: Agent,
    private options: OffsiteServiceOptions = {},
  ) {
    this.state = new OffsiteStateStore(agent.config.dataDir, agent.log);
  }

  /** Replaces the retry, stall and provider options (used by tests before any transfer). */
  configure(options: OffsiteServiceOptions): void {
    this.options = options;
  }

  /** The saved section of a destination (secrets in plain text). */
  saved<K extends OffsiteKind>(kind: K): DestinationSettings<K> {
    return this.agent.settings.get().offsite[kind] as DestinationSettings<K>;
  }

  /**
   * A section to test: the body (a form's unsaved values, validated like a PUT; secrets left out or
   * sent back as `{set: true}` are taken from the saved settings), or the saved one when there is no body.
   */
  sectionFromBody<K extends OffsiteKind>(kind: K, body: unknown): DestinationSettings<K> {
    if (body === undefined || body === null) return this.saved(kind);
    const parsed = INPUT[kind].safeParse(body);
    if (!parsed.success) throw validationError(parsed.error);
    // Tested as enabled or not, the section merges like a PUT; a missing secret is told by the test itself.
    const merged = applySettingsUpdate(this.agent.settings.get(), {
      offsite: { [kind]: { ...parsed.data, enabled: false } },
    });
    return merged.offsite[kind] as DestinationSettings<K>;
  }

  /** A provider for a section (the saved one by default). */
  provider<K extends OffsiteKind>(
    kind: K,
    section: DestinationSettings<K> = this.saved(kind),
  ): StorageProvider {
    const options = {
      ...destinationOptions(kind, section),
      ...this.options.providerOverrides?.[kind],
      ...this.trustOnFirstUse(kind, section),
    };
    return createProvider(kind, options as never);
  }

  /**
   * SFTP with no pinned host key: the key seen on the first successful connection is saved as the pin
   * (trust on first use), if the saved settings still point at that server and pin nothing.
   */
  private trustOnFirstUse(
    kind: OffsiteKind,
    section: DestinationSettings,
  ): Partial<DestinationOptions['sftp']> {
    if (kind !== 'sftp' || (section as DestinationSettings<'sftp'>).hostKeyFingerprint) return {};
    const { host, port } = section as DestinationSettings<'sftp'>;
    return {
      onHostKey: async (hostKeyFingerprint) => {
        // Checked and merged on the settings as they are when the change runs (inside the settings
        // queue, read from the database): a PUT saved meanwhile (SFTP off, another host) wins, nothing
        // is pinned. A pin saved meanwhile (typed in, or by a CLI command's first connection beside the
        // service) decides: a key that is not it is refused, as if it had been pinned all along.
        let pinned: string | undefined;
        const saved = await this.agent.settings.change((current) => {
          const now = current.offsite.sftp;
          if (!now.enabled || now.host.trim() !== host.trim() || (now.port || 22) !== (port || 22))
            return undefined;
          if (now.hostKeyFingerprint) {
            pinned = now.hostKeyFingerprint;
            return undefined;
          }
          now.hostKeyFingerprint = hostKeyFingerprint;
          return current;
        });
        if (pinned !== undefined && pinned !== hostKeyFingerprint) {
          throw new StorageError(
            'auth_failed',
            `the server's host key ${hostKeyFingerprint} is not the pinned ${pinned}; refusing to connect`,
          );
        }
        if (!saved) return;
        this.agent.log.info('pinned the SFTP server host key (first connection)', {
          host: saved.offsite.sftp.host,
          hostKeyFingerprint,
        });
      },
    };
  }

  /** The saved section of an enabled destination; 422 if it is off (as a Cloud DR push while DR is off). */
  private enabled<K extends OffsiteKind>(kind: K): DestinationSettings<K> {
    const section = this.saved(kind);
    if (!section.enabled) {
      throw new AppError(
        'unprocessable',
        `${DESTINATION_TITLES[kind]} is not turned on: turn it on and save the settings first`,
      );
    }
    return section;
  }

  /**
   * The one re-check of a running job's destination against the CURRENT settings (a PUT may turn it
   * off or point it elsewhere while the job runs): used before each upload and each delete.
   * `autoUpload`: the auto-upload path, for which auto-upload turned off counts as turned off.
   */
  watch<K extends OffsiteKind>(
    kind: K,
    started: DestinationSettings<K>,
    log: Logger,
    options: { autoUpload?: boolean } = {},
  ): DestinationWatch {
    let skipped: DestinationSkip | undefined;
    return {
      get skipped() {
        return skipped;
      },
      stillConfigured: (step) => {
        if (skipped) return false;
        const drift = destinationDrift(kind, started, this.saved(kind), options);
        if (!drift) return true;
        skipped = destinationSkip(kind, drift, options.autoUpload);
        log.info('a destination was turned off or changed during the job: left alone from here on', {
          destination: kind,
          reason: drift,
          before: step,
        });
        return false;
      },
    };
  }

  /** The re-check of the keep count a job's prune planned with (`started`), made before each deletion. */
  keepCount(started: number, log: Logger): KeepCountWatch {
    let stopped: string | undefined;
    return {
      get stopped() {
        return stopped;
      },
      stillPrunes: (name) => {
        if (stopped) return false;
        const now = this.agent.settings.get().autoBackup.maxBackups;
        if (now <= started) return true;
        stopped = keptRaisedMessage(started, now);
        log.info('the number of backups kept was raised during the job: pruning stopped', {
          planned: started,
          now,
          before: `deleting ${name}`,
        });
        return false;
      },
    };
  }

  /** Test Connection; with a body, on those (unsaved) settings. */
  async test(kind: OffsiteKind, body?: unknown): Promise<ConnectionTestResult> {
    const section = this.sectionFromBody(kind, body);
    return testConnection(kind, section, {
      ...this.options.providerOverrides?.[kind],
      ...this.trustOnFirstUse(kind, section),
    });
  }

  /** The remote backups of an enabled destination, newest first. */
  async listRemote(kind: OffsiteKind): Promise<RemoteBackup[]> {
    const section = this.enabled(kind);
    const provider = this.provider(kind, section);
    try {
      const [remote, local, pinned] = await Promise.all([
        provider.list(),
        this.agent.catalog.list(),
        this.agent.catalog.pinnedNames(),
      ]);
      const localOwners = new Map(
        local.map((b) => [b.filename, { installationTag: b.installationTag, installation: b.installation }]),
      );
      // The local copy says whose it is; the others' headers are read once per object (remembered).
      // Bounded: a first list of a folder of many copies (each header one request) stays quick; the
      // later ones fill in the rest, the page's newest rows first.
      const budget = { reads: LIST_HEADER_READS };
      const owners = await this.remoteOwners(provider, local, remote, undefined, budget);
      // A different backup under one of our names is not the local one: its own header says whose it is.
      const namesakes = await this.takenNames(undefined, provider, local, remote, undefined, budget);
      return remote
        .map((o): RemoteBackup => {
          const namesake = namesakes.get(o.name);
          const here = localOwners.has(o.name) && !namesake;
          const owner = namesake ?? (here ? localOwners.get(o.name) : owners.get(o.name));
          return {
            filename: o.name,
            size: o.size,
            ...(createdAtFromName(o.name) ? { createdAt: createdAtFromName(o.name) } : {}),
            ...(o.modifiedAt ? { modifiedAt: o.modifiedAt } : {}),
            ...(o.sha256 ? { sha256: o.sha256 } : {}),
            local: here,
            ...(pinned.has(o.name) ? { pinned: true } : {}),
            ...(owner
              ? {
                  installation: owner.installation,
                  ofThisInstallation: this.agent.keyring.isActive(owner.installationTag),
                }
              : {}),
          };
        })
        .sort((a, b) => b.filename.localeCompare(a.filename));
    } catch (error) {
      throw destinationAppError(kind, section, error);
    } finally {
      await provider.close?.().catch(() => undefined);
    }
  }

  /**
   * Deletes one remote backup (404 if it is not there). A pinned one is refused (409, nothing deleted):
   * the pin keeps its copies as it keeps the backup here, also once its local file was removed by hand.
   */
  async deleteRemote(kind: OffsiteKind, filename: string): Promise<void> {
    const name = checkBackupName(filename);
    const section = this.enabled(kind);
    if ((await this.agent.catalog.pinnedNames()).has(name))
      throw pinnedRefusal(
        name,
        `its copy on the ${DESTINATION_TITLES[kind]}`,
        await this.agent.catalog.exists(name),
      );
    const provider = this.provider(kind, section);
    try {
      await provider.delete(name);
      this.agent.log.info('remote backup deleted', { destination: kind, filename: name });
    } catch (error) {
      throw destinationAppError(kind, section, error);
    } finally {
      await provider.close?.().catch(() => undefined);
    }
  }

  /** Runs `work` with a provider for the enabled destination, turning its failures into readable ones. */
  private async withProvider<T>(
    kind: OffsiteKind,
    section: DestinationSettings,
    work: (provider: StorageProvider) => Promise<T>,
  ): Promise<T> {
    const provider = this.provider(kind, section as never);
    try {
      return await work(provider);
    } catch (error) {
      throw destinationError(kind, section, error);
    } finally {
      await provider.close?.().catch(() => undefined);
    }
  }

  private transferOptions(ctx: JobContext) {
    return {
      signal: ctx.signal,
      onProgress: (bytes: number) => ctx.progress(bytes),
      ...(this.options.retry ? { retry: this.options.retry } : {}),
      ...(this.options.stallTimeoutMs ? { stallTimeoutMs: this.options.stallTimeoutMs } : {}),
      onRetry: (error: { code: string }, attempt: number, delayMs: number) =>
        ctx.log.warn('a transfer failed and is retried', { code: error.code, attempt, delayMs }),
    };
  }

  /** Starts a job copying a remote backup into the local backups. */
  async startDownload(kind: OffsiteKind, filename: string): Promise<Job> {
    const name = checkBackupName(filename);
    const section = this.enabled(kind);
    if (await this.agent.catalog.exists(name))
      throw new AppError('conflict', `${name} is already in the local backups`);
    return this.agent.jobs.start(
      'download',
      (ctx) =>
        this.withProvider(kind, section, async (provider) => {
          ctx.phase(`downloading ${name}`, (await provider.stat(name, { signal: ctx.signal })).size);
          return downloadToCatalog(this.agent, provider, name, this.transferOptions(ctx));
        }),
      { mutating: false, target: name },
    );
  }

  /** Starts a restore job straight from a remote backup: download to a private work file, then the safe restore. */
  async startRestore(kind: OffsiteKind, filename: string, options: RestoreOptions = {}): Promise<Job> {
    const name = checkBackupName(filename);
    const section = this.enabled(kind);
    return this.agent.jobs.start(
      'restore',
      async (ctx) => {
        await mkdir(this.agent.paths.work, { recursive: true });
        const dir = await mkdtemp(join(this.agent.paths.work, `${TEMP_PREFIX}offsite-`));
        try {
          const path = join(dir, name);
          await this.withProvider(kind, section, async (provider) => {
            ctx.phase(`downloading ${name}`, (await provider.stat(name, { signal: ctx.signal })).size);
            // A copy the restore could not open is refused once its header is in, not after the download.
            await downloadToFile(provider, name, path, {
              ...this.transferOptions(ctx),
              checkHeader: async (header) => {
                if (options.resolveFileKey) return;
                await refuseWithoutKey(this.agent.keyring.masterKeys, header);
                await checkInstallation(this.agent.keyring, header, options.otherInstallation);
              },
            });
          });
          return {
            destination: kind,
            ...(await restoreFromFile(this.agent, ctx, path, { ...options, filename: name })),
          };
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
      { mutating: true, target: name },
    );
  }

  /** Starts Sync Now for an enabled destination. */
  async startSync(kind: OffsiteKind): Promise<Job> {
    const section = this.enabled(kind);
    return this.agent.jobs.start('sync', (ctx) => this.sync(kind, section, ctx), {
      mutating: true,
      target: kind,
    });
  }

  /**
   * Two-way sync under retention: the plan is made over the union of both sides, so only backups
   * retention keeps are transferred (local ones missing remotely go up, remote ones missing locally
   * come down), then what it drops is deleted on both sides. Any failed transfer fails the job and
   * skips the deletions, so nothing is pruned on a partial picture. Before each transfer and each
   * deletion the destination is re-checked (watch): turned off or changed meanwhile, the sync stops
   * there, prunes nothing more on either side (the plan counted its copies) and reports `skipped`.
   * A transfer already under way when that happens finishes (see uploadBackup: only retries stop).
   * The number of backups kept raised meanwhile (keepCount) stops the pruning on both sides too: the
   * plan made with the old count may delete what the new one keeps (`pruneStopped` says so).
   */
  async sync(kind: OffsiteKind, section: DestinationSettings, ctx: JobContext): Promise<SyncResult> {
    const result: SyncResult = { uploaded: [], downloaded: [], deleted: { remote: [], local: [] } };
    const record = (ok: boolean, error?: unknown) => {
      const entry: SyncRecord = { at: new Date().toISOString(), ok, ...structuredClone(result) };
      if (error) entry.error = describeError(error);
      return this.state.merge(kind, { lastSync: entry }).catch(() => undefined);
    };
    const watch = this.watch(kind, section, ctx.log);
    let keep: KeepCountWatch | undefined;
    try {
      await this.withProvider(kind, section, async (provider) => {
        ctx.phase('listing');
        if (!watch.stillConfigured('removing temp leftovers')) return;
        // Inside a mutating job no upload of ours is in flight: every temp leftover of ours is garbage. One
        // of another controller backing up into the same folder may be its upload in flight: only old ones.
        const startSweep = await this.sweep(kind, section, provider, 'own-at-any-age', ctx);
        if (startSweep.removed > 0) result.sweptTemp = startSweep.removed;
        // As local retention sees them: another installation's backup uploaded here by hand is foreign
        // (syncCandidates carries it), never counted toward maxBackups, never pruned, never spread.
        const [local, remote] = await Promise.all([
          localCandidates(this.agent),
          withRetryList(provider, this.options.retry, ctx.signal),
        ]);
        const foreign = await this.foreignNames(provider, local, remote, ctx.signal);
        if (foreign.size > 0) ctx.log.info('left alone: backups that are not ours', { names: [...foreign] });
        // Our name, another backup: not "there" (and never replaced); reported below as a failure.
        const taken = await this.takenNames(kind, provider, local, remote, ctx.signal);
        const pinned = await this.agent.catalog.pinnedNames();
        const candidates = syncCandidates(local, remote).map((c): SyncCandidate => {
          if (foreign.has(c.filename)) return { ...c, foreign: true };
          // The remote object is not our copy: never counted nor pruned as one.
          if (taken.has(c.filename)) {
            const { remote: _, ...ours } = c;
            return ours;
          }
          // Its local file removed by hand, the pin stays in the records: the copy is kept (and comes back).
          if (pinned.has(c.filename)) return { ...c, pinned: true };
          return c;
        });
        const maxBackups = this.agent.settings.get().autoBackup.maxBackups;
        keep = this.keepCount(maxBackups, ctx.log);
        const plan = planPrune(candidates, { maxBackups });
        const failures: string[] = [];
        const damaged: { filename: string; reason: string }[] = [];
        const options = this.transferOptions(ctx);
        let retried = false;
        const transfer = {
          ...options,
          onRetry: (...args: Parameters<typeof options.onRetry>) => {
            retried = true;
            options.onRetry(...args);
          },
          stillConfigured: () => watch.stillConfigured('retrying a transfer'),
        };
        const ordered = plan.keep.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
        for (const [index, candidate] of ordered.entries()) {
          ctx.throwIfCancelled();
          const name = candidate.filename;
          const namesake = taken.get(name);
          // Another installation's is neither fetched nor spread, whatever is under its name.
          if (namesake !== undefined && !candidate.foreign) {
            const message = nameTakenMessage(name, namesake.installation, namesake.ours);
            failures.push(`${name}: ${message}`);
            ctx.log.warn('a sync transfer failed', { destination: kind, filename: name, error: message });
            continue;
          }
          // The one rule of what moves: below, the side it is on says which way.
          if (!needsTransfer(candidate)) continue;
          try {
            if (candidate.local) {
              if (!watch.stillConfigured(`uploading ${name}`)) break;
              ctx.phase(`uploading ${name}`, candidate.local.size);
              // Just listed without this name: no other backup to look for under it.
              const stored = await uploadBackup(this.agent, provider, name, { ...transfer, absent: true });
              result.uploaded.push(name);
              ctx.notice('offsite-sync-upload', { destination: kind, backup: name, size: stored.size });
              // Counted like an auto-upload (health, metrics), as soon as it lands: oldest first, so the newest last.
              await this.state
                .recordSyncUpload(kind, {
                  at: new Date().toISOString(),
                  backup: name,
                  ok: true,
                  size: stored.size,
                  via: 'sync',
                })
                .catch((error: unknown) =>
                  ctx.log.warn('the offsite state could not be saved', {
                    error: describeError(error).message,
                  }),
                );
            } else if (candidate.remote) {
              const key = remoteHeaderKey(provider, candidate.remote);
              const known = this.damagedCopies.get(key);
              if (known !== undefined) {
                damaged.push({ filename: name, reason: known });
                continue;
              }
              if (!watch.stillConfigured(`downloading ${name}`)) break;
              ctx.phase(`downloading ${name}`, candidate.remote.size);
              await downloadToCatalog(this.agent, provider, name, transfer).catch((error: unknown) => {
                if (isDamagedCopy(error)) this.damagedCopies.set(key, damageOf(error));
                throw error;
              });
              result.downloaded.push(name);
            }
          } catch (error) {
            if (ctx.signal.aborted) throw error;
            if (error instanceof DestinationLeftAlone) break;
            if (isDamagedCopy(error)) {
              // Its own outcome: the rest of the sync goes on, and it is named at the end.
              damaged.push({ filename: name, reason: damageOf(error) });
              ctx.log.warn('a remote copy is damaged', {
                destination: kind,
                filename: name,
                error: error.message,
              });
              continue;
            }
            const { code, message } = describeDestinationError(kind, section, error);
            failures.push(`${name}: ${message}`);
            ctx.log.warn('a sync transfer failed', { destination: kind, filename: name, error: message });
            // Not answering (its retries spent): each further transfer would wait out the same timeouts.
            if (code === 'unreachable') {
              const rest = ordered
                .slice(index + 1)
                .filter((c) => needsTransfer(c) && !taken.has(c.filename))
                .map((c) => c.filename);
              if (rest.length > 0) {
                result.notAttempted = rest;
                ctx.log.warn('the destination is not answering: the other transfers were not attempted', {
                  destination: kind,
                  notAttempted: rest,
                });
              }
              break;
            }
          }
        }
        // Turned off or changed: its earlier failures are moot, and nothing is pruned on either side.
        if (watch.skipped) return;
        // An attempt given up on a stall may have left its temp file: the server that stopped answering let
        // it neither finish nor remove it. And the sweep at the start may have failed on one a dead session
        // of a server that just answered again still held open (SMB refuses to delete an open file). Every
        // transfer went through, so the server answers now: swept again, not left until the next sync.
        if ((retried || startSweep.failed) && failures.length === 0) {
          const { removed } = await this.sweep(kind, section, provider, 'own-at-any-age', ctx);
          if (removed > 0) result.sweptTemp = (result.sweptTemp ?? 0) + removed;
        }
        this.forgetDamaged(provider, remote);
        if (damaged.length > 0) result.damaged = damaged;
        if (failures.length > 0) {
          const also = damaged.length > 0 ? ` Also ${damagedCopiesMessage(kind, damaged)}.` : '';
          const rest = result.notAttempted ?? [];
          const skipped =
            rest.length > 0
              ? ` ${rest.length} other transfer${rest.length === 1 ? ' was' : 's were'} not attempted (the destination is not answering): ${rest.join(', ')}.`
              : '';
          throw new AppError(
            'dependency_down',
            `${failures.length} transfer${failures.length === 1 ? '' : 's'} failed; nothing was pruned. ${failures.join(' ')}${skipped}${also}`,
          );
        }
        // A damaged copy is no kept copy: the plan made without it deletes only what both plans delete,
        // never a good copy it would have replaced (the copies it keeps in its place stay where they are).
        const undamaged = new Set(
          planPrune(
            candidates.filter((c) => !damaged.some((d) => d.filename === c.filename)),
            { maxBackups },
          ).delete.map((c) => c.filename),
        );
        plan.delete = plan.delete.filter((c) => undamaged.has(c.filename));
        // Pins unknown (the backup records were damaged and set aside): nothing is pruned on either side.
        const hold = await this.agent.catalog.hold.get();
        if (hold) {
          result.pruneStopped = hold.message;
          if (plan.delete.length > 0)
            ctx.log.warn('the sync pruned nothing: pruning is paused', { reason: hold.message });
          return;
        }
        ctx.phase('pruning');
        for (const candidate of plan.delete) {
          // A running job (verify, download) reads it: it stays until a later sync.
          if (busyBackupNames(this.agent).has(candidate.filename)) continue;
          // Above all no deletion after it was turned off; nor locally, where the plan counted its copies.
          if (!watch.stillConfigured(`deleting ${candidate.filename}`)) break;
          // Raised meanwhile: the new count may keep it (and the older ones after it) on both sides.
          if (!keep.stillPrunes(candidate.filename)) break;
          // Pinned since the plan was made (the page, the CLI): kept on both sides. The local delete asks
          // again under the records' lock, for a pin that lands while the remote copy goes.
          if ((await this.agent.catalog.pinnedNames()).has(candidate.filename)) {
            ctx.log.info('kept a backup pinned while the sync ran', { filename: candidate.filename });
            continue;
          }
          if (candidate.remote) {
            await provider.delete(candidate.filename, { signal: ctx.signal });
            result.deleted.remote.push(candidate.filename);
          }
          if (candidate.local) {
            if (await this.agent.catalog.delete(candidate.filename, { unlessPinned: true }))
              result.deleted.local.push(candidate.filename);
            else ctx.log.info('kept a backup pinned while the sync ran', { filename: candidate.filename });
          }
        }
      });
    } catch (error) {
      await record(false, error);
      throw error;
    }
    if (watch.skipped) result.skipped = watch.skipped;
    if (keep?.stopped) result.pruneStopped = keep.stopped;
    if (result.damaged && !watch.skipped) {
      // Everything else was done: the job still fails, so that the damaged copies are not missed.
      const error = new AppError(
        'corrupt_backup',
        `The rest of the sync was done (pruning spared the good copies), but ${damagedCopiesMessage(kind, result.damaged)}.`,
        { details: { ...result } },
      );
      await record(false, error);
      ctx.log.warn('offsite sync done; damaged copies remain', { destination: kind, ...result });
      throw error;
    }
    await record(true);
    ctx.log.info('offsite sync done', { destination: kind, ...result });
    return result;
  }

  /** The destinations a new backup goes to: enabled, with auto-upload on. */
  autoUploadDestinations(): OffsiteKind[] {
    const offsite = this.agent.settings.get().offsite;
    return OFFSITE_KINDS.filter((kind) => offsite[kind].enabled && offsite[kind].autoUpload);
  }

  /**
   * Uploads a new backup to every auto-upload destination in parallel, each then pruned to maxBackups;
   * each outcome is recorded in offsite-state.json. Never throws: failures are in the result. A
   * destination turned off (or its auto-upload, or changed) meanwhile is re-checked before the sweep,
   * the upload (and its retries) and each deletion, and from then on left alone: `{ok: true, skipped}`.
   * The number of backups kept raised meanwhile stops the pruning there: `{ok: true, pruneStopped}`.
   */
  async uploadAfterBackup(
    backup: BackupInfo,
    ctx: JobContext,
  ): Promise<Partial<Record<OffsiteKind, AutoUploadResult>>> {
    const kinds = this.autoUploadDestinations();
    if (kinds.length === 0) return {};
    ctx.phase(`uploading to ${kinds.join(', ')}`, backup.size * kinds.length);
    const sent = new Map<OffsiteKind, number>();
    const report = () => ctx.progress([...sent.values()].reduce((a, b) => a + b, 0));
    const settings = this.agent.settings.get();
    const settled = await Promise.allSettled(
      kinds.map(async (kind): Promise<AutoUploadResult> => {
        const section = settings.offsite[kind];
        const watch = this.watch(kind, section, ctx.log, { autoUpload: true });
        return this.withProvider(kind, section, async (provider) => {
          const left = (extra: Partial<AutoUploadResult> = {}): AutoUploadResult => ({
            ok: true,
            ...extra,
            ...(watch.skipped ? { skipped: watch.skipped } : {}),
          });
          if (!watch.stillConfigured('removing temp leftovers')) return left();
          const { removed: sweptTemp } = await this.sweep(kind, section, provider, 'old-only', ctx);
          const swept = sweptTemp > 0 ? { sweptTemp } : {};
          if (!watch.stillConfigured(`uploading ${backup.filename}`)) return left(swept);
          const stored = await uploadBackup(this.agent, provider, backup.filename, {
            signal: ctx.signal,
            onProgress: (bytes) => {
              sent.set(kind, bytes);
              report();
            },
            ...(this.options.retry ? { retry: this.options.retry } : {}),
            ...(this.options.stallTimeoutMs ? { stallTimeoutMs: this.options.stallTimeoutMs } : {}),
            onRetry: (error, attempt) =>
              ctx.log.warn('an upload failed and is retried', {
                destination: kind,
                code: error.code,
                attempt,
              }),
            stillConfigured: () => watch.stillConfigured(`retrying the upload of ${backup.filename}`),
          }).catch((error: unknown) => {
            if (error instanceof DestinationLeftAlone) return undefined;
            if (error instanceof NameTakenError) return error;
            throw error;
          });
          if (stored instanceof NameTakenError) {
            // Its own words (not the provider failures' "did not match ... try again"): nothing to retry.
            this.markTaken(kind, backup.filename, true);
            return { ok: false, ...swept, error: { code: stored.code, message: stored.message } };
          }
          this.markTaken(kind, backup.filename, false);
          if (!stored) return left(swept);
          const keep = this.keepCount(settings.autoBackup.maxBackups, ctx.log);
          const pruned = await this.pruneRemote(
            provider,
            settings.autoBackup.maxBackups,
            [backup.filename],
            ctx.signal,
            (name) => watch.stillConfigured(`deleting ${name}`) && keep.stillPrunes(name),
          ).catch((error: unknown) => {
            ctx.log.warn('pruning a destination failed; the upload itself is done', {
              destination: kind,
              error: describeDestinationError(kind, section, error).message,
            });
            return [];
          });
          const done = {
            size: stored.size,
            pruned,
            ...swept,
            ...(keep.stopped ? { pruneStopped: keep.stopped } : {}),
          };
          return watch.skipped ? left(done) : { ok: true, ...done };
        });
      }),
    );
    const results: Partial<Record<OffsiteKind, AutoUploadResult>> = {};
    for (const [i, outcome] of settled.entries()) {
      const kind = kinds[i]!;
      // Cancelled only when the Cancel is what stopped it: a destination that had failed on its own
      // (refused, unreachable) before the Cancel came is recorded as the failure it is.
      if (outcome.status === 'rejected' && ctx.signal.aborted && stoppedByCancel(outcome.reason)) {
        // Stopped by the person's Cancel, not by the destination: nothing is recorded against it (its
        // health then says the newest backup is not there yet, and Sync Now sends it).
        results[kind] = { ok: false, error: { code: 'cancelled', message: UPLOAD_CANCELLED } };
        ctx.log.info('an offsite upload was cancelled with its job; the backup itself is good', {
          destination: kind,
        });
        continue;
      }
      const result: AutoUploadResult =
        outcome.status === 'fulfilled' ? outcome.value : { ok: false, error: describeError(outcome.reason) };
      results[kind] = result;
      const entry: UploadRecord = {
        at: new Date().toISOString(),
        backup: backup.filename,
        ok: result.ok,
        ...(result.size !== undefined ? { size: result.size } : {}),
        ...(result.pruned?.length ? { pruned: result.pruned } : {}),
        ...(result.error ? { error: result.error } : {}),
        ...(result.skipped ? { skipped: result.skipped } : {}),
        ...(result.pruneStopped ? { pruneStopped: result.pruneStopped } : {}),
      };
      await this.state
        .recordUpload(kind, entry)
        .catch((error: unknown) =>
          ctx.log.warn('the offsite state could not be saved', { error: describeError(error).message }),
        );
      if (!result.ok)
        ctx.log.warn('an offsite upload failed; the backup itself is good', {
          destination: kind,
          error: result.error?.message,
        });
    }
    return results;
  }

  /**
   * Removes a destination's temp leftovers of earlier failed uploads: those at least SWEEP_AGE_MS old, and
   * with 'own-at-any-age' (only where none of this installation's uploads can be in flight) its own of any
   * age (uploadTempTag); returns how many, and whether the sweep failed. Best effort: a failed sweep is
   * logged and the job goes on (a down server fails the transfer that follows anyway).
   */
  private async sweep(
    kind: OffsiteKind,
    section: DestinationSettings,
    provider: StorageProvider,
    which: 'own-at-any-age' | 'old-only',
    ctx: JobContext,
  ): Promise<{ removed: number; failed: boolean }> {
    try {
      const { removed, skipped } = await sweepLeftovers(provider, {
        olderThanMs: SWEEP_AGE_MS,
        ...(which === 'own-at-any-age' ? { tempTag: uploadTempTag(this.agent.keyring.installationId) } : {}),
        signal: ctx.signal,
        ...(this.options.stallTimeoutMs ? { stallTimeoutMs: this.options.stallTimeoutMs } : {}),
      });
      if (skipped) ctx.log.info('temp leftovers not swept', { destination: kind, reason: skipped });
      if (removed.length > 0)
        ctx.log.info('removed temp leftovers of failed uploads', { destination: kind, removed });
      return { removed: removed.length, failed: false };
    } catch (error) {
      ctx.throwIfCancelled();
      ctx.log.warn('removing temp leftovers of failed uploads failed', {
        destination: kind,
        error: describeDestinationError(kind, section, error).message,
      });
      return { removed: 0, failed: true };
    }
  }

  /**
   * Deletes the remote backups retention drops under `maxBackups`; returns the names deleted (none while
   * pruning is held). `stillConfigured` is asked before each deletion: false stops the pruning there.
   * The pins are read again before each deletion: a backup pinned meanwhile keeps its copy there.
   */
  async pruneRemote(
    provider: StorageProvider,
    maxBackups: number,
    protect: string[] = [],
    signal?: AbortSignal,
    stillConfigured: (name: string) => boolean = () => true,
  ): Promise<string[]> {
    // Another installation's backup here is foreign (localCandidates): its copy there is not counted nor pruned.
    const [local, remote] = await Promise.all([localCandidates(this.agent), provider.list({ signal })]);
    const foreign = await this.foreignNames(provider, local, remote, signal);
    // A different backup under one of our names is not our copy either: never pruned.
    const taken = await this.takenNames(undefined, provider, local, remote, signal);
    // A pinned name is never pruned, its local file here or removed by hand (the pin outlives it).
    const pinned = await this.agent.catalog.pinnedNames();
    const ours = remote.filter((o) => !foreign.has(o.name) && !taken.has(o.name) && !pinned.has(o.name));
    const doomed = planRemotePrune(local, ours, maxBackups, [...protect, ...busyBackupNames(this.agent)]);
    // The plan follows the local pins: unknown while pruning is held (asked after the list, which finds
    // a damaged records file), so nothing is deleted.
    const hold = await this.agent.catalog.hold.get();
    if (hold) {
      if (doomed.length > 0) {
        this.agent.log.warn('retention deleted nothing at a destination: pruning is paused', {
          destination: provider.id,
          reason: hold.message,
        });
      }
      return [];
    }
    const deleted: string[] = [];
    for (const name of doomed) {
      if (!stillConfigured(name)) break;
      // Pinned since the plan was made (the page, the CLI): its copy there is kept.
      if ((await this.agent.catalog.pinnedNames()).has(name)) {
        this.agent.log.info('kept the copy of a backup pinned while retention pruned a destination', {
          destination: provider.id,
          filename: name,
        });
        continue;
      }
      await provider.delete(name, { signal });
      deleted.push(name);
    }
    if (deleted.length)
      this.agent.log.info('retention pruned remote backups', { destination: provider.id, deleted });
    return deleted;
  }

  /**
   * The names of the remote backups that are not ours: not in the local catalog, and their header
   * (read without a key) names no key we hold or an installation we never were (another controller
   * writing to the same folder), or cannot be read at all. Retention neither counts nor deletes them,
   * and sync does not fetch them.
   */
  private async foreignNames(
    provider: StorageProvider,
    local: BackupInfo[],
    remote: StoredObject[],
    signal?: AbortSignal,
  ): Promise<Set<string>> {
    const owners = await this.remoteOwners(provider, local, remote, signal);
    const foreign = new Set<string>();
    for (const [name, owner] of owners) {
      if (!owner || !this.agent.keyring.owns(owner.installationTag, owner.keyIds)) foreign.add(name);
    }
    return foreign;
  }

  /**
   * Whose each remote backup that is not in the local catalog is, from its header; undefined when
   * unknown. An object that is not a backup is remembered as such, a read that failed otherwise
   * (unreachable) is tried again next time.
   */
  private async remoteOwners(
    provider: StorageProvider,
    local: BackupInfo[],
    remote: StoredObject[],
    signal?: AbortSignal,
    /** Headers not yet known left to read (newest first; counted down); the others stay unknown for now. */
    budget: HeaderReads = { reads: Number.POSITIVE_INFINITY },
  ): Promise<Map<string, RemoteOwner | undefined>> {
    const localNames = new Set(local.map((b) => b.filename));
    const owners = new Map<string, RemoteOwner | undefined>();
    for (const object of [...remote].sort((a, b) => b.name.localeCompare(a.name))) {
      if (localNames.has(object.name) || !isBackupName(object.name)) continue;
      const known = this.remoteHeaders.has(remoteHeaderKey(provider, object));
      if (!known && budget.reads <= 0) {
        owners.set(object.name, undefined);
        continue;
      }
      if (!known) budget.reads--;
      const header = await this.knownOrReadHeader(provider, object, signal);
      owners.set(
        object.name,
        header
          ? {
              installationTag: header.core.installationTag,
              installation: header.core.installationPrefix,
              keyIds: stanzaKeyIds(header.stanzas),
            }
          : undefined,
      );
    }
    this.forgetUnlisted(provider, remote);
    return owners;
  }

  /**
   * Our backups whose name the destination holds with a DIFFERENT backup (its header is not the local
   * file's: another controller made one in the same second), each with that backup's installation
   * (the prefix its header names, and its tag).
   * An object that is no backup is not a different backup (an upload replaces it).
   */
  private async takenNames(
    kind: OffsiteKind | undefined,
    provider: StorageProvider,
    local: BackupInfo[],
    remote: StoredObject[],
    signal?: AbortSignal,
    /** As remoteOwners': a header not read for want of it counts as our copy for now (`kind` then unset). */
    budget: HeaderReads = { reads: Number.POSITIVE_INFINITY },
  ): Promise<Map<string, { installation: string; installationTag: string; ours: boolean }>> {
    const localNames = new Set(local.map((b) => b.filename));
    const taken = new Map<string, { installation: string; installationTag: string; ours: boolean }>();
    for (const object of [...remote].sort((a, b) => b.name.localeCompare(a.name))) {
      if (!localNames.has(object.name)) continue;
      if (!this.remoteHeaders.has(remoteHeaderKey(provider, object))) {
        if (budget.reads <= 0) continue;
        budget.reads--;
      }
      const header = await this.knownOrReadHeader(provider, object, signal);
      if (!header) continue;
      const mine = await readHeaderOfFile(this.agent.catalog.pathOf(object.name)).catch(() => undefined);
      if (mine && !sameHeader(header, mine)) {
        taken.set(object.name, {
          installation: header.core.installationPrefix,
          installationTag: header.core.installationTag,
          ours: header.core.installationTag === mine.core.installationTag,
        });
      }
    }
    this.forgetUnlisted(provider, remote);
    if (kind !== undefined) this.taken.set(kind, new Set(taken.keys()));
    return taken;
  }

  /**
   * The header of a remote object, remembered or read (and then remembered): null when the object is
   * not a backup, undefined when the read failed otherwise (logged, and not remembered: tried again
   * next time).
   */
  private async knownOrReadHeader(
    provider: StorageProvider,
    object: StoredObject,
    signal?: AbortSignal,
  ): Promise<EnvelopeHeader | null | undefined> {
    const key = remoteHeaderKey(provider, object);
    if (this.remoteHeaders.has(key)) return this.remoteHeaders.get(key);
    const header = await readRemoteHeader(provider, object.name, signal).catch((error: unknown) => {
      if (signal?.aborted) throw error;
      if (notABackup(error)) return null;
      this.agent.log.warn('the header of a remote backup could not be read; it is left alone', {
        destination: provider.id,
        filename: object.name,
        error: describeError(error).message,
      });
      return undefined;
    });
    if (header !== undefined) this.remoteHeaders.set(key, header);
    return header;
  }

  /**
   * Forgets the headers of what `provider` no longer lists (`remote` is its whole list): in a folder
   * shared with an installation whose backups rotate, every name it ever had would otherwise stay
   * for the agent's lifetime.
   */
  private forgetUnlisted(provider: StorageProvider, remote: StoredObject[]): void {
    const listed = new Set(remote.map((object) => remoteHeaderKey(provider, object)));
    for (const key of this.remoteHeaders.keys()) {
      if (key.startsWith(`${provider.id}\n`) && !listed.has(key)) this.remoteHeaders.delete(key);
    }
  }

  /** Forgets the damaged copies `provider` no longer lists as they were (deleted, or replaced by a good one). */
  private forgetDamaged(provider: StorageProvider, remote: StoredObject[]): void {
    const listed = new Set(remote.map((object) => remoteHeaderKey(provider, object)));
    for (const key of this.damagedCopies.keys()) {
      if (key.startsWith(`${provider.id}\n`) && !listed.has(key)) this.damagedCopies.delete(key);
    }
  }

  /** Remembers (or forgets) that a backup's name is taken at a destination by a different backup. */
  private markTaken(kind: OffsiteKind, name: string, taken: boolean): void {
    const names = this.taken.get(kind) ?? new Set<string>();
    if (taken) names.add(name);
    else names.delete(name);
    this.taken.set(kind, names);
  }

  /**
   * Whether the last look (a sync, an auto-upload) found `name` taken at the destination by a different
   * backup: a list showing the name does not mean our backup is there (health).
   */
  nameTakenAt(kind: OffsiteKind, name: string): boolean {
    return this.taken.get(kind)?.has(name) ?? false;
  }

  /** Per destination: on/off, auto-upload, last upload and last sync (for health and the page). */
  async status(): Promise<Record<OffsiteKind, { enabled: boolean; autoUpload: boolean } & DestinationState>> {
    const offsite = this.agent.settings.get().offsite;
    const state = await this.state.get();
    const out = {} as Record<OffsiteKind, { enabled: boolean; autoUpload: boolean } & DestinationState>;
    for (const kind of OFFSITE_KINDS) {
      out[kind] = { enabled: offsite[kind].enabled, autoUpload: offsite[kind].autoUpload, ...state[kind] };
    }
    return out;
  }
}

function withRetryList(
  provider: StorageProvider,
  retry: RetryPolicy | undefined,
  signal: AbortSignal,
): Promise<StoredObject[]> {
  return withRetry(() => provider.list({ signal }), { ...retry, signal });
}

/** Headers not yet known read by one list of a destination (the page's list, `list --from`, the key check). */
const LIST_HEADER_READS = 10;

const services = new WeakMap<Agent, OffsiteService>();

/** The agent's one offsite service; `options` (tests: shorter retries and timeouts) replace its current ones. */
export function offsiteServiceFor(agent: Agent, options?: OffsiteServiceOptions): OffsiteService {
  let service = services.get(agent);
  if (!service) {
    service = new OffsiteService(agent, options);
    services.set(agent, service);
  } else if (options) {
    service.configure(options);
  }
  return service;
}

/**
 * The after-backup hook: uploads the new backup to every auto-upload destination. A failed destination
 * is recorded and makes this step report `{ok: false, error}` in the backup job's result (the backup
 * itself stays good); per-destination outcomes also go out as a job notice `offsite-upload`.
 */
export function offsiteUploadHook(agent: Agent): AfterBackupHook {
  return async function offsiteUpload(backup, ctx) {
    const results = await offsiteServiceFor(agent).uploadAfterBackup(backup, ctx);
    ctx.notice('offsite-upload', results);
    const failed = Object.entries(results).filter(([, r]) => !r.ok);
    if (failed.length > 0) {
      const message = failed
        .map(([kind, r]) => `${DESTINATION_TITLES[kind as OffsiteKind]}: ${r.error?.message}`)
        .join('; ');
      // The outcomes stay in the job's result with the failure (a page that missed the notice reads them
      // there). Only when the job's Cancel stopped every one of them is the step cancelled, not failed.
      const cancelled = failed.every(([, r]) => r.error?.code === 'cancelled');
      throw new AppError(cancelled ? 'cancelled' : 'dependency_down', message, { details: results });
    }
    return results;
  };
}
