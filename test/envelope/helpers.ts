// Test helpers for the envelope: deterministic plaintext, stream collection, bit flips.

import type { Transform } from 'node:stream';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** Byte i is (i * 31 + 7) & 0xff: the rule the frozen vectors use. */
export function vectorPlaintext(length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + 7) & 0xff);
}

/** A web stream that yields `bytes` in pieces of `pieceSize`. */
export function webStreamOf(bytes: Uint8Array, pieceSize = 4096): ReadableStream<Uint8Array> {
  let offset = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (offset >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(offset, offset + pieceSize));
      offset += pieceSize;
    },
  });
}

/** Reads a web stream to the end; on error returns what was delivered before it, and the error. */
export async function drainWeb(
  stream: ReadableStream<Uint8Array>,
  slowReaderMs = 0,
): Promise<{ bytes: Buffer; error?: unknown }> {
  const parts: Uint8Array[] = [];
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { bytes: Buffer.concat(parts) };
      parts.push(value);
      if (slowReaderMs) await sleep(slowReaderMs);
    }
  } catch (error) {
    return { bytes: Buffer.concat(parts), error };
  }
}

/** Pipes `bytes` (in pieces of `pieceSize`) through a Node Transform; returns what came out before any error. */
export async function drainNode(
  bytes: Uint8Array,
  transform: Transform,
  pieceSize = 4096,
  slowReaderMs = 0,
): Promise<{ bytes: Buffer; error?: unknown }> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += pieceSize)
    pieces.push(Buffer.from(bytes.subarray(i, i + pieceSize)));
  const parts: Buffer[] = [];
  try {
    await pipeline(Readable.from(pieces), transform, async (source: AsyncIterable<Buffer>) => {
      for await (const part of source) {
        parts.push(part);
        if (slowReaderMs) await sleep(slowReaderMs);
      }
    });
    return { bytes: Buffer.concat(parts) };
  } catch (error) {
    return { bytes: Buffer.concat(parts), error };
  }
}

/** A copy of `bytes` with bit `bit` of byte `index` flipped. */
export function flipBit(bytes: Uint8Array, index: number, bit = 0): Uint8Array {
  const copy = new Uint8Array(bytes); // a copy even for a Buffer, whose slice() is a view
  copy[index]! ^= 1 << bit;
  return copy;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
