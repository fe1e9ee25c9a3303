/** Typed errors with a stable code and an HTTP status, mapped to the API's error shape in one place. */
import { lstatSync } from 'node:fs';
import { dirname } from 'node:path';
import { userNameOf } from './system/passwd';

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
  | 'permission_denied'
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
  // The agent's own folders are not its own: nothing the client sends can fix it, the admin must.
  permission_denied: 500,
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

/** Whether `code` (a job record's, say) is one of the agent's error codes. */
export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(STATUS, code);
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
 * What failed underneath, for a log line: what the database said for a failed query (its code and
 * message; never the query's text or its values), else the error itself.
 */
export function underlyingCause(error: unknown): { code?: string; message: string } {
  const inner = unwrapQuery(error);
  const code = inner && typeof inner === 'object' ? (inner as { code?: unknown }).code : undefined;
  const message = inner instanceof Error ? inner.message : String(inner);
  return typeof code === 'string' ? { code, message } : { message };
}

/**
 * Turns any thrown value into an `{code, message}` pair fit for a job record or a CLI line: a full
 * disk is `no_space` with its one clear sentence, a failed query what the database said (never the
 * query text or its parameters).
 */
export function describeError(error: unknown): { code: string; message: string } {
  if (error instanceof AppError) return { code: error.code, message: error.message };
  if (isBareNoSpace(error)) return { code: 'no_space', message: NO_SPACE_MESSAGE };
  const denied = barePermissionDenied(error);
  if (denied) return { code: 'permission_denied', message: permissionDeniedError(denied).message };
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
 * The codes of a full disk: ENOSPC, EDQUOT (a quota reached), and PostgreSQL's disk_full (53100: the
 * database could not extend a file).
 */
const NO_SPACE_CODES = new Set(['ENOSPC', 'EDQUOT', '53100']);

/**
 * True for a full disk: `error` is ENOSPC (or EDQUOT, a quota reached), or an error it was caused by
 * (a wrapping stream error) is.
 */
export function isNoSpace(error: unknown): boolean {
  for (let e = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (typeof code === 'string' && NO_SPACE_CODES.has(code)) return true;
  }
  return false;
}

/**
 * A full disk that nothing on the way named otherwise: the first error code met along `error` and
 * its causes is ENOSPC, EDQUOT or PostgreSQL's 53100 (a storage provider's own `no_space`, "the server is out of space",
 * keeps its words).
 */
export function isBareNoSpace(error: unknown): boolean {
  for (let e = error, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && NO_SPACE_CODES.has(code)) return true;
    if (code !== undefined) return false;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/**
 * A file or folder the agent may not use, that nothing on the way named otherwise: the first error
 * code met along `error` and its causes is EACCES or EPERM, on a path (a system call's error; an EPERM
 * of `kill` names none).
 */
export function barePermissionDenied(error: unknown): NodeJS.ErrnoException | undefined {
  for (let e = error, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const { code, path } = e as NodeJS.ErrnoException;
    if ((code === 'EACCES' || code === 'EPERM') && typeof path === 'string')
      return e as NodeJS.ErrnoException;
    if (code !== undefined) return undefined;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** The user the agent runs as, by name (`#<uid>` when /etc/passwd names none). */
function serviceUser(): string {
  const uid = process.geteuid?.();
  return uid === undefined ? 'that runs the agent' : userNameOf(uid);
}

/** System calls that change a folder's entries: what refuses them is the folder. */
const FOLDER_CHANGES = new Set(['unlink', 'rmdir', 'rename', 'mkdir', 'link', 'symlink']);
/** System calls that only read. */
const READS = new Set(['scandir', 'opendir', 'read', 'stat', 'lstat', 'access', 'readlink']);

/**
 * The `permission_denied` error for EACCES or EPERM on `error.path`, in one sentence: what the agent
 * could not read or write (the path if it exists, else the folder it was to be made in), and whose it
 * must be. `cause` keeps the system error for the log.
 */
export function permissionDeniedError(error: NodeJS.ErrnoException): AppError {
  const syscall = error.syscall ?? '';
  // A name added to or taken from a folder (a file removed, renamed into place, made): the folder
  // refused. A file that was to be made (a temp file, a lock), or one in a folder the agent may not
  // enter: the nearest folder it reaches is named.
  let target = error.path ?? '';
  if (FOLDER_CHANGES.has(syscall)) target = dirname(target);
  for (let depth = 0; target && depth < 10; depth++) {
    try {
      lstatSync(target);
      break;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'EACCES') break;
      target = dirname(target);
    }
  }
  const read = READS.has(syscall);
  const why = error.code === 'EPERM' ? 'operation not permitted (EPERM)' : 'permission denied (EACCES)';
  const user = serviceUser();
  return new AppError(
    'permission_denied',
    `the agent cannot ${read ? 'read' : 'write to'} ${target}: ${why}; it must belong to the service's user ${user} (chown -R ${user} ${target})` +
      (error.code === 'EPERM' ? ' and not be immutable (chattr -i)' : ''),
    { cause: error },
  );
}

/**
 * For a listing of `dir` that failed: none (an empty list) when the folder is not there, else the
 * error in one sentence: the folder, the system's code, what to do. A permission denied says whose
 * the folder must be.
 */
export function unreadableFolder(dir: string, error: unknown): never[] {
  const e = error as NodeJS.ErrnoException;
  if (e?.code === 'ENOENT') return [];
  const denied = barePermissionDenied(error);
  if (denied) throw permissionDeniedError(denied);
  throw new AppError(
    'internal',
    `the agent cannot read the folder ${dir}: ${e?.code ?? 'error'} (${e?.message ?? String(error)}); check that it is a folder the service's user can read`,
    { cause: error },
  );
}
