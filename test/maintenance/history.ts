// Test data: history rows spread evenly over 200 days, generated in SQL (generate_series).
import type { Sql } from 'postgres';

/** Inserts the given numbers of rows into GEM's three history tables, timestamps spread over the last 200 days. */
export async function fillHistory(
  sql: Sql,
  counts: { attributeHistory: number; requestHistory: number; accessLog: number },
): Promise<void> {
  // Offsets in seconds spread each table's rows evenly over 200 days, starting one minute ago.
  const span = 200 * 86_400;
  await sql`insert into attribute_history (attribute_id, value, recorded_at)
    select 1 + g % 300, (g % 100)::text, now() - interval '1 minute' - ((g::bigint * ${span}) / ${counts.attributeHistory}) * interval '1 second'
    from generate_series(1, ${counts.attributeHistory}::int) g`;
  await sql`insert into request_history (device_id, request, response, status, created_at)
    select 1 + g % 60, 'GET /state', '{"ok":true}', 200, now() - interval '1 minute' - ((g::bigint * ${span}) / ${counts.requestHistory}) * interval '1 second'
    from generate_series(1, ${counts.requestHistory}::int) g`;
  await sql`insert into access_log (user_id, action, ip, created_at)
    select 1 + g % 5, 'login', '198.51.100.7'::inet, now() - interval '1 minute' - ((g::bigint * ${span}) / ${counts.accessLog}) * interval '1 second'
    from generate_series(1, ${counts.accessLog}::int) g`;
  await sql`analyze attribute_history, request_history, access_log`;
}
