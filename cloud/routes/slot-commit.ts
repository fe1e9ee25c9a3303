// Switching the slot to a complete new backup, and the older-than-current check.
import type { SlotMetadata } from '../../shared/api/cloud';
import { DEFAULT_MAX_SKEW_SECONDS, toHex } from '../../shared/signing';
import type { CloudDeps } from '../deps';
import { CloudError } from '../errors';
import { type CommitOutcome, type InstallationStateApi, type SlotRecord, toMetadata } from '../state/ledger';

/**
 * A fresh object key per backup: R2 has no rename, so a new backup is written beside the old one and
 * the slot's pointer (in the installation's state) is switched once it is complete.
 */
export function newBackupKey(installationHash: string, createdAt: string): string {
  const rand = toHex(crypto.getRandomValues(new Uint8Array(8)));
  return `${slotPrefix(installationHash)}b-${Date.parse(createdAt)}-${rand}`;
}

/** The prefix every object of one installation is stored under (a sweep or opt-out lists it). */
export function slotPrefix(installationHash: string): string {
  return `slots/${installationHash}/`;
}

/** The installation a commit is for: its state, and the hash its objects are stored under. */
export interface SlotOwner {
  state: InstallationStateApi;
  installationHash: string;
}

/** At most this many orphans are deleted per commit: the rest wait for the next one. */
const SWEEP_DELETES = 20;
/** At most this many keys are listed per sweep. */
const SWEEP_LIST = 1000;

/**
 * 400 when a backup claims to be made later than now (beyond the signature's clock window). Such a
 * backup would stay "newest" and make the slot refuse every real backup after it as older.
 */
export function refuseFutureBackup(createdAt: string, nowMs = Date.now()): void {
  if (Date.parse(createdAt) > nowMs + DEFAULT_MAX_SKEW_SECONDS * 1000) {
    throw new CloudError(
      400,
      'future_backup',
      `the backup's created-at ${createdAt} is in the future; check the clock`,
    );
  }
}

/** 409 when the slot already holds a backup created after `createdAt`. */
export async function refuseIfOlder(state: InstallationStateApi, createdAt: string): Promise<void> {
  const current = await state.slot();
  if (current && Date.parse(current.createdAt) > Date.parse(createdAt)) throw olderBackup(current.createdAt);
}

/**
 * Points the slot at `next`, stored by a single-request put begun (state.beginPut) at `begunAtMs`,
 * then sweeps the installation's orphans; when a newer backup got there first, deletes `next`
 * instead and answers 409.
 */
export async function commitToSlot(
  deps: CloudDeps,
  owner: SlotOwner,
  next: SlotRecord,
  begunAtMs: number,
): Promise<SlotMetadata> {
  return settleCommit(deps, owner, next, await owner.state.commitSlot(next, { put: true }), begunAtMs);
}

/**
 * After the state answered a commit of `next`: when accepted, sweeps the objects the slot no
 * longer points at (the replaced one, orphans of earlier pushes); otherwise deletes `next` itself
 * and answers 409 (a newer backup got there first) or 503 (its put was revoked: send it again).
 */
export async function settleCommit(
  deps: CloudDeps,
  owner: SlotOwner,
  next: SlotRecord,
  outcome: CommitOutcome,
  begunAtMs: number,
): Promise<SlotMetadata> {
  if (!outcome.accepted) {
    // Never pointed at: when this delete fails, the next sweep finds the object unnamed.
    await deps.store.delete(next.objectKey).catch((err) => logFailure('deleting a refused backup', err));
    if ('revoked' in outcome) {
      throw new CloudError(
        503,
        'storage_unavailable',
        'the backup was cleared away before it was committed; send it again',
      );
    }
    throw olderBackup(outcome.current.createdAt);
  }
  await sweepOrphans(deps, owner, begunAtMs);
  return toMetadata(next);
}

/**
 * Deletes the installation's objects that nothing refers to: the replaced backup, a put whose
 * commit never ran, a replaced object whose delete failed. An upload still in progress keeps its
 * object (named by its upload record, or a put begun at or after `sinceMs`). Bounded, and a
 * failure is only logged: the commit has happened, and the next one sweeps again.
 */
async function sweepOrphans(deps: CloudDeps, owner: SlotOwner, sinceMs: number): Promise<void> {
  try {
    const listed = await deps.store.list(slotPrefix(owner.installationHash), SWEEP_LIST);
    const orphans = await owner.state.claimOrphans(
      listed.map((o) => o.key),
      sinceMs,
    );
    for (const key of orphans.slice(0, SWEEP_DELETES)) await deps.store.delete(key);
  } catch (err) {
    logFailure('sweeping orphaned objects', err);
  }
}

function logFailure(what: string, err: unknown): void {
  console.error(`cloud: ${what} failed`, err instanceof Error ? err.message : String(err));
}

function olderBackup(current: string): CloudError {
  return new CloudError(409, 'older_backup', `the slot holds a newer backup (created ${current})`);
}
