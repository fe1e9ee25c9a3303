/** What was last alerted per health area (alerts-state.json in the data dir), so a restart never re-sends. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { HealthArea, HealthStatus } from '../health/model';
import { writeSmallFileAtomic } from '../system/atomic-file';

export interface AreaAlertState {
  /** The status the last alert (or the silent first observation) was about. */
  status: HealthStatus;
  reason: string;
  /** When the last alert about this status was sent (the daily reminder counts from it). */
  sentAt: string;
}

export type AlertState = Partial<Record<HealthArea, AreaAlertState>>;

export const ALERT_STATE_FILE = 'alerts-state.json';

export class AlertStateStore {
  private cache: AlertState | undefined;
  readonly path: string;

  constructor(dataDir: string) {
    this.path = join(dataDir, ALERT_STATE_FILE);
  }

  async get(): Promise<AlertState> {
    this.cache ??= await readFile(this.path, 'utf8').then(
      (t) => JSON.parse(t) as AlertState,
      () => ({}),
    );
    return structuredClone(this.cache);
  }

  async set(area: HealthArea, value: AreaAlertState): Promise<void> {
    const next = { ...(await this.get()), [area]: value };
    await writeSmallFileAtomic(this.path, `${JSON.stringify(next, null, 2)}\n`, 0o600);
    this.cache = next;
  }
}
