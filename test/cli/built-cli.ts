/**
 * The CLI as the CLI tests run it: agent/cli.ts bundled from the current sources by the build itself
 * (scripts/build.mjs, what `npm run build` puts in dist/ and the package bin runs), never an older
 * dist/: once per test run (test/services/run-builds.ts), shared by the files of the run. A command
 * then starts in 0.15-0.9 s instead of 1.3-1.5 s through tsx's loader, which runs every module of the
 * agent and its packages through its hooks; the tests spawn some forty commands each. The bin's own
 * choice (dist/ or tsx) is tested on its own.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { runProcess } from '../../agent/system/spawn';
import { buildOnce } from '../services/run-builds';
import { until } from '../services/wait';

export interface BuiltCli {
  /** The bundled CLI's entry point: `node <path> <command>`. */
  path: string;
  /** Removes a bundle built for this file alone (none when the run shares one). */
  remove(): Promise<void>;
}

export async function buildCli(): Promise<BuiltCli> {
  const root = process.cwd();
  // Inside the checkout: the bundle imports its packages (zod, postgres, ...) from node_modules/.
  const { dir, remove } = await buildOnce(
    'cli',
    async (out) => {
      const built = await runProcess(
        process.execPath,
        ['scripts/build.mjs', '--out', out, 'cli=agent/cli.ts'],
        {
          cwd: root,
        },
      );
      if (built.code !== 0) throw new Error(`building the CLI failed (exit ${built.code}): ${built.stderr}`);
    },
    join(root, 'node_modules', '.cache'),
  );
  return { path: join(dir, 'cli.js'), remove };
}

/**
 * The built CLI's `args` run under strace with each fsync held 1 s (`holdMs`), and stopped by Ctrl-C
 * once `ready` is true (its temp file is there, say): the SIGINT goes to the CLI, strace's child, as a
 * terminal's Ctrl-C would. `twice`: the first Ctrl-C once the CLI is also held in an fsync, and again
 * once the first has been taken (no longer pending), as a person does when the first seems to do
 * nothing. `holdOpenOf`: instead of the fsyncs, each opening of that file is held (once it is open, so
 * `ready` can see it among the CLI's files): a read the command makes before it changes anything.
 * `ready` is given the CLI's pid. Resolves with how it ended.
 */
export async function interruptedWhileSyncing(
  built: BuiltCli,
  args: string[],
  env: NodeJS.ProcessEnv,
  ready: (pid: number) => Promise<boolean>,
  what: string,
  {
    holdMs = 1000,
    twice = false,
    holdOpenOf,
  }: { holdMs?: number; twice?: boolean; holdOpenOf?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const hold = holdOpenOf
    ? ['-P', holdOpenOf, '-e', 'trace=openat', '-e', `inject=openat:delay_exit=${holdMs * 1000}`]
    : ['-e', 'trace=fsync,fdatasync', '-e', `inject=fsync,fdatasync:delay_enter=${holdMs * 1000}`];
  const tracer = spawn(
    'strace',
    [
      ...['-f', '--seccomp-bpf', '-qq', '-o', '/dev/null'],
      ...hold,
      ...[process.execPath, built.path, ...args],
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  tracer.stdout.on('data', (d: Buffer) => (stdout += d));
  tracer.stderr.on('data', (d: Buffer) => (stderr += d));
  const exited = new Promise<number | null>((done) => tracer.once('close', (code) => done(code)));
  // strace's child, the CLI: looked for at each try, as it is there only once strace has started it.
  let pid = 0;
  await until(
    async () => {
      const children = await readFile(`/proc/${tracer.pid}/task/${tracer.pid}/children`, 'utf8');
      pid = Number(children.trim().split(' ')[0]);
      // Twice: the first Ctrl-C must come while the fsync is held, or it cuts the write short and the
      // command ends before the second (on a busy machine, `ready` can see the temp file still filling).
      return pid > 0 && (await ready(pid)) && (!twice || holdOpenOf !== undefined || (await syncing(pid)));
    },
    what,
    200,
  );
  process.kill(pid, 'SIGINT');
  if (twice) {
    // Taken once no thread has it pending (two pending SIGINTs would be one); its handler then runs
    // at once, the event loop being idle while the fsync is held.
    await until(async () => !(await signalPending(pid)), 'the first SIGINT taken', 20);
    await new Promise((done) => setTimeout(done, 200));
    process.kill(pid, 'SIGINT');
  }
  return { code: await exited, stdout, stderr };
}

/** fsync and fdatasync's numbers, by architecture (Linux's syscall tables). */
const SYNC_CALLS: Record<string, number[]> = { x64: [74, 75], arm64: [82, 83] };

/** True while a thread of process `pid` is in fsync or fdatasync (held there by strace). */
async function syncing(pid: number): Promise<boolean> {
  const calls = SYNC_CALLS[process.arch];
  if (!calls) throw new Error(`fsync's syscall number on ${process.arch} is not known to this test`);
  for (const task of await readdir(`/proc/${pid}/task`).catch(() => [])) {
    const call = await readFile(`/proc/${pid}/task/${task}/syscall`, 'utf8').catch(() => '');
    if (calls.includes(Number(call.split(' ')[0]))) return true;
  }
  return false;
}

/** True while a SIGINT is pending for process `pid` or any of its threads. */
async function signalPending(pid: number): Promise<boolean> {
  const SIGINT_BIT = 1n << 1n;
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => []);
  for (const task of tasks) {
    const status = await readFile(`/proc/${pid}/task/${task}/status`, 'utf8').catch(() => '');
    for (const field of ['SigPnd', 'ShdPnd']) {
      const hex = new RegExp(`^${field}:\\s*([0-9a-f]+)`, 'm').exec(status)?.[1];
      if (hex && BigInt(`0x${hex}`) & SIGINT_BIT) return true;
    }
  }
  return false;
}

/** True while process `pid` has `path` open. */
export async function hasOpen(pid: number, path: string): Promise<boolean> {
  const fds = await readdir(`/proc/${pid}/fd`).catch(() => []);
  for (const fd of fds) {
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === path) return true;
  }
  return false;
}
