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
  return `slots/${installationHash}/b-${Date.parse(createdAt)}-${rand}`;
}

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
 * Points the slot at `next` (already complete in storage) and deletes the object it replaces; when a
 * newer backup got there first, deletes `next` instead and answers 409.
 */
export async function commitToSlot(
  deps: CloudDeps,
  state: InstallationStateApi,
  next: SlotRecord,
): Promise<SlotMetadata> {
  return settleCommit(deps, next, await state.commitSlot(next));
}

/**
 * After the state answered a commit of `next`: deletes the object the slot no longer points at
 * (the replaced one, or `next` itself when a newer backup got there first, then 409).
 */
export async function settleCommit(
  deps: CloudDeps,
  next: SlotRecord,
  outcome: CommitOutcome,
): Promise<SlotMetadata> {
  if (!outcome.accepted) {
    await deps.store.delete(next.objectKey);
    throw olderBackup(outcome.current.createdAt);
  }
  if (outcome.replacedKey) await deps.store.delete(outcome.replacedKey);
  return toMetadata(next);
}

function olderBackup(current: string): CloudError {
  return new CloudError(409, 'older_backup', `the slot holds a newer backup (created ${current})`);
}
