// Cancelling a backup whose dump and row counts wait for a lock GEM holds on a table: it ends at once.
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBackup } from '../../agent/backup/operations';
import { runProcess } from '../../agent/system/spawn';
import { startTestAgent, type TestAgent } from '../services/agent';
import { holdTableLock, startPostgres, type TestPostgres } from '../services/postgres';
import { until, within } from '../services/wait';

let pg: TestPostgres;
let t: TestAgent;
let watcher: postgres.Sql;

beforeAll(async () => {
  pg = await startPostgres();
  t = await startTestAgent(pg, { modules: [] });
  watcher = postgres(t.agent.databaseUrl, { max: 1, onnotice: () => {} });
}, 60_000);

afterAll(async () => {
  await watcher?.end();
  await t?.close();
  await pg?.stop();
});

/** Sessions of the dump waiting for a lock: pg_dump's own, and the snapshot's count of devices. */
const waiting = async () => {
  const rows = await watcher<{ dump: number; count: number }[]>`
    select count(*) filter (where application_name = 'pg_dump')::int as dump,
           count(*) filter (where query ilike 'select count(*)%devices%')::int as count
    from pg_stat_activity
    where wait_event_type = 'Lock' and datname = current_database()`;
  return rows[0]!;
};

const tableLockHeld = async () =>
  (
    await watcher<{ n: number }[]>`
      select count(*)::int as n from pg_locks
      where relation = 'public.devices'::regclass and mode = 'AccessExclusiveLock' and granted`
  )[0]!.n === 1;

async function pgDumpPids(dbName: string): Promise<number[]> {
  const r = await runProcess('pgrep', ['-f', `pg_dump.*${dbName}`]);
  return r.stdout
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => n > 0);
}

describe('cancelling a backup blocked on a table lock', () => {
  it('ends cancelled and frees the job lock while GEM still holds the table', async () => {
    const dbName = new URL(t.agent.databaseUrl).pathname.slice(1);
    const release = await holdTableLock(t.agent.databaseUrl, 'public.devices');
    try {
      const job = await startBackup(t.agent, { kind: 'manual' });
      await until(async () => {
        const w = await waiting();
        return w.dump > 0 && w.count > 0;
      }, 'pg_dump and the row count to wait for the table lock');

      t.agent.jobs.cancel(job.id);
      const ended = await within(t.agent.jobs.waitFor(job.id), 5000, 'the cancelled backup to end');
      expect(ended.state).toBe('cancelled');
      expect(ended.error?.code).toBe('cancelled');
      // The job lock is free: another mutating job starts (no job_running).
      const next = await t.agent.jobs.start('restore', async () => 'ok', { mutating: true });
      expect((await within(t.agent.jobs.waitFor(next.id), 5000, 'the next job')).state).toBe('succeeded');
      // All of this while GEM still holds its lock: pg_dump is gone, the count was cancelled on the server.
      expect(await tableLockHeld()).toBe(true);
      expect(await pgDumpPids(dbName)).toEqual([]);
      // The CancelRequest travels on its own connection: the server may take a moment to act on it.
      await until(async () => (await waiting()).count === 0, 'the count to be cancelled on the server', 50);
      expect(await t.agent.catalog.list()).toEqual([]);
    } finally {
      await release();
    }
  }, 60_000);
});
