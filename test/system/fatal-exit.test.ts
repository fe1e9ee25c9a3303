// The agent process's fatal-error exit (installFatalHandlers, wired in agent/main.ts): a child process
// installs it as the agent does and then leaves a rejection unhandled or throws from a timer.
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { FATAL_EXIT_CODE } from '../../agent/log';
import { runProcess } from '../../agent/system/spawn';

const LOG_MODULE = pathToFileURL(join(process.cwd(), 'agent', 'log.ts')).href;

/** Runs `body` in a new Node process after the agent's logger and fatal handlers are installed. */
function child(body: string, closeBody = "process.stdout.write('closed\\n');", timeoutMs = 10_000) {
  const code = `
import { createLogger, installFatalHandlers } from ${JSON.stringify(LOG_MODULE)};
const log = createLogger({ level: 'error', base: { service: 'gem-backup-agent' } });
installFatalHandlers(log, { close: async () => { ${closeBody} }, closeTimeoutMs: ${timeoutMs} });
${body}
`;
  return runProcess(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], {
    cwd: process.cwd(),
  });
}

/** The stderr lines, each of which must be JSON. */
function jsonLines(stderr: string): Record<string, unknown>[] {
  return stderr
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('the fatal-error exit', () => {
  it('an unhandled rejection: one fatal JSON line with message and stack, the close, exit 1', async () => {
    const res = await child(
      "Promise.reject(new Error('boom: nobody awaited this')); setInterval(() => {}, 1000);",
    );
    expect(res.code).toBe(FATAL_EXIT_CODE);
    expect(res.code).not.toBe(0);
    const lines = jsonLines(res.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'fatal',
      service: 'gem-backup-agent',
      origin: 'unhandledRejection',
      error: { name: 'Error', message: 'boom: nobody awaited this' },
    });
    expect((lines[0]!.error as { stack: string }).stack).toContain('boom: nobody awaited this');
    // Closed before exiting (the timers kept alive by setInterval did not keep the process).
    expect(res.stdout.trim()).toBe('closed');
  });

  it('an uncaught exception: the same, and a second error while closing is not logged again', async () => {
    const res = await child(
      "setTimeout(() => { throw new TypeError('thrown from a timer'); }, 10);",
      "setTimeout(() => { throw new Error('again while closing'); }, 0); await new Promise((r) => setTimeout(r, 50)); process.stdout.write('closed\\n');",
    );
    expect(res.code).toBe(FATAL_EXIT_CODE);
    const lines = jsonLines(res.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({
      level: 'fatal',
      origin: 'uncaughtException',
      error: { name: 'TypeError', message: 'thrown from a timer' },
    });
    expect(res.stdout.trim()).toBe('closed');
  });

  it('a close that never ends does not keep the process: it exits 1 when the close time is up', async () => {
    const res = await child(
      'Promise.reject(new Error("stuck close"));',
      'await new Promise(() => {}); process.stdout.write("closed\\n");',
      200,
    );
    expect(res.code).toBe(FATAL_EXIT_CODE);
    expect(jsonLines(res.stderr)).toHaveLength(1);
    expect(res.stdout).toBe('');
  });

  it('logs no value of a rejected non-Error (it may hold a secret)', async () => {
    const res = await child("Promise.reject({ password: 'hunter2-secret' });");
    expect(res.code).toBe(FATAL_EXIT_CODE);
    expect(res.stderr).not.toContain('hunter2');
    const lines = jsonLines(res.stderr);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'fatal', error: { message: 'a non-Error value (object)' } });
  });
});
