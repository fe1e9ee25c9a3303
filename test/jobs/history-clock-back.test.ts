// A clock set a year ahead and then put right (by hand, or a time server): the jobs run while it was
// ahead are dated after every job run since. jobs.json keeps the newest 50 by start, so each job ended
// since was dropped from the file at its next save as "the oldest", and after a restart the list held
// only the year-ahead ones. Jobs dated after the clock are taken as the oldest (as backups dated after
// it are not "the newest" in the catalog). A real runner and a real file.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { JobHistory } from '../../agent/jobs/history';
import { JobRunner } from '../../agent/jobs/runner';
import { createLogger } from '../../agent/log';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-history-clock-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const log = createLogger({ level: 'error' });

function openRunner(path: string): JobRunner {
  return new JobRunner({ lockPath: join(dir, 'job.lock'), log, history: new JobHistory(path, log) });
}

it('a job ended after the clock was set back a year is kept in jobs.json and listed first after a restart', async () => {
  const path = join(dir, 'jobs.json');
  const yearAhead = Date.now() + 365 * 86_400_000;
  // 50 hourly backups made while the clock was a year ahead, by a process gone since.
  const ahead = Array.from({ length: 50 }, (_, i) => {
    const startedAt = new Date(yearAhead + i * 3_600_000).toISOString();
    return {
      pid: 999_999,
      runner: 'gone',
      job: {
        id: `ahead-${i}`,
        kind: 'backup',
        state: 'succeeded',
        phase: 'done',
        bytesDone: 0,
        bytesTotal: 0,
        unit: 'bytes',
        startedAt,
        endedAt: startedAt,
      },
    };
  });
  await writeFile(path, `${JSON.stringify({ format: 'gem-job-history', version: 1, jobs: ahead })}\n`);

  const runner = openRunner(path);
  await runner.loadHistory('none');
  const job = await runner.run('backup', async () => 'made now');
  expect(job.state).toBe('succeeded');
  await runner.shutdown();

  const ids = (await new JobHistory(path, log).entries()).map((e) => e.job.id);
  expect(ids).toContain(job.id);
  expect(ids).toHaveLength(50);

  const again = openRunner(path);
  await again.loadHistory('none');
  expect(again.list()[0]?.id).toBe(job.id);

  // A `gem-backup create` beside the service recorded a job of its own a minute ago: GET /jobs
  // (listWithOthers) orders it with this runner's by the same rule.
  const file = JSON.parse(await readFile(path, 'utf8')) as { jobs: Array<{ job: { startedAt: string } }> };
  const startedAt = new Date(Date.now() - 60_000).toISOString();
  const cli = {
    id: 'cli-backup',
    kind: 'backup',
    state: 'succeeded',
    phase: 'done',
    bytesDone: 0,
    bytesTotal: 0,
  };
  file.jobs.push({
    pid: 999_998,
    runner: 'cli',
    job: { ...cli, unit: 'bytes', startedAt, endedAt: startedAt },
  } as never);
  await writeFile(path, `${JSON.stringify(file)}\n`);
  const listed = (await again.listWithOthers()).map((j) => j.id);
  expect(listed.slice(0, 2)).toEqual([job.id, 'cli-backup']);
  expect(listed).toHaveLength(51);
  await again.shutdown();
});
