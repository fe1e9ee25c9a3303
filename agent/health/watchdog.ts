/**
 * The job watchdog: marks a job stalled when it runs far longer than its kind's history, or its work stops
 * moving. Progress is the job's count going up within one phase and step (bytes sent or read, items or
 * rows done). Entering a new phase or step is not, nor is a count going back (a transfer retried from its
 * first byte): a job whose every transfer hangs until its timeout moves on from one to the next without
 * moving a byte.
 */
import type { Job, JobKind, JobRunner } from '../jobs/runner';

export interface WatchdogThresholds {
  /** A job is never stalled for its run time below this (default 10 min). */
  minRunMs: number;
  /** ...nor below this many times the longest recent successful run of its kind (default 3). */
  historyFactor: number;
  /** A job whose count (bytes, items, rows) has not gone up for this long is stalled, whatever its phases did (default 30 min). */
  noProgressMs: number;
  /** Successful runs remembered per kind (default 10). */
  historySize: number;
}

const DEFAULT_WATCHDOG_THRESHOLDS: WatchdogThresholds = {
  minRunMs: 10 * 60_000,
  historyFactor: 3,
  noProgressMs: 30 * 60_000,
  historySize: 10,
};

/** A running job the watchdog considers stuck; it can be cancelled through the usual cancel route. */
interface StalledJob {
  id: string;
  kind: JobKind;
  phase: string;
  target?: string;
  startedAt: string;
  runningForMs: number;
  sinceProgressMs: number;
  reason: string;
  cancel: string;
}

interface Tracked {
  job: Job;
  /** When the job's count last went up (or when the watchdog first saw the job). */
  lastProgressAt: number;
  /** What the count counts: its phase, step and unit; counts of different ones are never compared. */
  counting: string;
  /** The count as last seen. */
  done: number;
}

const countingOf = (job: Job) => JSON.stringify([job.phase, job.step ?? null, job.unit]);

/** Watches every job's events (subscribeAll) and remembers how long successful runs of each kind take. */
export class JobWatchdog {
  readonly thresholds: WatchdogThresholds;
  private readonly tracked = new Map<string, Tracked>();
  private readonly history = new Map<JobKind, number[]>();
  private unsubscribe: (() => void) | undefined;

  constructor(
    private readonly jobs: JobRunner,
    thresholds: Partial<WatchdogThresholds> = {},
    private readonly clock: () => number = Date.now,
  ) {
    this.thresholds = { ...DEFAULT_WATCHDOG_THRESHOLDS, ...thresholds };
  }

  /**
   * Starts watching (jobs already running are picked up as of now). The run times of each kind are those
   * of the successful runs the jobs list holds, also those before a restart (jobs.json).
   */
  start(): this {
    if (this.unsubscribe) return this;
    for (const job of this.jobs.list().reverse()) this.observe(job);
    this.unsubscribe = this.jobs.subscribeAll((event) => {
      if (event.type === 'update') this.observe(event.job);
    });
    return this;
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
  }

  /** The longest run time a job of `kind` may have before it counts as stalled. */
  limitFor(kind: JobKind): number {
    const longest = Math.max(0, ...(this.history.get(kind) ?? []));
    return Math.max(this.thresholds.minRunMs, this.thresholds.historyFactor * longest);
  }

  /** Running jobs that look stuck right now. */
  stalled(now = this.clock()): StalledJob[] {
    const out: StalledJob[] = [];
    for (const { job, lastProgressAt } of this.tracked.values()) {
      const runningForMs = now - Date.parse(job.startedAt);
      const sinceProgressMs = now - lastProgressAt;
      const limit = this.limitFor(job.kind);
      let reason: string | undefined;
      if (runningForMs > limit) {
        reason = `the ${job.kind} job has run for ${Math.round(runningForMs / 1000)} s, longer than ${Math.round(limit / 1000)} s (its usual run time allows)`;
      } else if (sinceProgressMs > this.thresholds.noProgressMs) {
        reason = `the ${job.kind} job has made no progress for ${Math.round(sinceProgressMs / 1000)} s (phase "${job.phase}")`;
      }
      if (!reason) continue;
      out.push({
        id: job.id,
        kind: job.kind,
        phase: job.phase,
        ...(job.target ? { target: job.target } : {}),
        startedAt: job.startedAt,
        runningForMs,
        sinceProgressMs,
        reason,
        cancel: `/api/v1/jobs/${job.id}/cancel`,
      });
    }
    return out;
  }

  /** True if the job with this id is currently stalled. */
  isStalled(id: string, now = this.clock()): boolean {
    return this.stalled(now).some((s) => s.id === id);
  }

  private observe(job: Job): void {
    if (job.endedAt) {
      this.tracked.delete(job.id);
      if (job.state === 'succeeded') {
        const runs = this.history.get(job.kind) ?? [];
        runs.push(Date.parse(job.endedAt) - Date.parse(job.startedAt));
        this.history.set(job.kind, runs.slice(-this.thresholds.historySize));
      }
      return;
    }
    const counting = countingOf(job);
    const known = this.tracked.get(job.id);
    if (!known) {
      this.tracked.set(job.id, { job, lastProgressAt: this.clock(), counting, done: job.bytesDone });
      return;
    }
    // Only the same count going up is work done; a new phase or step starts its count at 0.
    if (known.counting === counting && job.bytesDone > known.done) known.lastProgressAt = this.clock();
    known.job = job;
    known.counting = counting;
    known.done = job.bytesDone;
  }
}
