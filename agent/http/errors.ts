/** The single error handler: any thrown error becomes `{error: {code, message}}` with a fitting status. */
import type { Context } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { ZodError } from 'zod';
import {
  AppError,
  barePermissionDenied,
  isBareNoSpace,
  noSpaceError,
  permissionDeniedError,
  underlyingCause,
} from '../errors';
import type { Logger } from '../log';
import { pathForLogs } from './download-tickets';

export function errorBody(code: string, message: string, details?: Record<string, unknown>) {
  return { error: { code, message, ...(details ? { details } : {}) } };
}

type Issue = ZodError['issues'][number];

/** What a value of zod's `expected` type is, in words ("must be …"). */
const EXPECTED: Record<string, string> = {
  int: 'a whole number',
  number: 'a number',
  string: 'text',
  boolean: 'true or false',
  array: 'a list',
  object: 'an object',
};

/** A bound in words: "at least 1", "at most 100 characters", "more than 0 items". */
function bound(issue: { origin?: string; inclusive?: boolean }, side: 'min' | 'max', limit: unknown): string {
  const n = Number(limit);
  const words =
    side === 'min'
      ? issue.inclusive === false
        ? `more than ${limit}`
        : `at least ${limit}`
      : issue.inclusive === false
        ? `less than ${limit}`
        : `at most ${limit}`;
  if (issue.origin === 'string') return `${words} character${n === 1 ? '' : 's'} long`;
  if (issue.origin === 'array' || issue.origin === 'set') return `${words} item${n === 1 ? '' : 's'}`;
  return words;
}

/** How zod's own messages begin (its locale's defaults); anything else was written by our schema. */
const ZOD_OWN_WORDS = /^(Too small|Too big|Invalid|Unrecognized key)/;

/**
 * A zod issue in plain words ("must be at least 1", "must be a whole number", "must be one of hourly,
 * daily"): zod's own ("Too small: expected number to be >=1") reach the page as they are. Messages a
 * schema wrote itself (refinements: "required when enabled") are kept.
 */
export function plainIssueMessage(issue: Issue): string {
  // A message the schema wrote itself ('use at least 8 characters') is already in plain words.
  if (!ZOD_OWN_WORDS.test(issue.message)) return issue.message;
  switch (issue.code) {
    case 'too_small':
      if (issue.origin === 'string' && Number(issue.minimum) === 1) return 'must not be empty';
      return `must be ${bound(issue, 'min', issue.minimum)}`;
    case 'too_big':
      return `must be ${bound(issue, 'max', issue.maximum)}`;
    case 'invalid_type':
      // zod says what it received only in its message; a missing key is its "undefined".
      if (/received undefined$/.test(issue.message)) return 'is required';
      return `must be ${EXPECTED[issue.expected] ?? issue.expected}`;
    case 'invalid_value':
      return issue.values.length === 1
        ? `must be ${String(issue.values[0])}`
        : `must be one of ${issue.values.map(String).join(', ')}`;
    case 'invalid_format':
      return issue.format === 'url' ? 'must be a URL (https://…)' : `must be a valid ${issue.format}`;
    case 'unrecognized_keys':
      return `unknown field${issue.keys.length === 1 ? '' : 's'}: ${issue.keys.join(', ')}`;
    case 'not_multiple_of':
      return `must be a multiple of ${issue.divisor}`;
    default:
      return issue.message;
  }
}

/** zod's own bound for any whole number (the safe-integer range), which precedes the schema's own bound. */
const isSafeIntegerBound = (issue: Issue) =>
  (issue.code === 'too_big' || issue.code === 'too_small') &&
  issue.origin === 'int' &&
  Math.abs(Number(issue.code === 'too_big' ? issue.maximum : issue.minimum)) === Number.MAX_SAFE_INTEGER;

/** An issue's path under `prefix` (a union branch's issues are relative to the union). */
const under = (prefix: Issue['path'], issue: Issue): Issue => ({
  ...issue,
  path: [...prefix, ...issue.path],
});

/**
 * The issues of a failure as the page should read them. A union that no branch matched ("Invalid input")
 * becomes the issues of the branch that came closest (fewest issues, then the deepest field, then a
 * rule over a literal): a secret sent as `{"set": "yes"}` names `secretAccessKey.set: must be true or
 * false`, a `from` of `'' | e-mail` says "not an e-mail address". When every branch refused the value's
 * type itself, one issue says which types it may be ("must be text or an object"). A number past the
 * safe-integer range (1e308) is described by the schema's own bound, not 9007199254740991.
 */
export function plainIssues(issues: readonly Issue[]): Issue[] {
  const out: Issue[] = [];
  for (const issue of issues) {
    if (issue.code === 'invalid_union' && issue.errors.length > 0) {
      const branches = issue.errors.map((branch) => plainIssues(branch));
      const types = branches.map((b) => {
        const only = b.length === 1 ? b[0] : undefined;
        return only?.code === 'invalid_type' && only.path.length === 0 ? only.expected : undefined;
      });
      if (types.every((t) => t !== undefined)) {
        const words = [...new Set(types.map((t) => EXPECTED[t!] ?? t!))].join(' or ');
        out.push({ ...issue, message: `must be ${words}` });
        continue;
      }
      const depth = (b: Issue[]) => Math.max(...b.map((i) => i.path.length));
      // A literal the value missed (the empty string of `'' | an e-mail address`) says less than the
      // other branch's rule.
      const literal = (b: Issue[]) => (b.every((i) => i.code === 'invalid_value') ? 1 : 0);
      const best = branches
        .filter((b) => b.length > 0)
        .sort((a, b) => a.length - b.length || depth(b) - depth(a) || literal(a) - literal(b))[0];
      if (best) {
        out.push(...best.map((i) => under(issue.path, i)));
        continue;
      }
    }
    out.push(issue);
  }
  const bounded = out.filter((i) => !isSafeIntegerBound(i));
  return out.filter(
    (i) => !isSafeIntegerBound(i) || !bounded.some((b) => b.path.join('.') === i.path.join('.')),
  );
}

/** Turns a zod failure into a 422 that names the first bad field, in plain words; details keep every field path. */
export function validationError(error: ZodError): AppError {
  const issues = plainIssues(error.issues);
  const issue = issues[0];
  const field = issue?.path.join('.') || 'body';
  return new AppError('unprocessable', `${field}: ${issue ? plainIssueMessage(issue) : 'invalid'}`, {
    details: {
      field,
      issues: issues.map((i) => ({ field: i.path.join('.'), message: plainIssueMessage(i) })),
    },
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

/**
 * The lost connection in `error`, or in an error it wraps (a query builder's cause, an
 * AggregateError's list): its code and, for a socket error, the address it could not reach.
 */
export function connectionFailure(error: unknown, depth = 0): { code: string; where?: string } | undefined {
  if (depth > 5 || !error || typeof error !== 'object') return undefined;
  const { code, cause, errors, address, port } = error as {
    code?: unknown;
    cause?: unknown;
    errors?: unknown;
    address?: unknown;
    port?: unknown;
  };
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) {
    return typeof address === 'string' ? { code, where: port ? `${address}:${port}` : address } : { code };
  }
  for (const inner of Array.isArray(errors) ? errors : []) {
    const found = connectionFailure(inner, depth + 1);
    if (found) return found;
  }
  return connectionFailure(cause, depth + 1);
}

/** A lost connection in a few words: "connection refused on 127.0.0.1:5432", "the server is shutting down". */
export function connectionWords(lost: { code: string; where?: string }): string {
  const words: Record<string, string> = {
    ECONNREFUSED: 'connection refused',
    ECONNRESET: 'connection reset',
    ETIMEDOUT: 'connection timed out',
    CONNECT_TIMEOUT: 'connection timed out',
    EHOSTUNREACH: 'host unreachable',
    EPIPE: 'connection closed',
    CONNECTION_CLOSED: 'connection closed',
    CONNECTION_ENDED: 'connection closed',
    CONNECTION_DESTROYED: 'connection closed',
    '57P01': 'the server is shutting down',
    '57P02': 'the server stopped after a crash',
    '57P03': 'the server is starting up or shutting down',
  };
  const what = words[lost.code] ?? lost.code;
  return lost.where ? `${what} on ${lost.where}` : what;
}

export function onError(log: Logger) {
  return (error: Error, c: Context) => {
    if (error instanceof ZodError) error = validationError(error);
    // A full data folder (a lock, a pin, a state file that could not be written): 507 with the one
    // clear sentence, as uploads and backup jobs say it, wherever the write was.
    if (!(error instanceof AppError) && isBareNoSpace(error)) {
      // The system's words (ENOSPC, or what PostgreSQL said of its disk) for the log, never a query's values.
      log.warn('the disk is full', { error, cause: underlyingCause(error), route: pathForLogs(c.req.path) });
      error = noSpaceError(error);
    }
    // A folder or file of the agent's that is not its own (made by root, immutable): the one sentence
    // that names it and whose it must be, as jobs say it.
    const denied = error instanceof AppError ? undefined : barePermissionDenied(error);
    if (denied) {
      log.warn('permission denied', { error, route: pathForLogs(c.req.path) });
      error = permissionDeniedError(denied);
    }
    // An AppError already names what failed (an offsite destination that is down, with its cause):
    // only a bare socket error is taken for the database.
    const lost = error instanceof AppError ? undefined : connectionFailure(error);
    if (lost) {
      // API.md: 503 when a dependency is down (the database, mostly; a socket error does not say
      // which service it was, its address does). The request can be tried again once it runs.
      log.warn('a dependency is unreachable', { error, route: pathForLogs(c.req.path) });
      error = new AppError(
        'dependency_down',
        `a service the agent depends on (the database, most likely) is unreachable: ${lost.code}` +
          `${lost.where ? ` at ${lost.where}` : ''}; try again once it runs`,
        { cause: error },
      );
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
    // The wrapper of a failed query names only its text: what the database said is its cause.
    log.error('unexpected error', { error, cause: underlyingCause(error), route: pathForLogs(c.req.path) });
    return c.json(errorBody('internal', 'internal error; see the agent log'), 500);
  };
}
