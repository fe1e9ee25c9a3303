// Every way a backup file can be damaged is rejected with the right code, releasing only the good chunks before it.

import { describe, expect, it } from 'vitest';
import { createOpenTransform, nodeChunkCipher } from '../../agent/keys/envelope-node';
import {
  EnvelopeError,
  type EnvelopeErrorCode,
  generateFileKey,
  newCore,
  openStream,
  PayloadSealer,
  unwrapWithMasterKeys,
  webCryptoChunkCipher,
  wrapForMasterKey,
} from '../../shared/envelope';
import { drainNode, drainWeb, flipBit, webStreamOf } from './helpers';

const chunkSize = 1024;
const masterKey = { id: 'mk-tamper', key: crypto.getRandomValues(new Uint8Array(32)) };

/** A sealed file made chunk by chunk, so tests can drop, repeat, reorder or re-flag chunks. */
async function craft(plaintextLength: number) {
  const fileKey = generateFileKey();
  const core = newCore({ installationId: 'cd'.repeat(16), chunkSize });
  const sealer = await PayloadSealer.create({
    core,
    stanzas: [await wrapForMasterKey(fileKey, masterKey)],
    fileKey,
  });
  const plaintext = crypto.getRandomValues(new Uint8Array(plaintextLength));
  const pieces: Uint8Array[] = [];
  for (let i = 0; i < plaintextLength || i === 0; i += chunkSize)
    pieces.push(plaintext.subarray(i, i + chunkSize));
  const chunks = await Promise.all(pieces.map((p, i) => sealer.sealChunk(i, p, i === pieces.length - 1)));
  return {
    header: sealer.header.bytes,
    pieces,
    chunks,
    /** Chunk `piece` of the plaintext sealed at position `index` with the given last flag. */
    seal: (piece: number, index: number, last: boolean) => sealer.sealChunk(index, pieces[piece]!, last),
    sealRaw: (index: number, plaintext: Uint8Array, last: boolean) =>
      sealer.sealChunk(index, plaintext, last),
    /** The plaintext of the first n chunks: what may be released before a failure at chunk n. */
    before: (n: number) => Buffer.concat(pieces.slice(0, n)),
  };
}

type Case = { file: Uint8Array; code: EnvelopeErrorCode; chunkIndex?: number; delivered: Uint8Array };
const cat = (...parts: Uint8Array[]) => Buffer.concat(parts);

const cases: Record<string, () => Promise<Case>> = {
  async 'a file cut at a chunk boundary'() {
    const f = await craft(3 * chunkSize + 100);
    return {
      file: cat(f.header, ...f.chunks.slice(0, 2)),
      code: 'truncated',
      chunkIndex: 2,
      delivered: f.before(1),
    };
  },
  async 'a file cut inside a chunk'() {
    const f = await craft(3 * chunkSize + 100);
    const cut = cat(f.header, f.chunks[0]!, f.chunks[1]!, f.chunks[2]!.subarray(0, 500));
    return { file: cut, code: 'corrupt_chunk', chunkIndex: 2, delivered: f.before(2) };
  },
  async 'a file cut inside the tag-sized start of a chunk'() {
    const f = await craft(3 * chunkSize + 100);
    const cut = cat(f.header, f.chunks[0]!, f.chunks[1]!, f.chunks[2]!.subarray(0, 10));
    return { file: cut, code: 'truncated', chunkIndex: 2, delivered: f.before(2) };
  },
  async 'a file cut right after its header'() {
    const f = await craft(100);
    return { file: f.header, code: 'truncated', delivered: f.before(0) };
  },
  async 'a file cut inside its header'() {
    const f = await craft(100);
    return { file: f.header.subarray(0, f.header.length - 5), code: 'truncated', delivered: f.before(0) };
  },
  async 'a dropped chunk'() {
    const f = await craft(3 * chunkSize + 100);
    const [c0, , c2, c3] = f.chunks;
    return {
      file: cat(f.header, c0!, c2!, c3!),
      code: 'corrupt_chunk',
      chunkIndex: 1,
      delivered: f.before(1),
    };
  },
  async 'a duplicated chunk'() {
    const f = await craft(3 * chunkSize + 100);
    const [c0, c1, c2, c3] = f.chunks;
    return {
      file: cat(f.header, c0!, c1!, c1!, c2!, c3!),
      code: 'corrupt_chunk',
      chunkIndex: 2,
      delivered: f.before(2),
    };
  },
  async 'two reordered chunks'() {
    const f = await craft(3 * chunkSize + 100);
    const [c0, c1, c2, c3] = f.chunks;
    return {
      file: cat(f.header, c0!, c2!, c1!, c3!),
      code: 'corrupt_chunk',
      chunkIndex: 1,
      delivered: f.before(1),
    };
  },
  async 'a short last chunk without the last flag'() {
    const f = await craft(3 * chunkSize + 100);
    const file = cat(f.header, ...f.chunks.slice(0, 3), await f.seal(3, 3, false));
    return { file, code: 'corrupt_chunk', chunkIndex: 3, delivered: f.before(3) };
  },
  async 'a full last chunk without the last flag (reads as a cut file)'() {
    const f = await craft(3 * chunkSize);
    const file = cat(f.header, ...f.chunks.slice(0, 2), await f.seal(2, 2, false));
    return { file, code: 'truncated', chunkIndex: 3, delivered: f.before(2) };
  },
  async 'an early last flag (the file ends there, the rest is trailing)'() {
    const f = await craft(3 * chunkSize + 100);
    const file = cat(f.header, f.chunks[0]!, await f.seal(1, 1, true), f.chunks[2]!, f.chunks[3]!);
    return { file, code: 'trailing_data', chunkIndex: 1, delivered: f.before(1) };
  },
  async 'a last chunk at the wrong index'() {
    const f = await craft(3 * chunkSize + 100);
    const file = cat(f.header, ...f.chunks.slice(0, 3), await f.seal(3, 4, true));
    return { file, code: 'corrupt_chunk', chunkIndex: 3, delivered: f.before(3) };
  },
  async 'trailing bytes after a full last chunk'() {
    const f = await craft(3 * chunkSize);
    return {
      file: cat(f.header, ...f.chunks, new Uint8Array(5)),
      code: 'trailing_data',
      chunkIndex: 2,
      delivered: f.before(2),
    };
  },
  async 'trailing bytes after an empty payload'() {
    const f = await craft(0);
    return {
      file: cat(f.header, ...f.chunks, new Uint8Array(40)),
      code: 'trailing_data',
      chunkIndex: 0,
      delivered: f.before(0),
    };
  },
  async 'more than a chunk of trailing bytes after an empty payload'() {
    const f = await craft(0);
    const file = cat(f.header, ...f.chunks, new Uint8Array(3 * chunkSize));
    return { file, code: 'trailing_data', chunkIndex: 0, delivered: f.before(0) };
  },
  async 'trailing bytes after a short last chunk (indistinguishable from damage)'() {
    const f = await craft(3 * chunkSize + 100);
    return {
      file: cat(f.header, ...f.chunks, new Uint8Array(5)),
      code: 'corrupt_chunk',
      chunkIndex: 3,
      delivered: f.before(3),
    };
  },
  async 'a flipped bit in a tag'() {
    const f = await craft(3 * chunkSize + 100);
    const file = flipBit(cat(f.header, ...f.chunks), f.header.length + 2 * (chunkSize + 16) - 1, 3);
    return { file, code: 'corrupt_chunk', chunkIndex: 1, delivered: f.before(1) };
  },
  async 'a flipped bit in chunk ciphertext'() {
    const f = await craft(3 * chunkSize + 100);
    const file = flipBit(cat(f.header, ...f.chunks), f.header.length + 2 * (chunkSize + 16) + 77, 6);
    return { file, code: 'corrupt_chunk', chunkIndex: 2, delivered: f.before(2) };
  },
  async 'a flipped bit in the short last chunk'() {
    const f = await craft(3 * chunkSize + 100);
    const all = cat(f.header, ...f.chunks);
    return {
      file: flipBit(all, all.length - 30),
      code: 'corrupt_chunk',
      chunkIndex: 3,
      delivered: f.before(3),
    };
  },
  async 'an empty last chunk after data (only an empty file may have one)'() {
    const f = await craft(2 * chunkSize);
    const file = cat(
      f.header,
      f.chunks[0]!,
      await f.seal(1, 1, false),
      await f.sealRaw(2, new Uint8Array(0), true),
    );
    return { file, code: 'corrupt_chunk', chunkIndex: 2, delivered: f.before(2) };
  },
};

const readers = [
  {
    name: 'web streams + webcrypto',
    async read(file: Uint8Array, pieceSize: number, slowReaderMs: number) {
      try {
        const { plaintext } = await openStream(webStreamOf(file, pieceSize), {
          resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, [masterKey]),
          cipher: webCryptoChunkCipher,
        });
        return drainWeb(plaintext, slowReaderMs);
      } catch (error) {
        return { bytes: Buffer.alloc(0), error };
      }
    },
  },
  {
    name: 'node transform + node:crypto',
    read: (file: Uint8Array, pieceSize: number, slowReaderMs: number) =>
      drainNode(
        file,
        createOpenTransform({
          resolveFileKey: (h) => unwrapWithMasterKeys(h.stanzas, [masterKey]),
          cipher: nodeChunkCipher,
        }),
        pieceSize,
        slowReaderMs,
      ),
  },
];

describe.each(readers)('reading damaged files through $name', (reader) => {
  for (const [name, make] of Object.entries(cases)) {
    it(`rejects ${name}, releasing only the chunks before it`, async () => {
      const c = await make();
      const reads = [
        { pieceSize: c.file.length + 1, slowReaderMs: 0 },
        { pieceSize: 700, slowReaderMs: 0 },
        { pieceSize: 1040, slowReaderMs: 0 },
        { pieceSize: c.file.length + 1, slowReaderMs: 3 },
      ];
      for (const { pieceSize, slowReaderMs } of reads) {
        const { bytes, error } = await reader.read(c.file, pieceSize, slowReaderMs);
        expect(error).toBeInstanceOf(EnvelopeError);
        expect((error as EnvelopeError).code).toBe(c.code);
        if (c.chunkIndex !== undefined) expect((error as EnvelopeError).chunkIndex).toBe(c.chunkIndex);
        expect(Buffer.compare(bytes, c.delivered)).toBe(0);
      }
    });
  }
});
