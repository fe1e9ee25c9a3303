// The two stream readers of a backup's header: readHeader (web streams: openStream, the cloud's
// recover route) and createOpenTransform (the agent's Node transform). Each gives the header and every
// byte after it whatever the pieces' sizes (one byte each too), refuses bytes that are no backup on the
// piece that shows it, says truncated for a stream that ends inside the header, and gives up with
// bad_header on a header that does not end within its limit, having read no more than that.
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { createOpenTransform } from '../../agent/keys/envelope-node';
import {
  EnvelopeError,
  type EnvelopeHeader,
  generateFileKey,
  newCore,
  readHeader,
  type Stanza,
  sealStream,
  tryParseHeader,
  unwrapWithMasterKeys,
  wrapForMasterKey,
} from '../../shared/envelope';
import { drainWeb, flipBit, vectorPlaintext, webStreamOf } from './helpers';

const masterKey = { id: 'mk-a', key: crypto.getRandomValues(new Uint8Array(32)) };
const resolveFileKey = (h: EnvelopeHeader) => unwrapWithMasterKeys(h.stanzas, [masterKey]);

/** A sealed file whose stanzas carry `padding` bytes more (an unknown stanza type, kept as it is). */
async function sealedFile(padding = 0, plaintextBytes = 5000) {
  const fileKey = generateFileKey();
  const stanzas = [await wrapForMasterKey(fileKey, masterKey)];
  if (padding > 0) stanzas.push({ type: 'x-future', pad: 'p'.repeat(padding) } as unknown as Stanza);
  const core = newCore({ installationId: 'cd'.repeat(16), chunkSize: 1024 });
  const plaintext = vectorPlaintext(plaintextBytes);
  const file = (await drainWeb(sealStream(webStreamOf(plaintext), { core, stanzas, fileKey }))).bytes;
  return { file, plaintext, headerLength: tryParseHeader(file)!.length };
}

const notABackup = new Uint8Array(Buffer.from(`PK\x03\x04${'z'.repeat(20_000)}`));

/** `bytes` in pieces of `size`, pulled one at a time as asked for; `state` says how many and the cancel reason. */
function recordingStream(bytes: Uint8Array, size: number) {
  const state: { pulls: number; cancelled?: unknown } = { pulls: 0 };
  const stream = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        const start = state.pulls * size;
        if (start >= bytes.length) return controller.close();
        state.pulls++;
        controller.enqueue(bytes.slice(start, start + size));
      },
      cancel(reason) {
        state.cancelled = reason;
      },
    },
    { highWaterMark: 0 },
  );
  return { stream, state };
}

async function readHeaderError(bytes: Uint8Array, size: number, limit?: number) {
  const { stream, state } = recordingStream(bytes, size);
  const error = await readHeader(stream, limit).then(
    () => new Error('read a header'),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(EnvelopeError);
  expect(state.cancelled).toBe(error);
  return { error, pulls: state.pulls };
}

describe('readHeader', () => {
  it('gives the header and every byte after it, whatever the pieces', async () => {
    const small = await sealedFile();
    const long = await sealedFile(300_000);
    for (const [{ file, headerLength }, sizes] of [
      [small, [1, 7, 100, 4096, small.file.length]],
      [long, [4096, 65536, long.file.length]],
    ] as const) {
      for (const size of sizes) {
        const { stream, state } = recordingStream(file, size);
        const { header, rest } = await readHeader(stream);
        // The pieces that hold the header, and at most one more read ahead for `rest`.
        expect(state.pulls - Math.ceil(headerLength / size)).toBeOneOf([0, 1]);
        expect(Buffer.compare(header.bytes, file.subarray(0, headerLength))).toBe(0);
        expect(header.stanzas).toEqual(tryParseHeader(file)!.header.stanzas);
        const after = await drainWeb(rest);
        expect(after.error).toBeUndefined();
        expect(Buffer.compare(after.bytes, file.subarray(headerLength))).toBe(0);
      }
    }
  });

  it('refuses bytes that are no backup on the piece that shows it, cancelling the stream', async () => {
    const { file } = await sealedFile();
    expect(await readHeaderError(notABackup, 1)).toMatchObject({
      error: { code: 'not_a_backup', message: 'it does not start with the GEM backup signature' },
      pulls: 1,
    });
    expect(await readHeaderError(flipBit(file, 3), 1)).toMatchObject({
      error: { code: 'not_a_backup' },
      pulls: 4,
    });
    expect(await readHeaderError(flipBit(file, 9, 7), 1)).toMatchObject({
      error: { code: 'bad_header', message: 'bad core length' },
      pulls: 12,
    });
  });

  it('says truncated for a stream that ends inside the header', async () => {
    const { file, headerLength } = await sealedFile(100_000);
    for (const cut of [0, 5, headerLength - 1]) {
      await expect(readHeader(webStreamOf(file.subarray(0, cut)))).rejects.toMatchObject({
        code: 'truncated',
        message: 'the file ends inside the backup header',
      });
    }
  });

  it('gives up with bad_header on a header that does not end within its limit, read no further', async () => {
    const { file, headerLength } = await sealedFile(300_000);
    const { error, pulls } = await readHeaderError(file, 4096, 100_000);
    expect(error).toMatchObject({
      code: 'bad_header',
      message: 'the backup header does not end within its first 100000 bytes',
    });
    expect(pulls).toBe(Math.ceil(100_000 / 4096));
    // A limit the header fits in lets it be read.
    const { stream } = recordingStream(file, 4096);
    expect((await readHeader(stream, headerLength)).header.bytes).toHaveLength(headerLength);
  });
});

/** Pipes `bytes` in pieces of `size` through an open transform; what came out, the error, the pieces read. */
async function openThrough(bytes: Uint8Array, size: number, limit?: number) {
  let pulls = 0;
  let keyAsked = false;
  const transform = createOpenTransform(
    {
      resolveFileKey: (h) => {
        keyAsked = true;
        return resolveFileKey(h);
      },
    },
    limit,
  );
  const header = transform.header.then(
    (h) => h,
    (e: unknown) => e,
  );
  const out: Buffer[] = [];
  const error = await pipeline(
    Readable.from(
      (function* () {
        for (let i = 0; i < bytes.length; i += size) {
          pulls++;
          yield Buffer.from(bytes.subarray(i, i + size));
        }
      })(),
    ),
    transform,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        out.push(chunk);
        cb();
      },
    }),
  ).then(
    () => undefined,
    (e: unknown) => e,
  );
  return { plaintext: Buffer.concat(out), error, header: await header, pulls, keyAsked };
}

describe('createOpenTransform', () => {
  it('opens a file whatever the pieces, the header resolved as it is in the file', async () => {
    const small = await sealedFile();
    const long = await sealedFile(300_000, 70_000);
    for (const [{ file, plaintext, headerLength }, sizes] of [
      [small, [1, 7, 4096, small.file.length]],
      [long, [4096, 65536, long.file.length]],
    ] as const) {
      for (const size of sizes) {
        const opened = await openThrough(file, size);
        expect(opened.error).toBeUndefined();
        expect(Buffer.compare(opened.plaintext, plaintext)).toBe(0);
        expect(Buffer.compare((opened.header as EnvelopeHeader).bytes, file.subarray(0, headerLength))).toBe(
          0,
        );
      }
    }
  });

  it('refuses bytes that are no backup with the envelope error, the header promise too', async () => {
    const { file } = await sealedFile();
    for (const [bytes, expected] of [
      [notABackup, { code: 'not_a_backup', message: 'it does not start with the GEM backup signature' }],
      [flipBit(file, 9, 7), { code: 'bad_header', message: 'bad core length' }],
    ] as const) {
      const opened = await openThrough(bytes, 1);
      expect(opened.error).toBeInstanceOf(EnvelopeError);
      expect(opened.error).toMatchObject(expected);
      expect(opened.header).toBe(opened.error);
      expect(opened.plaintext).toHaveLength(0);
      expect(opened.keyAsked).toBe(false);
    }
  });

  it('says truncated for a file that ends inside the header', async () => {
    const { file, headerLength } = await sealedFile(100_000);
    for (const cut of [0, 5, headerLength - 1]) {
      const opened = await openThrough(file.subarray(0, cut), 4096);
      expect(opened.error).toMatchObject({
        code: 'truncated',
        message: 'the file ends inside the backup header',
      });
      expect(opened.header).toBe(opened.error);
      expect(opened.plaintext).toHaveLength(0);
    }
  });

  it('gives up with bad_header on a header that does not end within its limit, read no further', async () => {
    const { file, headerLength } = await sealedFile(300_000);
    const opened = await openThrough(file, 4096, 100_000);
    expect(opened.error).toBeInstanceOf(EnvelopeError);
    expect(opened.error).toMatchObject({
      code: 'bad_header',
      message: 'the backup header does not end within its first 100000 bytes',
    });
    expect(opened.header).toBe(opened.error);
    expect(opened.plaintext).toHaveLength(0);
    expect(opened.keyAsked).toBe(false);
    // Given up before the pieces that end the header (the streams read a few ahead of the transform).
    expect(opened.pulls).toBeLessThan(Math.ceil(headerLength / 4096));
  });
});
