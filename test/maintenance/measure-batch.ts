// Measures the purge's time per batch on a million history rows over 200 days: `npx tsx test/maintenance/measure-batch.ts`.
import postgres from 'postgres';
import { GEM_SCHEMA_SQL } from '../../agent/db/seed';
import { startPostgres } from '../services/postgres';
import { fillHistory } from './history';

const pg = await startPostgres();
const sql = postgres(await pg.createDatabase(), { max: 1, onnotice: () => {} });
try {
  await sql.unsafe(GEM_SCHEMA_SQL);
  let t = performance.now();
  await fillHistory(sql, { attributeHistory: 1_000_000, requestHistory: 0, accessLog: 0 });
  console.log(`filled 1 000 000 attribute_history rows in ${Math.round(performance.now() - t)} ms`);
  const cutoff = new Date(Date.now() - 90 * 86_400_000);
  // Warm-up (cold index and heap pages), not counted.
  for (let i = 0; i < 3; i++) {
    await sql`delete from public.attribute_history where ctid = any(array(
      select ctid from public.attribute_history where recorded_at < ${cutoff} limit 5000))`;
  }
  for (const size of [1000, 2500, 5000, 10_000, 20_000, 5000, 1000]) {
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      t = performance.now();
      const r = await sql`delete from public.attribute_history where ctid = any(array(
        select ctid from public.attribute_history where recorded_at < ${cutoff} limit ${size}))`;
      times.push(performance.now() - t);
      if (r.count < size) throw new Error('ran out of old rows');
    }
    times.sort((a, b) => a - b);
    const avg = times.reduce((a, b) => a + b, 0) / times.length;
    console.log(
      `batch ${String(size).padStart(6)}: avg ${avg.toFixed(1)} ms, max ${times.at(-1)!.toFixed(1)} ms, ` +
        `${((size / avg) * 1000).toFixed(0)} rows/s`,
    );
  }
} finally {
  await sql.end();
  await pg.stop();
}
