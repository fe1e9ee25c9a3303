/** Jobs: long operations with phases, progress (bytes or items), events and cancel; one mutating job at a time. */
import { randomUUID } from 'node:crypto';
import { AppError, describeError, isAppError } from '../errors';
import type { Logger } from '../log';
import {
  type HistoryEntry,
  interruptedMessage,
  type JobHistory,
  jobOfOtherProcess,
  jobsByStart,
  ownerGone,
  type RestoreRecovery,
  runnerClosed,
  runnerOpened,
} from './history';
import { acquireLock, lockTiming, PID_NAMESPACE, PROCESS_STARTED } from './lock';

export type JobKind =
  | 'backup'
  | 'verify'
  | 'restore'
  | 'sync'
  | 'download'
  | 'upload'
  | 'maintenance'
  | 'dr-push'
  | 'dr-recover'
  | 'verification';
export type JobState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled';
/**
 * What a phase's progress counts: bytes, items (steps of known number, e.g. a restore's staging:
 * pg_restore's data and index items, then the row-count check), or rows (the history purge's rows
 * deleted, total unknown). bytesDone and bytesTotal carry the count in any unit, so their names stay as
 * the API has them.
 */
export type ProgressUnit = 'bytes' | 'items' | 'rows';

export interface Job {
  id: string;
  kind: JobKind;
  state: JobState;
  phase: string;
  /**
   * The step within the phase, when the phase runs steps of its own whose counts each start at 0 (a
   * restore's safety backup: dump, folders, pack, verify); absent otherwise, and in earlier versions.
   */
  step?: string;
  /** Done within the phase (or its step), in `unit`; never more than bytesTotal once that is known. */
  bytesDone: number;
  /** The phase's total in `unit` (0 = unknown). */
  bytesTotal: number;
  /** What bytesDone and bytesTotal count in this phase ('bytes' unless the phase says otherwise). */
  unit: ProgressUnit;
  startedAt: string;
  endedAt?: string;
  /** What the job is about, e.g. the backup's file name. */
  target?: string;
  result?: unknown;
  error?: { code: string; message: string };
}

/** What a running job's code receives: its cancel signal and ways to report progress. */
export interface JobContext {
  readonly signal: AbortSignal;
  readonly log: Logger;
  /** Enters a new phase; bytesDone restarts at 0 with the given total (0 = unknown), counted in `unit` (default bytes). */
  phase(name: string, bytesTotal?: number, unit?: ProgressUnit): void;
  /**
   * Enters a step within the phase (the phase stays): bytesDone restarts at 0 with the given total, so
   * each count shown goes with its own step's words, never backwards under the phase's.
   */
  step(name: string, bytesTotal?: number, unit?: ProgressUnit): void;
  /** Sets how much is done within the phase (in the phase's unit), and its total if given. */
  progress(bytesDone: number, bytesTotal?: number): void;
  /** Publishes an event to listeners without a state change (e.g. "restore is about to swap"). */
  notice(name: string, data?: unknown): void;
  /** Names what the job is about once the work knows it (a backup's file name, chosen before it is packed). */
  target(name: string): void;
  /** Throws `cancelled` if the job was cancelled. */
  throwIfCancelled(): void;
}

export type JobEvent =
  | { type: 'update'; job: Job }
  | { type: 'notice'; job: Job; name: string; data?: unknown };
type Listener = (event: JobEvent) => void;

/** A context for running job code outside the runner (CLI, tests): progress goes to `onProgress`. */
export function standaloneContext(
  log: Logger,
  onProgress?: (phase: string, done: number, total: number, unit: ProgressUnit, step?: string) => void,
  signal: AbortSignal = new AbortController().signal,
): JobContext {
  let phase = '';
  let step: string | undefined;
  let total = 0;
  let unit: ProgressUnit = 'bytes';
  return {
    signal,
    log,
    phase(name, bytesTotal = 0, phaseUnit = 'bytes') {
      phase = name;
      step = undefined;
      total = bytesTotal;
      unit = phaseUnit;
      onProgress?.(phase, 0, total, unit);
    },
    step(name, bytesTotal = 0, stepUnit = 'bytes') {
      step = name;
      total = bytesTotal;
      unit = stepUnit;
      onProgress?.(phase, 0, total, unit, step);
    },
    progress(done, bytesTotal) {
      if (bytesTotal !== undefined) total = bytesTotal;
      onProgress?.(phase, clampDone(done, total), total, unit, step);
    },
    notice() {},
    target() {},
    throwIfCancelled() {
      if (signal.aborted) throw new AppError('cancelled', 'the job was cancelled');
    },
  };
}

/** Progress never passes a known total (a file that grew while it was read, an item reported twice). */
function clampDone(done: number, total: number): number {
  return total > 0 ? Math.min(done, total) : done;
}

/**
 * The least time between the end of one history write and a write for a running job's progress or
 * heartbeat: another process (the service beside a CLI command) sees its progress move that often.
 */
const PROGRESS_SAVE_MS = 2000;

/** The least time between two progress events of a job (at most 5 a second to the page and the CLI). */
const PROGRESS_EMIT_MS = 200;

export class JobRunner {
  private readonly jobs = new Map<string, Job>();
  /** A running job's notices, the latest of each name: replayed to a listener that comes late (a reloaded page). */
  private readonly notices = new Map<string, Map<string, unknown>>();
  private readonly controllers = new Map<string, AbortController>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly globalListeners = new Set<Listener>();
  private readonly running = new Set<Promise<unknown>>();
  /** Each running job's run, by job id: a job that reads as ended may still be letting go of the lock. */
  private readonly runs = new Map<string, Promise<unknown>>();
  /** Starts still taking the job lock: shutdown waits for them too, so none runs after it. */
  private readonly starting = new Set<Promise<unknown>>();
  /** Set by shutdown: no job starts any more. */
  private closed = false;
  /** This runner, in the history file (with the pid: whether the job's process still runs). */
  private readonly runnerId = randomUUID();
  /** Jobs loaded from the history that another runner ran: written back under their owner. */
  private readonly owners = new Map<string, Omit<HistoryEntry, 'job'>>();
  private saveChain: Promise<void> = Promise.resolve();
  private saveQueued = false;
  /** History writes queued or in progress, and when the last one ended (the progress saves' throttle). */
  private savesPending = 0;
  private lastSaveEnd = 0;
  /** While a job runs: rewrites its entry now and then (its `seenAt`), even when it reports no progress. */
  private heartbeat: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: {
      lockPath: string;
      log: Logger;
      keep?: number;
      history?: JobHistory;
      /** The least time between history writes for a running job's progress (default PROGRESS_SAVE_MS). */
      progressSaveMs?: number;
    },
  ) {
    runnerOpened(this.runnerId);
  }

  /**
   * Loads the recent jobs from the history file (at start, before any job). A job recorded as running
   * whose process is gone is listed as failed with code `interrupted`, saying what start-up did:
   * `restore` is what recovery did about the newest interrupted restore; `backupKept` says whether a
   * backup's file is in the backups folder under the name its job recorded (a crash after its rename
   * but before the next phase was written keeps it). Returns the interrupted jobs.
   */
  async loadHistory(
    restore: RestoreRecovery,
    backupKept: (name: string) => Promise<boolean> = async () => false,
  ): Promise<Job[]> {
    const history = this.options.history;
    if (!history) return [];
    const entries = await history.load();
    const interrupted: Job[] = [];
    const gone = new Set<HistoryEntry>();
    for (const e of entries) if (!e.job.endedAt && (await ownerGone(e, this.options.lockPath))) gone.add(e);
    const newestRestore = entries.filter((e) => e.job.kind === 'restore' && gone.has(e)).at(-1);
    for (const entry of entries) {
      if (this.jobs.has(entry.job.id)) continue;
      const job = { ...entry.job };
      if (!job.endedAt) {
        // Still running in another live process (a CLI command): not ours to show or to end.
        if (!gone.has(entry)) continue;
        job.state = 'failed';
        job.endedAt = new Date().toISOString();
        job.error = {
          code: 'interrupted',
          message: interruptedMessage(job, entry === newestRestore ? restore : 'unknown', {
            backupKept: job.kind === 'backup' && job.target !== undefined && (await backupKept(job.target)),
          }),
        };
        interrupted.push(job);
        this.options.log.warn('a job was interrupted by the agent stopping', {
          jobId: job.id,
          kind: job.kind,
          phase: job.phase,
          message: job.error.message,
        });
      }
      this.jobs.set(job.id, job);
      const { job: _recorded, ...owner } = entry;
      this.owners.set(job.id, owner);
    }
    this.trim();
    if (interrupted.length > 0) await this.persist();
    return interrupted.map((j) => ({ ...j }));
  }

  /** The lock file that makes mutating jobs exclusive (shared with the CLI and withJobLock). */
  get lockPath(): string {
    return this.options.lockPath;
  }

  /**
   * Starts a job. A mutating job while another mutating job runs (here or in the CLI) is refused
   * with `job_running` (HTTP 409): we refuse rather than queue, so that nobody waits on a job
   * they cannot see; the scheduler retries its own runs.
   */
  async start<T>(
    kind: JobKind,
    work: (ctx: JobContext) => Promise<T>,
    options: { mutating?: boolean; target?: string } = {},
  ): Promise<Job> {
    this.refuseIfClosed();
    // A job of ours that already reads as ended still writes its history and then lets go of the job
    // lock: a start right after it (a script that polls for "succeeded") waits for that moment instead
    // of being told another job is running.
    if (options.mutating !== false) {
      const ending = [...this.runs].filter(([id]) => this.jobs.get(id)?.state !== 'running');
      await Promise.allSettled(ending.map(([, run]) => run));
    }
    const acquiring =
      options.mutating === false ? Promise.resolve(async () => {}) : acquireLock(this.options.lockPath, kind);
    this.starting.add(acquiring);
    let release: () => Promise<void>;
    try {
      release = await acquiring;
    } finally {
      this.starting.delete(acquiring);
    }
    if (this.closed) {
      await release().catch(() => {});
      this.refuseIfClosed();
    }
    // From here to the run's registration nothing awaits: a shutdown either came before (refused
    // above) or finds the job among the running ones, cancels it and waits for its end.
    const job: Job = {
      id: randomUUID(),
      kind,
      state: 'running',
      phase: 'starting',
      bytesDone: 0,
      bytesTotal: 0,
      unit: 'bytes',
      startedAt: new Date().toISOString(),
      ...(options.target ? { target: options.target } : {}),
    };
    const controller = new AbortController();
    this.jobs.set(job.id, job);
    this.controllers.set(job.id, controller);
    this.trim();
    const log = this.options.log.child({ jobId: job.id, kind });
    const began = performance.now();
    const took = () => ({ durationMs: Math.round(performance.now() - began) });
    let lastEmit = 0;
    /** An update held back by the throttle, sent when its turn comes: the last count never stays unsent. */
    let trailing: NodeJS.Timeout | undefined;
    /** The phase the work last entered: where a cancelled job stopped, once its `cancelling` is over. */
    let lastPhase = job.phase;
    const ctx: JobContext = {
      signal: controller.signal,
      log,
      phase: (name, bytesTotal = 0, unit = 'bytes') => {
        job.phase = name;
        lastPhase = name;
        delete job.step;
        job.bytesDone = 0;
        job.bytesTotal = bytesTotal;
        job.unit = unit;
        log.info('job phase', { phase: name });
        void this.persist();
        this.emit(job);
      },
      step: (name, bytesTotal = 0, unit = 'bytes') => {
        job.step = name;
        job.bytesDone = 0;
        job.bytesTotal = bytesTotal;
        job.unit = unit;
        log.info('job step', { phase: job.phase, step: name });
        void this.persist();
        this.emit(job);
      },
      progress: (done, bytesTotal) => {
        const before = job.bytesDone;
        if (bytesTotal !== undefined) job.bytesTotal = bytesTotal;
        job.bytesDone = clampDone(done, job.bytesTotal);
        const now = Date.now();
        // At most 5 updates a second; the one that reaches the total always goes (the bar fills). One
        // held back goes once 200 ms have passed, so a count that then stops moving (a stalled upload,
        // a step's last report) is still shown as it stands.
        const reached = job.bytesTotal > 0 && job.bytesDone === job.bytesTotal && before !== job.bytesDone;
        if (now - lastEmit >= PROGRESS_EMIT_MS || reached) {
          clearTimeout(trailing);
          trailing = undefined;
          lastEmit = now;
          this.emit(job);
        } else if (!trailing) {
          trailing = setTimeout(
            () => {
              trailing = undefined;
              lastEmit = Date.now();
              if (!job.endedAt) this.emit(job);
            },
            PROGRESS_EMIT_MS - (now - lastEmit),
          );
          trailing.unref();
        }
        this.saveWhileRunning();
      },
      notice: (name, data) => {
        if (!job.endedAt) {
          const earlier = this.notices.get(job.id) ?? new Map<string, unknown>();
          earlier.delete(name);
          this.notices.set(job.id, earlier.set(name, data));
        }
        this.publish(job.id, { type: 'notice', job: { ...job }, name, data });
      },
      target: (name) => {
        job.target = name;
        void this.persist();
        this.emit(job);
      },
      throwIfCancelled: () => {
        if (controller.signal.aborted) throw new AppError('cancelled', 'the job was cancelled');
      },
    };
    log.info('job started', options.target ? { target: options.target } : {});
    this.startHeartbeat();
    // On disk before the work begins: a crash from here on leaves the job listed (as interrupted).
    const recorded = this.persist();
    const run = (async () => {
      try {
        await recorded;
        this.emit(job);
        ctx.throwIfCancelled();
        // Work that completed is reported as done even if a cancel came too late to stop it (a
        // restore past its commit point): the record must say what really happened.
        const result = await work(ctx);
        job.state = 'succeeded';
        job.phase = 'done';
        delete job.step;
        if (result !== undefined) job.result = result;
        log.info('job succeeded', took());
      } catch (error) {
        job.state = controller.signal.aborted ? 'cancelled' : 'failed';
        // A cancelled job's own words are kept when it says what its cancellation did (a restore:
        // "…; the safety backup … was removed: nothing was changed"), else the plain line.
        job.error = controller.signal.aborted
          ? {
              code: 'cancelled',
              message: isAppError(error, 'cancelled') ? error.message : 'the job was cancelled',
            }
          : describeError(error);
        // `cancelling` says what a running job is about; an ended one shows the phase it stopped in.
        if (job.phase === 'cancelling') job.phase = lastPhase;
        log.warn(`job ${job.state}`, { error: job.error, ...took() });
      } finally {
        job.endedAt = new Date().toISOString();
        this.controllers.delete(job.id);
        if (this.controllers.size === 0) this.stopHeartbeat();
        await this.persist();
        await release().catch(() => {});
        this.emit(job);
      }
    })();
    this.running.add(run);
    this.runs.set(job.id, run);
    run.finally(() => {
      this.running.delete(run);
      this.runs.delete(job.id);
    });
    await recorded;
    return { ...job };
  }

  /** A start after shutdown began: refused, so that no job runs on a closing agent. */
  private refuseIfClosed(): void {
    if (this.closed) throw new AppError('cancelled', 'the agent is stopping: the job was not started');
  }

  /** Starts a job and waits for it to end; resolves with the final record. */
  async run<T>(
    kind: JobKind,
    work: (ctx: JobContext) => Promise<T>,
    options?: { mutating?: boolean; target?: string },
  ) {
    const job = await this.start(kind, work, options);
    return this.waitFor(job.id);
  }

  waitFor(id: string): Promise<Job> {
    const job = this.jobs.get(id);
    if (!job) return Promise.reject(new AppError('not_found', `no job ${id}`));
    if (job.endedAt) return Promise.resolve({ ...job });
    return new Promise((resolve) => {
      const off = this.subscribe(id, (event) => {
        if (event.type === 'update' && event.job.endedAt) {
          off();
          resolve(event.job);
        }
      });
    });
  }

  get(id: string): Job | undefined {
    const job = this.jobs.get(id);
    return job ? { ...job } : undefined;
  }

  /** Newest first. */
  list(): Job[] {
    return [...this.jobs.values()].reverse().map((j) => ({ ...j }));
  }

  /**
   * list() with the jobs other processes recorded in the history file (a `gem-backup create` run beside
   * the service: the CLI opens the agent in its own process, with its own runner), newest first: what
   * GET /jobs answers. A job of another process is read-only here (see jobOfOtherProcess).
   */
  async listWithOthers(): Promise<Job[]> {
    const others = await Promise.all((await this.otherEntries()).map((e) => this.asOtherJob(e)));
    if (others.length === 0) return this.list();
    return [...this.list(), ...others].sort((a, b) => jobsByStart(b, a));
  }

  /** A job another process recorded in the history file and this runner does not hold, with its pid. */
  async ofOtherProcess(id: string): Promise<{ job: Job; pid: number } | undefined> {
    if (this.jobs.has(id)) return undefined;
    const entry = (await this.otherEntries()).find((e) => e.job.id === id);
    return entry ? { job: await this.asOtherJob(entry), pid: entry.pid } : undefined;
  }

  private async asOtherJob(entry: HistoryEntry): Promise<Job> {
    const gone = !entry.job.endedAt && (await ownerGone(entry, this.options.lockPath));
    return jobOfOtherProcess(entry, gone);
  }

  private async otherEntries(): Promise<HistoryEntry[]> {
    const history = this.options.history;
    if (!history) return [];
    return (await history.entries()).filter((e) => !this.jobs.has(e.job.id));
  }

  active(): Job[] {
    return this.list().filter((j) => !j.endedAt);
  }

  cancel(id: string): Job {
    const job = this.jobs.get(id);
    if (!job) throw new AppError('not_found', `no job ${id}`);
    if (job.endedAt) throw new AppError('conflict', `job ${id} has already ended (${job.state})`);
    this.controllers.get(id)?.abort();
    job.phase = 'cancelling';
    delete job.step;
    this.emit(job);
    return { ...job };
  }

  /** The notices a running job has sent so far, the latest of each name, oldest first (none once it ended). */
  noticesOf(id: string): Array<{ name: string; data: unknown }> {
    return [...(this.notices.get(id) ?? [])].map(([name, data]) => ({ name, data }));
  }

  /** Listens to one job's events; returns the function that stops listening. */
  subscribe(id: string, listener: Listener): () => void {
    let set = this.listeners.get(id);
    if (!set) {
      set = new Set();
      this.listeners.set(id, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
      // A stream opened on a job that had ended long ago: nothing else would remove its entry.
      if (set.size === 0 && this.listeners.get(id) === set) this.listeners.delete(id);
    };
  }

  /** How many jobs have listeners now (a long-running agent's streams must not leave entries behind). */
  listenedJobs(): number {
    return this.listeners.size;
  }

  /** Listens to every job's events (the page's notifications, the health watchdog). */
  subscribeAll(listener: Listener): () => void {
    this.globalListeners.add(listener);
    return () => this.globalListeners.delete(listener);
  }

  /**
   * Cancels every running job and waits for them to clean up (shutdown). A start still taking the
   * job lock is waited for too: it gives the lock back and is refused, so no job outlives this.
   */
  async shutdown(): Promise<void> {
    this.closed = true;
    while (this.starting.size > 0 || this.running.size > 0) {
      for (const controller of this.controllers.values()) controller.abort();
      await Promise.allSettled([...this.starting, ...this.running]);
    }
    this.stopHeartbeat();
    await this.saveChain;
    runnerClosed(this.runnerId);
  }

  /**
   * Writes the history for a running job's progress or heartbeat, unless a write is queued or in
   * progress, or the last one ended less than PROGRESS_SAVE_MS (or the `progressSaveMs` option) ago:
   * however often progress comes, writes never pile up, and a slow write spaces them further.
   */
  private saveWhileRunning(): void {
    const spacing = this.options.progressSaveMs ?? PROGRESS_SAVE_MS;
    if (this.savesPending > 0 || Date.now() - this.lastSaveEnd < spacing) return;
    void this.persist();
  }

  /**
   * Every `lockTiming.heartbeatMs` while a job runs, a write (throttled as progress's): the entries'
   * `seenAt` stays fresh for a process in another PID namespace, which cannot check our pid (a
   * non-mutating job holds no job lock to go by). Unref'd; stopped when no job runs and at shutdown.
   */
  private startHeartbeat(): void {
    if (this.heartbeat || !this.options.history) return;
    this.heartbeat = setInterval(() => this.saveWhileRunning(), lockTiming.heartbeatMs);
    this.heartbeat.unref();
  }

  private stopHeartbeat(): void {
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }

  /**
   * Writes the recent jobs to the history file, this runner's running ones with `seenAt` now; a write
   * already queued (not begun) covers this call too. A failure is logged, never thrown: the jobs
   * themselves go on.
   */
  private persist(): Promise<void> {
    const history = this.options.history;
    if (!history) return Promise.resolve();
    if (this.saveQueued) return this.saveChain;
    this.saveQueued = true;
    this.savesPending++;
    this.saveChain = this.saveChain.then(async () => {
      this.saveQueued = false;
      const seenAt = new Date().toISOString();
      const entries: HistoryEntry[] = [...this.jobs.values()].map((job) => ({
        ...(this.owners.get(job.id) ?? {
          pid: process.pid,
          runner: this.runnerId,
          ...(PID_NAMESPACE !== undefined ? { ns: PID_NAMESPACE } : {}),
          ...(PROCESS_STARTED !== undefined ? { started: PROCESS_STARTED } : {}),
          ...(job.endedAt ? {} : { seenAt }),
        }),
        job: { ...job },
      }));
      await history
        .save(entries)
        .catch((error) => this.options.log.warn('could not write the job history', { error }));
      this.savesPending--;
      this.lastSaveEnd = Date.now();
    });
    return this.saveChain;
  }

  private emit(job: Job): void {
    this.publish(job.id, { type: 'update', job: { ...job } });
  }

  private publish(id: string, event: JobEvent): void {
    for (const listener of this.listeners.get(id) ?? []) listener(event);
    for (const listener of this.globalListeners) listener(event);
    if (event.type === 'update' && event.job.endedAt) {
      this.notices.delete(id);
      // Listeners of an ended job have had their last event.
      setTimeout(() => this.listeners.delete(id), 60_000).unref();
    }
  }

  private trim(): void {
    const keep = this.options.keep ?? 200;
    for (const [id, job] of this.jobs) {
      if (this.jobs.size <= keep) break;
      if (job.endedAt) {
        this.jobs.delete(id);
        this.owners.delete(id);
      }
    }
  }
}
