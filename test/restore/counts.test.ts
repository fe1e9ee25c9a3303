// The staging row counter against a real PostgreSQL: early counts only in a pg_restore slot that stays free, exact counts at the end.
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { StagingRowCounter } from '../../agent/restore/counts';
import { parseDatabaseUrl } from '../../agent/system/postgres-tools';
import { startPostgres, type TestPostgres, withSql } from '../services/postgres';

let pg: TestPostgres;
let url: string;

beforeAll(async () => {
  pg = await startPostgres();
  url = await pg.createDatabase('staging_counts');
  await withSql(url, async (sql) => {
    await sql`create table loaded (id int)`;
    await sql`insert into loaded select generate_series(1, 1000)`;
    await sql`create table later (id int)`;
    await sql`insert into later select generate_series(1, 5)`;
    await sql`create table held (id int)`;
    await sql`insert into held select generate_series(1, 42)`;
  });
});

afterAll(async () => {
  await pg?.stop();
});

describe('the staging row counter', () => {
  it('counts a loaded table early only once a pg_restore slot stays free, and every table exactly at the end', async () => {
    const items = new Map([
      [1, { schema: 'public', name: 'loaded' }],
      [2, { schema: 'public', name: 'later' }],
    ]);
    const counter = new StagingRowCounter(parseDatabaseUrl(url), 'staging_counts', items, 2);
    try {
      counter.onItem({ kind: 'launching', id: 1, what: 'TABLE DATA loaded' });
      counter.onItem({ kind: 'launching', id: 2, what: 'TABLE DATA later' });
      // The data of `loaded` is in and pg_restore fills the slot at once: both stay busy, no count.
      counter.onItem({ kind: 'finished', id: 1, what: 'TABLE DATA loaded' });
      counter.onItem({ kind: 'launching', id: 3, what: 'INDEX loaded_id' });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(counter.countedEarly).toBe(0);
      // The index is done and nothing else is ready: a slot stays free, and `loaded` is counted.
      counter.onItem({ kind: 'finished', id: 3, what: 'INDEX loaded_id' });
      await vi.waitFor(() => expect(counter.countedEarly).toBe(1), { timeout: 10_000 });
      counter.onItem({ kind: 'finished', id: 2, what: 'TABLE DATA later' });
      expect(await counter.finish()).toEqual({ 'public.loaded': 1000, 'public.later': 5, 'public.held': 42 });
    } finally {
      await counter.close();
    }
  });

  it('counts a table pg_restore holds locked once it lets go, with the exact number', async () => {
    const items = new Map([[1, { schema: 'public', name: 'held' }]]);
    const counter = new StagingRowCounter(parseDatabaseUrl(url), 'staging_counts', items, 2);
    // pg_restore's ALTER TABLE ... ADD CONSTRAINT holds the table ACCESS EXCLUSIVE until it commits.
    const alter = postgres(url, { max: 1, onnotice: () => {} });
    const holder = await alter.reserve();
    try {
      await holder`begin`;
      await holder`lock table held in access exclusive mode`;
      counter.onItem({ kind: 'launching', id: 1, what: 'TABLE DATA held' });
      counter.onItem({ kind: 'finished', id: 1, what: 'TABLE DATA held' });
      counter.onItem({ kind: 'launching', id: 2, what: 'CONSTRAINT held_pkey' });
      // A slot is free: the count's NOWAIT lock fails, and it waits for the ALTER instead.
      await vi.waitFor(
        async () => {
          // Seen from a session of its own: pg_stat_activity stays the same within a transaction.
          const waiting = await withSql(
            url,
            (sql) => sql<{ n: string }[]>`
              select count(*) as n from pg_stat_activity
              where datname = 'staging_counts' and wait_event_type = 'Lock'`,
          );
          expect(Number(waiting[0]!.n)).toBe(1);
        },
        { timeout: 10_000 },
      );
      expect(counter.countedEarly).toBe(0);
      await holder`commit`;
      counter.onItem({ kind: 'finished', id: 2, what: 'CONSTRAINT held_pkey' });
      await vi.waitFor(() => expect(counter.countedEarly).toBe(1), { timeout: 10_000 });
      const counts = await counter.finish();
      expect(counts['public.held']).toBe(42);
    } finally {
      holder.release();
      await alter.end();
      await counter.close();
    }
  });

  it('never counts an inheritance parent or a partition early: their rows arrive with other items', async () => {
    const inherit = await pg.createDatabase('staging_inherit');
    await withSql(inherit, async (sql) => {
      await sql`create table readings (id int)`;
      await sql`create table readings_2026 () inherits (readings)`;
      await sql`insert into readings select generate_series(1, 1000)`;
      await sql`create table events (at int) partition by range (at)`;
      await sql`create table events_low partition of events for values from (0) to (500)`;
      await sql`insert into events select generate_series(0, 99)`;
    });
    const items = new Map([
      [1, { schema: 'public', name: 'readings' }],
      [2, { schema: 'public', name: 'events_low' }],
    ]);
    const counter = new StagingRowCounter(parseDatabaseUrl(inherit), 'staging_inherit', items, 2);
    try {
      // The parent's own rows and a partition's are in; every slot is free, so a plain table would be counted now.
      for (const [id, name] of [...items].map(([i, t]) => [i, t.name] as const)) {
        counter.onItem({ kind: 'launching', id, what: `TABLE DATA ${name}` });
        counter.onItem({ kind: 'finished', id, what: `TABLE DATA ${name}` });
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(counter.countedEarly).toBe(0);
      // The child's COPY and rows loaded through the partitioned parent come later.
      await withSql(inherit, async (sql) => {
        await sql`insert into readings_2026 select generate_series(1, 300)`;
        await sql`insert into events select generate_series(100, 199)`;
      });
      const counts = await counter.finish();
      expect(counts).toMatchObject({
        'public.readings': 1300,
        'public.readings_2026': 300,
        'public.events_low': 200,
      });
    } finally {
      await counter.close();
    }
  });
});
