/** Reading JSON request bodies: size-limited, parsed, and validated with a zod schema (400 / 413 / 422). */
import type { Context } from 'hono';
import { z } from 'zod';
import { AppError } from '../errors';
import { validationError } from './errors';

const MAX_JSON_BYTES = 1024 * 1024;

/** How deep objects and lists may nest in a body: no request of the API needs more than a few levels. */
const MAX_JSON_DEPTH = 64;

/**
 * The deepest nesting of `[` and `{` in a JSON text (outside its strings), stopping as soon as it
 * passes `limit`. A body nested thousands deep parses (JSON.parse does not recurse), but whatever walks
 * it afterwards (JSON.stringify of a keys file) overflows the stack: a 500 instead of a 400.
 */
function jsonDepthOver(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (inString) {
      if (ch === 0x5c)
        i++; // a backslash escapes the next character
      else if (ch === 0x22) inString = false;
    } else if (ch === 0x22) inString = true;
    else if (ch === 0x5b || ch === 0x7b) {
      if (++depth > limit) return true;
    } else if (ch === 0x5d || ch === 0x7d) depth--;
  }
  return false;
}

/**
 * How long a JSON body may send nothing before it is given up (400). The server sets no limit of its
 * own on a request's body (uploads of backups take as long as they take, with an idle limit of theirs),
 * so without it a client that stopped half-way through a body held its request, and its socket, for
 * good. Mutable for tests.
 */
export const jsonBodyTiming = { idleMs: 30_000 };

/** `reader`'s next chunk, or a 400 once nothing came for jsonBodyTiming.idleMs (the read cancelled). */
async function readWithin(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<ReadableStreamReadResult<Uint8Array>> {
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Rejected first: the cancel ends the pending read as if the body were whole.
      reject(
        new AppError(
          'bad_request',
          `the request body stopped: nothing arrived for ${jsonBodyTiming.idleMs / 1000} s`,
        ),
      );
      reader.cancel().catch(() => {});
    }, jsonBodyTiming.idleMs);
  });
  try {
    return await Promise.race([reader.read(), stalled]);
  } finally {
    clearTimeout(timer);
  }
}

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
      const { done, value } = await readWithin(reader);
      if (done) break;
      size += value.length;
      if (size > limit) {
        await reader.cancel();
        throw new AppError('too_large', `the body is larger than ${limit} bytes`);
      }
      parts.push(value);
    }
  }
  // A UTF-8 byte order mark (PowerShell's and Notepad's JSON files begin with one) is not part of the JSON.
  const text = Buffer.concat(parts)
    .toString('utf8')
    .replace(/^\uFEFF/, '');
  if (text.trim() === '') {
    if (options.optional) return undefined;
    throw new AppError('bad_request', 'a JSON body is required');
  }
  if (jsonDepthOver(text, MAX_JSON_DEPTH)) {
    throw new AppError(
      'bad_request',
      `the body nests objects or lists more than ${MAX_JSON_DEPTH} levels deep`,
    );
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

/** The body of a route that takes no options: none, or `{}`. */
const NO_OPTIONS = z.object({}).strict();

/**
 * Refuses a body that names any field (422 naming it) on a route that takes no options: an option the
 * route does not have (`{"retentionDays": 365}` to Run maintenance now) would be dropped and the work
 * done as saved. No body, or `{}`, is fine.
 */
export async function noOptions(c: Context): Promise<void> {
  await jsonBody(c, NO_OPTIONS, { optional: true });
}
