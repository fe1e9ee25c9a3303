/** Retention: which backups the next prune deletes (pure, for local and offsite), and the local prune hook. */
import { SAFETY_BACKUPS_KEPT } from '../../shared/api/settings';
import { isBackupName } from '../../shared/storage/names';
import type { AfterBackupHook, Agent } from '../agent';
import { AppError, describeError } from '../errors';
import { type BackupInfo, datedInFuture } from './catalog';

/** What a destination knows of a backup; offsite lists may only know the name and its time. */
export interface PruneCandidate {
  filename: string;
  createdAt: string;
  kind?: string;
  pinned?: boolean;
  /**
   * 'ok' if it was read end to end with our keys (every backup we make is, as it is written): only such
   * a backup can be "the newest good backup". 'failed' or unknown (a copy only a destination holds) never is.
   * A 'failed' one is kept and not counted, like a pinned one: known-bad copies must not push good ones
   * (say, the older copy only a destination holds) out of the quota; a person decides about them.
   */
  verifyResult?: 'ok' | 'failed';
  /**
   * Not ours: made by another installation or with keys we do not hold (another controller writing to
   * the same offsite folder). Like a pinned backup it is never counted and never deleted.
   */
  foreign?: boolean;
}

export interface RetentionPolicy {
  /** Regular backups kept (manual, scheduled, dr), 1-100. */
  maxBackups: number;
  /** Safety backups kept (taken by a restore); they do not count toward maxBackups. */
  maxSafety?: number;
  /** Names never deleted whatever the counts (the backup just made). */
  protect?: string[];
  /** This machine's time (ms): backups dated after it are kept and not counted. Default: now. */
  now?: number;
}

export interface PrunePlan<T extends PruneCandidate = PruneCandidate> {
  keep: T[];
  delete: T[];
}

const newestFirst = (a: PruneCandidate, b: PruneCandidate) =>
  b.createdAt.localeCompare(a.createdAt) || b.filename.localeCompare(a.filename);

/**
 * The prune plan: per group (regular, safety) the newest N are kept and the older ones deleted, oldest
 * first in `delete`; pinned backups, foreign ones, ones whose verification failed, ones dated after
 * `now` (made while the clock was ahead: counted, they would push out every real backup made since,
 * while they stayed "the newest") and names that are not backup names are always kept and not
 * counted; the newest good regular backup (verified ok: one we can surely restore) and `protect`ed
 * names are always kept.
 */
export function planPrune<T extends PruneCandidate>(
  list: T[],
  policy: RetentionPolicy | number,
): PrunePlan<T> {
  const p = typeof policy === 'number' ? { maxBackups: policy } : policy;
  const max = Math.max(1, Math.floor(p.maxBackups));
  const maxSafety = Math.max(0, Math.floor(p.maxSafety ?? SAFETY_BACKUPS_KEPT));
  const now = p.now ?? Date.now();
  // A protected backup counts toward its quota like any other; beyond it, it is kept anyway.
  const protect = new Set(p.protect ?? []);
  const keep: T[] = [];
  const remove: T[] = [];
  const eligible = list.filter((b) => {
    const counted =
      isBackupName(b.filename) &&
      !b.pinned &&
      !b.foreign &&
      b.verifyResult !== 'failed' &&
      (protect.has(b.filename) || !datedInFuture(b, now));
    if (!counted) keep.push(b);
    return counted;
  });
  const regular = eligible.filter((b) => b.kind !== 'safety').sort(newestFirst);
  const safety = eligible.filter((b) => b.kind === 'safety').sort(newestFirst);
  // Unverified is not good: a newer copy we never read (perhaps not even decryptable) must not push
  // out the last backup we know we can restore.
  const newestGood = regular.find((b) => b.verifyResult === 'ok');
  for (const [i, b] of regular.entries()) {
    (i < max || b === newestGood || protect.has(b.filename) ? keep : remove).push(b);
  }
  for (const [i, b] of safety.entries()) (i < maxSafety || protect.has(b.filename) ? keep : remove).push(b);
  remove.sort(newestFirst).reverse();
  return { keep, delete: remove };
}

/** A local backup as retention sees it: `foreign` when another installation's. */
export type LocalCandidate = BackupInfo & Pick<PruneCandidate, 'foreign'>;

/**
 * The local backups as retention sees them, here and at a destination (Sync Now, an auto-upload's prune):
 * one of another installation (uploaded by hand) is foreign.
 */
export async function localCandidates(agent: Pick<Agent, 'catalog' | 'keyring'>): Promise<LocalCandidate[]> {
  return (await agent.catalog.list()).map((b) =>
    agent.keyring.owns(b.installationTag, b.keyIds) ? b : { ...b, foreign: true },
  );
}

/**
 * The local prune plan under the saved maxBackups (or `maxBackups` given). A backup of another
 * installation (uploaded by hand, say to restore it here) is foreign: never counted, never deleted but by hand.
 */
export async function planLocalPrune(
  agent: Agent,
  protect: string[] = [],
  maxBackups = agent.settings.get().autoBackup.maxBackups,
): Promise<PrunePlan<BackupInfo>> {
  return planPrune(await localCandidates(agent), { maxBackups, protect });
}

/** A stand-in for the next backup: newer than any, verified (the hook runs after a verified backup). */
const NEXT_BACKUP: PruneCandidate = {
  filename: 'gem-backup-9999-12-31-235959.tar.gz',
  createdAt: '9999-12-31T23:59:59.999Z',
  kind: 'scheduled',
  verifyResult: 'ok',
};

/**
 * What the prune after the next backup deletes under `maxBackups`: the retention hook's plan, with the
 * new backup counted as the newest (and protected, as the hook protects it). One more than a prune now
 * when the list is full: the new backup takes a place. Nothing is deleted here.
 */
export async function planNextBackupPrune(agent: Agent, maxBackups: number): Promise<BackupInfo[]> {
  const plan = planPrune<PruneCandidate>([...(await localCandidates(agent)), NEXT_BACKUP], {
    maxBackups,
    protect: [NEXT_BACKUP.filename],
  });
  // The stand-in is protected, so the list holds only real backups.
  return plan.delete.filter((b): b is BackupInfo => b !== NEXT_BACKUP);
}

/** The backups a job not yet ended (verify, upload, download, restore) has as its target: not to be deleted now. */
export function busyBackupNames(agent: Pick<Agent, 'jobs'>): Set<string> {
  return new Set(
    agent.jobs
      .active()
      .map((job) => job.target)
      .filter((target): target is string => target !== undefined && isBackupName(target)),
  );
}

/**
 * Deletes one local backup unless it is pinned now (pinned since the plan was made: it stays, and the
 * answer is false). One already gone (the CLI or a person deleted it after the plan was made) is the
 * outcome wanted, not a failure: its record goes too, as with a deletion of ours (a person's rm leaves
 * it), so a later file of that name inherits no pin or verification.
 */
async function deleteLocalBackup(agent: Agent, name: string): Promise<boolean> {
  try {
    return await agent.catalog.delete(name, { unlessPinned: true });
  } catch (error) {
    if (!(error instanceof AppError && error.code === 'not_found')) throw error;
    agent.log.info('a backup to prune was already gone (deleted meanwhile by another process)', { name });
    await agent.catalog.updateRecord(name, undefined);
    return true;
  }
}

/**
 * Deletes the local backups the plan names, oldest first (never those in `protect`, nor one a running
 * job targets: it stays until a later prune, nor one pinned since the plan was made); returns their
 * names, with any another process deleted meanwhile (gone as planned), never one that stayed. A backup
 * that cannot be deleted stays and the others are still tried; then it fails naming what stayed and
 * what went (its details: `deleted`, `failed` with each one's reason). Nothing while pruning is held
 * (catalog.hold: the records, and so the pins, were damaged) until the owner resumes it. `only:
 * 'safety'`: the plan's safety backups only (a restore's prune), regular ones are left to the next
 * backup's.
 */
export async function pruneLocal(agent: Agent, protect: string[] = [], only?: 'safety'): Promise<string[]> {
  const planned = agent.settings.get().autoBackup.maxBackups;
  const plan = await planLocalPrune(agent, [...protect, ...busyBackupNames(agent)]);
  const doomed = only ? plan.delete.filter((b) => b.kind === only) : plan.delete;
  // Asked after the plan: listing the backups is what finds a damaged records file and sets the hold.
  const hold = await agent.catalog.hold.get();
  if (hold) {
    if (doomed.length > 0) {
      agent.log.warn('retention deleted nothing: pruning is paused', {
        reason: hold.message,
        wouldDelete: doomed.map((b) => b.filename),
      });
    }
    return [];
  }
  const deleted: string[] = [];
  const failed: { filename: string; error: string }[] = [];
  for (const backup of doomed) {
    // A number kept raised since the plan was made (a settings save during the prune) keeps the rest:
    // the plan would delete backups the new number keeps. A lowered one is caught by the next prune.
    const now = agent.settings.get().autoBackup.maxBackups;
    if (now > planned) {
      agent.log.info('retention stopped: the number of backups kept was raised meanwhile', {
        from: planned,
        to: now,
      });
      break;
    }
    // Checked again at each deletion: a verify or upload may have started since the plan was made.
    if (busyBackupNames(agent).has(backup.filename)) continue;
    // One that cannot be deleted (immutable, its folder's permissions) stays; the others still go.
    try {
      // The pin is read with the deletion, under the records' lock: one made since the plan keeps it.
      if (await deleteLocalBackup(agent, backup.filename)) deleted.push(backup.filename);
      else agent.log.info('retention kept a backup pinned while it pruned', { name: backup.filename });
    } catch (error) {
      failed.push({ filename: backup.filename, error: describeError(error).message });
    }
  }
  if (deleted.length) agent.log.info('retention pruned local backups', { deleted });
  if (failed.length) {
    const could = `could not delete ${failed.map((f) => `${f.filename} (${f.error})`).join(', ')}`;
    throw new AppError('internal', deleted.length ? `${could}; deleted ${deleted.join(', ')}` : could, {
      details: { deleted, failed },
    });
  }
  return deleted;
}

/**
 * The after-backup hook (runs only after a new backup completed and verified). The names it deleted
 * are kept in the backup job's result (`followUps.retention.details.deleted`): the page says so. When
 * some could not be deleted the step fails and its details name both (`deleted`, `failed`).
 */
export function retentionHook(agent: Agent): AfterBackupHook {
  return async function retention(backup, ctx) {
    ctx.phase('pruning old backups');
    // The backup just made is protected by name, whatever the clock said when older ones were made.
    const deleted = await pruneLocal(agent, [backup.filename]);
    const hold = await agent.catalog.hold.get();
    return hold ? { deleted, held: hold.message } : { deleted };
  };
}
