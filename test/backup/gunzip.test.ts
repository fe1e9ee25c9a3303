// The backup gunzip against zlib's: stored blocks, compressed blocks, a switch between them, headers, damage.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { constants, crc32, createDeflateRaw, deflateRawSync, gunzipSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { createBackupGunzip } from '../../agent/backup/gunzip';

/** Runs bytes through the backup gunzip, fed in pieces of `piece` bytes. */
async function gunzip(bytes: Buffer, piece = 65536): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += piece) pieces.push(bytes.subarray(i, i + piece));
  const out: Buffer[] = [];
  for await (const chunk of Readable.from(pieces).pipe(createBackupGunzip())) out.push(chunk as Buffer);
  return Buffer.concat(out);
}

/** Some compressible and some incompressible bytes. */
function sample(size: number): Buffer {
  const text = Buffer.from('schema.table row 12345 with some text that repeats\n'.repeat(size / 50 + 1));
  return Buffer.concat([text.subarray(0, size / 2), randomBytes(size - size / 2)]);
}

/**
 * Stored blocks, then compressed blocks that refer back into them: the first half stored (not final,
 * flushed to a byte boundary), the second deflated with the first as its dictionary, so its matches
 * reach into the stored bytes.
 */
async function mixedGzip(first: Buffer, second: Buffer): Promise<Buffer> {
  const stored = createDeflateRaw({ level: 0 });
  const out: Buffer[] = [];
  stored.on('data', (c: Buffer) => out.push(c));
  stored.write(first);
  await new Promise<void>((resolve) => stored.flush(constants.Z_FULL_FLUSH, () => resolve()));
  stored.destroy();
  const compressed = deflateRawSync(second, { level: 9, dictionary: first });
  const plain = Buffer.concat([first, second]);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(crc32(plain), 0);
  trailer.writeUInt32LE(plain.length, 4);
  return Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), ...out, compressed, trailer]);
}

describe('backup gunzip', () => {
  const plain = sample(300_000);

  it.each([
    ['level 0 (stored blocks)', 0],
    ['level 6 (compressed blocks)', 6],
  ])('reads %s like zlib, in any piece size', async (_name, level) => {
    const gz = gzipSync(plain, { level });
    for (const piece of [4096, 1 << 20]) expect((await gunzip(gz, piece)).equals(plain)).toBe(true);
    const small = sample(3000);
    const smallGz = gzipSync(small, { level });
    for (const piece of [1, 7]) expect((await gunzip(smallGz, piece)).equals(small)).toBe(true);
  });

  it('reads stored blocks followed by compressed ones that refer back into them', async () => {
    const half = sample(20_000); // repeats within deflate's 32 KiB window
    const doubled = Buffer.concat([half, half]);
    const gz = await mixedGzip(half, half);
    expect(gunzipSync(gz).equals(doubled)).toBe(true);
    expect(gz[10]! & 0b110).toBe(0); // starts with a stored block
    expect(gz.length).toBeLessThan(0.75 * doubled.length); // the second half is back-references
    for (const piece of [301, 65536]) expect((await gunzip(gz, piece)).equals(doubled)).toBe(true);
  });

  it('reads an empty file, several members, and headers with extra field, name, comment and header CRC', async () => {
    expect((await gunzip(gzipSync(Buffer.alloc(0), { level: 0 }))).length).toBe(0);
    const two = Buffer.concat([gzipSync(plain, { level: 0 }), gzipSync(plain, { level: 0 })]);
    expect((await gunzip(two, 1000)).equals(Buffer.concat([plain, plain]))).toBe(true);
    const fields = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 0x02 | 0x04 | 0x08 | 0x10, 0, 0, 0, 0, 0, 3]),
      Buffer.from([3, 0, 1, 2, 3]),
      Buffer.from('name.tar\0comment\0'),
    ]);
    const headerCrc = Buffer.alloc(2);
    headerCrc.writeUInt16LE(crc32(fields) & 0xffff);
    const withHeaderFields = (data: Buffer) =>
      Buffer.concat([fields, headerCrc, gzipSync(data, { level: 0 }).subarray(10)]);
    const small = sample(2000);
    expect(gunzipSync(withHeaderFields(small)).equals(small)).toBe(true);
    for (const piece of [1, 5])
      expect((await gunzip(withHeaderFields(small), piece)).equals(small)).toBe(true);
    expect((await gunzip(withHeaderFields(plain))).equals(plain)).toBe(true);
    const badHeaderCrc = withHeaderFields(small);
    badHeaderCrc[fields.length]! ^= 1;
    await expect(gunzip(badHeaderCrc)).rejects.toMatchObject({ code: 'Z_DATA_ERROR' });
  });

  it('rejects damage with a zlib error code, as createGunzip does', async () => {
    const gz = gzipSync(plain, { level: 0 });
    const flip = (at: number) => {
      const copy = Buffer.from(gz);
      copy[at]! ^= 1;
      return copy;
    };
    const code = (bytes: Buffer) =>
      gunzip(bytes).then(
        () => 'ok',
        (error: NodeJS.ErrnoException) => error.code,
      );
    expect(await code(flip(0))).toBe('Z_DATA_ERROR'); // magic
    expect(await code(flip(1000))).toBe('Z_DATA_ERROR'); // data: CRC
    expect(await code(flip(gz.length - 2))).toBe('Z_DATA_ERROR'); // size
    expect(await code(flip(11))).toBe('Z_DATA_ERROR'); // stored block length
    expect(await code(gz.subarray(0, gz.length - 3))).toBe('Z_BUF_ERROR'); // cut in the trailer
    expect(await code(gz.subarray(0, 5000))).toBe('Z_BUF_ERROR'); // cut in the data
    expect(await code(Buffer.concat([gz, Buffer.from('junk')]))).toBe('Z_DATA_ERROR');
    const compressed = gzipSync(plain, { level: 6 });
    expect(await code(compressed.subarray(0, compressed.length - 100))).toMatch(/^Z_/);
    const badCrc = Buffer.from(compressed);
    badCrc[badCrc.length - 8]! ^= 1;
    expect(await code(badCrc)).toBe('Z_DATA_ERROR');
  });
});
