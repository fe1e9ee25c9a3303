// The history purge on a million rows over 200 days: exact counts, nothing else touched, GEM keeps writing, cancel.
import type postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { maintenanceModule } from '../../agent/http/routes/maintenance';
import { settingsModule } from '../../agent/http/routes/settings';
import { purgeHistory } from '../../agent/maintenance/purge';
import { startMaintenance } from '../../agent/maintenance/run';
import { startTestAgent, type TestAgent } from '../services/agent';
import { startPostgres, type TestPostgres } from '../services/postgres';
import { fillHistory } from './history';

const TABLES = {
  attributeHistory: { table: 'attribute_history', column: 'recorded_at' },
  requestHistory: { table: 'request_history', column: 'created_at' },
  accessLog: { table: 'access_log', column: 'created_at' },
} as const;
type Key = keyof typeof TABLES;
const KEYS = Object.keys(TABLES) as Key[];
const CONFIG_TABLES = [
  'users',
  'zones',
  'drivers',
  'devices',
  'attributes',
  'macros',
  'ui_configs',
  'system_info',
];

let pg: TestPostgres;
let t: TestAgent;
let sql: postgres.Sql;

async function counts(where = 'true'): Promise<Record<Key, number>> {
  const out = {} as Record<Key, number>;
  for (const key of KEYS) {
    const { table, column } = TABLES[key];
    const rows = await sql.unsafe(
      `select count(*)::int as n from public.${table} where ${where.replaceAll('$ts', column)}`,
    );
    out[key] = rows[0]!.n as number;
  }
  return out;
}

/** A fingerprint of every configuration table: any change to any row changes it. */
async function configFingerprint(): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const table of CONFIG_TABLES) {
    const rows = await sql.unsafe(
      `select count(*)::int || ':' || coalesce(md5(string_agg(t::text, '|' order by t::text)), '') as f from public.${table} t`,
    );
    out[table] = rows[0]!.f as string;
  }
  return out;
}

beforeAll(async () => {
  // fsync off: the million rows are written faster; the purge still runs its batches and commits as
  // GEM's inserts go on beside it (they are counted, not timed).
  pg = await startPostgres({ fsync: false });
  t = await startTestAgent(pg, { modules: [settingsModule, maintenanceModule] });
  sql = t.agent.sql;
  // With the seed's own history, a little over a million rows spread over 200 days.
  await fillHistory(sql, { attributeHistory: 600_000, requestHistory: 250_000, accessLog: 150_000 });
}, 240_000);
afterAll(async () => {
  await t?.close();
  await pg?.stop();
});

describe('database maintenance', () => {
  it('deletes exactly the rows older than the cut-off, touches nothing else, while GEM keeps inserting', async () => {
    const put = await t.request('/api/v1/settings', {
      method: 'PUT',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ maintenance: { enabled: true, retentionDays: 90 } }),
    });
    expect(put.status).toBe(200);

    const totalBefore = await counts();
    expect(Object.values(totalBefore).reduce((a, b) => a + b, 0)).toBeGreaterThan(1_000_000);
    // Recent: a day of margin from the cut-off, and a fixed instant (the clock moves during the test).
    const recentFrom = new Date(Date.now() - 89 * 86_400_000).toISOString();
    const recentBefore = await counts(`$ts > '${recentFrom}'::timestamptz`);
    const configBefore = await configFingerprint();

    // GEM at work: inserts into the same three tables, on their own connections, all through the purge.
    const gem = (await import('postgres')).default(t.agent.databaseUrl, { max: 3, onnotice: () => {} });
    const inserted: Record<Key, number> = { attributeHistory: 0, requestHistory: 0, accessLog: 0 };
    let failures = 0;
    let duringPurge = 0;
    let purging = false;
    let stop = false;
    let slowestMs = 0;
    const writer = (async () => {
      while (!stop) {
        const began = performance.now();
        const results = await Promise.allSettled([
          gem`insert into attribute_history (attribute_id, value, recorded_at) values (1, 'live', now())`,
          gem`insert into request_history (device_id, request, status, created_at) values (1, 'live', 200, now())`,
          gem`insert into access_log (user_id, action, created_at) values (1, 'live', now())`,
        ]);
        slowestMs = Math.max(slowestMs, performance.now() - began);
        results.forEach((r, i) => {
          if (r.status === 'rejected') failures++;
          else inserted[KEYS[i]!]++;
        });
        if (purging && results.every((r) => r.status === 'fulfilled')) duringPurge++;
      }
    })();

    purging = true;
    const res = await t.request('/api/v1/maintenance/run', { method: 'POST' });
    purging = false;
    stop = true;
    await writer;
    await gem.end();
    expect(res.status).toBe(200);
    const body = (await res.json()) as {
      deleted: Record<Key, number>;
      total: number;
      cutoff: string;
      jobId: string;
    };

    const totalAfter = await counts();
    for (const key of KEYS) {
      // The counts returned are the rows actually gone.
      expect(body.deleted[key], key).toBe(totalBefore[key] + inserted[key] - totalAfter[key]);
      expect(body.deleted[key]).toBeGreaterThan(0);
    }
    expect(body.total).toBe(KEYS.reduce((n, k) => n + body.deleted[k], 0));
    // Roughly 110 of 200 days were older than 90 days.
    expect(body.total).toBeGreaterThan(500_000);
    // Nothing older than the cut-off is left; everything recent is still there, and so is the configuration.
    expect(await counts(`$ts < '${body.cutoff}'::timestamptz`)).toEqual({
      attributeHistory: 0,
      requestHistory: 0,
      accessLog: 0,
    });
    const recentAfter = await counts(`$ts > '${recentFrom}'::timestamptz`);
    for (const key of KEYS) expect(recentAfter[key]).toBe(recentBefore[key] + inserted[key]);
    expect(await configFingerprint()).toEqual(configBefore);

    expect(failures).toBe(0);
    expect(duringPurge).toBeGreaterThan(0);
    const job = t.agent.jobs.get(body.jobId)!;
    console.log(
      `purged ${body.total} rows (${JSON.stringify(body.deleted)}) in ${
        Date.parse(job.endedAt!) - Date.parse(job.startedAt)
      } ms; ${duringPurge} rounds of 3 concurrent inserts succeeded meanwhile, slowest round ${slowestMs.toFixed(0)} ms`,
    );

    // A second run finds only the few rows that aged past the cut-off since (one every ~17 s here).
    const again = (await (await t.request('/api/v1/maintenance/run', { method: 'POST' })).json()) as {
      total: number;
      cutoff: string;
    };
    expect(again.total).toBeLessThan(100);
    expect(await counts(`$ts < '${again.cutoff}'::timestamptz`)).toEqual({
      attributeHistory: 0,
      requestHistory: 0,
      accessLog: 0,
    });
  });

  it('can be cancelled between batches: what was deleted stays deleted, the rest stays', async () => {
    await sql`insert into access_log (user_id, action, created_at)
      select 1, 'old', now() - interval '150 days' - g * interval '1 second' from generate_series(1, 20000) g`;
    const controller = new AbortController();
    let batches = 0;
    await expect(
      purgeHistory(sql, {
        retentionDays: 90,
        batchSize: 1000,
        signal: controller.signal,
        onBatch: (key) => {
          // The other two tables hold no old rows any more: one empty batch each.
          if (key === 'accessLog' && ++batches === 3) controller.abort();
        },
      }),
    ).rejects.toMatchObject({ code: 'cancelled' });
    expect(batches).toBe(3);
    expect((await counts(`$ts < now() - interval '90 days'`)).accessLog).toBe(20000 - 3000);

    // As a job: cancelled through the runner (what POST /api/v1/jobs/:id/cancel does).
    const job = await startMaintenance(t.agent, { batchSize: 100 });
    t.agent.jobs.cancel(job.id);
    const ended = await t.agent.jobs.waitFor(job.id);
    expect(ended.state).toBe('cancelled');
    expect((await counts(`$ts < now() - interval '90 days'`)).accessLog).toBeGreaterThan(0);
  });

  it('as a job, counts its progress in rows deleted, and the page words them as rows', async () => {
    await sql`insert into access_log (user_id, action, created_at)
      select 1, 'old', now() - interval '150 days' - g * interval '1 second' from generate_series(1, 2500) g`;
    const ended = await t.agent.jobs.waitFor((await startMaintenance(t.agent, { batchSize: 1000 })).id);
    expect(ended.state).toBe('succeeded');
    const { deleted } = ended.result as { deleted: Record<string, number> };
    const rows = Object.values(deleted).reduce((a, b) => a + b, 0);
    expect(rows).toBeGreaterThanOrEqual(2500);
    expect(ended).toMatchObject({ unit: 'rows', bytesDone: rows });
    const { progressAmount } = (await import(new URL('../../agent/ui/format.js', import.meta.url).href)) as {
      progressAmount(job: { unit: string; bytesDone: number; bytesTotal: number }): string;
    };
    // In the reader's locale ("55,000", "55.000", "55 000").
    expect(progressAmount({ unit: 'rows', bytesDone: 55_000, bytesTotal: 0 })).toMatch(
      /^55\D?000 rows so far$/,
    );
  });

  it('does not run beside another mutating job (409), and refuses nonsense retention', async () => {
    let release!: () => void;
    const blocker = await t.agent.jobs.start('restore', () => new Promise<void>((r) => (release = r)), {
      mutating: true,
    });
    const res = await t.request('/api/v1/maintenance/run', { method: 'POST' });
    expect(res.status).toBe(409);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('job_running');
    release();
    await t.agent.jobs.waitFor(blocker.id);
    await expect(purgeHistory(sql, { retentionDays: 0 })).rejects.toMatchObject({ code: 'unprocessable' });
  });
});
