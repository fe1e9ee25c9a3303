/**
 * The jobs list survives a crash: a backup or a restore in an agent process killed by SIGKILL is
 * listed after the next start (GET /api/v1/jobs) as failed with code `interrupted`, saying what
 * start-up did about it (a restore rolled back or completed).
 */
import { existsSync, statSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Job } from '../../agent/jobs/runner';
import { type BuiltChildren, buildChildren } from '../faults/built-child';
import { runChild } from '../faults/child';
import { type CrashFixture, crashingRestore, liveState, startCrashFixture } from '../restore/helpers';
import { startTestAgent } from '../services/agent';
import { holdTableLock, startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { startAll } from '../services/start-all';

let pg: TestPostgres;
let t: CrashFixture['t'];
let env: Record<string, string>;
let backupName: string;
let atBackup: CrashFixture['atBackup'];
// The children bundled once for the file (test/faults/built-child.ts): each starts in ~0.6 s, not 1.5-2 s.
let children: BuiltChildren<'agent-child' | 'crash-child'>;

beforeAll(async () => {
  ({ pg, children } = await startAll({
    pg: startPostgres,
    children: () =>
      buildChildren({
        'agent-child': 'test/faults/agent-child.ts',
        'crash-child': 'test/restore/crash-child.ts',
      }),
  }));
  // 100 k rows (10 MB): a staging restore lasts long enough for a kill 150 ms into it (each test checks
  // where its kill landed); the dump is held by a lock on the table instead (the first test).
  ({ t, env, backupName, atBackup } = await startCrashFixture(pg, { rows: 100_000 }));
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
  await children?.remove();
});

async function change(tag: string): Promise<void> {
  await withSql(t.agent.databaseUrl, (sql) => sql`update users set display_name = ${tag}`);
  await writeFile(join(t.agent.sources.scriptsDir, `history-${tag}.lua`), tag);
}

/**
 * Opens the agent again over the same data dir (a restart) and answers its GET /api/v1/jobs; its
 * health's jobs area names the newest interrupted job (the page's status panel shows it).
 */
async function jobsAfterRestart(): Promise<Job[]> {
  const again = await startTestAgent(pg, { dataDir: t.dataDir, databaseUrl: t.agent.databaseUrl });
  try {
    const res = await again.request('/api/v1/jobs');
    expect(res.status).toBe(200);
    const jobs = (await res.json()) as Job[];
    expect(again.agent.jobs.active()).toEqual([]);
    const health = (await (await again.request('/api/v1/health')).json()) as {
      areas: { jobs: { status: string; reason: string } };
    };
    const interrupted = jobs.find((j) => j.error?.code === 'interrupted');
    expect(health.areas.jobs).toMatchObject({ status: 'warning', reason: interrupted?.error?.message });
    return jobs;
  } finally {
    await again.close();
  }
}

/** The newest job of `kind` in the list (newest first). */
const newest = (jobs: Job[], kind: string) => jobs.find((j) => j.kind === kind);

describe('a job interrupted by a crash', () => {
  it('a backup killed in its dump is listed as failed, interrupted, with nothing kept', async () => {
    const before = (await t.agent.catalog.list()).map((b) => b.filename);
    // pg_dump waits for the table while the lock is held: the kill 300 ms into the dump lands inside it.
    const release = await holdTableLock(t.agent.databaseUrl, 'history');
    let end: Awaited<ReturnType<typeof runChild>['exited']>;
    let run: ReturnType<typeof runChild>;
    try {
      run = runChild(
        {
          ...env,
          FAULT_ACTION: 'backup',
          KILL_PHASE: 'dump',
          KILL_FRACTION: '0',
          KILL_AFTER_MS: '300',
        },
        children.paths['agent-child'],
      );
      end = await run.exited;
    } finally {
      await release();
    }
    expect(end.signal, end.stderr).toBe('SIGKILL');
    expect(run.lines.find((l) => l.event === 'suicide')).toMatchObject({ phase: 'dump' });
    const jobs = await jobsAfterRestart();
    const job = newest(jobs, 'backup');
    expect(job).toMatchObject({ state: 'failed', phase: 'dump', error: { code: 'interrupted' } });
    expect(job?.endedAt).toBeTruthy();
    expect(job?.error?.message).toContain('nothing was kept; the temp file was removed');
    // The backup made before the crash is still listed, as it was.
    expect(jobs.filter((j) => j.kind === 'backup' && j.state === 'succeeded')).toHaveLength(1);
    expect((await t.agent.catalog.list()).map((b) => b.filename)).toEqual(before);
  });

  it('a restore killed while staging says GEM is as it was before the restore', async () => {
    await change('stage');
    const before = await liveState(t.agent);
    const run = runChild(
      {
        ...env,
        FAULT_ACTION: 'restore',
        BACKUP_NAME: backupName,
        KILL_PHASE: 'stage',
        KILL_FRACTION: '0',
        KILL_AFTER_MS: '150',
      },
      children.paths['agent-child'],
    );
    const end = await run.exited;
    expect(end.signal, end.stderr).toBe('SIGKILL');
    // Killed by its timer inside the staging (not at the phase's end: a timed kill has no fraction 1).
    expect(run.lines.find((l) => l.event === 'suicide')).toMatchObject({ phase: 'stage' });
    expect((run.lines.find((l) => l.event === 'suicide') as { fraction?: number }).fraction).not.toBe(1);
    const job = newest(await jobsAfterRestart(), 'restore');
    expect(job).toMatchObject({ state: 'failed', target: backupName, error: { code: 'interrupted' } });
    expect(job?.error?.message).toContain('GEM is as it was before the restore');
    expect(await liveState(t.agent)).toEqual(before);
  });

  it('a restore killed in its swap says it was rolled back: GEM is as it was before the restore', async () => {
    await change('swap');
    const before = await liveState(t.agent);
    await crashingRestore(t.agent, {
      pgBinDir: pg.binDir,
      backupPath: t.agent.catalog.pathOf(backupName),
      crashAt: 'rename-live-database',
      entry: children.paths['crash-child'],
    });
    const job = newest(await jobsAfterRestart(), 'restore');
    expect(job).toMatchObject({ state: 'failed', phase: 'swap', error: { code: 'interrupted' } });
    expect(job?.error?.message).toContain('rolled it back; GEM is as it was before the restore');
    expect(await liveState(t.agent)).toEqual(before);
  });

  it('a restore killed after its swap says it was completed at start-up, and says so after every restart', async () => {
    await change('after-swap');
    await crashingRestore(t.agent, {
      pgBinDir: pg.binDir,
      backupPath: t.agent.catalog.pathOf(backupName),
      crashAt: 'restart',
      entry: children.paths['crash-child'],
    });
    const first = newest(await jobsAfterRestart(), 'restore');
    // (The phase is written as it starts, without waiting: the restart command may kill first.)
    expect(first).toMatchObject({ state: 'failed', error: { code: 'interrupted' } });
    expect(first?.error?.message).toContain('the restore was completed at start-up');
    expect(await liveState(t.agent)).toEqual(atBackup);
    // The record was written back as it was decided: the next start lists the same job, unchanged.
    const jobs = await jobsAfterRestart();
    expect(newest(jobs, 'restore')).toEqual(first);
    // Every interruption is still listed, newest first.
    expect(jobs.filter((j) => j.error?.code === 'interrupted').map((j) => j.kind)).toEqual([
      'restore',
      'restore',
      'restore',
      'backup',
    ]);
  });

  it('a job still running in a live agent is not marked interrupted by another one opening', async () => {
    let release = () => {};
    const held = await t.agent.jobs.start('verify', () => new Promise<void>((r) => (release = r)), {
      mutating: false,
    });
    // Listed as the live agent recorded it (GET /jobs shows other runners' jobs too), not as interrupted.
    const listed = (await jobsAfterRestart()).find((j) => j.id === held.id);
    expect(listed).toMatchObject({ state: 'running' });
    expect(listed?.error).toBeUndefined();
    release();
    expect(await t.agent.jobs.waitFor(held.id)).toMatchObject({ state: 'succeeded' });
    const after = (await jobsAfterRestart()).find((j) => j.id === held.id);
    expect(after).toMatchObject({ state: 'succeeded' });
  });

  it('the file keeps no more than the last 50 jobs and is private to the agent', async () => {
    for (let i = 0; i < 55; i++) await t.agent.jobs.run('verify', async () => ({ i }), { mutating: false });
    const path = join(t.dataDir, 'jobs.json');
    expect(existsSync(path)).toBe(true);
    const read = async () => (JSON.parse(await readFile(path, 'utf8')) as { jobs: { job: Job }[] }).jobs;
    // A job's end is written as it ends (waitFor may answer a moment before).
    await expect.poll(async () => (await read()).at(-1)?.job.result).toEqual({ i: 54 });
    expect(await read()).toHaveLength(50);
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });
});
