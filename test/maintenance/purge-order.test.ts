// The history purge resumes each batch after the highest ctid the one before deleted; old rows out of
// physical order (behind that bound) must still all go, and every newer row stay.
import postgres from 'postgres';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { GEM_SCHEMA_SQL } from '../../agent/db/seed';
import { purgeHistory } from '../../agent/maintenance/purge';
import { startPostgres, type TestPostgres } from '../services/postgres';

const NOW = new Date();
const CUTOFF = new Date(NOW.getTime() - 90 * 86_400_000);

let pg: TestPostgres;
let url: string;
let sql: postgres.Sql;

beforeAll(async () => {
  pg = await startPostgres();
  url = await pg.createDatabase();
  // One connection: what onBatch queues on it runs between two batches.
  sql = postgres(url, { max: 1, onnotice: () => {} });
  await sql.unsafe(GEM_SCHEMA_SQL);
}, 60_000);
afterAll(async () => {
  await sql?.end();
  await pg?.stop();
});
beforeEach(async () => {
  await sql`truncate attribute_history, request_history, access_log`;
});

/** Appends `count` attribute_history rows labelled `label`, 100 days old (older than the cut-off) or 10 days. */
async function append(label: string, count: number, age: 'old' | 'new', order: 'time' | 'random' = 'time') {
  const days = age === 'old' ? 100 : 10;
  await sql`insert into attribute_history (attribute_id, value, recorded_at)
    select 1 + g % 300, ${label}, ${NOW.toISOString()}::timestamptz - ${days} * interval '1 day' + g * interval '1 second'
    from generate_series(1, ${count}::int) g order by case when ${order} = 'random' then random() else g end`;
}

/** How many rows are older than the cut-off, and a fingerprint of every newer one. */
async function state(): Promise<{ old: number; newer: string }> {
  const [row] = await sql<{ old: number; newer: string }[]>`
    select (select count(*)::int from attribute_history where recorded_at < ${CUTOFF.toISOString()}::timestamptz) as old,
      (select count(*) || ':' || md5(string_agg(id::text || value || recorded_at::text, ',' order by id))
        from attribute_history where recorded_at >= ${CUTOFF.toISOString()}::timestamptz) as newer`;
  return row!;
}

/** Purges, then checks exactly the old rows (and `late` more written meanwhile) are gone and every newer row stayed. */
async function purgeAndCheck(db: postgres.Sql, options: Parameters<typeof purgeHistory>[1], late = 0) {
  const before = await state();
  expect(before.old).toBeGreaterThan(0);
  const result = await purgeHistory(db, options);
  const after = await state();
  expect(after).toEqual({ old: 0, newer: before.newer });
  expect(result.deleted).toEqual({ attributeHistory: before.old + late, requestHistory: 0, accessLog: 0 });
  expect(result.cutoff).toBe(CUTOFF.toISOString());
  return result;
}

describe('history purge with rows out of physical order', () => {
  it('deletes old rows that sit after newer ones, in runs and shuffled', async () => {
    await append('new-a', 3000, 'new');
    await append('old-a', 3000, 'old');
    await append('new-b', 2000, 'new');
    await append('old-b', 2600, 'old');
    await append('mixed-old', 3000, 'old', 'random');
    await append('mixed-new', 3000, 'new', 'random');
    await sql`analyze attribute_history`;
    await purgeAndCheck(sql, { retentionDays: 90, now: NOW, batchSize: 500 });
  });

  it('deletes old rows written between batches into pages a vacuum freed behind the bound', async () => {
    await append('old', 6000, 'old');
    await append('new', 6000, 'new');
    await sql`analyze attribute_history`;
    let queued: Promise<[unknown, unknown, { late: string; next: string }[]]> | undefined;
    await purgeAndCheck(
      sql,
      {
        retentionDays: 90,
        now: NOW,
        batchSize: 500,
        onBatch: (key, _deleted, total) => {
          if (key !== 'attributeHistory' || total !== 1500) return;
          // Queued on the purge's one connection, so they run before its next batch: the vacuum frees
          // the first pages, and old rows arriving late (a device sending what it buffered) fill them.
          queued = Promise.all([
            sql`vacuum attribute_history`.execute(),
            sql`insert into attribute_history (attribute_id, value, recorded_at)
            select 1, 'late', ${NOW.toISOString()}::timestamptz - interval '120 days' + g * interval '1 second'
            from generate_series(1, 400) g`.execute(),
            sql<{ late: string; next: string }[]>`
            select (select max(ctid) from attribute_history where value = 'late')::text as late,
              (select min(ctid) from attribute_history where value = 'old')::text as next`.execute(),
          ]);
        },
      },
      400,
    );
    // They did land behind the rows still waiting (so behind the bound the purge had reached).
    const [where] = (await queued!)[2];
    const block = (tid: string) => Number(tid.slice(1).split(',')[0]);
    expect(block(where!.late)).toBeLessThan(block(where!.next));
  });

  it('deletes every old row when the planner picks an index scan (rows in time order, not ctid order)', async () => {
    await append('old', 6000, 'old', 'random');
    await append('new', 6000, 'new', 'random');
    await sql`analyze attribute_history`;
    const indexed = postgres(url, {
      max: 1,
      onnotice: () => {},
      connection: { enable_seqscan: 'off', enable_bitmapscan: 'off', enable_tidscan: 'off' },
    });
    try {
      const plan = await indexed.unsafe(
        `explain select ctid from public.attribute_history
         where recorded_at < '${CUTOFF.toISOString()}'::timestamptz and ctid > '(3,1)'::tid limit 500`,
      );
      expect(plan.map((r) => r['QUERY PLAN']).join('\n')).toMatch(
        /Index Scan using attribute_history_recorded_at/,
      );
      await purgeAndCheck(indexed, { retentionDays: 90, now: NOW, batchSize: 500 });
    } finally {
      await indexed.end();
    }
  });
});
