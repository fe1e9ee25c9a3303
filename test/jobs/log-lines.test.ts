// What an operator reads in the journal when a job ends: how long it took, and for a backup its size; at
// debug level, every program the agent runs.
import { stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { AppError } from '../../agent/errors';
import { createLogger } from '../../agent/log';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';

const lines: Record<string, unknown>[] = [];
let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, {
    log: createLogger({ write: (line) => lines.push(JSON.parse(line) as Record<string, unknown>) }),
  });
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

const linesOf = (jobId: string, msg: string) => lines.filter((l) => l.jobId === jobId && l.msg === msg);

describe('the log lines that end a job', () => {
  it("a backup's lines say its size on disk and how long the job took", async () => {
    const began = Date.now();
    const job = await startBackup(t.agent);
    const ended = await t.agent.jobs.waitFor(job.id);
    const wall = Date.now() - began;
    expect(ended.state).toBe('succeeded');
    const filename = (ended.result as { backup: { filename: string } }).backup.filename;
    const [created] = linesOf(job.id, 'backup created');
    expect(created).toMatchObject({ filename, bytes: (await stat(t.agent.catalog.pathOf(filename))).size });
    const [done] = linesOf(job.id, 'job succeeded');
    expect(done?.durationMs).toEqual(expect.any(Number));
    expect(done!.durationMs as number).toBeGreaterThan(0);
    expect(done!.durationMs as number).toBeLessThanOrEqual(wall);
  });

  it('a failed job and a cancelled one say how long they ran', async () => {
    const failed = await t.agent.jobs.run(
      'verify',
      async () => {
        await new Promise((resolve) => setTimeout(resolve, 60));
        throw new AppError('corrupt_backup', 'a test failure');
      },
      { mutating: false },
    );
    expect(failed.state).toBe('failed');
    expect(linesOf(failed.id, 'job failed')[0]?.durationMs).toBeGreaterThanOrEqual(60);

    const running = await t.agent.jobs.start(
      'verify',
      (ctx) =>
        new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(ctx.signal.reason))),
      { mutating: false },
    );
    await new Promise((resolve) => setTimeout(resolve, 40));
    t.agent.jobs.cancel(running.id);
    expect((await t.agent.jobs.waitFor(running.id)).state).toBe('cancelled');
    expect(linesOf(running.id, 'job cancelled')[0]?.durationMs).toBeGreaterThanOrEqual(40);
  });
});

describe('GEM_LOG_LEVEL=debug', () => {
  it('tells every program the agent runs, with its arguments, then its exit code and time; never a password', async () => {
    const debug: Record<string, unknown>[] = [];
    const d = await startTestAgent(pg, {
      log: createLogger({
        level: 'debug',
        write: (line) => debug.push(JSON.parse(line) as Record<string, unknown>),
      }),
    });
    try {
      const job = await startBackup(d.agent);
      expect((await d.agent.jobs.waitFor(job.id)).state).toBe('succeeded');
      const dumps = debug.filter(
        (l) =>
          l.msg === 'program started' &&
          l.program === 'pg_dump' &&
          (l.args as string[]).includes('--format=custom'),
      );
      expect(dumps).toHaveLength(1);
      expect(dumps[0]!.args).toEqual(
        expect.arrayContaining(['--no-password', expect.stringMatching(/^--snapshot=/)]),
      );
      const ended = debug.find((l) => l.msg === 'program ended' && l.pid === dumps[0]!.pid);
      expect(ended).toMatchObject({ program: 'pg_dump', code: 0, signal: null, ms: expect.any(Number) });
      const password = decodeURIComponent(new URL(d.agent.databaseUrl).password);
      expect(password.length).toBeGreaterThan(8);
      expect(JSON.stringify(debug)).not.toContain(password);
    } finally {
      await d.close();
    }
  });
});
