// Reads a small JSON request body against a zod schema, with the API's 400/413/422 answers.
import type { z } from 'zod';
import { sha256Hex } from '../../shared/signing';
import { CloudError } from '../errors';

const MAX_JSON_BYTES = 64 * 1024;

/** Parses the body; when `signedSha256` is given, the raw bytes must hash to it. */
export async function parseJsonBody<T extends z.ZodType>(
  request: Request,
  schema: T,
  signedSha256?: string,
): Promise<z.infer<T>> {
  if (Number(request.headers.get('content-length') ?? 0) > MAX_JSON_BYTES) {
    throw new CloudError(413, 'too_large', 'the JSON body is too large');
  }
  const bytes = await readAtMost(request, MAX_JSON_BYTES);
  if (signedSha256 !== undefined && (await sha256Hex(bytes)) !== signedSha256) {
    throw new CloudError(400, 'body_mismatch', 'the body does not match its signature');
  }
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new CloudError(400, 'bad_request', 'the body is not JSON');
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    throw new CloudError(
      422,
      'invalid',
      parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '),
    );
  }
  return parsed.data;
}

/**
 * The body's bytes, refused with 413 as soon as more than `limit` have arrived: a chunked body has
 * no Content-Length to check first, and these routes answer unauthenticated callers.
 */
async function readAtMost(request: Request, limit: number): Promise<Uint8Array> {
  if (!request.body) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      throw new CloudError(413, 'too_large', 'the JSON body is too large');
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}
