/** hashFile: the local-file sha256 the S3 and SMB uploads and the offsite transfer check a backup with. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashFile } from '../../agent/providers/checks';
import { randomFile } from './random-file';

describe('hashFile', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'gem-hash-file-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  // Sizes around its 1 MiB reads: the two read buffers take turns, and a wrong turn hashes stale bytes.
  it.each([0, 1, 1048575, 1048576, 1048577, 5 * 1048576 + 12345])(
    'gives the sha256 and byte count of a %i-byte file',
    async (size) => {
      const file = await randomFile(dir, `file-${size}`, size);
      const seen: number[] = [];
      const result = await hashFile(file.path, { onProgress: (n) => seen.push(n) });
      expect(result).toEqual({ sha256: file.sha256, bytes: size });
      expect(seen.at(-1) ?? 0).toBe(size);
    },
  );

  it('stops with the signal and throws a missing file as it is', async () => {
    const { path } = await randomFile(dir, 'big', 4 * 1048576);
    const controller = new AbortController();
    const hashing = hashFile(path, {
      signal: controller.signal,
      onProgress: () => controller.abort(new Error('stopped')),
    });
    await expect(hashing).rejects.toThrow('stopped');
    await expect(hashFile(join(dir, 'missing'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
