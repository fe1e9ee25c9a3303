/** Spawning external programs with argument arrays (never a shell), with stderr kept for error messages. */
import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { basename } from 'node:path';
import type { Logger } from '../log';

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Keeps the last `limit` characters written to it: enough for an error message, never unbounded. */
export class TailBuffer {
  private text = '';
  constructor(private readonly limit = 8192) {}
  push(chunk: Buffer | string): void {
    this.text = (this.text + chunk.toString()).slice(-this.limit);
  }
  toString(): string {
    return this.text.trim();
  }
}

/** Where every program the agent runs is told, at debug level (openAgent sets it); nowhere by default. */
let programLog: Logger | undefined;

/** Tells `log` (at debug level) of every program started from now on: GEM_LOG_LEVEL=debug shows them. */
export function logProgramsTo(log: Logger | undefined): void {
  programLog = log;
}

/**
 * Logs a started program at debug level: its name and arguments (the agent's own never hold a secret:
 * passwords go in the environment or a 0600 file), then how it ended and how long it ran.
 */
export function observeProgram(
  child: ChildProcess,
  command: string,
  args: readonly string[] | 'not logged',
): void {
  const log = programLog;
  if (!log) return;
  const program = basename(command);
  const started = performance.now();
  log.debug('program started', { program, args, pid: child.pid });
  // No 'error' listener here: it would keep an unhandled spawn failure from surfacing as it does now.
  child.once('close', (code, signal) =>
    log.debug('program ended', {
      program,
      pid: child.pid,
      code,
      signal,
      ms: Math.round(performance.now() - started),
    }),
  );
}

/** Sends `sig` to every process of the group `pid` leads; one already gone is no error. */
function killGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, sig);
  } catch {}
}

/**
 * Spawns `command` with `args`; kills it (SIGTERM, then SIGKILL) when `signal` aborts. With a signal the
 * program runs in a process group of its own and the whole group is killed: what it started (a restart
 * script's own commands, pg_restore's workers) goes with it, instead of living on and holding its
 * output open (the run would wait for it without end, its timeout or cancel notwithstanding).
 */
export function spawnProcess(
  command: string,
  args: string[],
  options: SpawnOptions & { signal?: AbortSignal; logArgs?: boolean } = {},
): ChildProcess {
  const { signal, logArgs = true, ...rest } = options;
  const child = spawn(command, args, { ...rest, ...(signal ? { detached: true } : {}), shell: false });
  // An operator's own command (GEM_RESTART_COMMAND) may carry anything in its arguments: not logged.
  observeProgram(child, command, logArgs ? args : 'not logged');
  if (signal) {
    // Closed: the child has exited and nothing of its group holds its output any more.
    let closed = false;
    const onAbort = () => {
      killGroup(child.pid, 'SIGTERM');
      // Only while something of it is still there: a group gone for good may have its id taken again.
      setTimeout(() => closed || killGroup(child.pid, 'SIGKILL'), 3000).unref();
    };
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    child.once('close', () => {
      closed = true;
      signal.removeEventListener('abort', onAbort);
    });
  }
  return child;
}

/** Resolves when the child exits; collects the tail of stderr and (optionally) stdout. */
export function waitForExit(
  child: ChildProcess,
  options: { collectStdout?: boolean } = {},
): Promise<RunResult> {
  const stderr = new TailBuffer();
  const stdout = new TailBuffer(1 << 20);
  child.stderr?.on('data', (d: Buffer) => stderr.push(d));
  if (options.collectStdout) child.stdout?.on('data', (d: Buffer) => stdout.push(d));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) =>
      resolve({ code, signal, stderr: stderr.toString(), stdout: stdout.toString() }),
    );
  });
}

/** Runs a program to completion and returns its output; never throws for a non-zero exit. */
export async function runProcess(
  command: string,
  args: string[],
  options: SpawnOptions & { signal?: AbortSignal; input?: string; logArgs?: boolean } = {},
): Promise<RunResult> {
  const { input, ...rest } = options;
  const child = spawnProcess(command, args, {
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    ...rest,
  });
  const done = waitForExit(child, { collectStdout: true });
  if (child.stdin) {
    // A program that exits without reading its input (pg_dump --version) closes the pipe: not an error.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  }
  return done;
}

/** `text` as one word of a command shown for a user to type into a shell (never run through one here). */
export function shellQuoted(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}
