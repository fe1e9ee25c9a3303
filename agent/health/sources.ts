/** Each health area's source: one small function per area, reading what the rest of the agent records. */
import { statfs } from 'node:fs/promises';
import {
  destinationFieldProblems,
  type Schedule,
  type VerificationSchedule,
} from '../../shared/api/settings';
import type { Agent } from '../agent';
import { alertChannels } from '../alerts/channels';
import type { DeliveryStateStore } from '../alerts/state';
import { type BackupInfo, datedInFuture, newestGoodBackup } from '../backup/catalog';
import type { DrService } from '../dr/service';
import { heldByOtherProcess } from '../jobs/lock';
import type { Job } from '../jobs/runner';
import { DESTINATION_TITLES, OFFSITE_KINDS, type OffsiteKind } from '../offsite/destinations';
import { describeDestinationError } from '../offsite/messages';
import type { OffsiteService } from '../offsite/service';
import { currentTargetResults, type VerificationStateStore } from '../verification/state';
import { type AreaHealth, type AreaSource, formatAge, type HealthStatus, worst } from './model';
import { type RestoreLeftover, restoreLeftoversCheck, restoreLeftoversReason } from './restore-leftovers';
import type { HealthStateStore } from './state';
import type { JobWatchdog } from './watchdog';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** How long apart scheduled runs are, for "is it overdue" rules. */
export const SCHEDULE_INTERVAL_MS: Record<Schedule | VerificationSchedule, number> = {
  hourly: HOUR,
  daily: DAY,
  weekly: 7 * DAY,
  monthly: 31 * DAY,
};

/** When an age turns warning / failing, in intervals of its schedule. */
export const OVERDUE = { warning: 1.5, failing: 3 } as const;

function ageStatus(ageMs: number, intervalMs: number): HealthStatus {
  if (ageMs > OVERDUE.failing * intervalMs) return 'failing';
  if (ageMs > OVERDUE.warning * intervalMs) return 'warning';
  return 'ok';
}

/**
 * Backups: the newest good backup's age against the auto-backup schedule, and the last scheduled run;
 * a retention hold (the backup records were damaged and set aside: pruning paused) is a warning first.
 */
export function backupsArea(agent: Agent): AreaSource {
  const area = backupAge(agent);
  return async (now) => {
    const health = await area(now);
    // Asked after the list (in backupAge), which is what finds a damaged records file and holds pruning.
    const hold = await agent.catalog.hold.get();
    if (!hold) return health;
    return {
      ...health,
      status: worst([health.status, 'warning']),
      reason: `${hold.message} ${health.reason}`,
      retentionHold: { since: hold.since ?? null, setAside: hold.setAside },
    };
  };
}

/** The backups' age against the auto-backup schedule, and the last scheduled run (a failed one until a good backup is newer). */
function backupAge(agent: Agent): AreaSource {
  return async (now) => {
    const auto = agent.settings.get().autoBackup;
    const list = await agent.catalog.list();
    const owns = (id: string, keyIds: readonly string[]) => agent.keyring.owns(id, keyIds);
    const latest = newestGoodBackup(list, owns, now.getTime());
    const none = !latest && list.length ? noGoodBackup(list, owns) : undefined;
    const ahead = list.filter((b) => datedInFuture(b, now.getTime()));
    const details = {
      lastBackup: latest
        ? { filename: latest.filename, createdAt: latest.createdAt, size: latest.size }
        : null,
      count: list.length,
      schedule: auto.enabled ? auto.schedule : null,
    };
    if (!auto.enabled) {
      return latest
        ? {
            status: 'warning',
            reason: 'Automatic backups are off: only backups you start are made',
            ...details,
          }
        : {
            status: 'failing',
            reason: none
              ? `${none}, and automatic backups are off`
              : 'There is no backup and automatic backups are off',
            ...details,
          };
    }
    const interval = SCHEDULE_INTERVAL_MS[auto.schedule];
    const state = await agent.settings.state.get('autoBackup');
    const since = latest ? Date.parse(latest.createdAt) : (state?.armedAt.getTime() ?? now.getTime());
    // The newest may be dated a little after the clock (set back since, within CLOCK_AHEAD_TOLERANCE_MS).
    const age = Math.max(0, now.getTime() - since);
    let status = ageStatus(age, interval);
    let reason = latest
      ? `The last backup was made ${formatAge(age)} ago (${auto.schedule} schedule)`
      : `${none ?? 'No backup has been made yet'} (${auto.schedule} schedule since ${formatAge(age)} ago)`;
    if (status !== 'ok') reason = `${reason}: backups are overdue`;
    const last = state?.lastResult;
    // A run that failed is over once a good backup is newer than its end; a slot skipped or that could
    // not start (no run: no end) once one is newer than the slot.
    const over =
      last?.jobId !== undefined
        ? state?.lastEndedAt?.getTime()
        : last?.at !== undefined
          ? Date.parse(last.at)
          : undefined;
    const mended = latest !== undefined && over !== undefined && Date.parse(latest.createdAt) > over;
    if (last && !last.ok && !mended) {
      status = worst([status, 'warning']);
      const skipped = last.error?.startsWith('skipped: ');
      reason = skipped
        ? `The last scheduled backup was skipped: ${last.error!.slice('skipped: '.length)}. ${reason}`
        : `The last scheduled backup failed: ${last.error ?? 'unknown error'}. ${reason}`;
    }
    if (ahead.length > 0) {
      status = worst([status, 'warning']);
      reason = `${aheadReason(ahead)} ${reason}`;
    }
    return { status, reason, ageSeconds: Math.round(age / 1000), ...details };
  };
}

/**
 * Why none of the backups in the folder (there are some) is a good one of this installation, each under
 * the first reason newestGoodBackup would pass it over for: "No backup has been made yet" would be
 * untrue, and the reasons say what to do (verify again, make a backup, look at the clock).
 */
function noGoodBackup(
  list: BackupInfo[],
  owns: (installationTag: string, keyIds: readonly string[]) => boolean,
): string {
  const counts = { safety: 0, failed: 0, other: 0, ahead: 0 };
  for (const b of list) {
    if (b.kind === 'safety') counts.safety++;
    else if (b.verifyResult === 'failed') counts.failed++;
    else if (!owns(b.installationTag, b.keyIds)) counts.other++;
    else counts.ahead++;
  }
  const words = [
    counts.failed && `${counts.failed} failed verification`,
    counts.other && `${counts.other} made by another installation`,
    counts.safety &&
      `${counts.safety} ${counts.safety === 1 ? 'is a safety backup' : 'are safety backups'} (made before a restore)`,
    counts.ahead && `${counts.ahead} dated after this machine's clock`,
  ].filter(Boolean);
  return `No good backup of this installation: of the ${list.length} here, ${words.join(', ')}`;
}

/**
 * Backups dated after this machine's clock (newest first): the clock was ahead when they were made.
 * They are not counted as fresh (the age above is the newest real one's) nor by retention.
 */
function aheadReason(ahead: BackupInfo[]): string {
  const one = ahead.length === 1;
  const which = one
    ? `1 backup (${ahead[0]!.filename}) is`
    : `${ahead.length} backups (the newest ${ahead[0]!.filename}) are`;
  const [they, them, were] = one ? ['it', 'it', 'was'] : ['they', 'them', 'were'];
  return (
    `${which} dated after this machine's clock: the clock was ahead when ${they} ${were} made, or is behind ` +
    `now. Check the clock. Retention keeps ${them} without counting ${them}: delete ${them} yourself once ` +
    `newer backups have replaced ${them}.`
  );
}

/** Options of the offsite area: how often a destination is actually contacted (0 = every evaluation). */
export interface OffsiteProbeOptions {
  probeIntervalMs: number;
}

/**
 * The newest backup the auto-upload sends (made by a backup job, manual or scheduled: not a restore's
 * safety copy nor a DR temporary one), of this installation and not failed verification.
 */
function newestAutoUploaded(agent: Agent, list: BackupInfo[], now: number): BackupInfo | undefined {
  return list.find(
    (b) =>
      (b.kind === 'manual' || b.kind === 'scheduled') &&
      b.verifyResult !== 'failed' &&
      !datedInFuture(b, now) &&
      agent.keyring.owns(b.installationTag, b.keyIds),
  );
}

/**
 * Offsite: per enabled destination, whether it answers (a list, at most every probeIntervalMs), its last
 * upload (offsite-state.json), whether the newest backup is there (with auto-upload on: an upload cut
 * off by a restart is told, not hidden) and the last verification of its newest copy.
 */
export function offsiteArea(
  agent: Agent,
  offsite: OffsiteService,
  verification: VerificationStateStore,
  options: OffsiteProbeOptions,
): AreaSource {
  type Probe = { at: number; key: string; error?: string; names?: Set<string> };
  const probes = new Map<OffsiteKind, Probe>();
  /**
   * The destination's listing, at most once per probe interval; sooner when an upload or a sync has
   * reached it since (`reachedAt`): a failure seen before that success no longer holds.
   */
  const probe = async (kind: OffsiteKind, now: number, reachedAt: number): Promise<Probe> => {
    const key = JSON.stringify(agent.settings.get().offsite[kind]);
    const cached = probes.get(kind);
    if (cached && cached.key === key && now - cached.at < options.probeIntervalMs && !(reachedAt > cached.at))
      return cached;
    let error: string | undefined;
    let names: Set<string> | undefined;
    try {
      const provider = offsite.provider(kind);
      try {
        names = new Set((await provider.list()).map((o) => o.name));
      } finally {
        await provider.close?.().catch(() => {});
      }
    } catch (e) {
      // In the words Test Connection and the jobs use (what to check), not the library's or system's.
      error = describeDestinationError(kind, agent.settings.get().offsite[kind], e).message;
    }
    const result: Probe = error === undefined ? { at: now, key, names } : { at: now, key, error };
    probes.set(kind, result);
    return result;
  };
  return async (now) => {
    const status = await offsite.status();
    // Of the places the destinations point to now (not a folder or server they were moved from).
    const verified = currentTargetResults(await verification.get(), agent.settings.get());
    const newest = newestAutoUploaded(agent, await agent.catalog.list(), now.getTime());
    // A backup or a sync running (here, or a CLI's holding the job lock) may be sending it right now.
    let busy: boolean | undefined;
    const uploading = async () => {
      busy ??=
        agent.jobs.active().some((j) => j.kind === 'backup' || j.kind === 'sync') ||
        (await heldByOtherProcess(agent.jobs.lockPath).catch(() => false));
      return busy;
    };
    const destinations: Record<string, AreaHealth> = {};
    for (const kind of OFFSITE_KINDS) {
      const d = status[kind];
      if (!d.enabled) continue;
      const title = DESTINATION_TITLES[kind];
      const findings: Array<{ status: HealthStatus; reason: string }> = [];
      const reachedAt = Math.max(
        Date.parse(d.lastSuccessfulUpload?.at ?? '') || 0,
        d.lastSync?.ok ? Date.parse(d.lastSync.at) || 0 : 0,
      );
      // Saved by an earlier version that took any text: named here, since a PUT would now refuse it.
      const invalid = destinationFieldProblems(kind, agent.settings.get().offsite[kind]);
      if (invalid.length > 0) {
        findings.push({
          status: 'failing',
          reason: `The ${title} settings hold ${invalid.length === 1 ? 'a value' : 'values'} that ${invalid.length === 1 ? 'is' : 'are'} not valid: ${invalid.map((p) => `the ${p.field} ${p.message}`).join('; ')}. Correct ${invalid.length === 1 ? 'it' : 'them'} in the settings and save`,
        });
      }
      const { error: unreachable, names: remote } = await probe(kind, now.getTime(), reachedAt);
      if (unreachable)
        findings.push({ status: 'failing', reason: `${title} cannot be reached: ${unreachable}` });
      const last = d.lastSuccessfulUpload;
      // A failed upload is over once a whole Sync Now ended after it (what it missed is there now; a
      // sync that had nothing to send records no upload).
      const syncedSince =
        d.lastSync?.ok &&
        !d.lastSync.skipped &&
        Date.parse(d.lastSync.at) > Date.parse(d.lastUpload?.at ?? '');
      if (d.lastUpload && !d.lastUpload.ok && !syncedSince) {
        findings.push({
          status: 'failing',
          reason: `The last upload to ${title} failed: ${d.lastUpload.error?.message ?? 'unknown error'}`,
        });
      } else if (d.autoUpload && newest) {
        // There when an upload (auto or sync) of it or a newer one is recorded, or the last list shows it
        // (not when that name was found taken there by a different backup: another controller's).
        const there =
          (last && last.backup >= newest.filename) ||
          (remote?.has(newest.filename) && !offsite.nameTakenAt(kind, newest.filename));
        if (!there && !unreachable && !(await uploading())) {
          findings.push({
            status: 'warning',
            reason: last
              ? `The newest backup, ${newest.filename}, is not on ${title} (the last upload there was ${last.backup}, ${formatAge(now.getTime() - Date.parse(last.at))} ago): run Sync Now to send it`
              : `No backup has been uploaded to ${title} yet (the newest is ${newest.filename}): run Sync Now to send it`,
          });
        }
      } else if (d.autoUpload && !last) {
        findings.push({ status: 'warning', reason: `No backup has been uploaded to ${title} yet` });
      }
      const check = verified[kind];
      if (check && !check.ok && !check.skipped) {
        findings.push({
          status: 'failing',
          reason: `The copy of ${check.filename ?? 'the newest backup'} at ${title} failed verification: ${check.error?.message ?? ''}`,
        });
      }
      const s = worst(findings.map((f) => f.status));
      destinations[kind] = {
        status: s,
        reason: findings.find((f) => f.status === s)?.reason ?? `${title} answers`,
        lastSuccessfulUpload: last ?? null,
        lastUpload: d.lastUpload ?? null,
        lastVerified: check ?? null,
      };
    }
    const entries = Object.entries(destinations);
    if (!entries.length) return { status: 'ok', reason: 'No offsite destination is turned on', destinations };
    const s = worst(entries.map(([, d]) => d.status));
    const bad = entries.filter(([, d]) => d.status === s && s !== 'ok').map(([, d]) => d.reason);
    return {
      status: s,
      reason: bad.length ? bad.join('; ') : `${entries.length} destination(s) answer and are up to date`,
      destinations,
    };
  };
}

/** When the last DR push is too old, in days (it runs nightly). */
export const DR_AGE_DAYS = { warning: 2, failing: 4 } as const;

/**
 * Cloud DR: last successful push against the nightly schedule (with none ever, the time since DR was
 * turned on, so a DR that never worked also turns failing); a failed last push; an opt-out still owed.
 */
export function drArea(dr: DrService, state: HealthStateStore): AreaSource {
  return async (now) => {
    const s = await dr.status();
    const armedAt = await state.drArmedSince(s.enabled, now);
    const details = {
      lastPush: s.lastPush,
      lastSuccess: s.lastSuccess,
      nextRunAt: s.nextRunAt,
      armedAt: armedAt?.toISOString() ?? null,
    };
    // Pushes are refused until it is finished or abandoned (agent/dr/unfinished.ts): the cloud copy ages.
    if (s.unfinishedRecovery) return { status: 'failing', reason: s.unfinishedRecovery.reason, ...details };
    if (s.pendingDeletion) {
      const { attempts, refused, lastError } = s.pendingDeletion;
      return {
        status: 'warning',
        reason: refused
          ? `Cloud DR was turned off but the cloud refused to delete its copy (not retried until the agent restarts): ${lastError?.message ?? 'refused'}`
          : `Cloud DR was turned off but the cloud copy is not deleted yet (${attempts} attempts)`,
        ...details,
      };
    }
    if (!s.enabled) return { status: 'ok', reason: s.reason ?? 'Cloud DR is off', ...details };
    // The DR copy is the only one off the box: one that never succeeded ages like one that stopped.
    const since = s.lastSuccess ? Date.parse(s.lastSuccess.at) : (armedAt ?? now).getTime();
    const age = Math.max(0, now.getTime() - since);
    let status: HealthStatus = 'ok';
    let reason = s.lastSuccess
      ? `The last Cloud DR push was ${formatAge(age)} ago`
      : `No Cloud DR push has succeeded yet (Cloud DR on since ${formatAge(age)} ago)`;
    if (age > DR_AGE_DAYS.failing * DAY) status = 'failing';
    else if (age > DR_AGE_DAYS.warning * DAY) status = 'warning';
    if (s.lastPush?.outcome === 'failed') {
      status = worst([status, 'warning']);
      reason = `The last Cloud DR push failed: ${s.lastPush.error?.message ?? 'unknown error'}. ${reason}`;
    }
    // Another box holding this installation's id pushed over the copy (dr/service.ts checkCloudCopy).
    if (s.cloudCheck?.ok === false) {
      status = worst([status, 'warning']);
      reason = `${s.cloudCheck.problem}. ${reason}`;
    }
    return { status, reason, ...details };
  };
}

/** Verification: the last scheduled run's result and its age against the verification schedule. */
export function verificationArea(agent: Agent, store: VerificationStateStore): AreaSource {
  return async (now) => {
    const v = agent.settings.get().verification;
    const state = await store.get();
    // Only copies that exist now count: not a destination turned off, nor Cloud DR after the opt-out.
    const targets = currentTargetResults(state, agent.settings.get());
    const details = { lastRun: state.lastRun ?? null, targets };
    // A damaged copy found by a run a person started is failing also while the schedule is off. A local
    // backup deleted since is damaged no more: nothing but the next run would replace its result.
    const local = targets.local;
    const deleted =
      local !== undefined &&
      !local.ok &&
      local.filename !== undefined &&
      !(await agent.catalog.exists(local.filename).catch(() => true));
    const failed = Object.values(targets).filter(
      (t) => t && !t.ok && !t.skipped && !(t === local && deleted),
    );
    if (failed.length) {
      const reason = failed.map((t) => `${t!.target}: ${t!.error?.message ?? 'failed'}`).join('; ');
      return {
        status: 'failing',
        reason: v.enabled ? reason : `${reason}. Scheduled verification is off: Verify now checks again`,
        ...details,
      };
    }
    if (!v.enabled) return { status: 'warning', reason: 'Scheduled verification is off', ...details };
    const interval = SCHEDULE_INTERVAL_MS[v.schedule];
    const since = state.lastRun
      ? Date.parse(state.lastRun.endedAt)
      : Date.parse(state.armedAt ?? now.toISOString());
    const age = now.getTime() - since;
    if (age > 2 * interval) {
      return {
        status: 'warning',
        reason: state.lastRun
          ? `The last verification was ${formatAge(age)} ago`
          : 'The backups have never been verified on schedule',
        ...details,
      };
    }
    return {
      status: 'ok',
      reason: state.lastRun
        ? `Verified ${formatAge(age)} ago`
        : 'The first scheduled verification has not run yet',
      ...details,
    };
  };
}

/** Free bytes of the file system holding `dir`. */
export type FreeSpace = (dir: string) => Promise<number>;

export const statfsFreeSpace: FreeSpace = async (dir) => {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
};

/** Room a backup needs besides its own file: the compressed dump staged before packing, and a margin. */
export const STAGING_MARGIN_BYTES = 64 * 1024 * 1024;

/**
 * Disk: free space of the data dir against the next backup (last size x 1.2) plus its staging room; what
 * restores set aside and no restore accounts for any more is a warning first (restore-leftovers.ts).
 */
export function diskArea(
  agent: Agent,
  freeSpace: FreeSpace = statfsFreeSpace,
  restoreLeftovers: () => Promise<RestoreLeftover[]> = restoreLeftoversCheck(agent),
): AreaSource {
  const area = freeSpaceArea(agent, freeSpace);
  return async (now) => {
    const [health, leftovers] = await Promise.all([area(now), restoreLeftovers()]);
    if (leftovers.length === 0) return health;
    return {
      ...health,
      status: worst([health.status, 'warning']),
      reason: `${restoreLeftoversReason(leftovers, now)}. ${health.reason}`,
      restoreLeftovers: leftovers,
    };
  };
}

/** Free space of the data dir against the next backup (last size x 1.2) plus its staging room. */
function freeSpaceArea(agent: Agent, freeSpace: FreeSpace): AreaSource {
  return async () => {
    const free = await freeSpace(agent.config.dataDir);
    const last = (await agent.catalog.list())[0];
    const expected = Math.ceil((last?.size ?? 0) * 1.2);
    // The dump is written to the work folder first, then packed into the new file: both exist at once.
    const needed = expected * 2 + STAGING_MARGIN_BYTES;
    const details = { freeBytes: free, expectedBackupBytes: expected, neededBytes: needed };
    const mb = (n: number) => `${Math.round(n / 1048576)} MB`;
    if (free < needed) {
      return {
        status: 'failing',
        reason: `Only ${mb(free)} free in the data folder; the next backup needs about ${mb(needed)}`,
        ...details,
      };
    }
    if (free < needed * 2) {
      return {
        status: 'warning',
        reason: `Disk space is low: ${mb(free)} free, about ${mb(needed)} needed per backup`,
        ...details,
      };
    }
    return { status: 'ok', reason: `${mb(free)} free`, ...details };
  };
}

/** Keys: a keys file that was never downloaded means a lost disk loses every backup. */
export function keysArea(agent: Agent): AreaSource {
  return async () => {
    const state = await agent.keyState.get();
    if (!state.lastDownloadedAt) {
      return {
        status: 'warning',
        reason:
          'The encryption keys have never been downloaded: without them no backup can be restored elsewhere',
        downloaded: false,
      };
    }
    return {
      status: 'ok',
      reason: 'The encryption keys were downloaded',
      downloaded: true,
      lastDownloadedAt: state.lastDownloadedAt,
    };
  };
}

/** How long a job the agent's stop interrupted is named in the jobs area (unless one of its kind ran since). */
const INTERRUPTED_SHOWN_MS = DAY;

/**
 * Jobs: a job the watchdog finds stalled (it can be cancelled with its `cancel` route); else, for a day,
 * a job that a stop of the agent interrupted (agent/jobs/history.ts), until a job of its kind runs again.
 */
export function jobsArea(agent: Agent, watchdog: JobWatchdog): AreaSource {
  return async (now) => {
    const stalled = watchdog.stalled(now.getTime());
    const running = agent.jobs
      .active()
      .map((j) => ({ id: j.id, kind: j.kind, phase: j.phase, startedAt: j.startedAt }));
    if (stalled.length) {
      return { status: 'failing', reason: stalled.map((s) => s.reason).join('; '), stalled, running };
    }
    const newestByKind = new Map<string, Job>();
    for (const job of agent.jobs.list()) {
      const seen = newestByKind.get(job.kind);
      if (!seen || Date.parse(job.startedAt) > Date.parse(seen.startedAt)) newestByKind.set(job.kind, job);
    }
    const interrupted = [...newestByKind.values()].find(
      (j) =>
        j.error?.code === 'interrupted' &&
        now.getTime() - Date.parse(j.endedAt ?? j.startedAt) < INTERRUPTED_SHOWN_MS,
    );
    if (interrupted && !running.length) {
      return { status: 'warning', reason: interrupted.error!.message, stalled, running };
    }
    return {
      status: 'ok',
      reason: running.length ? `${running.length} job(s) running normally` : 'No job is running',
      stalled,
      running,
    };
  };
}

/**
 * Alerts: a channel whose last delivery (an alert or the Test alert) failed is a warning naming it and
 * its error, until a delivery gets through again. A channel is named as the log names it (a webhook by
 * its origin, e-mail by its server), never by its address or credentials.
 */
export function alertsArea(agent: Agent, delivery: DeliveryStateStore): AreaSource {
  return async (now) => {
    const failures = (await delivery.current()).channels;
    const channels = alertChannels(agent.settings.get().alerts).map(({ key, name }) => {
      const failure = failures[key];
      if (!failure) return { channel: name, ok: true };
      const { error, since, attempts } = failure;
      return { channel: name, ok: false, error, failingSince: since, attempts };
    });
    if (!channels.length) {
      return {
        status: 'ok',
        reason:
          'No alert channel is set up (a webhook or e-mail): health changes are only logged, and the ones still current are sent to a channel once you set one up',
        channels,
      };
    }
    const failing = channels.filter((c) => !c.ok);
    const working = channels.filter((c) => c.ok).map((c) => c.channel);
    if (!failing.length) return { status: 'ok', reason: `Alerts go to ${working.join(', ')}`, channels };
    const failed = failing.map(
      (c) =>
        `${c.channel} failed: ${c.error} (failing for ${formatAge(now.getTime() - Date.parse(c.failingSince!))})`,
    );
    const reach = working.length ? `Alerts still go to ${working.join(', ')}` : 'No alert reaches you';
    return {
      status: 'warning',
      reason: `The alert channel ${failed.join('; the alert channel ')}. ${reach}: fix ${failing.length > 1 ? 'them' : 'it'}, then send a Test alert`,
      channels,
    };
  };
}
