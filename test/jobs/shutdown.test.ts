// The runner's shutdown (the agent's close, a CLI Ctrl-C) against a job that is still starting: the
// job lock and the history file are real files; the work is a function that records that it ran.
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type HistoryEntry, JobHistory } from '../../agent/jobs/history';
import { type Job, JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';

let dir: string;
let lockPath: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-runner-'));
  lockPath = join(dir, 'job.lock');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A job's work that only notes it was called, and ends when cancelled. */
function recordingWork() {
  const calls: string[] = [];
  const work = async (ctx: { signal: AbortSignal }) => {
    calls.push('work');
    await new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      ctx.signal.addEventListener('abort', () => resolve());
    });
    ctx.signal.throwIfAborted();
  };
  return { calls, work };
}

/** A history whose writes wait until `open()`: the start's first write holds the job between lock and run. */
class GatedHistory extends JobHistory {
  private gate: Promise<void>;
  open!: () => void;
  entered: Promise<void>;
  private enter!: () => void;
  constructor(path: string) {
    super(path, silentLogger);
    this.gate = new Promise((resolve) => {
      this.open = resolve;
    });
    this.entered = new Promise((resolve) => {
      this.enter = resolve;
    });
  }
  override async save(entries: HistoryEntry[]): Promise<void> {
    this.enter();
    await this.gate;
    await super.save(entries);
  }
}

describe('shutdown while a job is starting', () => {
  it('a start still taking the job lock is refused and gives the lock back: no work runs after shutdown', async () => {
    const runner = new JobRunner({ lockPath, log: silentLogger });
    const { calls, work } = recordingWork();
    const starting = runner.start('backup', work);
    starting.catch(() => {});
    await runner.shutdown();
    await expect(starting).rejects.toMatchObject({
      code: 'cancelled',
      message: expect.stringMatching(/stopping/),
    });
    expect(existsSync(lockPath)).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(calls).toEqual([]);
    expect(existsSync(lockPath)).toBe(false);
    expect(runner.list()).toEqual([]);
  });

  it('a job between its lock and its first history write is cancelled and ended before shutdown returns', async () => {
    const history = new GatedHistory(join(dir, 'jobs.json'));
    const runner = new JobRunner({ lockPath, log: silentLogger, history });
    const { calls, work } = recordingWork();
    const starting = runner.start('backup', work);
    starting.catch(() => {});
    await history.entered;
    expect(existsSync(lockPath)).toBe(true);
    let closed = false;
    const closing = runner.shutdown().then(() => {
      closed = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(closed).toBe(false);
    history.open();
    await closing;
    const [job] = runner.list() as [Job];
    expect(job).toMatchObject({ kind: 'backup', state: 'cancelled' });
    expect(job.endedAt).toBeDefined();
    expect(calls).toEqual([]);
    expect(existsSync(lockPath)).toBe(false);
    // The history file says it ended, so no later start reads it as interrupted.
    const saved = await new JobHistory(join(dir, 'jobs.json'), silentLogger).load();
    expect(saved.map((e) => e.job.state)).toEqual(['cancelled']);
  });

  it('a start after shutdown is refused without touching the lock', async () => {
    const runner = new JobRunner({ lockPath, log: silentLogger });
    await runner.shutdown();
    const { calls, work } = recordingWork();
    await expect(runner.start('backup', work)).rejects.toMatchObject({ code: 'cancelled' });
    await expect(runner.start('verify', work, { mutating: false })).rejects.toMatchObject({
      code: 'cancelled',
    });
    expect(calls).toEqual([]);
    expect(existsSync(lockPath)).toBe(false);
  });
});

describe('listeners of a job', () => {
  it('leave nothing behind once they stop listening, even to a job that ended long ago', async () => {
    const runner = new JobRunner({ lockPath, log: silentLogger });
    const job = await runner.start('verify', async () => 'done', { mutating: false });
    await runner.waitFor(job.id);
    // A page's event stream opened on the ended job (and on an id no job has), then closed.
    const offs = [runner.subscribe(job.id, () => {}), runner.subscribe('no-such-job', () => {})];
    expect(runner.listenedJobs()).toBeGreaterThanOrEqual(2);
    for (const off of offs) off();
    expect(runner.listenedJobs()).toBe(0);
    await runner.shutdown();
  });
});
