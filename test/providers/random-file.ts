/** A local file of random bytes for the local-file source tests, with what they check it against. */
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Writes `size` random bytes to `dir/file`; returns the path, the bytes and their sha256 (hex). */
export async function randomFile(
  dir: string,
  file: string,
  size: number,
): Promise<{ path: string; bytes: Buffer; sha256: string }> {
  const bytes = randomBytes(size);
  const path = join(dir, file);
  await writeFile(path, bytes);
  return { path, bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
}
