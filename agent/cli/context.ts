/** What a CLI command gets: its arguments, output channels, and a way to open the agent in-process. */
import { existsSync, rmSync, statSync } from 'node:fs';
import { rmdir } from 'node:fs/promises';
import { userInfo } from 'node:os';
import type { Agent } from '../agent';
import { type DataPaths, dataPaths, loadConfig } from '../config';
import { AppError, describeError } from '../errors';
import type { Job, ProgressUnit } from '../jobs/runner';
import { createLogger } from '../log';
import { runAsOwner, shellWord, userNameOf } from '../system/passwd';
import { progressWords, type StepProgress, timeLeftEstimator } from './progress';

/**
 * The signals that stop a command cleanly: its jobs cancelled and followed to their end. SIGHUP: the
 * terminal was lost (an SSH session dropped). `nohup` cannot keep a Node process alive past it (Node
 * sets every signal but SIGPIPE and SIGXFSZ back to its default at start); `setsid` or tmux can.
 */
const STOP_SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

export interface CliContext {
  args: string[];
  out: (line: string) => void;
  err: (line: string) => void;
  /**
   * Opens the agent over GEM_DATA_DIR (starting the embedded cluster if needed), runs fn, closes it.
   * Ctrl-C, SIGTERM or SIGHUP meanwhile cancels the jobs it runs, waits for them, and closes the agent.
   * `finishes`: what fn changes itself, with no job to cancel (the keys import): a signal lets it run to
   * its end, as stopped half-way it would leave its files half changed, and the line says how it ended.
   * Such an fn calls `stopIfInterrupted` just before its first change: after a signal it throws, and the
   * command ends as cancelled, nothing changed (also when fn ends without reaching it).
   */
  withAgent<T>(
    fn: (agent: Agent, stopIfInterrupted: () => void) => Promise<T>,
    options?: { finishes?: string },
  ): Promise<T>;
  /**
   * Runs a command that needs only the data dir's files, no agent or database (keys export), and
   * records it in the audit log as withAgent does: what, by whom, how it ended.
   */
  withDataDir<T>(fn: (paths: DataPaths) => Promise<T>): Promise<T>;
  /**
   * Runs a command that writes a file itself, with no agent (decrypt): Ctrl-C, SIGTERM or SIGHUP
   * meanwhile aborts `signal`, so that it removes its temp file instead of dying with it left behind.
   * A second signal exits at once: first it removes the temp file fn named with `tempFile` (its write
   * may be held in a long fsync that the first could not interrupt).
   */
  whileStoppable<T>(fn: (signal: AbortSignal, tempFile: (path: string) => void) => Promise<T>): Promise<T>;
  /** Refuses, with one line, a data dir that holds no installation (unless this command sets one up). */
  requireInstallation(): void;
  /**
   * A progress printer for jobs: one line per phase, a percentage when the total is known, and for a
   * step in bytes (`unit`, default bytes) going at a steady pace about how long it has left.
   */
  progress(phase: string, done: number, total: number, unit?: ProgressUnit, step?: string): void;
  /** Clears the progress line on a terminal (before a result or an error line). */
  endProgress(): void;
  /** After a Ctrl-C, SIGTERM or SIGHUP: the one line that says what happened; undefined if none came. */
  interruption(): string | undefined;
}

/** Thrown when a signal stopped a command that runs no job (list, verify of a path, dr status). */
class Interrupted extends AppError {
  constructor() {
    super('cancelled', 'cancelled');
  }
}

/** What a job stopped by a signal did, in one line. */
function describeStopped(job: Job): string {
  const what = job.kind.replaceAll('-', ' ');
  if (job.state === 'cancelled') {
    if (job.kind === 'restore') {
      return 'cancelled: the restore stopped before the switch-over; the current data was not changed';
    }
    // A recovery cancelled after its keys step says what holds the box now (recoverFromCloud).
    const after = job.kind === 'dr-recover' && job.error?.message.startsWith('the recovery was cancelled');
    return after ? `cancelled: ${job.error?.message}` : 'cancelled: nothing was changed';
  }
  if (job.state === 'succeeded') return `interrupted too late to cancel: the ${what} had completed`;
  return `interrupted: the ${what} failed: ${job.error?.message ?? 'unknown error'}`;
}

/** The person running the CLI, for the audit log: the account, and the one sudo was run from. */
function whoRuns(): { user: string; sudoUser?: string; pid: number } {
  let user: string;
  try {
    user = userInfo().username;
  } catch {
    user = `uid ${process.getuid?.() ?? 'unknown'}`;
  }
  const sudoUser = process.env.SUDO_USER;
  return { user, ...(sudoUser ? { sudoUser } : {}), pid: process.pid };
}

/**
 * Removes the command's own work folder (`work/p<pid>n…`) once its agent closed, on a Ctrl-C too: the
 * next start of the service would sweep it, and until then it is an empty folder that says nothing.
 * Only an empty one: what a job left in it on purpose (a restore's staging kept for the next start)
 * stays for that start.
 */
async function removeWorkFolder(agent: Agent): Promise<void> {
  await rmdir(agent.paths.work).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT' && error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST')
      agent.log.warn('could not remove the command’s work folder', { path: agent.paths.work, error });
  });
}

/** The audit record of a CLI command: what ran, how it ended, and by whom. */
function cliAuditEntry(
  command: string,
  outcome: { outcome: string; error?: string },
): Record<string, unknown> {
  return { via: 'cli', command, ...outcome, ...whoRuns() };
}

/**
 * Who an installation belongs to: the owner of its keyring, or of its data dir before it has one (or
 * when the keyring is out of reach); undefined when neither exists. 'denied' when neither can be seen.
 */
function installationOwner(dataDir: string): number | 'denied' | undefined {
  let denied = false;
  for (const path of [dataPaths(dataDir).keyring, dataDir]) {
    try {
      return statSync(path).uid;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EACCES') denied = true;
      else if (code !== 'ENOENT') throw error;
    }
  }
  return denied ? 'denied' : undefined;
}

/**
 * The command line's words with the value of `--installation-id` (the DR recovery credential, which the
 * CLI never prints whole) written as ID: a refusal repeats the command, and stderr may go to a log.
 */
function withoutInstallationId(words: string[]): string[] {
  return words.map((word, index) => {
    if (words[index - 1] === '--installation-id') return 'ID';
    return word.startsWith('--installation-id=') ? '--installation-id=ID' : word;
  });
}

/**
 * Refuses, with the command line that works, a command run by another user than the one the
 * installation belongs to (the service's). What root would write there (a backup, a state file, the
 * keyring) is root's and 0600, so the service could no longer read it; another user cannot read the
 * installation at all; and as root the embedded cluster is run by `postgres`, not the service's user.
 */
function requireInstallationUser(dataDir: string): void {
  const me = process.geteuid?.();
  const owner = installationOwner(dataDir);
  if (me === undefined || owner === undefined || owner === me) return;
  if (owner === 'denied') {
    throw new AppError(
      'unauthorized',
      `cannot reach the installation in ${dataDir} as user ${userNameOf(me)} (permission denied): run gem-backup as the user the service runs as`,
    );
  }
  const command = withoutInstallationId(process.argv.slice(2)).map(shellWord).join(' ');
  const name = userNameOf(owner);
  const whose = owner === 0 ? 'root' : `user ${name}`;
  const as = runAsOwner(owner, me);
  const why = me === 0 ? ', so that what it writes stays readable to the service' : '';
  const how = `${why}: ${as} gem-backup ${command}`;
  throw new AppError(
    'unauthorized',
    `the installation in ${dataDir} belongs to ${whose} and this command runs as ${me === 0 ? 'root' : `user ${userNameOf(me)}`}: run it as ${whose}${how}`,
  );
}

/**
 * `command` (e.g. "keys export", "restore gem-backup-….tar.gz") is what the audit log records for
 * each opening of the agent.
 */
export function createCliContext(
  args: string[],
  options: { mayCreate?: boolean; command?: string } = {},
): CliContext {
  let lastLine = '';
  let showing = false;
  const timeLeft = timeLeftEstimator();
  /** The latest progress while a line shows, redrawn every second: the time left counts down, and goes on a stall. */
  let latest: StepProgress | undefined;
  let redraw: NodeJS.Timeout | undefined;
  const drawProgress = () => {
    if (!latest) return;
    const { phase, bytesDone, bytesTotal, step } = latest;
    const line = progressWords(phase, bytesDone, bytesTotal, timeLeft(latest, Date.now()), step);
    if (line !== lastLine) {
      process.stderr.write(`\r\x1b[K${line}`);
      lastLine = line;
      showing = true;
    }
  };
  /** The first signal's name; a second one exits at once. */
  let signalled: string | undefined;
  let pressed = 0;
  /** Jobs that were running (or started) after the signal, by id, with their latest record. */
  const stopped = new Map<string, Job>();
  /** What a `finishes` command changed after a signal came, and its error if it failed. */
  let finished: { what: string; error?: string } | undefined;
  const endProgress = () => {
    clearInterval(redraw);
    redraw = undefined;
    latest = undefined;
    if (showing) process.stderr.write('\r\x1b[K');
    showing = false;
    lastLine = '';
  };
  const requireInstallation = () => {
    const config = loadConfig();
    requireInstallationUser(config.dataDir);
    if (options.mayCreate) return;
    if (existsSync(dataPaths(config.dataDir).keyring)) return;
    throw new AppError(
      'not_found',
      `no GEM backup installation in ${config.dataDir}: set GEM_DATA_DIR to the service's data dir (systemctl cat gem-backup shows it), or start the service once to create one`,
    );
  };
  return {
    args,
    out: (line) => {
      endProgress();
      process.stdout.write(`${line}\n`);
    },
    err: (line) => {
      endProgress();
      process.stderr.write(`${line}\n`);
    },
    requireInstallation,
    endProgress,
    interruption() {
      if (!signalled) return undefined;
      const jobs = [...stopped.values()];
      if (jobs.length === 0 && finished) {
        const { what, error } = finished;
        return error
          ? `interrupted: the ${what} failed: ${error}`
          : `interrupted too late to cancel: the ${what} had completed`;
      }
      if (jobs.length === 0) return 'cancelled: nothing was changed';
      return jobs.map(describeStopped).join('; ');
    },
    async withAgent(fn, { finishes } = {}) {
      requireInstallation();
      const config = loadConfig();
      let agent: Agent | undefined;
      let closing = false;
      /** A `finishes` command past its stopIfInterrupted: from here a signal lets it finish. */
      let changing = false;
      const stopIfInterrupted = () => {
        if (signalled) throw new Interrupted();
        changing = true;
      };
      let stop: (error: Error) => void = () => {};
      const stopNow = new Promise<never>((_, reject) => {
        stop = reject;
      });
      stopNow.catch(() => {});
      const cancelAll = (open: Agent) => {
        const active = open.jobs.active();
        for (const job of active) {
          stopped.set(job.id, job);
          if (job.phase !== 'cancelling') open.jobs.cancel(job.id);
        }
        return active.length;
      };
      const onSignal = (signal: NodeJS.Signals) => {
        if (pressed++ > 0) {
          endProgress();
          process.stderr.write(`gem-backup: ${signal} again: stopped at once\n`);
          process.exit(130);
        }
        // While closing after the command ended there is nothing left to cancel: the close goes on.
        if (closing) return;
        signalled = signal;
        if (agent && cancelAll(agent) === 0 && !finishes) stop(new Interrupted());
      };
      // SIGHUP: the SSH session the command ran in was lost; its job is stopped as cleanly as by Ctrl-C.
      for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
      try {
        // The agent (most of the code base) loads here, when a command opens it, not at start-up.
        const [{ openAgent }, { connectionFailure }] = await Promise.all([
          import('../agent'),
          import('../http/errors'),
        ]);
        // 'error': the CLI prints a failed command's one line itself (main in cli.ts), so a job's
        // 'job failed' warning would say it twice, as JSON; errors it does not print still show.
        agent = await openAgent(config, createLogger({ level: 'error' })).catch((error: unknown) => {
          // A bare "connect ECONNREFUSED 127.0.0.1:5432" does not say it is the database.
          const lost = connectionFailure(error);
          if (!lost) throw error;
          throw new AppError(
            'dependency_down',
            `cannot reach the database${lost.where ? ` at ${lost.where}` : ''} (${lost.code}): is PostgreSQL running, and is DATABASE_URL right?`,
            { cause: error },
          );
        });
        const open = agent;
        // A job started after the signal (the command was between steps) is cancelled at once;
        // every stopped job's last record says what happened to it.
        const off = open.jobs.subscribeAll((event) => {
          if (event.type !== 'update' || !signalled) return;
          stopped.set(event.job.id, event.job);
          if (!event.job.endedAt && event.job.phase !== 'cancelling') open.jobs.cancel(event.job.id);
        });
        let outcome: { outcome: 'ok' | 'error' | 'cancelled'; error?: string } = { outcome: 'ok' };
        try {
          if (signalled) throw new Interrupted();
          const running = fn(open, stopIfInterrupted);
          running.catch(() => {});
          const result = await Promise.race([running, stopNow]);
          if (signalled && finishes) {
            // Ended before its first change (nothing to change, or only read): a cancel like any other.
            if (!changing) throw new Interrupted();
            finished = { what: finishes };
          }
          return result;
        } catch (error) {
          if (signalled && finishes && changing && !(error instanceof Interrupted))
            finished = { what: finishes, error: describeError(error).message };
          outcome =
            signalled && !finished
              ? { outcome: 'cancelled' }
              : { outcome: 'error', error: describeError(error).code };
          throw error;
        } finally {
          closing = true;
          // Beside the API's accesses: what was run on the box itself, and by whom (the close flushes it).
          if (options.command) {
            void open.audit.record(cliAuditEntry(options.command, outcome));
          }
          // The close cancels and waits for the jobs still running: a job a signal stopped (one that
          // started just after it, too) is followed to its end, so the line says what became of it.
          try {
            await open.close();
            await removeWorkFolder(open);
          } finally {
            off();
          }
        }
      } finally {
        closing = true;
        for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
      }
    },
    async whileStoppable(fn) {
      const stop = new AbortController();
      let caught: NodeJS.Signals | undefined;
      let temp: string | undefined;
      const onSignal = (signal: NodeJS.Signals) => {
        if (pressed++ > 0) {
          // Synchronously: the exit comes before its write could remove it (plaintext, for decrypt).
          try {
            if (temp) rmSync(temp, { force: true });
          } catch {
            // Exiting all the same: a second Ctrl-C means now.
          }
          endProgress();
          process.stderr.write(`gem-backup: ${signal} again: stopped at once\n`);
          process.exit(130);
        }
        caught = signal;
        stop.abort(new Interrupted());
      };
      for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
      try {
        return await fn(stop.signal, (path) => {
          temp = path;
        });
      } catch (error) {
        // Stopped before it was done: main says so and exits 130. A signal after that changed nothing.
        signalled = caught;
        throw error;
      } finally {
        for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
      }
    },
    async withDataDir(fn) {
      requireInstallation();
      const paths = dataPaths(loadConfig().dataDir);
      let outcome: { outcome: 'ok' | 'error'; error?: string } = { outcome: 'ok' };
      try {
        return await fn(paths);
      } catch (error) {
        outcome = { outcome: 'error', error: describeError(error).code };
        throw error;
      } finally {
        if (options.command) {
          const { AuditLog } = await import('../http/audit');
          await new AuditLog(paths.audit).record(cliAuditEntry(options.command, outcome));
        }
      }
    },
    progress(phase, done, total, unit, step) {
      if (!process.stderr.isTTY) return;
      latest = {
        phase,
        bytesDone: done,
        bytesTotal: total,
        ...(unit ? { unit } : {}),
        ...(step ? { step } : {}),
      };
      drawProgress();
      redraw ??= setInterval(drawProgress, 1000).unref();
    },
  };
}
