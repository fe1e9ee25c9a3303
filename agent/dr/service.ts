/** Cloud DR for one agent: status, push now, the nightly push, opt-out deletion (retried until confirmed), recovery. */
import type { Settings } from '../../shared/api/settings';
import type { Agent } from '../agent';
import { AppError, describeError } from '../errors';
import { acquireLock } from '../jobs/lock';
import type { Job } from '../jobs/runner';
import { AWAITING_RESTORE_REASON, LastRestoreStore } from '../restore/last-restore';
import { DrClient, type DrFaults } from './client';
import { DEFAULT_TUNING, type PushTuning, pushToCloud } from './push';
import { abandonRecovery, type RecoverFaults, recoverFromCloud, whatRecoveryReplaces } from './recover';
import { type NightlyTimer, nextNightlyRun, scheduleNightly } from './schedule';
import { type DrPushRecord, type DrRecoveredCopy, type DrState, DrStateStore } from './state';
import {
  INSTALLATION_ID_RULE,
  normalizeInstallationId,
  type UnfinishedRecovery,
  UnfinishedRecoveryFile,
} from './unfinished';

export interface DrServiceOptions {
  tuning?: Partial<PushTuning>;
  faults?: DrFaults;
  /** Socket idle timeout of one cloud request. */
  timeoutMs?: number;
  /** Opt-out deletion retries: first delay, doubled after each failure up to the max. */
  deletionRetry?: { firstMs: number; maxMs: number };
  now?: () => Date;
  /** Read at each recovery, so a test can change them between attempts. */
  recoverFaults?: RecoverFaults;
}

/** What `GET /api/v1/dr/status` returns. */
export interface DrStatus {
  /** Pushes happen: an endpoint is configured and the settings have Cloud DR on. */
  enabled: boolean;
  configured: boolean;
  url: string | null;
  /** Why DR is not pushing, in words (null when it is). */
  reason: string | null;
  installationId: string;
  nextRunAt: string | null;
  /** NODE_ENV=development: the nightly push is skipped (a push now still runs). */
  nightlySkipped: boolean;
  running: boolean;
  jobId: string | null;
  lastPush: DrPushRecord | null;
  lastSuccess: DrPushRecord | null;
  /**
   * The cloud copy this box was recovered from, while no push from here has replaced it (a push after
   * the recovery, or none made: null).
   */
  recovered: DrRecoveredCopy | null;
  pendingDeletion: DrState['pendingDeletion'] | null;
  escrowKid: string | null;
  upload: { backup: string; uploadId: string } | null;
  /**
   * A recovery from the DR cloud that stopped after its keys were installed: the box carries the
   * recovered identity without the recovered data, and every push is refused until it is finished
   * (`dr recover` again) or given up (`dr recover --abandon`). Null when there is none.
   */
  unfinishedRecovery: UnfinishedRecovery | null;
}

export class DrService {
  readonly state: DrStateStore;
  /** dr-recovery.json: an unfinished recovery, read from disk at each question. */
  readonly unfinished: UnfinishedRecoveryFile;
  readonly client: DrClient | undefined;
  private readonly tuning: PushTuning;
  private pushJobId: string | undefined;
  private nightly: NightlyTimer | undefined;
  private started = false;
  private deletionTimer: NodeJS.Timeout | undefined;
  private deletion: Promise<void> | undefined;

  constructor(
    private readonly agent: Agent,
    private readonly options: DrServiceOptions = {},
  ) {
    this.state = new DrStateStore(`${agent.config.dataDir}/dr-state.json`);
    this.unfinished = new UnfinishedRecoveryFile(agent.paths.drRecovery);
    this.tuning = { ...DEFAULT_TUNING, ...options.tuning };
    if (agent.config.drUrl) {
      this.client = new DrClient({
        baseUrl: agent.config.drUrl,
        identity: () => ({
          installationId: agent.keyring.installationId,
          signingKey: agent.keyring.signingKey,
        }),
        ...(agent.config.drEnrollmentToken ? { enrollmentToken: agent.config.drEnrollmentToken } : {}),
        ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}),
        ...(options.faults ? { faults: options.faults } : {}),
      });
    }
    agent.settings.subscribe((previous, next) => this.onSettingsChanged(previous, next));
    // A key import (here, or `gem-backup keys import` beside the running agent) changes the identity:
    // the nightly offset follows it now, not at the next start.
    agent.keyring.onIdentityChanged((installationId) => {
      if (!this.started || this.nightly?.installationId === installationId) return;
      this.agent.log.info('the installation id changed: the nightly Cloud DR push is re-armed');
      this.rearmKeepingTonight();
    });
  }

  /**
   * Arms the nightly push and resumes a pending opt-out deletion (main.ts calls this once). An opt-out
   * whose deletion was never recorded (the settings were saved, then the state write failed or the
   * process died before the listener ran) is recorded and completed here.
   */
  async start(): Promise<void> {
    this.started = true;
    this.armNightly();
    const s = await this.state.get();
    if (!s.pendingDeletion && !this.agent.settings.get().cloudDr.enabled && cloudCopyMayExist(s)) {
      this.agent.log.warn(
        'Cloud DR is turned off but its cloud copy was not deleted: completing the opt-out',
      );
      try {
        await this.state.update((x) => {
          x.pendingDeletion ??= { since: this.now().toISOString(), attempts: 0 };
        });
      } catch (error) {
        // Nothing recorded, nothing lost: the next start finds the same state and tries again.
        this.agent.log.error('the unfinished Cloud DR opt-out could not be recorded', {
          error: describeError(error),
        });
      }
    }
    if ((await this.state.get()).pendingDeletion) this.kickDeletion();
  }

  stop(): void {
    this.started = false;
    this.nightly?.stop();
    this.nightly = undefined;
    if (this.deletionTimer) clearTimeout(this.deletionTimer);
    this.deletionTimer = undefined;
  }

  /** Why pushes cannot happen now, or null. */
  disabledReason(): string | null {
    if (!this.client) return 'Cloud DR is off: no endpoint is configured (GEM_DR_URL is not set)';
    if (!this.agent.settings.get().cloudDr.enabled) return 'Cloud DR is turned off in the settings';
    return null;
  }

  /**
   * The recovery that did not finish, if the box carries its identity: pushes are refused while it is
   * there. Its `reason` (no installation id) is the health area's sentence.
   */
  unfinishedRecovery(): Promise<UnfinishedRecovery | null> {
    return this.unfinished.current(this.agent.keyring);
  }

  /** Throws the owner's sentence while a recovery is unfinished: no push may replace the good cloud copy. */
  private async refuseWhileRecoveryUnfinished(): Promise<void> {
    const unfinished = await this.unfinishedRecovery();
    if (unfinished) throw new AppError('unprocessable', unfinished.message);
  }

  async status(): Promise<DrStatus> {
    const s = await this.state.get();
    const unfinishedRecovery = await this.unfinishedRecovery();
    const reason = this.disabledReason();
    const job = this.pushJobId ? this.agent.jobs.get(this.pushJobId) : undefined;
    const running = job !== undefined && !job.endedAt;
    const next = reason
      ? null
      : nextNightlyRun(this.agent.keyring.installationId, this.timezone(), this.now());
    return {
      enabled: reason === null,
      configured: this.client !== undefined,
      url: this.client?.baseUrl ?? null,
      reason,
      installationId: this.agent.keyring.installationId,
      nextRunAt: next?.toISOString() ?? null,
      nightlySkipped: this.agent.config.nodeEnv === 'development',
      running,
      jobId: running ? (this.pushJobId ?? null) : null,
      lastPush: s.lastPush ?? null,
      lastSuccess: s.lastSuccess ?? null,
      recovered: recoveredCopy(s),
      pendingDeletion: s.pendingDeletion ?? null,
      escrowKid: s.escrow?.kid ?? null,
      upload: s.upload ? { backup: s.upload.backupName, uploadId: s.upload.uploadId } : null,
      unfinishedRecovery,
    };
  }

  /** Starts a push job (kind 'dr-push'); refused when DR is off or a push is already running. */
  /**
   * Starts a push. `dataIsCurrent`: the owner says the data here is the installation's although its
   * keys were imported with no restore since (only the agent's data dir was lost): recorded, and the push goes.
   */
  async startPush(
    trigger: DrPushRecord['trigger'] = 'manual',
    options: { dataIsCurrent?: boolean } = {},
  ): Promise<Job> {
    const reason = this.disabledReason();
    if (reason || !this.client) throw new AppError('unprocessable', reason ?? 'Cloud DR is off');
    const current = this.pushJobId ? this.agent.jobs.get(this.pushJobId) : undefined;
    if (current && !current.endedAt) throw new AppError('job_running', 'a Cloud DR push is already running');
    await this.refuseWhileRecoveryUnfinished();
    const restores = new LastRestoreStore(this.agent.paths.lastRestore, this.agent.log);
    const installationId = this.agent.keyring.installationId;
    if (options.dataIsCurrent && (await restores.awaitingRestore(installationId))) {
      await restores.confirmCurrent(this.now(), installationId);
      this.agent.log.info("the owner confirmed the data as the installation's after a keys import");
    }
    if (await restores.awaitingRestore(installationId))
      throw new AppError('unprocessable', AWAITING_RESTORE_REASON);
    const client = this.client;
    // Not exclusive: a push only reads local backups (through an open handle) and adds a temporary one.
    const job = await this.agent.jobs.start(
      'dr-push',
      async (ctx) => {
        const at = this.now().toISOString();
        try {
          // Asked again once the bytes are chosen: a recovery may have run while this push waited for
          // the job lock to make its temporary backup.
          const result = await pushToCloud(
            {
              agent: this.agent,
              client,
              state: this.state,
              tuning: this.tuning,
              now: () => this.now(),
              beforeUpload: () => this.refuseWhileRecoveryUnfinished(),
            },
            ctx,
          );
          const record: DrPushRecord = {
            at,
            trigger,
            outcome: 'succeeded',
            size: result.size,
            sha256: result.sha256,
            createdAt: result.createdAt,
            backup: result.backup,
            reused: result.reused,
            multipart: result.multipart,
          };
          await this.state.update((s) => {
            s.lastPush = record;
            s.lastSuccess = record;
          });
          ctx.log.info('Cloud DR push succeeded', { backup: result.backup, size: result.size });
          return result;
        } catch (error) {
          await this.state.update((s) => {
            s.lastPush = { at, trigger, outcome: 'failed', error: describeError(error) };
          });
          throw error;
        }
      },
      { mutating: false },
    );
    this.pushJobId = job.id;
    return job;
  }

  /**
   * Starts a recovery job (kind 'dr-recover', exclusive): see recoverFromCloud. The id may be typed in
   * upper case and grouped with spaces or dashes. A push still running is cancelled first: its requests
   * would be signed with the recovered identity once the keys change. On a box that is not a fresh
   * install (whatRecoveryReplaces) it needs `confirmed`, as a restore does: refused otherwise (400,
   * nothing changed) with what would be replaced and `howToConfirm` (the API's or the CLI's words).
   */
  async startRecover(
    installationId: string,
    options: { confirmed?: boolean; howToConfirm?: string } = {},
  ): Promise<Job> {
    if (!this.client) {
      throw new AppError('unprocessable', 'Cloud DR recovery needs an endpoint: GEM_DR_URL is not set');
    }
    const id = normalizeInstallationId(installationId);
    if (id === undefined) throw new AppError('bad_request', INSTALLATION_ID_RULE);
    if (!options.confirmed) {
      const replaced = await whatRecoveryReplaces({
        agent: this.agent,
        state: this.state,
        unfinished: this.unfinished,
      });
      if (replaced) {
        throw new AppError('bad_request', `${replaced}: ${options.howToConfirm ?? 'confirm to recover'}`);
      }
    }
    const client = this.client;
    await this.pushEnded();
    return this.agent.jobs.start(
      'dr-recover',
      async (ctx) => {
        const result = await recoverFromCloud(
          {
            agent: this.agent,
            client,
            state: this.state,
            unfinished: this.unfinished,
            ...(this.options.recoverFaults ? { faults: this.options.recoverFaults } : {}),
          },
          ctx,
          id,
        );
        // The identity changed: the nightly offset follows it.
        if (this.started) this.armNightly();
        return result;
      },
      // No target: the installation id is the recovery credential, and a job's target is logged and kept.
      { mutating: true },
    );
  }

  /**
   * Gives up an unfinished recovery (`dr recover --abandon`): this box goes back to its own identity,
   * see abandonRecovery. Under the job lock, so no recovery or restore runs meanwhile. False: there was none.
   */
  async abandonRecovery(): Promise<boolean> {
    const release = await acquireLock(this.agent.jobs.lockPath, 'dr-recover abandon');
    try {
      const abandoned = await abandonRecovery({
        agent: this.agent,
        state: this.state,
        unfinished: this.unfinished,
      });
      if (abandoned) this.agent.log.info('an unfinished recovery from the DR cloud was given up');
      return abandoned;
    } finally {
      await release();
    }
  }

  /** The nightly run: skipped (and recorded) in development or while a recovery is unfinished, silent when DR is off. */
  async runNightly(): Promise<void> {
    if (this.disabledReason()) return;
    const at = this.now().toISOString();
    const unfinished = await this.unfinishedRecovery().catch((error: unknown) => ({
      reason: describeError(error).message,
    }));
    if (unfinished) {
      // Not the installation id: it is the recovery credential, and logs are not the place for it.
      this.agent.log.warn(`Cloud DR nightly push not run: ${unfinished.reason}`);
      await this.state.update((s) => {
        s.lastPush = { at, trigger: 'nightly', outcome: 'skipped', reason: unfinished.reason };
      });
      return;
    }
    if (this.agent.config.nodeEnv === 'development') {
      this.agent.log.info('Cloud DR nightly push skipped: NODE_ENV=development');
      await this.state.update((s) => {
        s.lastPush = { at, trigger: 'nightly', outcome: 'skipped', reason: 'NODE_ENV=development' };
      });
      return;
    }
    const restores = new LastRestoreStore(this.agent.paths.lastRestore, this.agent.log);
    if (await restores.awaitingRestore(this.agent.keyring.installationId)) {
      this.agent.log.warn(`Cloud DR nightly push not run: ${AWAITING_RESTORE_REASON}`);
      await this.state.update((s) => {
        s.lastPush = { at, trigger: 'nightly', outcome: 'skipped', reason: AWAITING_RESTORE_REASON };
      });
      return;
    }
    try {
      const job = await this.startPush('nightly');
      await this.agent.jobs.waitFor(job.id);
    } catch (error) {
      this.agent.log.warn('the nightly Cloud DR push could not start', { error: describeError(error) });
    }
  }

  /** Resolves when no opt-out deletion attempt is in flight (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.deletion) await this.deletion;
  }

  private onSettingsChanged(previous: Settings, next: Settings): Promise<void> | void {
    if (previous.autoBackup.timezone !== next.autoBackup.timezone && this.started) this.armNightly();
    if (previous.cloudDr.enabled && !next.cloudDr.enabled) return this.optOut();
    if (!previous.cloudDr.enabled && next.cloudDr.enabled) return this.optBackIn();
  }

  /** Records the deletion as owed before trying it, so that no failure or restart can lose it. */
  private async optOut(): Promise<void> {
    await this.state.update((s) => {
      s.pendingDeletion = { since: this.now().toISOString(), attempts: 0 };
    });
    const push = this.pushJobId ? this.agent.jobs.get(this.pushJobId) : undefined;
    if (push && !push.endedAt) this.agent.jobs.cancel(push.id);
    this.agent.log.info('Cloud DR turned off: the cloud copy will be deleted');
    this.kickDeletion();
  }

  /** Cancels a running push (if not yet cancelled) and resolves once it has ended. */
  private async pushEnded(): Promise<void> {
    const push = this.pushJobId ? this.agent.jobs.get(this.pushJobId) : undefined;
    if (!push || push.endedAt) return;
    try {
      this.agent.jobs.cancel(push.id);
    } catch {
      // it ended meanwhile
    }
    await this.agent.jobs.waitFor(push.id);
  }

  private async optBackIn(): Promise<void> {
    if (!(await this.state.get()).pendingDeletion) return;
    await this.state.update((s) => {
      delete s.pendingDeletion;
    });
    this.agent.log.info(
      'Cloud DR turned back on before the cloud copy was deleted; the deletion is called off',
    );
  }

  private kickDeletion(): void {
    if (this.deletion) return;
    if (this.deletionTimer) clearTimeout(this.deletionTimer);
    this.deletionTimer = undefined;
    this.deletion = this.attemptDeletion().finally(() => {
      this.deletion = undefined;
    });
  }

  private async attemptDeletion(): Promise<void> {
    // A push cancelled by the opt-out may still be completing its upload: the delete waits for it to
    // end, or that completion could land after the delete and fill the slot again.
    await this.pushEnded();
    const s = await this.state.get();
    if (!s.pendingDeletion) return;
    if (!s.enrollment) {
      // Never enrolled from this data dir: nothing was ever pushed, there is nothing to delete.
      await this.state.update((x) => {
        delete x.pendingDeletion;
        delete x.lastSuccess;
        delete x.recovered;
      });
      return;
    }
    try {
      if (!this.client)
        throw new AppError('unprocessable', 'GEM_DR_URL is not set: the cloud copy cannot be deleted yet');
      if (s.upload) {
        await this.client.abortUpload(s.upload.uploadId);
        const temporary = s.upload.temporary ? s.upload.backupName : undefined;
        await this.state.update((x) => {
          delete x.upload;
        });
        if (temporary) await this.agent.catalog.delete(temporary).catch(() => {});
      }
      const deleted = await this.client.deleteSlot();
      // The cloud holds no copy now: a last success would be checked against an empty slot, and would
      // make start() take the opt-out as unfinished. The last push stays as history.
      await this.state.update((x) => {
        delete x.pendingDeletion;
        delete x.lastSuccess;
        delete x.recovered;
      });
      this.agent.log.info('the Cloud DR copy was deleted', { hadBackup: deleted });
    } catch (error) {
      const updated = await this.state.update((x) => {
        if (!x.pendingDeletion) return;
        x.pendingDeletion.attempts += 1;
        x.pendingDeletion.lastAttemptAt = this.now().toISOString();
        x.pendingDeletion.lastError = describeError(error);
      });
      const attempts = updated.pendingDeletion?.attempts ?? 1;
      const { firstMs, maxMs } = this.options.deletionRetry ?? { firstMs: 60_000, maxMs: 3600_000 };
      const delay = Math.min(maxMs, firstMs * 2 ** (attempts - 1));
      this.agent.log.warn('deleting the Cloud DR copy failed; it will be retried', {
        attempts,
        retryInMs: delay,
        error: describeError(error),
      });
      if (updated.pendingDeletion) {
        this.deletionTimer = setTimeout(() => this.kickDeletion(), delay);
        this.deletionTimer.unref();
      }
    }
  }

  /** When the armed nightly timer fires next (null: not armed); it follows the current installation id. */
  nextNightlyAt(): Date | null {
    return this.nightly?.nextRun() ?? null;
  }

  /**
   * Re-arms the nightly timer for a new installation id, whose slot lies elsewhere in the 03:00 hour.
   * When tonight's push was still ahead on the old slot but the new slot came and went within the last
   * hour, the push runs now: re-arming alone would skip the night (the new timer fires tomorrow). A new
   * slot still ahead tonight needs nothing: its timer pushes.
   */
  private rearmKeepingTonight(): void {
    const now = this.now();
    const wasDueTonight = within(this.nightly?.nextRun(now), now, NIGHTLY_HOUR_MS);
    this.armNightly();
    // The new slot's last occurrence, asked of its timer (exact across a DST change in that hour).
    const lastHour = new Date(now.getTime() - NIGHTLY_HOUR_MS);
    const newSlotPassed =
      (this.nightly?.nextRun(lastHour)?.getTime() ?? Number.POSITIVE_INFINITY) <= now.getTime();
    if (wasDueTonight && newSlotPassed) {
      this.agent.log.info("the installation id changed after tonight's new slot: the Cloud DR push runs now");
      this.runNightly().catch((error: unknown) =>
        this.agent.log.warn('the nightly Cloud DR push failed', { error: describeError(error) }),
      );
    }
  }

  private armNightly(): void {
    this.nightly?.stop();
    this.nightly = scheduleNightly(this.agent.keyring.installationId, this.timezone(), async (timer) => {
      await this.onNightlyFired(timer);
    });
  }

  /**
   * A nightly timer fired. Reading the id here also makes the keyring notice a file another process
   * changed. If the identity changed since the timer was armed, the timer of the new id takes over:
   * tonight's push waits for its slot ('deferred'), unless that slot has already passed tonight (then
   * it runs now, so the night is not skipped).
   */
  async onNightlyFired(timer: NightlyTimer): Promise<'ran' | 'deferred'> {
    const installationId = this.agent.keyring.installationId;
    if (installationId !== timer.installationId) {
      if (this.started && this.nightly?.installationId !== installationId) this.armNightly();
      const now = this.now();
      const next = this.nightly?.nextRun(now);
      // Both slots lie inside the same 03:00 hour: a next slot within the hour is tonight's.
      if (next && next.getTime() - now.getTime() < NIGHTLY_HOUR_MS) {
        this.agent.log.info("the installation id changed: tonight's Cloud DR push waits for its new slot");
        return 'deferred';
      }
    }
    await this.runNightly();
    return 'ran';
  }

  private timezone(): string | undefined {
    return this.agent.settings.get().autoBackup.timezone;
  }

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }
}

/** Every installation's nightly slot lies in the same hour (03:00 plus its offset): a slot within it is tonight's. */
const NIGHTLY_HOUR_MS = 3600_000;

/** `at` comes after `now` by less than `ms`. */
function within(at: Date | null | undefined, now: Date, ms: number): boolean {
  return !!at && at.getTime() - now.getTime() < ms;
}

/** The copy a finished recovery left in the slot, unless a later push (or the opt-out's deletion) replaced it. */
export function recoveredCopy(s: DrState): DrRecoveredCopy | null {
  if (!s.recovered) return null;
  if (s.lastSuccess && s.lastSuccess.at >= s.recovered.at) return null;
  return s.recovered;
}

/**
 * A push succeeded or a recovery came from the slot (and no confirmed deletion followed), or a
 * multipart upload was left open.
 */
function cloudCopyMayExist(s: DrState): boolean {
  return s.lastSuccess !== undefined || s.recovered !== undefined || s.upload !== undefined;
}

const services = new WeakMap<Agent, DrService>();

/**
 * The agent's one DR service, created on first call. Options can only be given on that first call:
 * given later they would be silently ignored (a test's fault hooks once were), so that throws.
 */
export function drServiceFor(agent: Agent, options?: DrServiceOptions): DrService {
  let service = services.get(agent);
  if (service && options) {
    throw new Error(
      'the DR service of this agent already exists: pass its options on the first drServiceFor call',
    );
  }
  if (!service) {
    service = new DrService(agent, options);
    services.set(agent, service);
  }
  return service;
}
