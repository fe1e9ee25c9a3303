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

/** Turns any thrown value into an `{code, message}` pair fit for a job record or a CLI line. */
export function describeError(error: unknown): { code: string; message: string } {
  if (error instanceof AppError) return { code: error.code, message: error.message };
  if (error && typeof error === 'object' && 'code' in error && 'message' in error) {
    return {
      code: String((error as { code: unknown }).code),
      message: String((error as { message: unknown }).message),
    };
  }
  return { code: 'internal', message: error instanceof Error ? error.message : String(error) };
}

/** True for a full disk: `error` is ENOSPC, or an error it was caused by (a wrapping stream error) is. */
export function isNoSpace(error: unknown): boolean {
  for (let e = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC') return true;
  }
  return false;
}
