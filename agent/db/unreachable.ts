// The one sentence a job says when GEM's database cannot be reached (a backup's export, a restore's checks).
import { AppError } from '../errors';
import { connectionFailure, connectionWords } from '../http/errors';

/**
 * `error` from opening a connection to GEM's database, as a person reads it: what is wrong, what to
 * do, and the system's words at the end ("connection refused on 127.0.0.1:5432"), never first.
 */
export function databaseUnreachable(error: unknown): AppError {
  const lost = connectionFailure(error);
  const raw = lost ? connectionWords(lost) : ((error as Error)?.message ?? String(error));
  return new AppError(
    'dependency_down',
    `GEM's database is not answering, so nothing was done. If the agent runs GEM's database itself, it starts it again within a minute: try again then. Otherwise check that PostgreSQL is running and that DATABASE_URL is right (${raw}).`,
    { cause: error },
  );
}
