/** The one way the agent opens a PostgreSQL pool. */
import postgres from 'postgres';
import { AppError } from '../errors';

/**
 * A pool on `url` of at most `max` connections. Notices are dropped; a server that does not answer
 * in 10 s is an error.
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
    ...(options.reconnectBackoff ? { backoff: options.reconnectBackoff } : {}),
  });
}

export interface SqlOptions {
  /**
   * Seconds to wait before a connection is opened again after failures in a row (their number):
   * postgres.js's own by default, which grows to 10-20 s after seven, so a pool that failed through
   * an outage answers up to 20 s after the server does. Tests of outages set it small.
   */
  reconnectBackoff?: (failures: number) => number;
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
