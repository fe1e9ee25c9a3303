/** What the health checks remember between evaluations (health-state.json, 0600): since when Cloud DR is on. */
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';

interface HealthState {
  /** When Cloud DR was first seen on since it was last seen off: the age of a DR that never succeeded. */
  drArmedAt?: string;
}

/** Reads and updates health-state.json; updates are serialized and written temp-then-rename. */
export class HealthStateStore extends JsonStateFile<HealthState> {
  /** Damaged, it is set aside (told to `log`): a Cloud DR that never succeeded ages from now on. */
  constructor(path: string, log: Logger) {
    super(path, () => ({}), { setAsideDamaged: { log } });
  }

  /**
   * Since when Cloud DR has been on, as of `now`: recorded the first time it is seen on, forgotten
   * when it is seen off (turned on again later, it starts afresh). Undefined while it is off.
   */
  async drArmedSince(enabled: boolean, now: Date): Promise<Date | undefined> {
    const recorded = (await this.get()).drArmedAt;
    if (!enabled) {
      if (recorded !== undefined)
        await this.update((s) => {
          delete s.drArmedAt;
        });
      return undefined;
    }
    if (recorded !== undefined) return new Date(recorded);
    const saved = await this.update((s) => {
      s.drArmedAt ??= now.toISOString();
    });
    return new Date(saved.drArmedAt!);
  }
}
