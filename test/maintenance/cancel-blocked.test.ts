// Cancelling a maintenance run whose DELETE waits for a lock GEM holds on a history table: it ends at once.
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMaintenance } from '../../agent/maintenance/run';
import { startTestAgent, type TestAgent } from '../services/agent';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { until, within } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
let watcher: postgres.Sql;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [] });
  // A connection of its own: the agent's pool may be the one blocked.
  watcher = postgres(t.agent.databaseUrl, { max: 1, onnotice: () => {} });
}, 60_000);

afterAll(async () => {
  await watcher?.end();
  await t?.close();
  await pg?.stop();
});

const historyRows = async () =>
  (await watcher<{ n: number }[]>`select count(*)::int as n from public.attribute_history`)[0]!.n;

const deletesWaiting = async () =>
  (
    await watcher<{ n: number }[]>`
      select count(*)::int as n from pg_stat_activity
      where wait_event_type = 'Lock' and query ilike '%delete from%attribute_history%'
        and datname = current_database()`
  )[0]!.n;

const tableLockHeld = async () =>
  (
    await watcher<{ n: number }[]>`
      select count(*)::int as n from pg_locks
      where relation = 'public.attribute_history'::regclass and mode = 'AccessExclusiveLock' and granted`
  )[0]!.n === 1;

describe('cancelling a maintenance run blocked on a table lock', () => {
  it('ends cancelled and frees the job lock while GEM still holds the table', async () => {
    const [old] = await watcher<{ n: number }[]>`
      select count(*)::int as n from public.attribute_history where recorded_at < now() - interval '90 days'`;
    expect(old!.n).toBeGreaterThan(0); // there is something to delete
    const before = await historyRows();

    const release = await holdTableLock(t.agent.databaseUrl, 'public.attribute_history');
    try {
      const job = await startMaintenance(t.agent);
      await until(async () => (await deletesWaiting()) > 0, 'the DELETE to wait for the table lock');

      t.agent.jobs.cancel(job.id);
      const ended = await within(t.agent.jobs.waitFor(job.id), 5000, 'the cancelled run to end');
      expect(ended.state).toBe('cancelled');
      expect(ended.error?.code).toBe('cancelled');
      // The job lock is free: another mutating job starts (no job_running).
      const next = await t.agent.jobs.start('restore', async () => 'ok', { mutating: true });
      expect((await within(t.agent.jobs.waitFor(next.id), 5000, 'the next job')).state).toBe('succeeded');
      // All of this while GEM still holds its lock; the statement was cancelled on the server too.
      expect(await tableLockHeld()).toBe(true);
      expect(await deletesWaiting()).toBe(0);
    } finally {
      await release();
    }
    // The cancelled batch was rolled back: nothing deleted.
    expect(await historyRows()).toBe(before);
  }, 60_000);
});
