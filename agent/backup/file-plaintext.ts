/** Opens a backup file for reading: header and key checked first, then its chunks read ahead into reused buffers and decrypted. */
import { type FileHandle, open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import {
  type ChunkCipher,
  EnvelopeError,
  type EnvelopeHeader,
  HeaderScanner,
  PayloadOpener,
  type ScannedHeader,
  TAG_LENGTH,
} from '../../shared/envelope';
import { nodeChunkCipher } from '../keys/envelope-node';

/** Each read of the header's bytes (headers are a few KiB; one with big stanzas takes more reads). */
const HEADER_READ = 64 * 1024;
/** About 1 MiB per read, in whole sealed chunks, so each chunk lies in one read (no gathering copy). */
const READ_TARGET = 1 << 20;
/** Reads in flight ahead of the one being consumed (they run on libuv's threads). */
const LOOKAHEAD = 2;

interface FilePlaintextOptions {
  resolveFileKey: (header: EnvelopeHeader) => Promise<Uint8Array>;
  /** Bytes of the file read so far (the header included). */
  onProgress?: (bytesRead: number) => void;
  /** node:crypto's AES-GCM unless told otherwise (WebCrypto's, on libuv's threads, measured slower: it copies each chunk twice on this thread). */
  cipher?: ChunkCipher;
}

interface FilePlaintext {
  header: EnvelopeHeader;
  /** The payload's plaintext; errors with an EnvelopeError at the first bad chunk, after the good ones. */
  plaintext: Readable;
}

/**
 * Opens the backup file at `path`: reads the header, resolves the file key and checks the header MAC
 * before returning (throws EnvelopeError, or the fs error such as ENOENT). The same checks as
 * openStream: every tag, the last-chunk flag, truncation and trailing bytes.
 */
export async function openBackupFile(path: string, options: FilePlaintextOptions): Promise<FilePlaintext> {
  const handle = await open(path, 'r');
  try {
    const scanned = await scanHeaderOf(handle);
    if (!scanned) throw new EnvelopeError('truncated', 'the file ends inside the backup header');
    const { header, length } = scanned;
    const fileKey = await options.resolveFileKey(header);
    const opener = await PayloadOpener.create(header, fileKey, options.cipher ?? nodeChunkCipher);
    options.onProgress?.(length);
    const plaintext = Readable.from(decryptAhead(handle, opener, length, options.onProgress), {
      objectMode: false,
      highWaterMark: READ_TARGET,
    });
    return { header, plaintext };
  } catch (error) {
    await handle.close().catch(() => {});
    throw error;
  }
}

/**
 * Reads an open backup file's header from its first byte, at most HEADER_SCAN_LIMIT bytes of it; undefined
 * when the file ends first (each caller words that). Throws EnvelopeError on bytes that cannot start a header,
 * and bad_header past the limit (the format's limits keep a header below it).
 */
export async function scanHeaderOf(handle: FileHandle): Promise<ScannedHeader | undefined> {
  const scanner = new HeaderScanner();
  while (!scanner.full) {
    // A new buffer each read: the scanner keeps the chunks it was given.
    const chunk = Buffer.alloc(HEADER_READ);
    const { bytesRead } = await handle.read(chunk, 0, HEADER_READ, scanner.length);
    const found = scanner.push(chunk.subarray(0, bytesRead));
    if (found) return found;
    if (bytesRead < HEADER_READ) return undefined;
  }
  throw scanner.notEnded();
}

type Step = { plaintext: Promise<Uint8Array[]> } | 'end';

/**
 * The payload's plaintext in order. Reads are positional and planned ahead; each read is pushed to
 * the opener in file order as soon as it lands. The opener releases plaintext strictly in order and
 * nothing after a failed chunk. Read buffers are reused (fresh 1 MiB buffers cost page faults and
 * GC): the ciphers return plaintext in new buffers, and a read's bytes are spent once the next
 * read's push settled (a chunk is opened when the first byte after it arrives).
 */
async function* decryptAhead(
  handle: FileHandle,
  opener: PayloadOpener,
  start: number,
  onProgress: ((bytesRead: number) => void) | undefined,
): AsyncGenerator<Uint8Array> {
  const sealedSize = opener.header.core.chunkSize + TAG_LENGTH;
  const readSize = sealedSize * Math.max(1, Math.floor(READ_TARGET / sealedSize));
  let position = start;
  let ended = false;
  let pushed: Promise<unknown> = Promise.resolve();
  const ahead: Promise<Step>[] = [];
  const spare: Buffer[] = [];
  const inUse: Buffer[] = [];

  const schedule = (): void => {
    const at = position;
    position += readSize;
    const buf = spare.pop() ?? Buffer.allocUnsafeSlow(readSize);
    inUse.push(buf);
    const read = handle.read(buf, 0, readSize, at);
    const step = Promise.all([read, pushed]).then(([{ bytesRead }]): Step => {
      // A short read is the end; bytes after it mean the file grew while being read.
      if (ended) {
        if (bytesRead > 0) throw new Error('the backup file changed while it was read');
        return 'end';
      }
      if (bytesRead < readSize) ended = true;
      if (bytesRead === 0) return 'end';
      onProgress?.(at + bytesRead);
      const plaintext = opener.push(buf.subarray(0, bytesRead));
      plaintext.catch(() => {}); // reported when its turn comes, or dropped with the reader
      return { plaintext };
    });
    step.catch(() => {});
    pushed = step.catch(() => {});
    ahead.push(step);
  };

  try {
    for (;;) {
      while (!ended && ahead.length < LOOKAHEAD) schedule();
      const step = await ahead.shift();
      if (step === undefined || step === 'end') break;
      for (const piece of await step.plaintext) yield piece;
      // Every read before this one is spent now.
      while (inUse.length > ahead.length + 1) spare.push(inUse.shift()!);
    }
    // Reads planned past the end return nothing (or throw if the file grew meanwhile).
    await Promise.all(ahead);
    for (const piece of await opener.finish()) yield piece;
  } finally {
    await Promise.allSettled(ahead);
    await handle.close();
  }
}
