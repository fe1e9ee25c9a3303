/**
 * When the live data was last replaced by a restore (last-restore.json in the data dir, 0600): written
 * just before a restore's swap, so a swap a crash rolls forward is recorded too (an undone one costs
 * nothing but a fresh backup at the next DR push). A backup made before it, other than the one it
 * restored, holds data that no longer runs, however young it is: the DR push never reuses one (a backup
 * made on a rebuilt box after its keys import or during its DR recovery carries the recovered identity
 * but the box's own sample data).
 */
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';

export interface LastRestore {
  /** ISO time the swap was entered. */
  at?: string;
  /** The backup restored: its file name and its created-at (the data that runs since). */
  from?: string;
  createdAt?: string;
}

export class LastRestoreStore extends JsonStateFile<LastRestore> {
  /** Damaged, it is set aside (told to `log`) and read as "no restore": what it guards is the DR push's reuse only. */
  constructor(path: string, log: Logger) {
    super(path, () => ({}), { setAsideDamaged: { log } });
  }

  record(at: Date, from: string, createdAt: string): Promise<LastRestore> {
    return this.update((state) => Object.assign(state, { at: at.toISOString(), from, createdAt }));
  }

  /**
   * Whether `backup` holds data that may still run: made after the last restore's swap, or the very
   * backup that restore restored. True when there was no restore.
   */
  async current(backup: { filename: string; createdAt: string }): Promise<boolean> {
    const last = await this.get();
    if (last.at === undefined) return true;
    if (backup.filename === last.from && backup.createdAt === last.createdAt) return true;
    return Date.parse(backup.createdAt) > Date.parse(last.at);
  }
}
