/** Last runs of the scheduled tasks, in gem_backup.schedule_state: the catch-up rule and the status read them. */
import { eq } from 'drizzle-orm';
import type { PostgresJsDatabase } from 'drizzle-orm/postgres-js';
import type { TaskStatus } from '../../shared/api/settings';
import { scheduleState } from '../db/schema';

export type ScheduledTask = 'autoBackup' | 'maintenance';

export interface TaskState {
  armedAt: Date;
  lastRunAt: Date | null;
  lastEndedAt: Date | null;
  lastResult: TaskStatus['lastResult'];
}

export class ScheduleStateStore {
  constructor(private readonly db: PostgresJsDatabase) {}

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
    await this.db.insert(scheduleState).values({ task, armedAt: at }).onConflictDoNothing();
  }

  /**
   * Records a finished run that started at `startedAt`. Written only when the job has ended, so a run
   * cut short by a crash leaves the slot missed and the next start catches it up.
   */
  async recordRun(task: ScheduledTask, startedAt: Date, result: NonNullable<TaskStatus['lastResult']>) {
    const set = { lastRunAt: startedAt, lastEndedAt: new Date(), lastResult: result };
    await this.db
      .insert(scheduleState)
      .values({ task, armedAt: startedAt, ...set })
      .onConflictDoUpdate({ target: scheduleState.task, set });
  }
}
