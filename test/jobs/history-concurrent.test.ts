// Two processes (the service and a CLI command beside it) recording their jobs in one jobs.json at the
// same moments: every job of both is kept, each with its end. Real processes, a real file.
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { JobHistory } from '../../agent/jobs/history';
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
