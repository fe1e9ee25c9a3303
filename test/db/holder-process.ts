/**
 * A child process that runs `code` (an ES module, with the agent's TypeScript through tsx), says it
 * is done, and then stays alive until it is killed: another process holding a lock or using the
 * embedded cluster, as an agent or a CLI command does. Ended with SIGKILL by the caller (or `children`'s
 * cleanup), as a killed agent is.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** The import specifier of an agent module, e.g. `agentModule('db', 'cluster.ts')`. */
export function agentModule(...path: string[]): string {
  return JSON.stringify(pathToFileURL(join(process.cwd(), 'agent', ...path)).href);
}

/** Spawns the holder (added to `children`) and waits until `code` has run. */
export async function holderProcess(code: string, children: ChildProcess[]): Promise<ChildProcess> {
  const script = `${code}\nprocess.stdout.write('holding\\n');\nsetInterval(() => {}, 1000);\n`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: process.cwd(),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      if (chunk.toString('utf8').includes('holding')) resolve();
    });
    child.once('exit', (c) => reject(new Error(`the holder process exited (${c})`)));
  });
  return child;
}
