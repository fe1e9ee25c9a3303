/** Typed errors with a stable code and an HTTP status, mapped to the API's error shape in one place. */

export type ErrorCode =
  | 'bad_request'
  | 'invalid_name'
  | 'unauthorized'
  | 'not_found'
  | 'conflict'
  | 'job_running'
  | 'settings_changed'
  | 'too_large'
  | 'unprocessable'
  | 'not_a_backup'
  | 'no_key'
  | 'corrupt_backup'
  | 'bad_keys_file'
  | 'wrong_passphrase'
  | 'dependency_down'
  | 'dump_failed'
  | 'restore_failed'
  | 'cancelled'
  | 'no_space'
  | 'internal';

const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  invalid_name: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  job_running: 409,
  settings_changed: 412,
  too_large: 413,
  unprocessable: 422,
  not_a_backup: 422,
  no_key: 422,
  corrupt_backup: 422,
  bad_keys_file: 422,
  wrong_passphrase: 422,
  dependency_down: 503,
  dump_failed: 500,
  restore_failed: 500,
  cancelled: 409,
  no_space: 507,
  internal: 500,
};

/** The one error type of the agent: a stable `code`, a message a person can act on, optional details. */
export class AppError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details?: Record<string, unknown>;
  constructor(
    code: ErrorCode,
    message: string,
    options: { details?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppError';
    this.code = code;
    this.status = STATUS[code];
    if (options.details) this.details = options.details;
  }
}

export function isAppError(error: unknown, code?: ErrorCode): error is AppError {
  return error instanceof AppError && (code === undefined || error.code === code);
}

/** What a full disk (ENOSPC, or a quota reached: EDQUOT) says, wherever it happens. */
export const NO_SPACE_MESSAGE = 'the disk is full: free some space and try again';

/** The `no_space` error (507) for a full disk; `cause` keeps the system error for the log. */
export function noSpaceError(cause?: unknown): AppError {
  return new AppError('no_space', NO_SPACE_MESSAGE, cause === undefined ? {} : { cause });
}

/**
 * A query builder's wrapper (drizzle's "Failed query: <sql> params: <values>") says nothing a person
 * can act on and may carry a parameter's value: what the database itself said is its cause.
 */
function unwrapQuery(error: unknown): unknown {
  for (let e = error, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const { message, cause } = e as { message?: unknown; cause?: unknown };
    if (!(typeof message === 'string' && message.startsWith('Failed query: ') && cause)) return e;
    e = cause;
  }
  return error;
}

/**
 * Turns any thrown value into an `{code, message}` pair fit for a job record or a CLI line: a full
 * disk is `no_space` with its one clear sentence, a failed query what the database said (never the
 * query text or its parameters).
 */
export function describeError(error: unknown): { code: string; message: string } {
  if (error instanceof AppError) return { code: error.code, message: error.message };
  if (isBareNoSpace(error)) return { code: 'no_space', message: NO_SPACE_MESSAGE };
  const inner = unwrapQuery(error);
  if (inner && typeof inner === 'object' && 'code' in inner && 'message' in inner) {
    return {
      code: String((inner as { code: unknown }).code),
      message: String((inner as { message: unknown }).message),
    };
  }
  return { code: 'internal', message: inner instanceof Error ? inner.message : String(inner) };
}

/**
 * True for a full disk: `error` is ENOSPC (or EDQUOT, a quota reached), or an error it was caused by
 * (a wrapping stream error) is.
 */
export function isNoSpace(error: unknown): boolean {
  for (let e = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  }
  return false;
}

/**
 * A full disk that nothing on the way named otherwise: the first error code met along `error` and
 * its causes is ENOSPC or EDQUOT (a storage provider's own `no_space`, "the server is out of space",
 * keeps its words).
 */
export function isBareNoSpace(error: unknown): boolean {
  for (let e = error, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
    if (code !== undefined) return false;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}
