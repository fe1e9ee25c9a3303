/** Reading JSON request bodies: size-limited, parsed, and validated with a zod schema (400 / 413 / 422). */
import type { Context } from 'hono';
import type { z } from 'zod';
import { AppError } from '../errors';
import { validationError } from './errors';

export const MAX_JSON_BYTES = 1024 * 1024;

/** Parses and validates the JSON body; `optional` accepts an empty body as undefined. */
export async function jsonBody<S extends z.ZodType>(
  c: Context,
  schema: S,
  options: { optional?: boolean; maxBytes?: number } = {},
): Promise<z.infer<S> | undefined> {
  const limit = options.maxBytes ?? MAX_JSON_BYTES;
  const declared = Number(c.req.header('content-length') ?? 0);
  if (declared > limit) throw new AppError('too_large', `the body is larger than ${limit} bytes`);
  const reader = c.req.raw.body?.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  if (reader) {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > limit) {
        await reader.cancel();
        throw new AppError('too_large', `the body is larger than ${limit} bytes`);
      }
      parts.push(value);
    }
  }
  const text = Buffer.concat(parts).toString('utf8');
  if (text.trim() === '') {
    if (options.optional) return undefined;
    throw new AppError('bad_request', 'a JSON body is required');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new AppError('bad_request', 'the body is not valid JSON');
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) throw validationError(parsed.error);
  return parsed.data;
}
