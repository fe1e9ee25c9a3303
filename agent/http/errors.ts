/** The single error handler: any thrown error becomes `{error: {code, message}}` with a fitting status. */
import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { ZodError } from 'zod';
import { AppError } from '../errors';
import type { Logger } from '../log';

export function errorBody(code: string, message: string, details?: Record<string, unknown>) {
  return { error: { code, message, ...(details ? { details } : {}) } };
}

/** Turns a zod failure into a 422 that names the first bad field. */
export function validationError(error: ZodError): AppError {
  const issue = error.issues[0];
  const field = issue?.path.join('.') || 'body';
  return new AppError('unprocessable', `${field}: ${issue?.message ?? 'invalid'}`, {
    details: { field, issues: error.issues.map((i) => ({ field: i.path.join('.'), message: i.message })) },
  });
}

// A socket that could not reach the database, or lost it (Node's codes); postgres.js's own codes for a
// connection it gave up on; the server's "shutting down / starting up / terminated by admin" errors.
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'CONNECT_TIMEOUT',
  'CONNECTION_CLOSED',
  'CONNECTION_ENDED',
  'CONNECTION_DESTROYED',
  '57P01',
  '57P02',
  '57P03',
]);

/** True if `error`, or an error it wraps (a query builder's, an AggregateError's), is a lost connection. */
export function isConnectionFailure(error: unknown, depth = 0): boolean {
  if (depth > 5 || !error || typeof error !== 'object') return false;
  const { code, cause, errors } = error as { code?: unknown; cause?: unknown; errors?: unknown };
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true;
  if (Array.isArray(errors) && errors.some((e) => isConnectionFailure(e, depth + 1))) return true;
  return isConnectionFailure(cause, depth + 1);
}

export function onError(log: Logger) {
  return (error: Error, c: Context) => {
    if (error instanceof ZodError) error = validationError(error);
    if (isConnectionFailure(error)) {
      // API.md: 503 when a dependency is down; the database is back once PostgreSQL runs again.
      log.warn('the database is unreachable', { error, route: c.req.path });
      error = new AppError('dependency_down', 'the database is unreachable; try again once PostgreSQL runs', {
        cause: error,
      });
    }
    if (error instanceof AppError) {
      return c.json(
        errorBody(error.code, error.message, error.details),
        error.status as ContentfulStatusCode,
      );
    }
    if (error instanceof HTTPException) {
      const status = error.status;
      const code =
        status === 413
          ? 'too_large'
          : status === 401
            ? 'unauthorized'
            : status === 404
              ? 'not_found'
              : 'bad_request';
      return c.json(errorBody(code, error.message || code), status);
    }
    log.error('unexpected error', { error, route: c.req.path });
    return c.json(errorBody('internal', 'internal error; see the agent log'), 500);
  };
}
