/** The auto-backup and maintenance schedules (croner): pure next-run/catch-up rules and the running scheduler. */
import { Cron } from 'croner';
import type { Schedule } from '../../shared/api/settings';
import type { Agent } from '../agent';
import { startBackup } from '../backup/operations';
import { describeError, isAppError } from '../errors';
import type { Job } from '../jobs/runner';
import { startMaintenance } from '../maintenance/run';
import type { ScheduledTask } from '../settings/state';

/** A task's timing: an auto-backup schedule, or the daily 03:00 maintenance. */
export type TaskSchedule = Schedule | 'maintenance';

/** The cron patterns: hourly on the hour; the others at 02:00 (maintenance at 03:00). */
const CRON_PATTERNS: Record<TaskSchedule, string> = {
  hourly: '0 0 * * * *',
  daily: '0 0 2 * * *',
  weekly: '0 0 2 * * 0',
  monthly: '0 0 2 1 * *',
  maintenance: '0 0 3 * * *',
};

function cron(schedule: TaskSchedule, tz: string | undefined): Cron {
  return new Cron(CRON_PATTERNS[schedule], { paused: true, ...(tz ? { timezone: tz } : {}) });
}

/** The next `n` run times strictly after `from`, in `tz` (undefined: the server's local time zone). */
export function nextRuns(schedule: TaskSchedule, tz: string | undefined, from: Date, n: number): Date[] {
  return cron(schedule, tz).nextRuns(n, from);
}

/**
 * The catch-up rule: if at least one slot passed between the last run and `now` (the agent was down
 * or busy), the latest such slot, so that the caller runs ONCE however many slots were missed;
 * undefined if none was missed or the task never ran (nothing to catch up on a first start).
 */
export function missedRun(
  schedule: TaskSchedule,
  tz: string | undefined,
  lastRunAt: Date | undefined,
  now: Date,
): Date | undefined {
  if (!lastRunAt) return undefined;
  const c = cron(schedule, tz);
  const first = c.nextRun(lastRunAt);
  if (!first || first > now) return undefined;
  // The latest slot at or before now: the one before the next slot after now.
  return c.previousRuns(1, new Date(now.getTime() + 1))[0] ?? first;
}

/** Waits for the lock this long when another mutating job holds it, then tries again. */
const BUSY_RETRY_MS = 5 * 60_000;
/**
 * How many times a slot tries again while another job holds the lock: up to 55 minutes, before an hourly
 * task's next slot. Once was not enough: hourly backups that take longer than 5 minutes hold the lock at
 * 03:00 every night, and the maintenance there was skipped every night (the history never purged).
 */
const BUSY_RETRIES = 11;

interface TaskDef {
  task: ScheduledTask;
  /** Undefined: the task is off. */
  timing(agent: Agent): { schedule: TaskSchedule; tz: string | undefined } | undefined;
  start(agent: Agent): Promise<Job>;
}

const TASKS: TaskDef[] = [
  {
    task: 'autoBackup',
    timing: (agent) => {
      const a = agent.settings.get().autoBackup;
      return a.enabled ? { schedule: a.schedule, tz: a.timezone } : undefined;
    },
    start: (agent) => startBackup(agent, { kind: 'scheduled' }),
  },
  {
    task: 'maintenance',
    timing: (agent) => {
      const m = agent.settings.get().maintenance;
      return m.enabled
        ? { schedule: 'maintenance', tz: agent.settings.get().autoBackup.timezone }
        : undefined;
    },
    start: (agent) => startMaintenance(agent),
  },
];

/** Runs the scheduled tasks; re-arms itself whenever the settings change (no restart needed). */
export class Scheduler {
  private readonly timers = new Map<ScheduledTask, Cron>();
  /** Busy retries waiting for their time, each with the way to give it up (resolving its run). */
  private readonly retries = new Map<NodeJS.Timeout, { task: ScheduledTask; giveUp: () => void }>();
  private unsubscribe: (() => void) | undefined;
  private stopped = false;
  /** Whether arm() ran once: the timers then say which tasks were on before a settings change. */
  private armedOnce = false;
  /** Runs started by start() (catch-ups) and by the timers, until they end: for shutdown and tests. */
  private readonly inFlight = new Set<Promise<Job | undefined>>();

  constructor(
    private readonly agent: Agent,
    private readonly options: { retryMs?: number; busyRetries?: number; now?: () => Date } = {},
  ) {}

  /**
   * Arms every enabled task and starts one catch-up per task that missed a slot while the agent was
   * down (not waiting for it: `settled()` does).
   */
  async start(): Promise<void> {
    this.arm();
    this.unsubscribe = this.agent.settings.subscribe(() => this.arm());
    const now = this.options.now?.() ?? new Date();
    for (const def of TASKS) {
      const timing = def.timing(this.agent);
      if (!timing) continue;
      const state = await this.agent.settings.state.get(def.task);
      // From the last run, or from when the task was turned on if that came later (rearm).
      const since = state
        ? new Date(Math.max(state.lastRunAt?.getTime() ?? 0, state.armedAt.getTime()))
        : undefined;
      const missed = missedRun(timing.schedule, timing.tz, since, now);
      if (missed) {
        this.agent.log.info('catching up a run missed while the agent was down', {
          task: def.task,
          slot: missed.toISOString(),
        });
        this.track(this.fire(def, true));
      } else if (!state) {
        // First start with this task: remember it, so a slot missed from now on is caught up.
        await this.agent.settings.state.arm(def.task, now);
      }
    }
  }

  /**
   * (Re)creates the timers from the current settings, and marks each enabled task armed (if nothing
   * is recorded for it yet), so a task turned on later also gets its catch-up after downtime; one
   * turned on again after being off is armed from now (the slots it was off for are not caught up).
   * A busy retry of a task now turned off is given up: the user's "off" wins over a slot that fired
   * before.
   */
  arm(): void {
    if (this.stopped) return;
    const wasOn = this.armedOnce ? new Set(this.timers.keys()) : undefined;
    this.armedOnce = true;
    for (const c of this.timers.values()) c.stop();
    this.timers.clear();
    const now = this.options.now?.() ?? new Date();
    for (const def of TASKS) {
      const timing = def.timing(this.agent);
      if (!timing) {
        for (const [timer, retry] of this.retries) {
          if (retry.task !== def.task) continue;
          clearTimeout(timer);
          this.retries.delete(timer);
          this.agent.log.info('the task was turned off; its busy retry is given up', { task: def.task });
          retry.giveUp();
        }
        continue;
      }
      const state = this.agent.settings.state;
      const turnedOn = wasOn !== undefined && !wasOn.has(def.task);
      const marked = (turnedOn ? state.rearm(def.task, now) : state.arm(def.task, now)).catch(
        (error: unknown) => this.agent.log.warn('could not mark a scheduled task armed', { error }),
      );
      this.track(marked.then(() => undefined));
      const c = new Cron(
        CRON_PATTERNS[timing.schedule],
        { ...(timing.tz ? { timezone: timing.tz } : {}), protect: true },
        () => {
          this.track(this.fire(def, true));
        },
      );
      this.timers.set(def.task, c);
    }
  }

  /** Resolves when every run started so far has ended (or was given up). */
  async settled(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  private track(run: Promise<Job | undefined>): void {
    this.inFlight.add(run);
    void run.finally(() => this.inFlight.delete(run));
  }

  /** When each armed task runs next (null: off). */
  nextRunAt(task: ScheduledTask): Date | null {
    return this.timers.get(task)?.nextRun() ?? null;
  }

  /**
   * Starts a task's job; while another mutating job holds the lock, tries again every `retryMs`, up to
   * `busyRetries` times (`retry` false: never). Resolves when the job has ended (or was given up),
   * recording the run for the catch-up rule.
   */
  async fire(
    def: TaskDef | ScheduledTask,
    retry: boolean,
    firedAt?: Date,
    retriesLeft = this.options.busyRetries ?? BUSY_RETRIES,
  ): Promise<Job | undefined> {
    const d = typeof def === 'string' ? TASKS.find((t) => t.task === def)! : def;
    if (this.stopped) return undefined;
    const startedAt = this.options.now?.() ?? new Date();
    const slotFiredAt = firedAt ?? startedAt;
    let job: Job;
    try {
      job = await d.start(this.agent);
    } catch (error) {
      if (isAppError(error, 'job_running') && retry && retriesLeft > 0) {
        this.agent.log.info('another job is running; trying the scheduled task again later', {
          task: d.task,
        });
        return new Promise((resolve) => {
          const timer = setTimeout(() => {
            this.retries.delete(timer);
            // Checked again here too: the settings may have changed without a notification reaching arm().
            if (!d.timing(this.agent)) {
              this.agent.log.info('the task was turned off; its busy retry is given up', { task: d.task });
              resolve(undefined);
              return;
            }
            resolve(this.fire(d, retriesLeft > 1, slotFiredAt, retriesLeft - 1));
          }, this.options.retryMs ?? BUSY_RETRY_MS);
          this.retries.set(timer, { task: d.task, giveUp: () => resolve(undefined) });
        });
      }
      // Refused because the agent is stopping: left missed, caught up at the next start.
      if (this.stopped && isAppError(error, 'cancelled')) return undefined;
      this.agent.log.warn('a scheduled task could not start', { task: d.task, error: describeError(error) });
      if (this.stopped) return undefined;
      // Recorded so the status and health show it (hourly backups and maintenance both fire at 03:00).
      const reason = isAppError(error, 'job_running')
        ? `skipped: another job was running at the scheduled time${firedAt ? ' and still at the last retry' : ''}`
        : `could not start: ${describeError(error).message}`;
      await this.agent.settings.state
        .recordSkip(d.task, slotFiredAt, { ok: false, error: reason })
        .catch((e: unknown) => this.agent.log.warn('could not record a skipped scheduled run', { error: e }));
      return undefined;
    }
    const ended = await this.agent.jobs.waitFor(job.id);
    if (ended.state === 'cancelled' && this.stopped) {
      // Cut short by a shutdown (stop(), then the agent's close cancels it): the slot is not done,
      // so it is left missed and the next start catches it up.
      this.agent.log.info('a scheduled run was stopped by the shutdown; it is caught up at the next start', {
        task: d.task,
      });
      return ended;
    }
    await this.agent.settings.state
      .recordRun(d.task, startedAt, {
        ok: ended.state === 'succeeded',
        jobId: ended.id,
        ...(ended.error ? { error: ended.error.message } : {}),
      })
      .catch((error: unknown) => this.agent.log.warn('could not record a scheduled run', { error }));
    return ended;
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe?.();
    for (const c of this.timers.values()) c.stop();
    this.timers.clear();
    // Given up, not left pending: settled() would otherwise wait for them forever.
    for (const [timer, retry] of this.retries) {
      clearTimeout(timer);
      retry.giveUp();
    }
    this.retries.clear();
  }
}
