// Two processes (the service and a CLI command beside it) recording their jobs in one jobs.json at the
// same moments: every job of both is kept, each with its end. Real processes, a real file.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it, onTestFinished } from 'vitest';
import { JobHistory, runnerClosed } from '../../agent/jobs/history';
import { type Job, JobRunner } from '../../agent/jobs/runner';
import { createLogger } from '../../agent/log';

const run = promisify(execFile);
const CHILD = join(import.meta.dirname, 'history-child.ts');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-history-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('two processes saving at once both keep every job they recorded, ended', async () => {
  const path = join(dir, 'jobs.json');
  const record = (name: string) =>
    run(process.execPath, ['--import', 'tsx', CHILD, path, name, '20'], { timeout: 60_000 });
  const said = await Promise.all([record('service'), record('cli')]);
  // Neither ever found a job it had saved gone from the file.
  expect(said.map((s) => JSON.parse(s.stdout))).toEqual([{ missing: 0 }, { missing: 0 }]);

  const entries = await new JobHistory(path, createLogger({ level: 'error' })).entries();
  const ids = (name: string) => Array.from({ length: 20 }, (_, i) => `${name}-${i}`);
  expect(entries.map((e) => e.job.id).sort()).toEqual([...ids('cli'), ...ids('service')].sort());
  expect(entries.filter((e) => e.job.state !== 'succeeded' || !e.job.endedAt)).toEqual([]);
  // No temp or lock left beside it.
  expect(await readdir(dir)).toEqual(['jobs.json']);
});

it('a damaged jobs.json is said once however often the list is read, and set aside, not written over, at the next save', async () => {
  const sub = join(dir, 'damaged');
  await mkdir(sub);
  const path = join(sub, 'jobs.json');
  await writeFile(path, '{"format":"gem-job-history","version":1,"jobs":[{"pid":1,', { mode: 0o600 });
  const lines: string[] = [];
  const history = new JobHistory(path, createLogger({ level: 'warn', write: (line) => lines.push(line) }));
  expect(await history.entries()).toEqual([]);
  expect(await history.entries()).toEqual([]);
  expect(lines.map((line) => JSON.parse(line).msg)).toEqual([
    'the job history file is not valid; it counts as empty',
  ]);

  const job = {
    id: 'j1',
    kind: 'backup' as const,
    state: 'succeeded' as const,
    phase: 'done',
    bytesDone: 0,
    bytesTotal: 0,
    unit: 'bytes' as const,
    startedAt: new Date().toISOString(),
    endedAt: new Date().toISOString(),
  };
  await history.save([{ pid: process.pid, runner: 'r', job }]);
  expect((await history.entries()).map((e) => e.job.id)).toEqual(['j1']);
  const names = await readdir(sub);
  const aside = names.filter((name) => name.startsWith('jobs.json.damaged-'));
  expect(aside).toHaveLength(1);
  expect(await readFile(join(sub, aside[0]!), 'utf8')).toBe(
    '{"format":"gem-job-history","version":1,"jobs":[{"pid":1,',
  );
  expect(names.sort()).toEqual(['jobs.json', aside[0]]);
});

it('keeps a running job in the file however many jobs start after it: a crash then still lists it as interrupted', async () => {
  const sub = join(dir, 'long-running');
  await mkdir(sub);
  const path = join(sub, 'jobs.json');
  const log = createLogger({ level: 'error' });
  const runner = new JobRunner({ lockPath: join(sub, 'job.lock'), log, history: new JobHistory(path, log) });
  let release = () => {};
  const long = await runner.start('backup', () => new Promise<void>((r) => (release = r)));
  onTestFinished(async () => {
    release();
    await runner.shutdown();
  });
  // A long backup while a script verifies the backups one by one: more jobs than the file keeps.
  for (let i = 0; i < 55; i++) await runner.run('verify', async () => ({ i }), { mutating: false });
  const read = () => new JobHistory(path, log).entries();
  // A job's end is written as it ends (waitFor may answer a moment before).
  await expect.poll(async () => (await read()).at(-1)?.job.result).toEqual({ i: 54 });
  const entries = await read();
  expect(entries.length).toBeLessThanOrEqual(51);
  const entry = entries.find((e) => e.job.id === long.id);
  expect(entry?.job.state).toBe('running');

  // The agent dies here (its runner gone without ending the job); the next start lists the backup.
  runnerClosed(entry!.runner);
  const next = new JobRunner({ lockPath: join(sub, 'job.lock'), log, history: new JobHistory(path, log) });
  const interrupted: Job[] = await next.loadHistory('none');
  expect(interrupted.map((j) => [j.id, j.error?.code])).toEqual([[long.id, 'interrupted']]);
  await next.shutdown();
});
