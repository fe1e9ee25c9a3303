// UploadSource: the whole-upload and per-part hashes taken in one read match hashing each range apart.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UploadSource } from '../../agent/dr/upload-source';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'gem-upload-source-'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('UploadSource.sha256WithParts', () => {
  for (const [label, fileSize, partSize] of [
    ['uneven parts across 1 MiB reads', 3 * 1024 * 1024 + 777, 1024 * 1024 + 5],
    ['an upload that is an exact multiple of the part size', 2 * 1024 * 1024 + 20, 1024 * 1024 + 40],
    ['one part larger than the upload', 4000, 1024 * 1024],
  ] as const) {
    it(`matches range by range hashing: ${label}`, async () => {
      const bytes = Buffer.alloc(fileSize);
      for (let i = 0; i < fileSize; i++) bytes[i] = (i * 13 + (i >> 11)) & 0xff;
      const path = join(dir, `file-${fileSize}`);
      await writeFile(path, bytes);
      // A new 100-byte header replaces the file's first 40 bytes, as the escrow header does.
      const source = await UploadSource.open(path, Buffer.alloc(100, 7), 40);
      try {
        let seen = 0;
        const { sha256, parts } = await source.sha256WithParts(partSize, (n) => {
          seen += n;
        });
        expect(seen).toBe(source.size);
        expect(sha256).toBe(await source.sha256());
        const expected: string[] = [];
        for (let start = 0; start < source.size; start += partSize) {
          expected.push(await source.sha256(start, Math.min(source.size, start + partSize)));
        }
        expect(parts).toEqual(expected);
      } finally {
        await source.close();
      }
    });
  }
});
