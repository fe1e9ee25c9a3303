/**
 * The service's watch over GEM's database, so that an outage heals without restarting the agent:
 * - the embedded cluster, found down at two checks in a row (it crashed, or was stopped by hand), is
 *   started again on its port;
 * - once the database answers again after an outage, what the outage left is finished as a start
 *   would: a restore whose swap could not be undone (its journal) is rolled back or completed, and
 *   restore staging leftovers are dropped. Under the job lock: never beside a running job;
 * - a restore whose process died (a CLI restore killed while the service runs) is settled as a start
 *   would: its journal rolled back, its staging and roles taken back, its safety backup removed.
 * A restore journal that cannot be read (restores refused, nothing settled until a person sees to it) is
 * logged at the first check that finds it and once when it is gone, not at each check.
 */
import { existsSync } from 'node:fs';
import type { Agent } from '../agent';
import { describeError, isAppError } from '../errors';
import { acquireLock } from '../jobs/lock';
import { type Logger, silentLogger } from '../log';
import { withMaintenance } from '../restore/database';
import {
  journalPath,
  journalState,
  journalUnreadable,
  recoverInterruptedRestore,
  uncommittedSafetyRecordLeft,
} from '../restore/swap';

const DATABASE_WATCH_MS = 10_000;
/**
 * How long a check waits for its `select 1`. postgres.js gives a query on an open connection no time
 * limit: one that never answers (every pool connection busy or hung) would stop the watch for good,
 * and the agent's shutdown waiting for it.
 */
const CHECK_LIMIT_MS = 15_000;

export interface DatabaseWatch {
  /** Stops the checks and waits for one in progress. */
  stop(): Promise<void>;
}

export function watchDatabase(
  agent: Agent,
  options: {
    intervalMs?: number;
    checkLimitMs?: number;
    /** Called after each check (tests count them). */
    afterCheck?: () => void;
  } = {},
): DatabaseWatch {
  const log = agent.log.child({ area: 'database-watch' });
  /**
   * Since the last check that found GEM's database answering: when it stopped, how many checks in a
   * row found the server itself down, and whether what it left was finished.
   */
  let outage: { since: Date; serverDown: number; finished: boolean } | undefined;
  let stopped = false;
  /** The check in progress: a slow one (a connect timeout) is not stacked with the next. */
  let checking: Promise<void> | undefined;
  /**
   * Whether the recovery's lines about a restore journal that cannot be read were logged (at the first
   * check that ran it while the journal was so): not again at each check (one every 10 s for as long as
   * the file stays would bury the rest of the log), until it is gone.
   */
  let unreadableJournalLogged = false;

  const limitMs = options.checkLimitMs ?? CHECK_LIMIT_MS;
  /** `query`'s answer, or a failure once it has not come in `limitMs` (the query itself is left to end). */
  const limited = (query: Promise<unknown>): Promise<unknown> => {
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer in ${limitMs / 1000} s`)), limitMs);
    });
    return Promise.race([query, limit]).finally(() => clearTimeout(timer));
  };
  /** The pool's `select 1` not answered yet: the next check waits on it rather than queueing another. */
  let poolQuery: Promise<unknown> | undefined;
  /** Why GEM's database does not answer through the agent's pool; undefined if it does. */
  const poolFailure = () => {
    poolQuery ??= Promise.resolve(agent.sql`select 1`).finally(() => {
      poolQuery = undefined;
    });
    return limited(poolQuery).then(
      () => undefined,
      (error: unknown) => describeError(error).message,
    );
  };
  /** The server answers, though GEM's database may not (renamed aside by a swap cut off, or fenced). */
  const serverAnswers = () =>
    limited(withMaintenance(agent.sources.conn, (sql) => sql`select 1`)).then(
      () => true,
      () => false,
    );

  /** The embedded server, down at this check and the one before: started again. */
  const restartCluster = async (downChecks: number) => {
    const cluster = agent.cluster;
    if (!cluster || downChecks < 2 || (await cluster.running())) return;
    try {
      if (await cluster.restart()) log.warn('the embedded PostgreSQL server was down; started it again');
    } catch (error) {
      log.error('could not start the embedded PostgreSQL server again', { error });
    }
  };

  /**
   * Rolls back or completes a restore the outage cut off, and drops staging leftovers; what recovery did,
   * or 'busy' (a job holds the job lock). Its lines about a journal that cannot be read go to `journalLog`.
   */
  const finishAfterOutage = async (journalLog: Logger) => {
    let release: () => Promise<void>;
    try {
      release = await acquireLock(agent.jobs.lockPath, 'finishing what a database outage left');
    } catch (error) {
      if (isAppError(error, 'job_running')) return 'busy';
      throw error;
    }
    try {
      const outcome = await recoverInterruptedRestore(
        { config: agent.config, log, sources: agent.sources },
        { whileRunning: true, journalLog },
      );
      if (outcome === 'rolled-back' || outcome === 'completed') {
        log.warn('finished a restore that the database outage had cut off', { outcome });
      }
      return outcome;
    } finally {
      await release();
    }
  };

  const check = async () => {
    const failure = await poolFailure();
    if (failure !== undefined && !outage) {
      log.warn("GEM's database does not answer", { error: failure });
      outage = { since: new Date(), serverDown: 0, finished: false };
    }
    if (failure !== undefined && !(await serverAnswers())) {
      outage!.serverDown += 1;
      outage!.finished = false;
      await restartCluster(outage!.serverDown);
      return;
    }
    if (outage) outage.serverDown = 0;
    const dataDir = agent.config.dataDir;
    const unreadable = await journalUnreadable(dataDir);
    if (unreadableJournalLogged && !unreadable) {
      unreadableJournalLogged = false;
      log.info(
        existsSync(journalPath(dataDir))
          ? 'the restore journal can be read again'
          : 'the restore journal that could not be read is gone from the data dir',
      );
    }
    // A journal with the job lock free is a swap whose undo failed or whose process died (a swap in
    // progress holds the lock; a committed one may still be cleaning up, and is left alone).
    const uncommitted = (await journalState(dataDir)) === 'uncommitted';
    // So is the record of a safety backup of a restore that did not commit (one killed before its swap).
    // Its only line (the journal cannot be read) is also the recovery's, which runs then: logged there.
    const uncommittedSafety = await uncommittedSafetyRecordLeft(dataDir, silentLogger);
    if ((outage && !outage.finished) || uncommitted || uncommittedSafety) {
      const outcome = await finishAfterOutage(unreadableJournalLogged ? silentLogger : log);
      if (outcome === 'busy') return; // a job runs: the next check tries again
      if (outage) outage.finished = true;
      // Left to another process holding the job lock, recovery did not look at the journal.
      if (unreadable && outcome !== 'skipped') unreadableJournalLogged = true;
    }
    if (failure === undefined && outage) {
      log.info("GEM's database answers again", {
        downForSeconds: Math.round((Date.now() - outage.since.getTime()) / 1000),
      });
      outage = undefined;
    }
  };

  const timer = setInterval(() => {
    if (stopped || checking) return;
    checking = check()
      .catch((error: unknown) => log.error('the database watch failed', { error }))
      .finally(() => {
        checking = undefined;
        options.afterCheck?.();
      });
  }, options.intervalMs ?? DATABASE_WATCH_MS);
  timer.unref();
  return {
    async stop() {
      stopped = true;
      clearInterval(timer);
      await checking;
    },
  };
}
