// Opt-out: every object under the installation's prefix, its open uploads and then its slot are deleted.
import type { CloudDeps } from '../deps';
import { type SlotOwner, slotPrefix } from './slot-commit';

/**
 * Deletes everything the cloud holds of an installation's backups: aborts its recorded multipart
 * uploads, revokes puts not committed yet, deletes every object under its prefix (orphans too), and
 * only then clears the slot. Idempotent. A storage failure is thrown with the slot (and any upload
 * not aborted) still recorded, so the agent's retry finishes the job. Answers whether a slot was cleared.
 * The enrolled public key stays: it is no backup, and the installation may turn Cloud DR on again.
 */
export async function optOut(deps: CloudDeps, owner: SlotOwner): Promise<boolean> {
  const { state } = owner;
  const { store } = deps;
  // Uploads first: a completion in flight then finds its upload gone and deletes its own object.
  const uploads = await state.takeUploads();
  for (const [i, upload] of uploads.entries()) {
    try {
      await store.abortMultipart(upload.objectKey, upload.storeUploadId);
    } catch (err) {
      // Recorded again (this one and those not tried yet), so the retry aborts them.
      for (const left of uploads.slice(i)) await state.createUpload(left);
      throw err;
    }
  }
  // A put not committed yet is refused at its commit instead of filling the slot again.
  await state.revokePuts();
  let cleared = false;
  // A few rounds: a backup committed between the listing and the clear is deleted as well.
  for (let round = 0; round < 3; round++) {
    const slot = await state.slot();
    const listed = await store.list(slotPrefix(owner.installationHash));
    if (!slot && listed.length === 0) break;
    // The slot's own object last: a failure before it leaves the slot whole until the retry.
    for (const object of listed) {
      if (object.key !== slot?.objectKey) await store.delete(object.key);
    }
    if (slot) {
      await store.delete(slot.objectKey);
      cleared = (await state.clearSlot(slot.objectKey)) || cleared;
    }
  }
  return cleared;
}
