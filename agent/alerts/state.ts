/** What was last alerted per health area (alerts-state.json in the data dir), so a restart never re-sends. */
import { join } from 'node:path';
import type { HealthArea, HealthStatus } from '../health/model';
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';

export interface AreaAlertState {
  /** The status the last alert (or the silent first observation) was about. */
  status: HealthStatus;
  reason: string;
  /** When the last alert about this status was sent (the daily reminder counts from it). */
  sentAt: string;
}

export type AlertState = Partial<Record<HealthArea, AreaAlertState>>;

export const ALERT_STATE_FILE = 'alerts-state.json';

export class AlertStateStore extends JsonStateFile<AlertState> {
  /** Damaged, it is set aside (told to `log`): areas are then alerted afresh. */
  constructor(dataDir: string, log: Logger) {
    super(join(dataDir, ALERT_STATE_FILE), () => ({}), { setAsideDamaged: { log } });
  }

  async set(area: HealthArea, value: AreaAlertState): Promise<void> {
    await this.update((state) => {
      state[area] = value;
    });
  }
}
