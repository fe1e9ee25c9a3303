/**
 * The CLI as the CLI tests run it: agent/cli.ts bundled from the current sources by the build itself
 * (scripts/build.mjs, what `npm run build` puts in dist/ and the package bin runs), never an older
 * dist/: once per test run (test/services/run-builds.ts), shared by the files of the run. A command
 * then starts in 0.15-0.9 s instead of 1.3-1.5 s through tsx's loader, which runs every module of the
 * agent and its packages through its hooks; the tests spawn some forty commands each. The bin's own
 * choice (dist/ or tsx) is tested on its own.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
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
 * The built CLI's `args` run under strace with each fsync held 1 s, and stopped by Ctrl-C once `ready`
 * is true (its temp file is there, say): the SIGINT goes to the CLI, strace's child, as a terminal's
 * Ctrl-C would. Resolves with how it ended.
 */
export async function interruptedWhileSyncing(
  built: BuiltCli,
  args: string[],
  env: NodeJS.ProcessEnv,
  ready: () => Promise<boolean>,
  what: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const tracer = spawn(
    'strace',
    [
      ...['-f', '--seccomp-bpf', '-qq', '-o', '/dev/null'],
      ...['-e', 'trace=fsync,fdatasync', '-e', 'inject=fsync,fdatasync:delay_enter=1000000'],
      ...[process.execPath, built.path, ...args],
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  tracer.stdout.on('data', (d: Buffer) => (stdout += d));
  tracer.stderr.on('data', (d: Buffer) => (stderr += d));
  const exited = new Promise<number | null>((done) => tracer.once('close', (code) => done(code)));
  await until(ready, what, 200);
  const children = await readFile(`/proc/${tracer.pid}/task/${tracer.pid}/children`, 'utf8');
  process.kill(Number(children.trim().split(' ')[0]), 'SIGINT');
  return { code: await exited, stdout, stderr };
}
