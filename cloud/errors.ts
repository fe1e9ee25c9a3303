// The cloud's one error type and its mapping to the API error shape.
import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { SignatureError } from '../shared/signing';
import { ContentMismatchError } from './store/slot-store';

/** An error with a stable code and the HTTP status it answers with. */
export class CloudError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'CloudError';
  }
}

/**
 * The answer when storage itself failed (down, timed out, refused): a retryable 503 with a fixed
 * message. Storage's own text (endpoint, internals) goes to the server log only, never to the client.
 */
export function storageUnavailable(what: string, err: unknown): CloudError {
  console.error(`cloud: ${what} failed in storage`, err instanceof Error ? err.message : String(err));
  return new CloudError(503, 'storage_unavailable', 'the backup storage is not available; try again later');
}

const DRAIN_LIMIT = 1024 * 1024;

/**
 * Turns any thrown error into `{"error":{"code","message"}}`; unknown errors say nothing internal.
 * A small request body not read yet is read first: answering before it arrived makes the runtime
 * reset the connection, and the client would see a reset instead of the refusal. Only a body whose
 * Content-Length says it is small: a chunked body has no length, and anyone (signed or not) could
 * otherwise make the Worker buffer hundreds of MiB before hearing no.
 */
export async function errorResponse(err: unknown, c: Context): Promise<Response> {
  const request = c.req.raw;
  const length = request.headers.get('content-length');
  if (request.body && !request.bodyUsed && length !== null && Number(length) <= DRAIN_LIMIT) {
    await request.arrayBuffer().catch(() => {});
  }
  return toErrorResponse(err, c);
}

function toErrorResponse(err: unknown, c: Context): Response {
  if (err instanceof CloudError)
    return c.json({ error: { code: err.code, message: err.message } }, err.status);
  if (err instanceof SignatureError) {
    const status = err.code === 'wrong_body' ? 400 : 401;
    return c.json(
      { error: { code: status === 400 ? 'body_mismatch' : 'bad_signature', message: err.message } },
      status,
    );
  }
  if (err instanceof ContentMismatchError) {
    return c.json({ error: { code: 'body_mismatch', message: err.message } }, 400);
  }
  console.error('cloud: unexpected error', err instanceof Error ? err.message : String(err));
  return c.json({ error: { code: 'internal', message: 'internal error' } }, 500);
}
