// A restore's staging step (pg_restore into the staging database, then the row-count check) reports
// its progress in steps as it goes, against a real PostgreSQL: from 0 to its total, never past it.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { progressWords } from '../../agent/cli/progress';
import { type Job, JobRunner } from '../../agent/jobs/runner';
import { silentLogger } from '../../agent/log';
import { restoreFromFile } from '../../agent/restore/restore';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';
import { addSlowToLoadTable, backupNow } from './helpers';

let pg: TestPostgres;
let t: TestAgent;
let backupName: string;

beforeAll(async () => {
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg);
  // Beside the seeded GEM tables: one table big enough that its rows and its indexes each take a
  // while to load (the steps then arrive over more than one progress update), and a foreign key.
  await addSlowToLoadTable(t.agent.databaseUrl);
  await withSql(t.agent.databaseUrl, (sql) =>
    sql.unsafe(`
      create table reading_notes (id int primary key, reading int references readings (id));
      insert into reading_notes select g, g from generate_series(1, 100) g;
    `),
  );
  backupName = await backupNow(t.agent, 'progress');
}, 120_000);

afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('a restore’s progress', () => {
  it('counts the staging step by step, from 0 to its total and never past it; the safety backup step by step too', async () => {
    // The job as the runner holds it after every phase and progress call of the restore: the events the
    // page gets are these, at most five a second, so they would test how fast this machine is.
    const updates: Job[] = [];
    const snapshot = () => {
      const running = t.agent.jobs.active().find((j) => j.kind === 'restore');
      if (running) updates.push(running);
    };
    const started = await t.agent.jobs.start(
      'restore',
      (ctx) =>
        restoreFromFile(
          t.agent,
          {
            ...ctx,
            phase: (...args) => {
              ctx.phase(...args);
              snapshot();
            },
            step: (...args) => {
              ctx.step(...args);
              snapshot();
            },
            progress: (...args) => {
              ctx.progress(...args);
              snapshot();
            },
          },
          t.agent.catalog.pathOf(backupName),
        ),
      { mutating: true },
    );
    const job = await t.agent.jobs.waitFor(started.id);
    expect(job.state, JSON.stringify(job.error)).toBe('succeeded');

    const stage = updates.filter((u) => u.phase === 'stage');
    expect(stage.length).toBeGreaterThan(2);
    for (const u of stage) expect(u.unit).toBe('items');
    const counted = stage.filter((u) => u.bytesTotal > 0);
    const total = counted.at(-1)!.bytesTotal;
    // Every table's data, the indexes and constraints, the sequence values, and the row-count check.
    const { tables } = job.result as { tables: number };
    expect(tables).toBeGreaterThan(2);
    expect(total).toBeGreaterThan(tables + 3);
    for (const u of counted) {
      expect(u.bytesTotal).toBe(total);
      expect(u.bytesDone).toBeLessThanOrEqual(total);
    }
    const done = stage.map((u) => u.bytesDone);
    expect(done[0]).toBe(0);
    expect(done.at(-1)).toBe(total);
    // It moves as it goes: never back, and through values between none and all.
    for (let i = 1; i < done.length; i++) expect(done[i]).toBeGreaterThanOrEqual(done[i - 1]!);
    // Item after item as pg_restore finishes them, not only once it is done.
    expect(new Set(done.filter((d) => d > 0 && d < total)).size).toBeGreaterThan(2);

    // The safety backup goes through a backup's own steps under its one phase, each counted from 0 under
    // its own name, so a count never goes back under one name (the page words it by the step).
    const safety = updates.filter((u) => u.phase === 'safety');
    const steps = safety.map((u) => u.step ?? '').filter((name, i, all) => name !== all[i - 1]);
    expect(steps).toEqual(['', 'dump', 'folders', 'pack', 'verify']);
    for (const name of steps.slice(1)) {
      const counts = safety.filter((u) => u.step === name).map((u) => u.bytesDone);
      expect(counts[0], name).toBe(0);
      for (let i = 1; i < counts.length; i++) expect(counts[i], name).toBeGreaterThanOrEqual(counts[i - 1]!);
    }
    expect(safety.filter((u) => u.step === 'verify').at(-1)).toMatchObject({ unit: 'bytes' });
    // The next phase has no step of the safety backup's.
    expect(stage.every((u) => u.step === undefined)).toBe(true);

    // The other steps still count bytes: the check reads the whole file.
    const check = updates.filter((u) => u.phase === 'check');
    expect(check.at(-1)!.unit).toBe('bytes');
    expect(check.at(-1)!.bytesTotal).toBeGreaterThan(0);
    // The unit is kept in the job history with the job.
    const history = JSON.parse(await readFile(join(t.dataDir, 'jobs.json'), 'utf8')) as {
      jobs: { job: Job }[];
    };
    expect(history.jobs.find((e) => e.job.id === job.id)?.job.unit).toBe('bytes');
  }, 120_000);

  it('never reports more done than the total, and an items step says so', async () => {
    const runner = new JobRunner({ lockPath: join(t.dataDir, 'progress-test.lock'), log: silentLogger });
    const seen: Job[] = [];
    const off = runner.subscribeAll((event) => {
      if (event.type === 'update') seen.push(event.job);
    });
    const job = await runner.start(
      'verify',
      async (ctx) => {
        ctx.phase('stage', 0, 'items');
        ctx.progress(0, 4);
        ctx.progress(6);
        ctx.phase('verify', 10);
        ctx.progress(12);
      },
      { mutating: false },
    );
    const ended = await runner.waitFor(job.id);
    expect(ended.state).toBe('succeeded');
    off();
    await runner.shutdown();
    const items = seen.filter((u) => u.phase === 'stage');
    expect(items.map((u) => [u.unit, u.bytesDone, u.bytesTotal])).toEqual([
      ['items', 0, 0],
      ['items', 0, 4],
      ['items', 4, 4],
    ]);
    for (const u of seen) if (u.bytesTotal > 0) expect(u.bytesDone).toBeLessThanOrEqual(u.bytesTotal);
    expect(ended).toMatchObject({ unit: 'bytes', bytesDone: 10, bytesTotal: 10 });
  });

  it('reads in the CLI as the step and how far it got', () => {
    expect(progressWords('stage', 0, 0)).toBe('Loading the backup (current data untouched)');
    expect(progressWords('stage', 12, 48)).toBe('Loading the backup (current data untouched) 25%');
    expect(progressWords('safety', 5, 10, '', 'verify')).toBe(
      'Taking a safety backup of the current data: verifying 50%',
    );
  });
});
