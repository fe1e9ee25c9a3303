// Node's fast path for the backup envelope: node:crypto AES-GCM and stream Transforms around the shared sealer/opener.

import { createCipheriv, createDecipheriv, createSecretKey } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import {
  type ChunkCipher,
  DEFAULT_CHUNK_SIZE,
  EnvelopeError,
  type EnvelopeHeader,
  HEADER_SCAN_LIMIT,
  HeaderScanner,
  type OpenOptions,
  PayloadOpener,
  PayloadSealer,
  type SealOptions,
  TAG_LENGTH,
} from '../../shared/envelope';

/** AES-256-GCM through node:crypto, with the tag length pinned to 16 (Node would otherwise accept short tags). */
export const nodeChunkCipher: ChunkCipher = {
  name: 'node',
  async withKey(payloadKey) {
    const key = createSecretKey(Buffer.from(payloadKey));
    return {
      async seal(nonce, plaintext, aad) {
        const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LENGTH });
        cipher.setAAD(aad);
        const ciphertext = cipher.update(plaintext);
        cipher.final();
        const out = Buffer.allocUnsafe(ciphertext.length + TAG_LENGTH);
        ciphertext.copy(out, 0);
        cipher.getAuthTag().copy(out, ciphertext.length);
        return out;
      },
      async sealParts(nonce, plaintext, aad) {
        const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LENGTH });
        cipher.setAAD(aad);
        // Each piece's ciphertext is its own buffer: no gathering copy of the plaintext or of the result.
        const sealed: Uint8Array[] = plaintext.map((piece) => cipher.update(piece));
        cipher.final();
        sealed.push(cipher.getAuthTag());
        return sealed;
      },
      async open(nonce, sealed, aad) {
        if (sealed.length < TAG_LENGTH) return null;
        const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LENGTH });
        decipher.setAAD(aad);
        decipher.setAuthTag(sealed.subarray(sealed.length - TAG_LENGTH));
        const plaintext = decipher.update(sealed.subarray(0, sealed.length - TAG_LENGTH));
        try {
          decipher.final();
        } catch {
          return null;
        }
        return plaintext;
      },
      async openParts(nonce, sealed, aad) {
        let length = 0;
        for (const part of sealed) length += part.length;
        if (length < TAG_LENGTH) return null;
        const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: TAG_LENGTH });
        decipher.setAAD(aad);
        decipher.setAuthTag(lastBytes(sealed, TAG_LENGTH));
        // Streamed through the decipher piece by piece; nothing is returned before final() checks the tag.
        const plaintext: Buffer[] = [];
        let left = length - TAG_LENGTH;
        for (const part of sealed) {
          const n = Math.min(part.length, left);
          if (n > 0) plaintext.push(decipher.update(part.subarray(0, n)));
          left -= n;
        }
        try {
          decipher.final();
        } catch {
          return null;
        }
        return plaintext;
      },
    };
  },
};

/** The last `n` bytes of consecutive pieces (the tag may span two reads). */
function lastBytes(parts: readonly Uint8Array[], n: number): Buffer {
  const out = Buffer.alloc(n);
  let at = n;
  for (let i = parts.length - 1; i >= 0 && at > 0; i--) {
    const part = parts[i]!;
    const count = Math.min(part.length, at);
    out.set(part.subarray(part.length - count), at - count);
    at -= count;
  }
  return out;
}

/** Runs an async step and hands its chunks to a Transform, reporting errors through the callback. */
function pushAll(stream: Transform, step: Promise<Uint8Array[]>, callback: TransformCallback): void {
  step.then(
    (chunks) => {
      for (const chunk of chunks) stream.push(chunk);
      callback();
    },
    (error: unknown) => failOnceRead(stream, error as Error, callback),
  );
}

/**
 * Erroring a Node stream discards output not yet read, so the good chunks released before a bad one
 * would be lost to the reader; wait until they are read (or the stream is torn down) first.
 */
function failOnceRead(stream: Transform, error: Error, callback: TransformCallback): void {
  if (stream.readableLength === 0 || stream.destroyed) callback(error);
  else setTimeout(() => failOnceRead(stream, error, callback), 1);
}

function waterMarks(chunkSize: number) {
  // Room for a couple of whole chunks on each side keeps the cipher busy without buffering much.
  const size = 2 * (chunkSize + TAG_LENGTH);
  return { writableHighWaterMark: size, readableHighWaterMark: size };
}

/** A Transform from plaintext to a whole backup file (header, then chunks); node:crypto unless opts.cipher says otherwise. */
export function createSealTransform(opts: SealOptions): Transform {
  const ready = PayloadSealer.create({ ...opts, cipher: opts.cipher ?? nodeChunkCipher });
  ready.catch(() => {}); // surfaced through the first write or the flush
  let started = false;
  const start = async (stream: Transform) => {
    const sealer = await ready;
    if (!started) {
      started = true;
      stream.push(sealer.header.bytes);
    }
    return sealer;
  };
  const transform: Transform = new Transform({
    ...waterMarks(opts.core.chunkSize),
    transform(chunk: Buffer, _encoding, callback) {
      pushAll(
        transform,
        start(transform).then((sealer) => sealer.push(chunk)),
        callback,
      );
    },
    flush(callback) {
      pushAll(
        transform,
        start(transform).then((sealer) => sealer.finish()),
        callback,
      );
    },
  });
  return transform;
}

/** A Transform from a backup file to its plaintext; `header` resolves once the header is parsed and its MAC checked. */
type OpenTransform = Transform & { readonly header: Promise<EnvelopeHeader> };

/**
 * Opens a backup file stream; no plaintext of a chunk passes before its tag checked. Fails with
 * `bad_header` when `headerLimit` bytes hold no whole header (HEADER_SCAN_LIMIT: more than the format
 * allows).
 */
export function createOpenTransform(opts: OpenOptions, headerLimit = HEADER_SCAN_LIMIT): OpenTransform {
  // Until the header is read; then the opener takes every byte.
  let scanner: HeaderScanner | undefined = new HeaderScanner(headerLimit);
  let opener: PayloadOpener | undefined;
  let settleHeader!: { resolve: (h: EnvelopeHeader) => void; reject: (e: unknown) => void };
  const header = new Promise<EnvelopeHeader>((resolve, reject) => {
    settleHeader = { resolve, reject };
  });
  header.catch(() => {}); // the stream's error event reports it too

  const readHeaderFrom = async (chunk: Buffer): Promise<Uint8Array[]> => {
    const found = scanner!.push(chunk);
    if (!found) {
      if (!scanner!.full) return [];
      throw scanner!.notEnded();
    }
    scanner = undefined;
    opener = await PayloadOpener.create(
      found.header,
      await opts.resolveFileKey(found.header),
      opts.cipher ?? nodeChunkCipher,
    );
    settleHeader.resolve(found.header);
    return opener.push(found.bytes.subarray(found.length));
  };

  const step = (run: () => Promise<Uint8Array[]>): Promise<Uint8Array[]> =>
    run().catch((error: unknown) => {
      settleHeader.reject(error);
      throw error;
    });

  const transform = new Transform({
    ...waterMarks(DEFAULT_CHUNK_SIZE),
    transform(chunk: Buffer, _encoding, callback) {
      pushAll(
        transform,
        step(() => (opener ? opener.push(chunk) : readHeaderFrom(chunk))),
        callback,
      );
    },
    flush(callback) {
      pushAll(
        transform,
        step(async () => {
          if (!opener) throw new EnvelopeError('truncated', 'the file ends inside the backup header');
          return opener.finish();
        }),
        callback,
      );
    },
  }) as OpenTransform;
  Object.defineProperty(transform, 'header', { value: header });
  return transform;
}
