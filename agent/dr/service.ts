/** Cloud DR for one agent: status, push now, the nightly push, opt-out deletion (retried until confirmed), recovery. */
import type { Settings } from '../../shared/api/settings';
import type { Agent } from '../agent';
import { AppError, describeError } from '../errors';
import { acquireLock } from '../jobs/lock';
import type { Job } from '../jobs/runner';
import { shortInstallationId } from '../keys/keyring';
import { AWAITING_RESTORE_REASON, LastRestoreStore } from '../restore/last-restore';
import { headSlot, slotDifferences } from '../verification/cloud-slot';
import { DrClient, type DrFaults } from './client';
import { DEFAULT_TUNING, type PushTuning, pushToCloud } from './push';
import { abandonRecovery, type RecoverFaults, recoverFromCloud, whatRecoveryReplaces } from './recover';
import { type NightlyTimer, nextNightlyRun, scheduleNightly } from './schedule';
import {
  type DrCloudCheck,
  type DrPushRecord,
  type DrRecoveredCopy,
  type DrSlotState,
  type DrState,
  DrStateStore,
  slotStateOf,
} from './state';
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
  /**
   * The last look at the slot (a signed HEAD, at most every CLOUD_CHECK_MS at status time, and at `dr
   * status`) against the copy this box pushed or recovered: `ok` false when the cloud holds another (a
   * box that recovered this installation's id and pushed from there) or none. Null: not looked yet.
   */
  cloudCheck: DrCloudCheck | null;
  /** The opt-out deletion still owed: this id's slot's, else a former id's (see formerCopies). */
  pendingDeletion: DrState['pendingDeletion'] | null;
  /**
   * Cloud copies pushed under ids this box had before a keys import or recovery (`installation`: the
   * id's first 8 characters): they stay in the cloud until Cloud DR is turned off, which deletes them
   * signed with the retired key that owns each.
   */
  formerCopies: {
    installation: string;
    pushedAt: string | null;
    pendingDeletion: DrState['pendingDeletion'] | null;
  }[];
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
  /** The push start() runs for a nightly slot missed while the agent was down. */
  private catchUp: Promise<void> | undefined;
  /** A look at the slot in flight (see checkCloudCopy). */
  private checking: Promise<DrCloudCheck | null> | undefined;

  constructor(
    private readonly agent: Agent,
    private readonly options: DrServiceOptions = {},
  ) {
    // Per installation id: after a keys import the status is the new id's, and the old id's copy is
    // remembered (`former`) for the opt-out to delete.
    this.state = new DrStateStore(drStatePath(agent), () => agent.keyring.installationId);
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
    await this.catchUpMissedNightly();
    const s = await this.state.get();
    const undeleted = slotStates(s).filter(([, slot]) => !slot.pendingDeletion && cloudCopyMayExist(slot));
    if (undeleted.length > 0 && !this.agent.settings.get().cloudDr.enabled) {
      this.agent.log.warn(
        'Cloud DR is turned off but its cloud copy was not deleted: completing the opt-out',
      );
      try {
        await this.state.update((x) => this.oweDeletion(x));
      } catch (error) {
        // Nothing recorded, nothing lost: the next start finds the same state and tries again.
        this.agent.log.error('the unfinished Cloud DR opt-out could not be recorded', {
          error: describeError(error),
        });
      }
    }
    if (slotStates(await this.state.get()).some(([, slot]) => slot.pendingDeletion)) this.kickDeletion();
  }

  /**
   * Stops the timers, then waits for a look at the slot or an opt-out deletion attempt in flight (each
   * bounded by the request time limit): neither writes the DR state after the agent closed.
   */
  async stop(): Promise<void> {
    this.started = false;
    this.nightly?.stop();
    this.nightly = undefined;
    if (this.deletionTimer) clearTimeout(this.deletionTimer);
    this.deletionTimer = undefined;
    await Promise.allSettled([this.checking, this.deletion]);
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

  /**
   * Throws when a push that started as installation `installationId` may no longer send: a recovery is
   * unfinished, the keyring holds another installation now (its keys were imported, here or by the CLI
   * beside the service), or that installation's keys were imported with no restore since (startPush's hold).
   */
  private async refuseToSendAs(installationId: string): Promise<void> {
    await this.refuseWhileRecoveryUnfinished();
    if (this.agent.keyring.installationId !== installationId)
      throw new AppError('conflict', IDENTITY_CHANGED_REASON);
    const restores = new LastRestoreStore(this.agent.paths.lastRestore, this.agent.log);
    if (await restores.awaitingRestore(installationId))
      throw new AppError('unprocessable', AWAITING_RESTORE_REASON);
  }

  async status(): Promise<DrStatus> {
    const s = await this.state.get();
    const unfinishedRecovery = await this.unfinishedRecovery();
    const reason = this.disabledReason();
    const job = this.pushJobId ? this.agent.jobs.get(this.pushJobId) : undefined;
    const running = job !== undefined && !job.endedAt;
    const formerCopies = Object.entries(s.former ?? {})
      .filter(([, slot]) => cloudCopyMayExist(slot) || slot.pendingDeletion)
      .map(([id, slot]) => ({
        installation: shortInstallationId(id),
        pushedAt: slot.lastSuccess?.at ?? slot.recovered?.at ?? null,
        pendingDeletion: slot.pendingDeletion ?? null,
      }));
    const cloudCheck = this.currentCheck(s);
    if (!reason && !s.pendingDeletion && knownCopy(s) && !this.fresh(cloudCheck)) {
      void this.checkCloudCopy().catch(() => {});
    }
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
      pendingDeletion:
        s.pendingDeletion ?? formerCopies.find((c) => c.pendingDeletion)?.pendingDeletion ?? null,
      formerCopies,
      cloudCheck,
      escrowKid: s.escrow?.kid ?? null,
      upload: s.upload ? { backup: s.upload.backupName, uploadId: s.upload.uploadId } : null,
      unfinishedRecovery,
    };
  }

  /** The recorded look at the slot, if it was of the copy this box knows now. */
  private currentCheck(s: DrState): DrCloudCheck | null {
    const copy = knownCopy(s);
    return copy && s.cloudCheck?.copyAt === copy.at ? s.cloudCheck : null;
  }

  private fresh(check: DrCloudCheck | null): boolean {
    return check !== null && this.now().getTime() - Date.parse(check.at) < CLOUD_CHECK_MS;
  }

  /**
   * Looks at the slot (signed HEAD) and compares it with the copy this box pushed or recovered: size,
   * created-at and sha256. Recorded for the status and health; null when there is nothing to compare
   * (DR off, nothing pushed). One look at a time.
   */
  checkCloudCopy(): Promise<DrCloudCheck | null> {
    this.checking ??= this.lookAtSlot().finally(() => {
      this.checking = undefined;
    });
    return this.checking;
  }

  private async lookAtSlot(): Promise<DrCloudCheck | null> {
    const s = await this.state.get();
    const copy = knownCopy(s);
    const url = this.agent.config.drUrl;
    if (!copy || !url || this.disabledReason() || s.pendingDeletion) return null;
    const id = s.installationId;
    let check: DrCloudCheck;
    try {
      const slot = await headSlot(this.agent, url, this.options.timeoutMs ?? 10_000);
      const problems = slotDifferences(slot, copy);
      check = { at: this.now().toISOString(), copyAt: copy.at, ok: problems.length === 0 };
      if (problems.length > 0) {
        check.problem = slot
          ? `the cloud copy is not the one this box pushed (${problems.join('; ')}): another box holding this installation's id pushed over it (after a \`dr recover\` there), or this one's push was lost`
          : 'the cloud holds no copy of this installation, though this box pushed one: it was deleted (an opt-out from another box holding the id)';
        this.agent.log.warn('the Cloud DR copy is not the one this box pushed', { problems });
      }
    } catch (error) {
      check = {
        at: this.now().toISOString(),
        copyAt: copy.at,
        ok: null,
        problem: `the DR cloud could not be asked about its copy: ${describeError(error).message}`,
      };
    }
    await this.state.update((x) => {
      // Another push or a key import meanwhile: this look is of a copy no longer current.
      if (x.installationId === id && knownCopy(x)?.at === copy.at) x.cloudCheck = check;
    });
    return check;
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
    // Pinned for the whole push, read in one go: a keys import while it runs (the page's, or `gem-backup
    // keys import` beside the service, which the keyring notices at its next use) must not make its
    // requests go as the imported installation, into that installation's slot.
    const { installationId, signingKey } = this.agent.keyring.toFile();
    if (options.dataIsCurrent && (await restores.awaitingRestore(installationId))) {
      await restores.confirmCurrent(this.now(), installationId);
      this.agent.log.info("the owner confirmed the data as the installation's after a keys import");
    }
    if (await restores.awaitingRestore(installationId))
      throw new AppError('unprocessable', AWAITING_RESTORE_REASON);
    const client = this.client.pinnedTo({ installationId, signingKey }, () =>
      this.refuseToSendAs(installationId),
    );
    const state = new DrStateStore(drStatePath(this.agent), () => installationId);
    // Not exclusive: a push only reads local backups (through an open handle) and adds a temporary one.
    const job = await this.agent.jobs.start(
      'dr-push',
      async (ctx) => {
        const at = this.now().toISOString();
        try {
          // Asked again once the bytes are chosen, and before each upload request: a recovery or a keys
          // import may have run while this push made its temporary backup or sent its parts.
          const result = await pushToCloud(
            {
              agent: this.agent,
              client,
              state,
              tuning: this.tuning,
              now: () => this.now(),
              beforeUpload: () => this.refuseToSendAs(installationId),
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
          // The pinned installation's record: its slot holds this copy, whichever keys are here now.
          await state.update((s) => {
            s.lastPush = record;
            s.lastSuccess = record;
          });
          ctx.log.info('Cloud DR push succeeded', { backup: result.backup, size: result.size });
          return result;
        } catch (error) {
          await state.update((s) => {
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
   * `beforeChange`: see abandonRecovery.
   */
  async abandonRecovery(beforeChange?: () => void): Promise<boolean> {
    const release = await acquireLock(this.agent.jobs.lockPath, 'dr-recover abandon');
    try {
      const abandoned = await abandonRecovery(
        {
          agent: this.agent,
          state: this.state,
          unfinished: this.unfinished,
        },
        beforeChange,
      );
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

  /** Whether a retry of a failed opt-out deletion is armed (none after a refusal for good). */
  get deletionRetryArmed(): boolean {
    return this.deletionTimer !== undefined;
  }

  /** Resolves when no opt-out deletion attempt nor catch-up push is in flight (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.deletion || this.catchUp || this.checking)
      await (this.deletion ?? this.catchUp ?? this.checking);
  }

  /**
   * A nightly slot passed since the last push (the agent was down at 03:00): the push runs now, once,
   * as a missed scheduled backup does. Never pushed: nothing is caught up (the first night pushes).
   */
  private async catchUpMissedNightly(): Promise<void> {
    if (this.disabledReason()) return;
    const last = (await this.state.get()).lastPush?.at;
    if (!last) return;
    const slot = nextNightlyRun(this.agent.keyring.installationId, this.timezone(), new Date(last));
    if (!slot || slot > this.now()) return;
    this.agent.log.info('a nightly Cloud DR push was missed while the agent was down: it runs now', {
      missedSlot: slot.toISOString(),
    });
    this.catchUp = this.runNightly()
      .catch((error: unknown) =>
        this.agent.log.warn('the missed nightly Cloud DR push failed', { error: describeError(error) }),
      )
      .finally(() => {
        this.catchUp = undefined;
      });
  }

  private onSettingsChanged(previous: Settings, next: Settings): Promise<void> | void {
    if (previous.autoBackup.timezone !== next.autoBackup.timezone && this.started) this.armNightly();
    if (previous.cloudDr.enabled && !next.cloudDr.enabled) return this.optOut();
    if (!previous.cloudDr.enabled && next.cloudDr.enabled) return this.optBackIn();
  }

  /** Records the deletion as owed before trying it, so that no failure or restart can lose it. */
  private async optOut(): Promise<void> {
    await this.state.update((s) => this.oweDeletion(s, true));
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

  /**
   * Records the deletion of this id's slot (`always`: even with no copy known, the opt-out's own) and of
   * every former id's slot that may hold a copy, as owed.
   */
  private oweDeletion(s: DrState, always = false): void {
    const since = this.now().toISOString();
    for (const [id, slot] of slotStates(s)) {
      if (id === s.installationId ? always || cloudCopyMayExist(slot) : cloudCopyMayExist(slot)) {
        slot.pendingDeletion ??= { since, attempts: 0 };
      }
    }
  }

  private async optBackIn(): Promise<void> {
    if (!slotStates(await this.state.get()).some(([, slot]) => slot.pendingDeletion)) return;
    await this.state.update((s) => {
      for (const [, slot] of slotStates(s)) delete slot.pendingDeletion;
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

  /** Deletes every slot whose deletion is owed (this id's, former ids'), one after another. */
  private async attemptDeletion(): Promise<void> {
    // A push cancelled by the opt-out may still be completing its upload: the delete waits for it to
    // end, or that completion could land after the delete and fill the slot again.
    await this.pushEnded();
    const owed = slotStates(await this.state.get()).filter(([, slot]) => slot.pendingDeletion);
    for (const [id] of owed) await this.deleteSlotOf(id);
  }

  /**
   * Deletes the slot of installation `id` (this box's, or one it had before a keys import), signed with
   * the key that owns it. A transient failure is retried with backoff; a refusal that will not change
   * (a 4xx, the key gone) is recorded as refused and not retried until the next start.
   */
  private async deleteSlotOf(id: string): Promise<void> {
    const s = await this.state.get();
    const slot = slotStateOf(s, id);
    if (!slot?.pendingDeletion) return;
    const forget = (x: DrState) => {
      const mine = slotStateOf(x, id);
      if (!mine) return;
      delete mine.pendingDeletion;
      delete mine.lastSuccess;
      delete mine.recovered;
      delete mine.upload;
    };
    if (!slot.enrollment) {
      // Never enrolled from this data dir: nothing was ever pushed, there is nothing to delete.
      await this.state.update(forget);
      return;
    }
    try {
      const client = this.clientFor(id);
      if (slot.upload) {
        await client.abortUpload(slot.upload.uploadId);
        const temporary = slot.upload.temporary ? slot.upload.backupName : undefined;
        await this.state.update((x) => {
          delete slotStateOf(x, id)?.upload;
        });
        if (temporary) await this.agent.catalog.delete(temporary).catch(() => {});
      }
      const deleted = await client.deleteSlot();
      // The cloud holds no copy now: a last success would be checked against an empty slot, and would
      // make start() take the opt-out as unfinished. The last push stays as history.
      await this.state.update(forget);
      this.agent.log.info('the Cloud DR copy was deleted', {
        hadBackup: deleted,
        ...(id === s.installationId ? {} : { formerInstallation: shortInstallationId(id) }),
      });
    } catch (error) {
      const refused = refusedForGood(error);
      const updated = await this.state.update((x) => {
        const pending = slotStateOf(x, id)?.pendingDeletion;
        if (!pending) return;
        pending.attempts += 1;
        pending.lastAttemptAt = this.now().toISOString();
        pending.lastError = describeError(error);
        if (refused) pending.refused = true;
        else delete pending.refused;
      });
      const pending = slotStateOf(updated, id)?.pendingDeletion;
      if (refused) {
        this.agent.log.error(
          'deleting the Cloud DR copy was refused; it is not retried until the agent restarts',
          { error: describeError(error) },
        );
        return;
      }
      const attempts = pending?.attempts ?? 1;
      const { firstMs, maxMs } = this.options.deletionRetry ?? { firstMs: 60_000, maxMs: 3600_000 };
      const delay = Math.min(maxMs, firstMs * 2 ** (attempts - 1));
      this.agent.log.warn('deleting the Cloud DR copy failed; it will be retried', {
        attempts,
        retryInMs: delay,
        error: describeError(error),
      });
      if (pending && !this.deletionTimer) {
        this.deletionTimer = setTimeout(() => this.kickDeletion(), delay);
        this.deletionTimer.unref();
      }
    }
  }

  /** A client signing as installation `id`: this box's identity, or a retired one its keyring kept. */
  private clientFor(id: string): DrClient {
    if (!this.client || !this.agent.config.drUrl)
      throw new AppError('unprocessable', 'GEM_DR_URL is not set: the cloud copy cannot be deleted yet');
    if (id === this.agent.keyring.installationId) return this.client;
    const retired = this.agent.keyring.toFile().retiredIdentities.find((i) => i.installationId === id);
    if (!retired) {
      throw new AppError(
        'unprocessable',
        `the key of installation ${shortInstallationId(id)}, which pushed this cloud copy, is no longer in the keyring: import that installation's keys file to delete it`,
        { details: { refused: true } },
      );
    }
    return new DrClient({
      baseUrl: this.agent.config.drUrl,
      identity: () => ({ installationId: retired.installationId, signingKey: retired.signingKey }),
      ...(this.options.timeoutMs ? { timeoutMs: this.options.timeoutMs } : {}),
    });
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

/** Why a push stopped when the installation id changed under it (no id in it: it is the recovery credential). */
export const IDENTITY_CHANGED_REASON =
  "this box's installation id changed while the push ran (another installation's keys were imported, or it was recovered from the DR cloud): the push stopped, and no cloud copy was replaced by it";

/** dr-state.json in the agent's data dir. */
function drStatePath(agent: Agent): string {
  return `${agent.config.dataDir}/dr-state.json`;
}

/** How long a look at the slot stands before status() looks again. */
const CLOUD_CHECK_MS = 10 * 60_000;

/**
 * The copy this box knows the slot holds: its last successful push, or the copy it was recovered from
 * while no push replaced it (with `at`, and whichever of size, sha256 and created-at it recorded).
 */
function knownCopy(
  s: DrSlotState,
): { at: string; size?: number; sha256?: string; createdAt?: string } | undefined {
  const recovered =
    s.recovered && (!s.lastSuccess || s.lastSuccess.at < s.recovered.at) ? s.recovered : undefined;
  return recovered ?? s.lastSuccess;
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
function cloudCopyMayExist(s: DrSlotState): boolean {
  return s.lastSuccess !== undefined || s.recovered !== undefined || s.upload !== undefined;
}

/** This id's slot state and every former id's, by id (for updates: the objects inside `s`). */
function slotStates(s: DrState): [string, DrSlotState][] {
  return [
    ...(s.installationId ? [[s.installationId, s] as [string, DrSlotState]] : []),
    ...Object.entries(s.former ?? {}),
  ];
}

/**
 * A refusal that asking again will not change: the cloud's 4xx (401 bad_signature: the slot is not this
 * key's; 403), or no key to sign with. Not a 404, 408 or 429, nor an unreachable cloud.
 */
function refusedForGood(error: unknown): boolean {
  if (!(error instanceof AppError)) return false;
  const status = (error.details as { cloudStatus?: number } | undefined)?.cloudStatus;
  if (status === undefined) return error.details?.refused === true;
  return status >= 400 && status < 500 && status !== 404 && status !== 408 && status !== 429;
}

const services = new WeakMap<Agent, DrService>();

/** Stops the agent's DR service, if it has one, as DrService.stop does. */
export function stopDrService(agent: Agent): Promise<void> {
  return services.get(agent)?.stop() ?? Promise.resolve();
}

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
