// How a running agent judges the jobs another process recorded in jobs.json (a gem-backup command beside
// the service): a pid reused by an unrelated process does not keep a dead job running, and a running
// job's progress reaches the file while it moves within one phase (throttled: no write per tick). Real
// processes and a real file; test/system/pid-namespace covers a process of another PID namespace.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type HistoryEntry, JobHistory } from '../../agent/jobs/history';
import { lockTiming } from '../../agent/jobs/lock';
import { type Job, JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';

const CHILD = join(import.meta.dirname, 'progress-child.ts');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-other-process-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const children: ChildProcess[] = [];
afterEach(() => {
  for (const child of children.splice(0)) child.kill('SIGKILL');
});

async function subdir(name: string): Promise<string> {
  const path = join(dir, name);
  await mkdir(path);
  return path;
}

/**
 * The spacing of a running job's progress writes here (the product's is 2 s): the throttle is the same,
 * only shorter, so the storm and the waits for a write last a fraction of the time.
 */
const PROGRESS_SAVE_MS = 200;

function runnerOver(
  data: string,
  history = new JobHistory(join(data, 'jobs.json'), silentLogger),
): JobRunner {
  return new JobRunner({
    lockPath: join(data, 'job.lock'),
    log: silentLogger,
    history,
    progressSaveMs: PROGRESS_SAVE_MS,
  });
}

/** Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot. */
function startOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
}

function runningJob(id: string): Job {
  return {
    id,
    kind: 'backup',
    state: 'running',
    phase: 'dump',
    bytesDone: 0,
    bytesTotal: 0,
    unit: 'bytes',
    startedAt: new Date().toISOString(),
  };
}

/** The entries of the jobs.json in `data`, as written. */
async function written(data: string): Promise<HistoryEntry[]> {
  return (JSON.parse(await readFile(join(data, 'jobs.json'), 'utf8')) as { jobs: HistoryEntry[] }).jobs;
}

describe('a job another process recorded', () => {
  it('whose pid now runs a process started at another time is listed interrupted; with its start, running', async () => {
    const data = await subdir('reused');
    // A live process under the recorded pid: the job's own (its start matches) or, after the job's
    // process died, an unrelated one that got its pid (another start).
    const other = spawn('sleep', ['600'], { stdio: 'ignore' });
    children.push(other);
    await once(other, 'spawn');
    const pid = other.pid!;
    const started = startOf(pid);
    const ns = readlinkSync('/proc/self/ns/pid');
    const entry = (id: string, fields: Partial<HistoryEntry>): HistoryEntry => ({
      pid,
      runner: 'the-other-runner',
      ns,
      ...fields,
      job: runningJob(id),
    });
    const jobs = [
      entry('reused', { started: String(Number(started) + 1) }),
      entry('same', { started }),
      // A file of an earlier version: no start recorded, judged by the pid alone.
      entry('older', {}),
    ];
    await writeFile(
      join(data, 'jobs.json'),
      `${JSON.stringify({ format: 'gem-job-history', version: 1, jobs })}\n`,
    );
    const runner = runnerOver(data);
    const listed = new Map((await runner.listWithOthers()).map((j) => [j.id, j]));
    expect(listed.get('reused')).toMatchObject({ state: 'failed', error: { code: 'interrupted' } });
    expect(listed.get('reused')!.error!.message).toContain(`(pid ${pid}) stopped before it ended`);
    expect(listed.get('same')).toMatchObject({ state: 'running' });
    expect(listed.get('older')).toMatchObject({ state: 'running' });
    // A start over this data dir ends the reused one only.
    expect((await runner.loadHistory('none')).map((j) => j.id)).toEqual(['reused']);
    await runner.shutdown();
  });

  it("moving within one phase is listed with its progress as it moves, not the phase's start", async () => {
    const data = await subdir('progress');
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, data, String(PROGRESS_SAVE_MS)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    children.push(child);
    let text = '';
    child.stdout!.on('data', (chunk: Buffer) => (text += chunk));
    const deadline = Date.now() + 60_000;
    while (!text.includes('\n')) {
      if (Date.now() > deadline || child.exitCode !== null)
        throw new Error(`the child did not report: ${text}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const id = (JSON.parse(text.slice(0, text.indexOf('\n'))) as { job: string }).job;
    // The service beside it: its list (GET /jobs) shows the progress the file holds.
    const runner = runnerOver(data);
    let seen: Job | undefined;
    while (Date.now() < deadline) {
      seen = (await runner.listWithOthers()).find((j) => j.id === id);
      if (seen && seen.bytesDone > 0 && seen.bytesDone < seen.bytesTotal) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(seen).toMatchObject({ state: 'running', phase: 'dump', bytesTotal: 1000 });
    expect(seen!.bytesDone).toBeGreaterThan(0);
    expect(seen!.bytesDone).toBeLessThan(1000);
    await runner.shutdown();
  });
});

/** A history that counts its writes. */
class CountingHistory extends JobHistory {
  saves = 0;
  override async save(entries: HistoryEntry[]): Promise<void> {
    this.saves++;
    await super.save(entries);
  }
}

describe("a running job's writes of jobs.json", () => {
  it('refresh its seenAt while it reports nothing, stay few under a storm of progress, and stop with the jobs', async () => {
    const data = await subdir('writes');
    const history = new CountingHistory(join(data, 'jobs.json'), silentLogger);
    const runner = runnerOver(data, history);
    const heartbeatMs = lockTiming.heartbeatMs;
    lockTiming.heartbeatMs = 50;
    try {
      let go = () => {};
      const job = await runner.start(
        'verify',
        async (ctx) => {
          ctx.phase('read', 1_000_000);
          await new Promise<void>((resolve) => (go = resolve));
          // Progress as fast as it comes: a write per call would be thousands.
          const began = Date.now();
          let calls = 0;
          const before = history.saves;
          while (Date.now() - began < 3 * PROGRESS_SAVE_MS) {
            ctx.progress(++calls);
            await new Promise((resolve) => setImmediate(resolve));
          }
          return { calls, saves: history.saves - before, ms: Date.now() - began };
        },
        { mutating: false },
      );
      const entry = async () => (await written(data)).find((e) => e.job.id === job.id);
      const seenAt = async () => (await entry())?.seenAt;
      // Its phase's write done: from here only the heartbeat writes it.
      await expect.poll(async () => (await entry())?.job.phase, { timeout: 10_000 }).toBe('read');
      const first = await seenAt();
      expect(first).toBeDefined();
      // No progress at all: the heartbeat writes it again.
      await expect.poll(seenAt, { timeout: 20_000, interval: 50 }).not.toBe(first);
      go();
      const ended = await runner.waitFor(job.id);
      const { calls, saves, ms } = ended.result as { calls: number; saves: number; ms: number };
      expect(calls).toBeGreaterThan(100);
      // At most one write per PROGRESS_SAVE_MS (from the end of the one before), whatever the number of calls.
      expect(saves).toBeLessThanOrEqual(Math.floor(ms / PROGRESS_SAVE_MS) + 1);
      const heartbeat = () => (runner as unknown as { heartbeat?: NodeJS.Timeout }).heartbeat;
      expect(heartbeat()).toBeUndefined();
      // Ended: written without a heartbeat.
      await expect
        .poll(async () => (await written(data)).find((e) => e.job.id === job.id)?.job.endedAt)
        .toBeDefined();
      expect((await written(data)).find((e) => e.job.id === job.id)?.seenAt).toBeUndefined();

      // A job still running at shutdown: the shutdown leaves no timer behind.
      await runner.start(
        'verify',
        (ctx) => new Promise((_, reject) => ctx.signal.addEventListener('abort', reject)),
        {
          mutating: false,
        },
      );
      expect(heartbeat()).toBeDefined();
      await runner.shutdown();
      expect(heartbeat()).toBeUndefined();
    } finally {
      lockTiming.heartbeatMs = heartbeatMs;
    }
  });
});
