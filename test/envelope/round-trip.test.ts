// Seal then open at every interesting size, through web streams and Node transforms, with both ciphers crossed.

import { describe, expect, it } from 'vitest';
import { createOpenTransform, createSealTransform, nodeChunkCipher } from '../../agent/keys/envelope-node';
import {
  type ChunkCipher,
  DEFAULT_CHUNK_SIZE,
  generateFileKey,
  newCore,
  openStream,
  sealStream,
  tryParseHeader,
  unwrapWithMasterKeys,
  webCryptoChunkCipher,
  wrapForMasterKey,
} from '../../shared/envelope';
import { drainNode, drainWeb, webStreamOf } from './helpers';

const masterKey = { id: 'mk-test', key: crypto.getRandomValues(new Uint8Array(32)) };
const resolveFileKey = (h: { stanzas: Parameters<typeof unwrapWithMasterKeys>[0] }) =>
  unwrapWithMasterKeys(h.stanzas, [masterKey]);

type Side = { name: string; cipher: ChunkCipher; node: boolean };
const sides: Side[] = [
  { name: 'web streams + webcrypto', cipher: webCryptoChunkCipher, node: false },
  { name: 'node transform + node:crypto', cipher: nodeChunkCipher, node: true },
];

async function seal(side: Side, plaintext: Uint8Array, chunkSize: number, pieceSize: number) {
  const fileKey = generateFileKey();
  const core = newCore({ installationId: 'ab'.repeat(16), chunkSize, meta: { kind: 'manual' } });
  const opts = { core, stanzas: [await wrapForMasterKey(fileKey, masterKey)], fileKey, cipher: side.cipher };
  const result = side.node
    ? await drainNode(plaintext, createSealTransform(opts), pieceSize)
    : await drainWeb(sealStream(webStreamOf(plaintext, pieceSize), opts));
  expect(result.error).toBeUndefined();
  return result.bytes;
}

async function open(side: Side, file: Uint8Array, pieceSize: number) {
  if (side.node) {
    const transform = createOpenTransform({ resolveFileKey, cipher: side.cipher });
    const result = await drainNode(file, transform, pieceSize);
    expect(result.error).toBeUndefined();
    expect((await transform.header).core).toMatchObject({ version: 2, installationPrefix: 'abababab' });
    return result.bytes;
  }
  const { header, plaintext } = await openStream(webStreamOf(file, pieceSize), {
    resolveFileKey,
    cipher: side.cipher,
  });
  expect(header.core.meta).toEqual({ kind: 'manual' });
  const result = await drainWeb(plaintext);
  expect(result.error).toBeUndefined();
  return result.bytes;
}

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

describe.each([
  { chunkSize: 1024, sizes: [0, 1, 1023, 1024, 1025, 10 * 1024, 37 * 1024 + 17] },
  { chunkSize: DEFAULT_CHUNK_SIZE, sizes: [0, 1, 65535, 65536, 65537, 9 * 65536 + 3] },
])('with $chunkSize-byte chunks', ({ chunkSize, sizes }) => {
  for (const sealer of sides) {
    for (const opener of sides) {
      it.each(sizes)(
        `round-trips %i bytes sealed by ${sealer.name}, opened by ${opener.name}`,
        async (size) => {
          const plaintext = randomBytes(size);
          const file = await seal(sealer, plaintext, chunkSize, 3000);
          const chunks = Math.max(1, Math.ceil(size / chunkSize));
          expect(file.length).toBe(tryParseHeader(file)!.length + size + chunks * 16);
          const back = await open(opener, file, 5000);
          expect(Buffer.compare(back, plaintext)).toBe(0);
        },
      );
    }
  }
});

describe('piece sizes', () => {
  it('coalesces one-byte writes into whole chunks and produces the same length as one big write', async () => {
    const plaintext = randomBytes(3 * 1024 + 5);
    for (const side of sides) {
      const small = await seal(side, plaintext, 1024, 1);
      const big = await seal(side, plaintext, 1024, plaintext.length);
      expect(small.length).toBe(big.length);
      expect(Buffer.compare(await open(side, small, 1), plaintext)).toBe(0);
      expect(Buffer.compare(await open(side, big, big.length), plaintext)).toBe(0);
    }
  });
});

describe('sealing with a bad core', () => {
  it('fails the stream with bad_header on both sides', async () => {
    const fileKey = generateFileKey();
    const core = { ...newCore({ installationId: 'ab'.repeat(16) }), chunkSize: 10 };
    const opts = { core, stanzas: [await wrapForMasterKey(fileKey, masterKey)], fileKey };
    const web = await drainWeb(sealStream(webStreamOf(new Uint8Array(10)), opts));
    const node = await drainNode(new Uint8Array(10), createSealTransform(opts));
    expect(web.error).toMatchObject({ code: 'bad_header' });
    expect(node.error).toMatchObject({ code: 'bad_header' });
  });
});
