// Reading the slot's backup: its pointer, then the object it names, once more if a push replaced it between.
import type { CloudDeps } from '../deps';
import type { InstallationStateApi, SlotRecord } from '../state/ledger';

/**
 * The slot and its object's bytes, or null when the slot is empty. A push may switch the pointer
 * and delete the object it replaced between the two reads: when the object is gone, the pointer is
 * read again and, if it moved, the new object is served. Null also when the object is gone for good.
 */
export async function readSlotObject(
  deps: CloudDeps,
  state: InstallationStateApi,
  firstSlot?: SlotRecord | null,
): Promise<{ slot: SlotRecord; body: ReadableStream<Uint8Array>; size: number } | null> {
  let slot = firstSlot === undefined ? await state.slot() : firstSlot;
  for (let attempt = 0; slot && attempt < 2; attempt++) {
    const obj = await deps.store.get(slot.objectKey);
    if (obj) return { slot, ...obj };
    const again = await state.slot();
    if (!again || again.objectKey === slot.objectKey) return null;
    slot = again;
  }
  return null;
}
