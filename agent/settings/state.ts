/** Last runs of the scheduled tasks, in gem_backup.schedule_state: the catch-up rule and the status read them. */
import { eq } from 'drizzle-orm';
import type { PostgresJsDatabase } from 'drizzle-orm/postgres-js';
import type { TaskStatus } from '../../shared/api/settings';
import { scheduleState } from '../db/schema';

export type ScheduledTask = 'autoBackup' | 'maintenance';

interface TaskState {
  armedAt: Date;
  lastRunAt: Date | null;
  lastEndedAt: Date | null;
  lastResult: TaskStatus['lastResult'];
}

/** Runs a write to the agent's own tables in turn with settings changes (SettingsService.hold). */
type HoldWrites = <T>(write: () => Promise<T>) => Promise<T>;

export class ScheduleStateStore {
  /**
   * Every write goes through `hold`: a restore holds it from copying the agent's schema into the
   * restored database to the swap, and a write made meanwhile would land in the database being
   * replaced and be lost (a skipped scheduled run then never shows). Reads need no hold.
   */
  constructor(
    private readonly db: PostgresJsDatabase,
    private readonly hold: HoldWrites = (write) => write(),
  ) {}

  async get(task: ScheduledTask): Promise<TaskState | undefined> {
    const rows = await this.db.select().from(scheduleState).where(eq(scheduleState.task, task));
    const row = rows[0];
    if (!row) return undefined;
    return {
      armedAt: row.armedAt,
      lastRunAt: row.lastRunAt,
      lastEndedAt: row.lastEndedAt,
      lastResult: (row.lastResult as TaskStatus['lastResult']) ?? null,
    };
  }

  /** Records that the task is scheduled from `at` on (first start), if nothing is recorded yet. */
  async arm(task: ScheduledTask, at: Date): Promise<void> {
    await this.hold(() => this.db.insert(scheduleState).values({ task, armedAt: at }).onConflictDoNothing());
  }

  /**
   * Records that the task is scheduled from `at` on again (turned on after being off): the slots that
   * passed while it was off were not missed, and the catch-up rule counts from the later of this and
   * the last run.
   */
  async rearm(task: ScheduledTask, at: Date): Promise<void> {
    await this.hold(() =>
      this.db
        .insert(scheduleState)
        .values({ task, armedAt: at })
        .onConflictDoUpdate({ target: scheduleState.task, set: { armedAt: at } }),
    );
  }

  /**
   * Records a scheduled run that did not happen (another job held the lock through the retry), so the
   * status shows it; the last run stays as it was, so the slot counts as missed and is caught up.
   */
  async recordSkip(task: ScheduledTask, firedAt: Date, result: NonNullable<TaskStatus['lastResult']>) {
    const skipped = { ...result, at: firedAt.toISOString() };
    await this.hold(() =>
      this.db
        .insert(scheduleState)
        // Nothing armed yet: armed just before the slot that fired, so that slot counts as missed.
        .values({ task, armedAt: new Date(firedAt.getTime() - 1_000), lastResult: skipped })
        .onConflictDoUpdate({ target: scheduleState.task, set: { lastResult: skipped } }),
    );
  }

  /**
   * Records a finished run that started at `startedAt`. Written only when the job has ended, so a run
   * cut short by a crash leaves the slot missed and the next start catches it up.
   */
  async recordRun(task: ScheduledTask, startedAt: Date, result: NonNullable<TaskStatus['lastResult']>) {
    const set = { lastRunAt: startedAt, lastEndedAt: new Date(), lastResult: result };
    await this.hold(() =>
      this.db
        .insert(scheduleState)
        .values({ task, armedAt: startedAt, ...set })
        .onConflictDoUpdate({ target: scheduleState.task, set }),
    );
  }
}
