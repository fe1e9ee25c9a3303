// Measures the purge on a big backlog of history written in time order as GEM writes it (the old rows
// first), against the unbounded batches it ran before (each sub-select scanning from the table's start):
// `npx tsx test/maintenance/measure-backlog.ts [--no-syncscan] [--rounds=2] 2000000 6000000` (old rows,
// 55 % of the table). The table is filled and vacuumed once per size; each run purges a copy of it.
// --no-syncscan: every sequential scan starts at block 0, as on a server whose shared_buffers exceed four
// times the table (a synchronized scan otherwise starts near where the previous one left off).
import postgres from 'postgres';
import { GEM_SCHEMA_SQL } from '../../agent/db/seed';
import { purgeHistory } from '../../agent/maintenance/purge';
import { startPostgres } from '../services/postgres';

const args = process.argv.slice(2);
const syncscan = !args.includes('--no-syncscan');
const rounds = Number(args.find((a) => a.startsWith('--rounds='))?.slice(9) ?? 1);
const sizes = args.filter((a) => !a.startsWith('--')).map(Number);

/** The purge before batches resumed from the last ctid: every sub-select scans from the start. */
async function purgeUnbounded(sql: postgres.Sql, cutoff: Date, onBatch: () => void): Promise<number> {
  let deleted = 0;
  for (;;) {
    const r = await sql`delete from public.attribute_history where ctid = any(array(
      select ctid from public.attribute_history where recorded_at < ${cutoff.toISOString()}::timestamptz limit 5000))`;
    deleted += r.count;
    onBatch();
    if (r.count < 5000) return deleted;
  }
}

const pg = await startPostgres();
const admin = postgres(pg.cluster.url('postgres'), { max: 1, onnotice: () => {} });
try {
  for (const old of sizes.length ? sizes : [2_000_000]) {
    const template = `backlog_${old}`;
    const total = Math.round(old / 0.55);
    // One cut-off for the fill and every run: exactly `old` rows are older.
    const now = new Date();
    const cutoff = new Date(now.getTime() - 90 * 86_400_000);
    {
      const sql = postgres(await pg.createDatabase(template), { max: 1, onnotice: () => {} });
      const t = performance.now();
      await sql.unsafe(GEM_SCHEMA_SQL);
      // Oldest first, one row per step; rows 1 to `old` are older than the cut-off.
      const step = (200 * 86_400_000) / total;
      await sql`insert into attribute_history (attribute_id, value, recorded_at)
        select 1 + g % 300, (g % 100)::text,
          ${cutoff.toISOString()}::timestamptz + ((g - 1 - ${old}::bigint) * ${step}::float8) * interval '1 millisecond'
        from generate_series(1, ${total}::int) g`;
      await sql`vacuum analyze attribute_history`;
      await sql.end();
      console.log(`${old} old of ${total} rows, filled in ${((performance.now() - t) / 1000).toFixed(0)} s`);
    }
    for (let round = 0; round < rounds; round++) {
      for (const variant of ['before', 'after'] as const) {
        const name = `${template}_${variant}`;
        await admin.unsafe(`create database ${name} template ${template}`);
        const sql = postgres(pg.cluster.url(name), {
          max: 1,
          onnotice: () => {},
          connection: { synchronize_seqscans: syncscan ? 'on' : 'off' },
        });
        try {
          const times: number[] = [];
          const start = performance.now();
          let last = start;
          const onBatch = () => {
            const at = performance.now();
            times.push(at - last);
            last = at;
          };
          const deleted =
            variant === 'before'
              ? await purgeUnbounded(sql, cutoff, onBatch)
              : (
                  await purgeHistory(sql, {
                    retentionDays: 90,
                    now: new Date(cutoff.getTime() + 90 * 86_400_000),
                    onBatch: (key) => key === 'attributeHistory' && onBatch(),
                  })
                ).deleted.attributeHistory;
          const elapsed = performance.now() - start;
          const avg = (xs: number[]) => (xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1);
          // Full batches only; the short ones at the end scan the rest of the table, once.
          const full = times.slice(0, Math.floor(deleted / 5000));
          const tail = times.slice(full.length).map((x) => x.toFixed(0));
          console.log(
            `  ${variant.padEnd(6)}${syncscan ? '' : ' (no syncscan)'}: ${deleted} deleted in ${(elapsed / 1000).toFixed(1)} s, ` +
              `${times.length} batches: first 10 avg ${avg(full.slice(0, 10))} ms, last 10 avg ${avg(full.slice(-10))} ms, ` +
              `max ${Math.max(...full).toFixed(0)} ms; short batches ${tail.join(', ')} ms`,
          );
          if (deleted !== old) throw new Error(`deleted ${deleted}, expected ${old}`);
        } finally {
          await sql.end();
          await admin.unsafe(`drop database ${name}`);
        }
      }
    }
    await admin.unsafe(`drop database ${template}`);
  }
} finally {
  await admin.end();
  await pg.stop();
}
