// Web-stream sealing and opening of whole backup files, for Node and workerd alike.

import type { ChunkCipher } from './cipher';
import { type EnvelopeHeader, readHeader } from './header';
import { PayloadOpener, PayloadSealer, type SealOptions } from './payload';

/** Encrypts a plaintext stream into a backup file stream: header, then payload chunks. */
export function sealStream(
  plaintext: ReadableStream<Uint8Array>,
  opts: SealOptions,
): ReadableStream<Uint8Array> {
  let sealer: PayloadSealer;
  const transform = new TransformStream<Uint8Array, Uint8Array>({
    async start(controller) {
      sealer = await PayloadSealer.create(opts);
      controller.enqueue(sealer.header.bytes);
    },
    async transform(piece, controller) {
      for (const chunk of await sealer.push(piece)) controller.enqueue(chunk);
    },
    async flush(controller) {
      for (const chunk of await sealer.finish()) controller.enqueue(chunk);
    },
  });
  return plaintext.pipeThrough(transform);
}

/** What opening a file needs: a way to get the file key from its header (e.g. unwrapWithMasterKeys). */
export interface OpenOptions {
  resolveFileKey: (header: EnvelopeHeader) => Promise<Uint8Array>;
  cipher?: ChunkCipher;
}

/**
 * Reads the header, resolves the file key and checks the header MAC before returning; the plaintext
 * stream then errors with an EnvelopeError at the first bad chunk, having released only good chunks.
 */
export async function openStream(
  ciphertext: ReadableStream<Uint8Array>,
  opts: OpenOptions,
): Promise<{ header: EnvelopeHeader; plaintext: ReadableStream<Uint8Array> }> {
  const { header, rest } = await readHeader(ciphertext);
  let opener: PayloadOpener;
  try {
    opener = await PayloadOpener.create(header, await opts.resolveFileKey(header), opts.cipher);
  } catch (error) {
    await rest.cancel(error).catch(() => {});
    throw error;
  }
  const transform = new TransformStream<Uint8Array, Uint8Array>({
    async transform(piece, controller) {
      const chunks = await opener.push(piece).catch((error) => failOnceRead(controller, error));
      for (const chunk of chunks) controller.enqueue(chunk);
    },
    async flush(controller) {
      const chunks = await opener.finish().catch((error) => failOnceRead(controller, error));
      for (const chunk of chunks) controller.enqueue(chunk);
    },
  });
  return { header, plaintext: rest.pipeThrough(transform) };
}

/**
 * Erroring the stream discards plaintext not yet read, so the good chunks released before a bad one
 * would be lost to the reader; wait until they are read (the queue is empty) first, then throw.
 */
async function failOnceRead(
  controller: TransformStreamDefaultController<Uint8Array>,
  error: unknown,
): Promise<never> {
  while ((controller.desiredSize ?? 0) < 0) await new Promise((resolve) => setTimeout(resolve, 1));
  throw error;
}
