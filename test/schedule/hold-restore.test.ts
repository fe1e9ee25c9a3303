// A scheduled run's record written while a restore swaps the database in waits for the swap (the
// settings hold), so it lands in the restored database instead of the one being replaced.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Scheduler } from '../../agent/jobs/scheduler';
import { createLogger, type Logger } from '../../agent/log';
import { databaseUrl } from '../../agent/system/postgres-tools';
import { backupNow, runRestore } from '../restore/helpers';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';

let pg: TestPostgres;
let t: TestAgent;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg);
});
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('schedule records during a restore', () => {
  it('a skip recorded between the settings copy and the swap is in the restored database', async () => {
    const backup = await backupNow(t.agent, 'before the skip');
    expect(await t.agent.settings.state.get('autoBackup')).toBeUndefined();
    const scheduler = new Scheduler(t.agent);
    const quiet: Logger = t.agent.log;
    let skip: Promise<unknown> | undefined;
    let skipLogged = false;
    const job = await runRestore(t.agent, t.agent.catalog.pathOf(backup), {
      skipSafetyBackup: true,
      faults: {
        beforeSwapStep: async (step) => {
          // After copy-settings: the agent's schema is already copied into the restored database.
          if (step !== 'copy-database-properties') return;
          const attempted = new Promise<void>((resolve) => {
            t.agent.log = createLogger({
              write: (line) => {
                if (line.includes('a scheduled task could not start')) resolve();
              },
            });
          });
          // The restore holds the job lock: the scheduled backup cannot start and records a skip.
          skip = scheduler.fire('autoBackup', false);
          await attempted;
          skipLogged = true;
          // Unheld, the write lands in the live database now; held, it waits for the swap (not awaited
          // here: the hook runs inside the hold).
          await Promise.race([skip, sleep(2000)]);
        },
      },
    });
    t.agent.log = quiet;
    expect(job.error).toBeUndefined();
    expect(job.state).toBe('succeeded');
    expect(skipLogged).toBe(true);
    await skip;
    scheduler.stop();

    const [row] = await withSql(
      databaseUrl(t.agent.sources.conn),
      (sql) =>
        sql<
          { lastResult: { ok: boolean; error: string; at: string } | null }[]
        >`select last_result as "lastResult" from gem_backup.schedule_state where task = 'autoBackup'`,
    );
    expect(row?.lastResult).toEqual({
      ok: false,
      error: 'skipped: another job was running at the scheduled time',
      at: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
    });
    // The status shows it too, and the slot still counts as missed (no last run).
    const view = await t.agent.settings.view();
    expect(view.status.autoBackup.lastResult).toEqual(row!.lastResult);
    expect(view.status.autoBackup.lastRunAt).toBeNull();
  });
});
