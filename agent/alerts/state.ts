/** What was last alerted per health area (alerts-state.json), and how the channels fared (alerts-delivery.json): a restart repeats neither. */
import { join } from 'node:path';
import { z } from 'zod';
import { HEALTH_AREAS, HEALTH_STATUSES, type HealthArea, type HealthStatus } from '../health/model';
import type { Logger } from '../log';
import { JsonStateFile } from '../system/json-state';

export interface AreaAlertState {
  /** The status the last alert (or the silent first observation) was about. */
  status: HealthStatus;
  reason: string;
  /** When the last alert about this status was sent (the daily reminder counts from it). */
  sentAt: string;
  /** When this status was first alerted (a reminder keeps it); absent in states saved before it was kept. */
  since?: string;
}

export type AlertState = Partial<Record<HealthArea, AreaAlertState>>;

const ALERT_STATE_FILE = 'alerts-state.json';

export class AlertStateStore extends JsonStateFile<AlertState> {
  /** Damaged, it is set aside (told to `log`): areas are then alerted afresh. */
  constructor(dataDir: string, log: Logger) {
    super(join(dataDir, ALERT_STATE_FILE), () => ({}), { setAsideDamaged: { log } });
  }
}

/**
 * An alert channel (one webhook, or e-mail) whose last delivery failed: it is told in the log when it
 * starts failing, when its error changes, at most once an hour while it keeps failing, and when it
 * works again. Kept on disk so a restart does not announce the same failure again.
 */
export interface ChannelFailure {
  /** The channel as logs and Test alert name it (a webhook by its origin only). */
  channel: string;
  /** The first failed attempt of this run of failures. */
  since: string;
  /** The last attempt's error. */
  error: string;
  attempts: number;
  /** The last warning about it in the log (first failure, a new error or the hourly reminder). */
  toldAt: string;
}

/** An alert that no channel received yet (retried at each check): told once in the log, then quietly. */
export interface UndeliveredAlert {
  event: string;
  status: HealthStatus;
  since: string;
  attempts: number;
}

export interface DeliveryState {
  /** By a key derived from the channel's full address (never the address itself: its path may hold a token). */
  channels: Record<string, ChannelFailure>;
  undelivered: Partial<Record<HealthArea, UndeliveredAlert>>;
  /**
   * The keys of the channels that were sent the alerts still current when they were set up (the
   * channels set up at the first check since this was kept count as told). Absent: not kept yet.
   */
  toldChannels?: string[];
  /**
   * For each channel still being sent them (not in `toldChannels` yet), the alerts still current it
   * already received, per area: the status and `since` of that alert (a later alert about the area is
   * another one), so a retry sends only the others. Absent in files written before it was kept.
   */
  earlierSent?: Record<string, Partial<Record<HealthArea, EarlierAlert>>>;
}

/** One alert still current, as a channel being caught up received it. */
export interface EarlierAlert {
  status: HealthStatus;
  /** When the area was first alerted about this status. */
  since: string;
}

const ALERT_DELIVERY_FILE = 'alerts-delivery.json';

const deliveryStateSchema = z.object({
  channels: z
    .record(
      z.string(),
      z.object({
        channel: z.string(),
        since: z.string(),
        error: z.string(),
        attempts: z.number(),
        toldAt: z.string(),
      }),
    )
    .catch({}),
  undelivered: z
    .partialRecord(
      z.enum(HEALTH_AREAS),
      z.object({
        event: z.string(),
        status: z.enum(HEALTH_STATUSES),
        since: z.string(),
        attempts: z.number(),
      }),
    )
    .catch({}),
  toldChannels: z.array(z.string()).optional().catch(undefined),
  earlierSent: z
    .record(
      z.string(),
      z.partialRecord(z.enum(HEALTH_AREAS), z.object({ status: z.enum(HEALTH_STATUSES), since: z.string() })),
    )
    .optional()
    .catch(undefined),
});

/** How the alert channels fared (alerts-delivery.json in the data dir): what the log was already told. */
export class DeliveryStateStore extends JsonStateFile<DeliveryState> {
  /** Damaged, it is set aside (told to `log`): a failing channel is then announced afresh. */
  constructor(dataDir: string, log: Logger) {
    super(join(dataDir, ALERT_DELIVERY_FILE), () => ({ channels: {}, undelivered: {} }), {
      setAsideDamaged: { log },
    });
  }

  private changes: Promise<unknown> = Promise.resolve();

  /** The state as saved, a part not understood read as empty. */
  async current(): Promise<DeliveryState> {
    return deliveryStateSchema.parse(await this.get());
  }

  /**
   * Applies `change` to the state (a part not understood reads as empty) and saves it if that changed
   * anything (a check with nothing to tell writes nothing); changes queue.
   */
  change(change: (state: DeliveryState) => void): Promise<void> {
    const run = this.changes.then(async () => {
      const next = await this.current();
      const before = JSON.stringify(next);
      change(next);
      if (JSON.stringify(next) === before) return;
      await this.update((state) => {
        Object.assign(state, next);
        // A part `change` removed is removed from the file too (parts not understood are kept).
        for (const key of Object.keys(deliveryStateSchema.shape) as Array<keyof DeliveryState>) {
          if (!(key in next)) delete state[key];
        }
      });
    });
    this.changes = run.catch(() => {});
    return run;
  }
}
