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
  const bytes = new Uint8Array(await request.arrayBuffer());
  if (bytes.byteLength > MAX_JSON_BYTES) throw new CloudError(413, 'too_large', 'the JSON body is too large');
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
