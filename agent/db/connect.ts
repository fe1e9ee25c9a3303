/** The one way the agent opens a PostgreSQL pool. */
import postgres from 'postgres';
import { AppError } from '../errors';

/**
 * A pool on `url` of at most `max` connections. Notices are dropped; a server that does not answer
 * in 10 s is an error. After failed connects in a row it tries again after `reconnectDelaySeconds`.
 *
 * `fetch_types: false`: postgres.js otherwise sends a pg_type query on each new connection from a
 * promise nobody awaits, so a connection reset in that moment (a restore's swap ends every session
 * of the live database) becomes an unhandled rejection that can stop the process. Those types only
 * serve array values: the agent binds none, and a query that reads one selects it as JSON
 * (`array_to_json`), which is parsed without them.
 */
export function openSql(url: string, max = 1, options: SqlOptions = {}): postgres.Sql {
  return postgres(url, {
    max,
    onnotice: () => {},
    connect_timeout: 10,
    fetch_types: false,
    backoff: options.reconnectBackoff ?? reconnectDelaySeconds,
  });
}

export interface SqlOptions {
  /** Seconds to wait before a connection is opened again after `failures` in a row (default reconnectDelaySeconds). */
  reconnectBackoff?: (failures: number) => number;
}

/** The longest wait between two connects of a pool whose database does not answer. */
export const RECONNECT_DELAY_CAP_SECONDS = 2;

/**
 * postgres.js's own backoff (3^failures / 100 s, half to all of it), capped at 2 s instead of 20 s: its
 * default held a pool that had failed through an outage of a minute 10-20 s past the database's return,
 * and every API answer and the restore undo waiting on that pool with it. A local server tried every
 * 2 s while it is down costs nothing.
 */
export function reconnectDelaySeconds(failures: number): number {
  return (0.5 + Math.random() / 2) * Math.min(3 ** failures / 100, RECONNECT_DELAY_CAP_SECONDS);
}

/**
 * A connection of `sql` held for the caller until `release()`. postgres.js 3.4 never answers
 * `reserve()` while the connection is still opening when fetch_types is off, so a first query opens
 * it: the reserve then takes the open one.
 *
 * `signal`: a caller that ends the pool when it aborts (agent/backup/dump.ts) passes it. A reserve()
 * made after that end is not refused: postgres.js opens a new connection for it and never answers
 * (the flaw above), so the caller would wait for ever, the connection open. An end that lands while
 * the first query runs can let that query succeed (its answer read before the end's timeout fires):
 * the abort, which comes first, is checked here, with nothing awaited between it and the reserve.
 */
export async function reserveConnection(
  sql: postgres.Sql,
  signal?: AbortSignal,
): Promise<postgres.ReservedSql> {
  await sql`select 1`;
  if (signal?.aborted) throw new AppError('cancelled', 'the job was cancelled');
  return sql.reserve();
}
