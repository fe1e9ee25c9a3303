/**
 * The recent jobs kept on disk (`jobs.json` in the data dir), so that a job a crash or a restart
 * interrupted is still listed afterwards, as failed with code `interrupted` and what start-up did
 * about it. Written atomically when a job starts, changes phase and ends, and while it runs at most
 * every few seconds (its progress, and its owner's heartbeat `seenAt`), never per progress tick.
 */
import { readdir, readFile, rename, rm } from 'node:fs/promises';
import { uptime } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { z } from 'zod';
import { CLOCK_AHEAD_TOLERANCE_MS } from '../backup/catalog';
import type { Logger } from '../log';
import { isAbandonedTemp, processAlive, TEMP_PREFIX, writeSmallFileAtomic } from '../system/atomic-file';
import { withFileUpdateLock } from '../system/json-state';
import { heldInNamespace, lockTiming, PID_NAMESPACE, processStart } from './lock';
import type { Job } from './runner';

/** How many jobs the file keeps (newest by start). */
const HISTORY_KEEP = 50;
/** A job result larger than this (as JSON) is left out of the file; the job itself is kept. */
const MAX_RESULT_CHARS = 16 * 1024;

const jobSchema = z.object({
  id: z.string(),
  kind: z.enum([
    'backup',
    'verify',
    'restore',
    'sync',
    'download',
    'upload',
    'maintenance',
    'dr-push',
    'dr-recover',
    'verification',
  ]),
  state: z.enum(['queued', 'running', 'succeeded', 'failed', 'cancelled']),
  phase: z.string(),
  step: z.string().optional(),
  bytesDone: z.number(),
  bytesTotal: z.number(),
  // Files written before progress had a unit: every count was bytes.
  unit: z.enum(['bytes', 'items', 'rows']).default('bytes'),
  startedAt: z.string(),
  endedAt: z.string().optional(),
  target: z.string().optional(),
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});

/** One job in the file, with the process and the runner that ran it (to tell whether it still runs). */
const entrySchema = z.object({
  pid: z.number().int(),
  runner: z.string(),
  ns: z.string().optional(),
  started: z.string().optional(),
  seenAt: z.string().optional(),
  job: jobSchema,
});
/**
 * One job in the file with the process that ran it: its pid, its runner, its PID namespace and its
 * start (field 22 of /proc/<pid>/stat: a reused pid names a process started at another time), and,
 * while the job runs, when its process last wrote it (`seenAt`, a heartbeat: a process in another PID
 * namespace, another container, is judged by it or by the job lock's, not by its pid). All but pid and
 * runner are absent in files of earlier versions (and `ns`, `started` where /proc cannot tell).
 */
export type HistoryEntry = {
  pid: number;
  runner: string;
  ns?: string;
  started?: string;
  seenAt?: string;
  job: Job;
};

const fileSchema = z.object({
  format: z.literal('gem-job-history'),
  version: z.literal(1),
  jobs: z.array(z.unknown()),
});

/**
 * Oldest first by start; a job dated after this machine's clock (run while the clock was ahead, a wrong
 * year put right since) counts as older than any other: as the newest, the 50 kept would be those
 * and every job ended since would be dropped from the file at its next save.
 */
export function jobsByStart(a: Job, b: Job): number {
  const now = Date.now() + CLOCK_AHEAD_TOLERANCE_MS;
  const ahead = (job: Job) => (Date.parse(job.startedAt) > now ? 1 : 0);
  return ahead(b) - ahead(a) || a.startedAt.localeCompare(b.startedAt);
}

function byStart(a: HistoryEntry, b: HistoryEntry): number {
  return jobsByStart(a.job, b.job);
}

/** Runners open in this process (a test may open two agents over one data dir in one process). */
const liveRunners = new Set<string>();

export function runnerOpened(id: string): void {
  liveRunners.add(id);
}

export function runnerClosed(id: string): void {
  liveRunners.delete(id);
}

/**
 * Whether the process that ran an entry's job is gone: a job started before the machine booted (its
 * pid may be reused since), a process of another PID namespace whose heartbeat is stale (its entry's
 * `seenAt` and the job lock at `lockPath`, as the lock's staleness), a runner of this process that was
 * closed (or one of an earlier process that had our pid), a pid that now names a process started at
 * another time (reused), or a pid that no longer runs.
 */
export async function ownerGone(entry: HistoryEntry, lockPath: string): Promise<boolean> {
  const bootedAt = Date.now() - uptime() * 1000;
  if (Date.parse(entry.job.startedAt) < bootedAt) return true;
  if (entry.ns !== undefined && PID_NAMESPACE !== undefined && entry.ns !== PID_NAMESPACE) {
    // Another container's process: its pid names nothing here. While its job runs it rewrites the
    // entry's seenAt, and a mutating job's holds the job lock fresh; once both are stale, it is gone.
    const seenMs = entry.seenAt === undefined ? undefined : Date.now() - Date.parse(entry.seenAt);
    if (seenMs !== undefined && seenMs <= lockTiming.foreignMaxAgeMs) return false;
    return !(await heldInNamespace(lockPath, entry.pid, entry.ns));
  }
  if (entry.pid === process.pid) return !liveRunners.has(entry.runner);
  if (entry.started !== undefined) {
    const started = processStart(entry.pid);
    if (started !== undefined && started !== entry.started) return true;
  }
  return !processAlive(entry.pid);
}

/** What start-up recovery did about an interrupted restore (agent/restore/swap.ts recoverRestoreAtStart). */
export type RestoreRecovery = 'none' | 'rolled-back' | 'completed' | 'skipped';

/** Phases of a backup before its file gets its final name: a crash then keeps nothing. */
const BACKUP_BEFORE_KEPT = new Set(['starting', 'dump', 'folders', 'pack', 'verify']);

/** How the messages name a job of each kind. */
const KIND_WORDS: Record<Job['kind'], string> = {
  backup: 'backup',
  verify: 'verify',
  restore: 'restore',
  sync: 'offsite sync',
  download: 'download',
  upload: 'upload',
  maintenance: 'maintenance',
  'dr-push': 'Cloud DR push',
  'dr-recover': 'Cloud DR recovery',
  verification: 'scheduled verification',
};

/**
 * The one-line message of a job the agent's stop interrupted, saying what start-up left. A backup
 * whose file has its final name (`backupKept`) was kept, whatever phase its record last had.
 */
export function interruptedMessage(
  job: Job,
  restore: RestoreRecovery | 'unknown',
  { backupKept = false }: { backupKept?: boolean } = {},
): string {
  const stopped = 'The agent stopped (a crash or a restart)';
  switch (job.kind) {
    case 'backup':
      return BACKUP_BEFORE_KEPT.has(job.phase) && !backupKept
        ? `${stopped} during this backup: nothing was kept; the temp file was removed.`
        : `${stopped} after this backup was made and verified: the backup is kept; the steps after it (${job.phase}) did not finish.`;
    case 'restore':
      switch (restore) {
        case 'completed':
          return `${stopped} after this restore's swap: the restore was completed at start-up. Restart GEM if it did not restart.`;
        case 'rolled-back':
          return `${stopped} during this restore's swap: start-up rolled it back; GEM is as it was before the restore.`;
        case 'none':
          return `${stopped} during this restore, before its swap: nothing was changed; GEM is as it was before the restore.`;
        case 'skipped':
          return `${stopped} during this restore; another process held the job lock at start-up and recovers it: see the log.`;
        default:
          return `${stopped} during this restore; a start-up after it finished or rolled it back: see the log.`;
      }
    default:
      return `${stopped} during this ${KIND_WORDS[job.kind]} job: it did not finish. Run it again if it is still needed.`;
  }
}

/**
 * A job another process recorded in the file (a `gem-backup create` beside the service), as a running
 * agent lists it: as recorded while that process runs (its progress as last written: at each phase and
 * every few seconds, not per progress tick), and failed `interrupted` once that process is gone without
 * ending it.
 */
export function jobOfOtherProcess(entry: HistoryEntry, gone: boolean): Job {
  const job = { ...entry.job };
  if (job.endedAt || !gone) return job;
  const what = job.kind === 'restore' ? 'restore' : `${KIND_WORDS[job.kind]} job`;
  const after =
    job.kind === 'restore'
      ? 'if it stopped during its swap, the next start of the agent or of a gem-backup command completes or rolls it back; see the log.'
      : 'it did not finish. Run it again if it is still needed.';
  return {
    ...job,
    state: 'failed',
    endedAt: new Date().toISOString(),
    error: {
      code: 'interrupted',
      message: `The process that ran this ${what} (pid ${entry.pid}) stopped before it ended: ${after}`,
    },
  };
}

/** The job as the file keeps it: a big result is left out. */
function forFile(job: Job): Job {
  if (job.result === undefined) return job;
  const text = JSON.stringify(job.result);
  if (text !== undefined && text.length <= MAX_RESULT_CHARS) return job;
  const { result: _left, ...rest } = job;
  return rest;
}

export class JobHistory {
  constructor(
    private readonly path: string,
    private readonly log: Logger,
  ) {}

  /**
   * The entries in the file, oldest first; an unreadable or damaged file is reported and counts as
   * empty (and is set aside at the next save).
   */
  async load(): Promise<HistoryEntry[]> {
    await this.removeLeftTemps();
    return (await this.read()).entries;
  }

  /** The entries in the file as they stand, oldest first: a look from a running agent, which cleans up nothing. */
  async entries(): Promise<HistoryEntry[]> {
    return (await this.read()).entries;
  }

  /** The file's entries; `damaged` when it is there but cannot be read or is not a job history. */
  private async read(): Promise<{ entries: HistoryEntry[]; damaged: boolean }> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], damaged: false };
      this.warnOnce('could not read the job history; it counts as empty', error);
      return { entries: [], damaged: true };
    }
    try {
      const file = fileSchema.parse(JSON.parse(text));
      const entries: HistoryEntry[] = [];
      for (const raw of file.jobs) {
        const parsed = entrySchema.safeParse(raw);
        if (parsed.success) entries.push(parsed.data as HistoryEntry);
      }
      this.warned = undefined;
      return {
        entries: entries.sort(byStart),
        damaged: false,
      };
    } catch (error) {
      this.warnOnce('the job history file is not valid; it counts as empty', error);
      return { entries: [], damaged: true };
    }
  }

  /** What was last warned about the file: the job list reads it at every look, and says it once. */
  private warned: string | undefined;

  private warnOnce(message: string, error: unknown): void {
    const said = `${message}: ${error instanceof Error ? error.message : String(error)}`;
    if (this.warned === said) return;
    this.warned = said;
    this.log.warn(message, { error, path: this.path });
  }

  /**
   * Writes `mine` (this runner's view, which wins for the jobs it holds) merged with what other
   * processes wrote (a CLI command beside the service), keeping the newest HISTORY_KEEP and those of
   * `mine` still running.
   */
  async save(mine: HistoryEntry[]): Promise<void> {
    // Read, merge and write under the file's update lock: without it, two processes saving at once
    // each write what they read before the other's write, and one's jobs drop out of the file.
    await withFileUpdateLock(this.path, () => this.merge(mine));
  }

  private async merge(mine: HistoryEntry[]): Promise<void> {
    const { entries, damaged } = await this.read();
    if (damaged) {
      // Kept for a look, as the other state files' damaged copies are, instead of written over.
      const aside = `${this.path}.damaged-${new Date().toISOString().replaceAll(':', '')}`;
      await rename(this.path, aside);
      this.log.warn('the job history file was damaged: it is set aside and the list starts afresh', {
        path: this.path,
        aside,
      });
    }
    const byId = new Map<string, HistoryEntry>();
    for (const entry of entries) byId.set(entry.job.id, entry);
    for (const entry of mine) {
      const there = byId.get(entry.job.id);
      // An ended record is never replaced by a still-running one (another process ended it meanwhile).
      if (there?.job.endedAt && !entry.job.endedAt) continue;
      byId.set(entry.job.id, { ...entry, job: forFile(entry.job) });
    }
    // The newest HISTORY_KEEP, and every job of ours still running however many started after it: a
    // crash during a long backup must still find it in the file, to list it as interrupted.
    const running = new Set(mine.filter((e) => !e.job.endedAt).map((e) => e.job.id));
    const sorted = [...byId.values()].sort(byStart);
    const jobs = sorted.filter((e, i) => i >= sorted.length - HISTORY_KEEP || running.has(e.job.id));
    await writeSmallFileAtomic(
      this.path,
      `${JSON.stringify({ format: 'gem-job-history', version: 1, jobs })}\n`,
      0o600,
    );
  }

  /** Temp files of this file that a dead process left. */
  private async removeLeftTemps(): Promise<void> {
    const dir = dirname(this.path);
    const start = `${TEMP_PREFIX}${basename(this.path)}.`;
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith(start) && isAbandonedTemp(name)) await rm(join(dir, name), { force: true });
    }
  }
}
