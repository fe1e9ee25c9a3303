/** The history purge: deletes rows older than the cut-off from GEM's three history tables, in short batches. */
import type { MaybeRow, PendingQuery, RowList, Sql } from 'postgres';
import { AppError } from '../errors';

/** The only tables (and their time columns) the purge ever touches: history, never configuration or current values. */
const HISTORY_TABLES = [
  { key: 'attributeHistory', table: 'attribute_history', column: 'recorded_at' },
  { key: 'requestHistory', table: 'request_history', column: 'created_at' },
  { key: 'accessLog', table: 'access_log', column: 'created_at' },
] as const;

export type HistoryKey = (typeof HISTORY_TABLES)[number]['key'];

/** What `POST /api/v1/maintenance/run` answers. */
export interface PurgeResult {
  deleted: Record<HistoryKey, number>;
  total: number;
  cutoff: string;
}

/**
 * Rows per DELETE statement. Measured on a million attribute_history rows over 200 days (2 cores,
 * test/maintenance/measure-batch.ts, warm cache): 1 000 rows ~2-4 ms per batch, 5 000 ~7-10 ms
 * (max ~12 ms), 10 000 ~19-25 ms with spikes to 70 ms, 20 000 ~30-45 ms with spikes past 130 ms.
 * 5 000 is past the knee of rows/s (~0.5-0.7 M rows/s) while every statement stays in the
 * ~10 ms range, so row locks and the snapshot are held briefly and GEM's writes interleave freely;
 * a slower controller disk multiplies the time per batch, not the number of rows held.
 */
const PURGE_BATCH_SIZE = 5000;

interface PurgeOptions {
  retentionDays: number;
  batchSize?: number;
  now?: Date;
  signal?: AbortSignal;
  /** After each batch: table, rows deleted by it, running total for the table. */
  onBatch?: (key: HistoryKey, deleted: number, tableTotal: number) => void;
}

/**
 * Runs `query`, cancelling it on the server when `signal` aborts: a DELETE waiting for a lock GEM
 * holds on the table (a migration, a stuck transaction) would otherwise keep the job, and the job
 * lock, until GEM lets go. Its own transaction is rolled back, so the batch deletes nothing.
 */
async function untilCancelled<T extends readonly MaybeRow[]>(
  query: PendingQuery<T>,
  signal: AbortSignal | undefined,
): Promise<RowList<T>> {
  // cancel() sends a CancelRequest on a connection of its own (the pool's is busy with the query).
  const cancel = () => void Promise.resolve(query.cancel()).catch(() => {});
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    return await query;
  } catch (error) {
    if (signal?.aborted)
      throw new AppError('cancelled', 'the maintenance run was cancelled', { cause: error });
    throw error;
  } finally {
    signal?.removeEventListener('abort', cancel);
  }
}

/**
 * Deletes, from each history table, the rows whose time is before now - retentionDays, one batch per
 * statement (each its own transaction: locks last one batch). On `signal` it stops with `cancelled`,
 * between batches or by cancelling the running statement; what was deleted stays deleted, nothing
 * else is touched.
 */
export async function purgeHistory(sql: Sql, options: PurgeOptions): Promise<PurgeResult> {
  if (!Number.isInteger(options.retentionDays) || options.retentionDays < 1) {
    throw new AppError('unprocessable', 'retentionDays: must be a whole number of days, at least 1');
  }
  const batch = options.batchSize ?? PURGE_BATCH_SIZE;
  const now = options.now ?? new Date();
  const cutoff = new Date(now.getTime() - options.retentionDays * 86_400_000);
  const deleted: Record<HistoryKey, number> = { attributeHistory: 0, requestHistory: 0, accessLog: 0 };
  for (const { key, table, column } of HISTORY_TABLES) {
    const t = sql('public.' + table);
    const c = sql(column);
    // GEM appends history in time order, so the old rows sit at the start of the table, and a sub-select
    // scanning from the start would re-read every row the earlier batches deleted (not yet vacuumed):
    // time quadratic in the backlog. So each batch resumes after the highest ctid the one before deleted
    // (a Tid Range Scan on PostgreSQL 14+). Rows out of physical order (an index scan, a synchronized
    // seq scan starting mid-table, an old row in a reused page) may sit behind that bound: once a bounded
    // batch comes up short, unbounded batches finish the table, until one comes up short.
    let after: string | undefined;
    let finishing = false;
    for (;;) {
      if (options.signal?.aborted) throw new AppError('cancelled', 'the maintenance run was cancelled');
      const bound = after === undefined ? sql`` : sql`and ctid > ${after}::tid`;
      // ctid picks exactly the rows the indexed sub-select found; a row inserted meanwhile is newer than
      // the cut-off and never matches. The highest ctid deleted is found here: shipping every one back
      // more than doubled a batch's time, and max(tid) needs PostgreSQL 14.
      const pending = sql<{ count: number; highest: string | null }[]>`
        with gone as (
          delete from ${t} where ctid = any(array(
            select ctid from ${t} where ${c} < ${cutoff.toISOString()}::timestamptz ${bound} limit ${batch}))
          returning ctid)
        select count(*)::int as count, (select ctid from gone order by ctid desc limit 1)::text as highest from gone`;
      const { count, highest } = (await untilCancelled(pending, options.signal))[0]!;
      deleted[key] += count;
      options.onBatch?.(key, count, deleted[key]);
      if (count < batch) {
        if (after === undefined) break;
        after = undefined;
        finishing = true;
      } else if (!finishing) {
        after = highest!;
      }
    }
  }
  const total = deleted.attributeHistory + deleted.requestHistory + deleted.accessLog;
  return { deleted, total, cutoff: cutoff.toISOString() };
}
