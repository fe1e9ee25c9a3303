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

export function onError(log: Logger) {
  return (error: Error, c: Context) => {
    if (error instanceof ZodError) error = validationError(error);
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
