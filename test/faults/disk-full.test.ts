/**
 * Disk full: backups into a small tmpfs until it fills: a clean no_space error, old backups intact, the
 * next one after freeing space succeeds. And a full work folder (where pg_dump writes): no_space too.
 */
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readBackup } from '../../agent/backup/reader';
import type { Job } from '../../agent/jobs/runner';
import { TEMP_PREFIX } from '../../agent/system/atomic-file';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { faultReport } from './report';

const SIZE_MB = 4;
const report = faultReport('disk-full', 'full disks');

let pg: TestPostgres;
let t: TestAgent;
let dataDir: string;
let mounted = '';

async function backup(): Promise<Job> {
  const res = await t.request('/api/v1/backups', { method: 'POST' });
  expect(res.status).toBe(202);
  return t.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
}

async function everyListedVerifies(): Promise<string[]> {
  const names = (await t.agent.catalog.list()).map((b) => b.filename);
  for (const name of names)
    await readBackup(t.agent.catalog.pathOf(name), { keys: t.agent.keyring.masterKeys });
  return names;
}

async function noTemps(): Promise<void> {
  expect((await readdir(t.agent.paths.backups)).filter((n) => n.startsWith(TEMP_PREFIX))).toEqual([]);
  expect(await readdir(t.agent.paths.work).catch(() => [])).toEqual([]);
}

beforeAll(async () => {
  pg = await startPostgres();
  dataDir = await mkdtemp(join(tmpdir(), 'gem-faults-full-'));
  const backups = join(dataDir, 'backups');
  await mkdir(backups);
  const result = await runProcess('mount', ['-t', 'tmpfs', '-o', `size=${SIZE_MB}m`, 'tmpfs', backups]);
  if (result.code !== 0) {
    throw new Error(
      `the disk-full test mounts a ${SIZE_MB} MB tmpfs and needs root (or CAP_SYS_ADMIN): mount said ${result.stderr.trim()}`,
    );
  }
  mounted = backups;
  t = await startTestAgent(pg, { dataDir });
  // About a megabyte of backup each: a few fit, then the disk is full.
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(
      `create table noise as select g as id, md5(random()::text) || md5(random()::text) as v from generate_series(1, 25000) g`,
    ),
  );
});

afterAll(async () => {
  report.print();
  await t?.close();
  if (mounted) await runProcess('umount', [mounted]);
  await pg?.stop();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('backups into a disk that fills up', () => {
  let kept: string[] = [];

  it('fail cleanly with no_space once it is full, the older ones intact', async () => {
    let failed: Job | undefined;
    let made = 0;
    for (let i = 0; i < 20 && !failed; i++) {
      const job = await backup();
      if (job.state === 'succeeded') made += 1;
      else failed = job;
    }
    report.inject();
    expect(made).toBeGreaterThan(0);
    expect(failed?.error?.code).toBe('no_space');
    expect(failed?.error?.message).toMatch(/disk is full.*free some space/);
    await noTemps();
    kept = await everyListedVerifies();
    expect(kept.length).toBe(made);
    report.tried(true);
  });

  it('a second attempt while full fails the same way and changes nothing', async () => {
    const job = await backup();
    report.inject();
    expect(job.error?.code).toBe('no_space');
    await noTemps();
    expect(await everyListedVerifies()).toEqual(kept);
    report.tried(true);
  });

  it('succeeds again after one backup is deleted', async () => {
    const oldest = kept.at(-1)!;
    const res = await t.request(`/api/v1/backups/${oldest}`, { method: 'DELETE' });
    expect(res.status).toBeLessThan(300);
    const job = await backup();
    expect(job.error).toBeUndefined();
    expect(job.state).toBe('succeeded');
    await noTemps();
    const now = await everyListedVerifies();
    expect(now.length).toBe(kept.length);
    report.tried(true);
  });
});

describe('a backup whose dump fills the work folder', () => {
  let full: TestAgent | undefined;
  let fullDir = '';
  let work = '';

  beforeAll(async () => {
    fullDir = await mkdtemp(join(tmpdir(), 'gem-faults-full-work-'));
    work = join(fullDir, 'work');
    await mkdir(work);
    // Far smaller than the dump: pg_dump's output hits ENOSPC and pg_dump then dies of SIGPIPE.
    const result = await runProcess('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', work]);
    if (result.code !== 0) throw new Error(`mounting a tmpfs needs root: ${result.stderr.trim()}`);
    full = await startTestAgent(pg, { dataDir: fullDir });
    await withSql(full.agent.databaseUrl, (sql) =>
      sql.unsafe(
        `create table noise as select g as id, md5(random()::text) || md5(random()::text) as v from generate_series(1, 25000) g`,
      ),
    );
  });

  afterAll(async () => {
    await full?.close();
    if (work) await runProcess('umount', [work]);
    if (fullDir) await rm(fullDir, { recursive: true, force: true });
  });

  it('fails with no_space (not dump_failed) and leaves nothing behind', async () => {
    const res = await full!.request('/api/v1/backups', { method: 'POST' });
    expect(res.status).toBe(202);
    const job = await full!.agent.jobs.waitFor(((await res.json()) as { jobId: string }).jobId);
    report.inject();
    expect(job.error?.code).toBe('no_space');
    expect(job.error?.message).toMatch(/disk is full.*free some space/);
    expect(await readdir(full!.agent.paths.work).catch(() => [])).toEqual([]);
    expect((await readdir(work)).filter((entry) => entry !== basename(full!.agent.paths.work))).toEqual([]);
    expect(await readdir(full!.agent.paths.backups)).toEqual([]);
    expect(await full!.agent.catalog.list()).toEqual([]);
    report.tried(true);
  });
});
