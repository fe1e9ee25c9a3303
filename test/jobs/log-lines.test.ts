// What an operator reads in the journal when a job ends: how long it took, and for a backup its size.
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
