// A job that reads as ended still writes its history and then lets go of the job lock: a mutating job
// started at that moment (a script that polls for "succeeded", then starts the next backup) must start,
// not be told "another job is running" (the time drill saw 1 in 25 and 5 in 60 such 409s).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobHistory } from '../../agent/jobs/history';
import { JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-start-after-end-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The real history file, whose writes take `ms` longer (a slow disk): the window between "ended" and the release. */
class SlowHistory extends JobHistory {
  constructor(
    path: string,
    private readonly ms: number,
  ) {
    super(path, silentLogger);
  }
  override async save(...args: Parameters<JobHistory['save']>): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, this.ms));
    return super.save(...args);
  }
}

describe('a mutating job started as the previous one reads as ended', () => {
  it('starts once the previous one has let go of the lock, every time', async () => {
    const history = new SlowHistory(join(dir, 'jobs.json'), 150);
    const runner = new JobRunner({ lockPath: join(dir, 'job.lock'), log: silentLogger, history });
    try {
      let previous = await runner.start('backup', async () => 'first');
      for (let round = 0; round < 5; round++) {
        // Poll as a script does, and start the next job the moment the previous one reads as ended.
        while (runner.get(previous.id)?.state === 'running') await new Promise((r) => setImmediate(r));
        expect(runner.get(previous.id)?.state).toBe('succeeded');
        previous = await runner.start('backup', async () => round);
        expect(previous.state).toBe('running');
      }
      expect((await runner.waitFor(previous.id)).state).toBe('succeeded');
    } finally {
      await runner.shutdown();
    }
  });

  it('still refuses a mutating job while another one really runs', async () => {
    const runner = new JobRunner({ lockPath: join(dir, 'job-2.lock'), log: silentLogger });
    let finish!: () => void;
    const running = await runner.start('backup', () => new Promise<void>((resolve) => (finish = resolve)));
    try {
      await expect(runner.start('restore', async () => 1)).rejects.toMatchObject({ code: 'job_running' });
    } finally {
      finish();
      await runner.waitFor(running.id);
      await runner.shutdown();
    }
  });
});
