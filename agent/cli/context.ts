/** What a CLI command gets: its arguments, output channels, and a way to open the agent in-process. */
import type { Agent } from '../agent';
import { openAgent } from '../agent';
import { loadConfig } from '../config';
import { AppError } from '../errors';
import { connectionFailure } from '../http/errors';
import { createLogger } from '../log';

export interface CliContext {
  args: string[];
  out: (line: string) => void;
  err: (line: string) => void;
  /** Opens the agent over GEM_DATA_DIR (starting the embedded cluster if needed), runs fn, closes it. */
  withAgent<T>(fn: (agent: Agent) => Promise<T>): Promise<T>;
  /** A progress printer for jobs: one line per phase, a percentage when the total is known. */
  progress(phase: string, done: number, total: number): void;
}

export function createCliContext(args: string[]): CliContext {
  let lastLine = '';
  return {
    args,
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
    async withAgent(fn) {
      const config = loadConfig();
      // 'error': the CLI prints a failed command's one line itself (main in cli.ts), so a job's
      // 'job failed' warning would say it twice, as JSON; errors it does not print still show.
      const agent = await openAgent(config, createLogger({ level: 'error' })).catch((error: unknown) => {
        // A bare "connect ECONNREFUSED 127.0.0.1:5432" does not say it is the database.
        const lost = connectionFailure(error);
        if (!lost) throw error;
        throw new AppError(
          'dependency_down',
          `cannot reach the database${lost.where ? ` at ${lost.where}` : ''} (${lost.code}): is PostgreSQL running, and is DATABASE_URL right?`,
          { cause: error },
        );
      });
      try {
        return await fn(agent);
      } finally {
        await agent.close();
      }
    },
    progress(phase, done, total) {
      const pct = total > 0 ? ` ${Math.floor((100 * done) / total)}%` : ` ${(done / 1048576).toFixed(1)} MiB`;
      const line = `${phase}${pct}`;
      if (line !== lastLine && process.stderr.isTTY) {
        process.stderr.write(`\r${line.padEnd(40)}`);
        lastLine = line;
      }
    },
  };
}
