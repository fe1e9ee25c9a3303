/** Admin-token authentication: every route but the health check needs `Authorization: Bearer <token>`. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { AppError } from '../errors';

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Compares in constant time (hashing first makes the lengths equal). */
export function tokensMatch(given: string, expected: string): boolean {
  return timingSafeEqual(digest(given), digest(expected));
}

/**
 * Why a request's Authorization was refused. A header that says Bearer but holds no single token (two
 * headers joined by a comma, a token pasted with a space in it) is an invalid token, not a missing one.
 */
function refusal(header: string, wellFormed: boolean): string {
  if (wellFormed || /^Bearer\s+\S/i.test(header)) return 'invalid admin token';
  if (header === '' || /^Bearer$/i.test(header)) return 'missing admin token (Authorization: Bearer <token>)';
  return 'the admin token goes in the Authorization header as Bearer <token>';
}

export function requireToken(token: string): MiddlewareHandler {
  return async (c, next) => {
    const header = (c.req.header('authorization') ?? '').trim();
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match || !tokensMatch(match[1]!, token)) {
      throw new AppError('unauthorized', refusal(header, Boolean(match)));
    }
    await next();
  };
}
