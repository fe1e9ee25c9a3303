/** MetricsRecorder: counts jobs by kind and outcome, backup durations and sizes, and bytes uploaded, from job events. */
import type { Job, JobEvent, JobRunner } from '../jobs/runner';
import { Histogram } from './text-format';

/** Seconds: 10 s to 2 h. */
const DURATION_BUCKETS = [10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200];
/** Bytes: 1 MB to 10 GB. */
const SIZE_BUCKETS = [1e6, 1e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9, 5e9, 1e10];

/** Counters since the agent started (Prometheus handles restarts of counters). */
export class MetricsRecorder {
  readonly jobCounts = new Map<string, number>();
  readonly uploadedBytes = new Map<string, number>();
  readonly backupDuration = new Histogram(DURATION_BUCKETS);
  readonly backupSize = new Histogram(SIZE_BUCKETS);
  lastBackup: { durationSeconds: number; size: number; endedAt: string } | undefined;
  private unsubscribe: (() => void) | undefined;

  /**
   * Listens to every job's events. The last backup is the jobs list's newest successful one, also one
   * before a restart (jobs.json): a gauge, not a count since start.
   */
  start(jobs: JobRunner): this {
    if (this.unsubscribe) return this;
    const before = jobs.list().find((j) => j.kind === 'backup' && j.state === 'succeeded' && j.endedAt);
    if (before) this.lastBackup = lastBackupOf(before);
    this.unsubscribe = jobs.subscribeAll((event) => this.onEvent(event));
    return this;
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
  }

  /** Adds bytes sent to a destination (offsite uploads report through the backup job's or Sync Now's notices; others may call this). */
  recordUpload(destination: string, bytes: number): void {
    if (!Number.isFinite(bytes) || bytes <= 0) return;
    this.uploadedBytes.set(destination, (this.uploadedBytes.get(destination) ?? 0) + bytes);
  }

  private onEvent(event: JobEvent): void {
    if (event.type === 'notice') {
      if (event.name === 'offsite-upload' && event.data && typeof event.data === 'object') {
        for (const [destination, r] of Object.entries(
          event.data as Record<string, { ok?: boolean; size?: number }>,
        )) {
          if (r?.ok && typeof r.size === 'number') this.recordUpload(destination, r.size);
        }
      }
      // Sync Now says each upload as it lands.
      if (event.name === 'offsite-sync-upload') {
        const d = event.data as { destination?: unknown; size?: unknown } | undefined;
        if (typeof d?.destination === 'string' && typeof d.size === 'number')
          this.recordUpload(d.destination, d.size);
      }
      return;
    }
    const job = event.job;
    if (!job.endedAt) return;
    const key = `${job.kind}\u0000${job.state}`;
    this.jobCounts.set(key, (this.jobCounts.get(key) ?? 0) + 1);
    if (job.state !== 'succeeded') return;
    const result = job.result as Record<string, unknown> | undefined;
    if (job.kind === 'backup') {
      this.lastBackup = lastBackupOf(job);
      this.backupDuration.observe(this.lastBackup.durationSeconds);
      this.backupSize.observe(this.lastBackup.size);
    }
    if (job.kind === 'dr-push' && typeof result?.size === 'number') this.recordUpload('cloud', result.size);
  }
}

/** A successful backup job's duration and size. */
function lastBackupOf(job: Job): NonNullable<MetricsRecorder['lastBackup']> {
  const result = job.result as { backup?: { size?: number } } | undefined;
  return {
    durationSeconds: (Date.parse(job.endedAt!) - Date.parse(job.startedAt)) / 1000,
    size: Number(result?.backup?.size ?? 0),
    endedAt: job.endedAt!,
  };
}

const recorders = new WeakMap<object, MetricsRecorder>();

/** The agent's one recorder, listening to its jobs from the first call on (main.ts calls it at start). */
export function metricsFor(agent: { jobs: JobRunner }): MetricsRecorder {
  let r = recorders.get(agent);
  if (!r) {
    r = new MetricsRecorder().start(agent.jobs);
    recorders.set(agent, r);
  }
  return r;
}
