// The chunked AES-256-GCM payload (FORMAT.md "Payload") as two incremental classes that streams wrap.

import { ByteQueue, concatBytes } from './bytes';
import { type ChunkCipher, type ChunkCrypter, TAG_LENGTH, webCryptoChunkCipher } from './cipher';
import { EnvelopeError } from './errors';
import {
  type EnvelopeCore,
  type EnvelopeHeader,
  encodeHeader,
  payloadAad,
  saltBytes,
  verifyHeaderMac,
} from './header';
import { deriveSubkey, type Stanza } from './keys';

/** What sealing a file needs. */
export interface SealOptions {
  core: EnvelopeCore;
  stanzas: Stanza[];
  fileKey: Uint8Array;
  cipher?: ChunkCipher;
}

/** nonce_i = uint88_be(i) || lastFlag. */
export function chunkNonce(index: number, last: boolean): Uint8Array {
  if (!Number.isSafeInteger(index) || index < 0) throw new RangeError('bad chunk index');
  const nonce = new Uint8Array(12);
  const view = new DataView(nonce.buffer);
  view.setUint32(3, Math.floor(index / 2 ** 32));
  view.setUint32(7, index >>> 0);
  nonce[11] = last ? 1 : 0;
  return nonce;
}

async function payloadCrypter(header: EnvelopeHeader, fileKey: Uint8Array, cipher: ChunkCipher) {
  const payloadKey = await deriveSubkey(fileKey, saltBytes(header.core), 'gem-backup payload');
  return { crypter: await cipher.withKey(payloadKey), aad: await payloadAad(header) };
}

/**
 * Seals plaintext pushed in pieces of any size into whole chunks. `header` is written first, then
 * whatever push() and finish() return. A full chunk is held back until more bytes arrive, because
 * only finish() knows which chunk is last. Calls must not overlap; pushed arrays must not change.
 */
export class PayloadSealer {
  private readonly pending = new ByteQueue();
  private index = 0;
  private finished = false;

  private constructor(
    readonly header: EnvelopeHeader,
    private readonly crypter: ChunkCrypter,
    private readonly aad: Uint8Array,
  ) {}

  /** Builds the header (MAC included) and the payload key. */
  static async create(opts: SealOptions): Promise<PayloadSealer> {
    const bytes = await encodeHeader(opts.core, opts.stanzas, opts.fileKey);
    const header: EnvelopeHeader = { core: opts.core, stanzas: opts.stanzas, bytes };
    const { crypter, aad } = await payloadCrypter(header, opts.fileKey, opts.cipher ?? webCryptoChunkCipher);
    return new PayloadSealer(header, crypter, aad);
  }

  /** Adds plaintext; returns the sealed bytes of the chunks it completed, in pieces (maybe none). */
  async push(plaintext: Uint8Array): Promise<Uint8Array[]> {
    if (this.finished) throw new Error('push after finish');
    this.pending.push(plaintext);
    const { chunkSize } = this.header.core;
    const jobs: Promise<Uint8Array[]>[] = [];
    while (this.pending.length > chunkSize) jobs.push(this.sealNext(chunkSize, false));
    return (await Promise.all(jobs)).flat();
  }

  /** Seals the last chunk (empty only when nothing was pushed); returns its sealed bytes in pieces. */
  async finish(): Promise<Uint8Array[]> {
    if (this.finished) throw new Error('finish twice');
    this.finished = true;
    return this.sealNext(this.pending.length, true);
  }

  /** Seals the next `n` pending bytes as one chunk, as pieces when the cipher can take them so. */
  private async sealNext(n: number, last: boolean): Promise<Uint8Array[]> {
    const index = this.index++;
    if (this.crypter.sealParts)
      return this.crypter.sealParts(chunkNonce(index, last), this.pending.takeParts(n), this.aad);
    return [await this.sealChunk(index, this.pending.take(n), last)];
  }

  /** Seals one chunk at any index with any last flag: the low-level step, also used to craft damaged files in tests. */
  sealChunk(index: number, plaintext: Uint8Array, last: boolean): Promise<Uint8Array> {
    return this.crypter.seal(chunkNonce(index, last), plaintext, this.aad);
  }
}

/**
 * Opens a payload pushed in pieces of any size, releasing a chunk's plaintext only after its tag
 * checked. When a chunk fails, push() still returns the good chunks before it and the failure is
 * thrown by the next push() or finish() (or by this one if it had no good chunk). push() calls may
 * overlap (a reader keeps several chunks opening while it consumes earlier ones): their results
 * settle in call order, and none after a failed chunk releases plaintext. Pushed arrays must not
 * change until their push settles.
 */
export class PayloadOpener {
  private readonly pending = new ByteQueue();
  private index = 0;
  private failure: EnvelopeError | undefined;
  private finished = false;
  private readonly sealedSize: number;
  /** The latest push(), settled (never rejects): the next one reports only after it, in order. */
  private settled: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly header: EnvelopeHeader,
    private readonly crypter: ChunkCrypter,
    private readonly aad: Uint8Array,
  ) {
    this.sealedSize = header.core.chunkSize + TAG_LENGTH;
  }

  /** Checks the header MAC with the file key (throws header_mac) and prepares the payload key. */
  static async create(
    header: EnvelopeHeader,
    fileKey: Uint8Array,
    cipher?: ChunkCipher,
  ): Promise<PayloadOpener> {
    await verifyHeaderMac(header, fileKey);
    const { crypter, aad } = await payloadCrypter(header, fileKey, cipher ?? webCryptoChunkCipher);
    return new PayloadOpener(header, crypter, aad);
  }

  /** Adds payload bytes; returns the plaintext of every chunk completed and checked. */
  push(bytes: Uint8Array): Promise<Uint8Array[]> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.finished) return Promise.reject(new Error('push after finish'));
    this.pending.push(bytes);
    // A full chunk is opened as non-last only once a byte after it proves it is not the last.
    const sealed: Uint8Array[][] = [];
    while (this.pending.length > this.sealedSize) sealed.push(this.pending.takeParts(this.sealedSize));
    const first = this.index;
    this.index += sealed.length;
    // Started now, so chunks of overlapping pushes open at once (WebCrypto runs them on other threads).
    const opening = Promise.all(sealed.map((parts, i) => this.openParts(first + i, parts)));
    const result = this.settled.then(() => this.release(first, sealed, opening));
    this.settled = result.catch(() => {});
    return result;
  }

  /** After every earlier push settled: the plaintext of the good chunks, or the failure. */
  private async release(
    first: number,
    sealed: Uint8Array[][],
    opening: Promise<(Uint8Array[] | null)[]>,
  ): Promise<Uint8Array[]> {
    const opened = await opening;
    this.throwIfFailed();
    const good: Uint8Array[] = [];
    for (const [i, plaintext] of opened.entries()) {
      if (plaintext === null) {
        this.failure = await this.explainMiddleFailure(first + i, concatParts(sealed[i]!));
        break;
      }
      good.push(...plaintext);
    }
    if (good.length === 0) this.throwIfFailed();
    return good;
  }

  /** Opens a middle chunk held as pieces: without a copy when the cipher can, else gathered first. */
  private async openParts(index: number, parts: Uint8Array[]): Promise<Uint8Array[] | null> {
    const nonce = chunkNonce(index, false);
    if (this.crypter.openParts) return this.crypter.openParts(nonce, parts, this.aad);
    const plaintext = await this.crypter.open(nonce, concatParts(parts), this.aad);
    return plaintext === null ? null : [plaintext];
  }

  /** Opens the chunk that ends the file with the last flag; throws if the file does not end properly. */
  async finish(): Promise<Uint8Array[]> {
    this.throwIfFailed();
    if (this.finished) throw new Error('finish twice');
    this.finished = true;
    await this.settled;
    this.throwIfFailed();
    const index = this.index;
    const rest = this.pending.take(this.pending.length);
    if (rest.length === 0)
      throw new EnvelopeError('truncated', 'it ends early (truncated): nothing follows its header', {
        chunkIndex: index,
      });
    if (rest.length < TAG_LENGTH) {
      throw new EnvelopeError('truncated', `it ends early (truncated) inside chunk ${index}`, {
        chunkIndex: index,
      });
    }
    // An empty last chunk is only valid as the only chunk, so every plaintext has one encoding.
    if (rest.length === TAG_LENGTH && index > 0) {
      throw new EnvelopeError('corrupt_chunk', `chunk ${index} is an empty last chunk after data`, {
        chunkIndex: index,
      });
    }
    const plaintext = await this.crypter.open(chunkNonce(index, true), rest, this.aad);
    if (plaintext !== null) return [plaintext];
    throw await this.explainLastFailure(index, rest);
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /** A full chunk followed by more bytes failed: it may be a real last chunk followed by trailing bytes. */
  private async explainMiddleFailure(index: number, sealed: Uint8Array): Promise<EnvelopeError> {
    if ((await this.crypter.open(chunkNonce(index, true), sealed, this.aad)) !== null) {
      return new EnvelopeError('trailing_data', `it has extra bytes after its last chunk ${index}`, {
        chunkIndex: index,
      });
    }
    return (await this.isEmptyFileStart(index, sealed)) ? emptyThenTrailing() : corrupt(index);
  }

  /** The chunk ending the file failed as last: it may be a middle chunk (cut file) or an empty end plus extra bytes. */
  private async explainLastFailure(index: number, sealed: Uint8Array): Promise<EnvelopeError> {
    if (
      sealed.length === this.sealedSize &&
      (await this.crypter.open(chunkNonce(index, false), sealed, this.aad))
    ) {
      return new EnvelopeError('truncated', `it ends early (truncated) after chunk ${index}`, {
        chunkIndex: index + 1,
      });
    }
    if (await this.isEmptyFileStart(index, sealed)) return emptyThenTrailing();
    return sealed.length < this.sealedSize ? corruptLast(index) : corrupt(index);
  }

  /** Whether the payload starts with the empty last chunk of an empty file (so what follows is trailing). */
  private async isEmptyFileStart(index: number, sealed: Uint8Array): Promise<boolean> {
    if (index !== 0 || sealed.length <= TAG_LENGTH) return false;
    return (await this.crypter.open(chunkNonce(0, true), sealed.subarray(0, TAG_LENGTH), this.aad)) !== null;
  }
}

function concatParts(parts: Uint8Array[]): Uint8Array {
  return parts.length === 1 ? parts[0]! : concatBytes(parts);
}

function emptyThenTrailing(): EnvelopeError {
  return new EnvelopeError('trailing_data', 'it has extra bytes after its empty payload', {
    chunkIndex: 0,
  });
}

// The messages read after "the backup is damaged: " (the agent's prefix), so they do not say "damaged" again.
function corrupt(index: number): EnvelopeError {
  return new EnvelopeError('corrupt_chunk', `chunk ${index} fails its check (its bytes were changed)`, {
    chunkIndex: index,
  });
}

/**
 * The chunk ending the file fails its check and is no full chunk: a file cut short inside a chunk and a
 * changed last chunk look alike (the header records no length), so both are named.
 */
function corruptLast(index: number): EnvelopeError {
  return new EnvelopeError(
    'corrupt_chunk',
    `its last chunk (chunk ${index}) fails its check: the file ends early (truncated) or was changed`,
    { chunkIndex: index },
  );
}
