/** A backup as sent to the cloud: the escrow header, then the unchanged payload read from the local file. */
import { createHash } from 'node:crypto';
import { type FileHandle, open } from 'node:fs/promises';
import { Readable } from 'node:stream';

const PIECE = 1024 * 1024;
/** Read size of the hash passes: one buffer reused, as nothing keeps the bytes once hashed. */
const HASH_READ = 4 * 1024 * 1024;

/**
 * Byte ranges of `header ++ file[oldHeaderLength..]`, read from an open handle: a backup deleted by
 * retention meanwhile stays readable, and nothing is ever held whole in memory.
 */
export class UploadSource {
  private constructor(
    private readonly handle: FileHandle,
    readonly header: Uint8Array,
    /** Bytes of the local file's own header, which the escrow header replaces. */
    readonly oldHeaderLength: number,
    readonly size: number,
  ) {}

  static async open(path: string, header: Uint8Array, oldHeaderLength: number): Promise<UploadSource> {
    const handle = await open(path, 'r');
    const fileSize = (await handle.stat()).size;
    return new UploadSource(handle, header, oldHeaderLength, header.length + fileSize - oldHeaderLength);
  }

  /** The bytes [start, end) as 1 MiB pieces, each its own buffer. */
  pieces(start = 0, end = this.size): AsyncGenerator<Buffer> {
    return this.read(start, end, false);
  }

  /**
   * The bytes [start, end) as views of ONE reused buffer: each view is valid only until the next is
   * asked for, which is all a hash needs (and saves allocating what it reads).
   */
  private transientPieces(start: number, end: number): AsyncGenerator<Buffer> {
    return this.read(start, end, true);
  }

  private async *read(start: number, end: number, reuse: boolean): AsyncGenerator<Buffer> {
    let pos = start;
    if (pos < this.header.length) {
      const stop = Math.min(end, this.header.length);
      yield Buffer.from(this.header.subarray(pos, stop));
      pos = stop;
    }
    const shared = reuse ? Buffer.allocUnsafe(Math.min(HASH_READ, Math.max(1, end - pos))) : undefined;
    while (pos < end) {
      const buf = shared ?? Buffer.allocUnsafe(Math.min(PIECE, end - pos));
      const n = Math.min(buf.length, end - pos);
      const { bytesRead } = await this.handle.read(
        buf,
        0,
        n,
        pos - this.header.length + this.oldHeaderLength,
      );
      if (bytesRead === 0) throw new Error('the local backup file shrank while it was being uploaded');
      yield buf.subarray(0, bytesRead);
      pos += bytesRead;
    }
  }

  /** A stream of the bytes [start, end). */
  stream(start = 0, end = this.size): Readable {
    return Readable.from(this.pieces(start, end), { objectMode: false });
  }

  /** Hex sha256 of the bytes [start, end). */
  async sha256(start = 0, end = this.size, onBytes?: (n: number) => void): Promise<string> {
    const hash = createHash('sha256');
    for await (const piece of this.transientPieces(start, end)) {
      hash.update(piece);
      onBytes?.(piece.length);
    }
    return hash.digest('hex');
  }

  /**
   * Hex sha256 of the whole upload and of its first `maxParts` parts of `partSize`, in one read: a
   * multipart push needs the whole hash and the first part's before its first part goes.
   */
  async sha256WithParts(
    partSize: number,
    onBytes?: (n: number) => void,
    maxParts = Number.POSITIVE_INFINITY,
  ): Promise<{ sha256: string; parts: string[] }> {
    const whole = createHash('sha256');
    const parts: string[] = [];
    let part = createHash('sha256');
    let inPart = 0;
    for await (const piece of this.transientPieces(0, this.size)) {
      whole.update(piece);
      for (let at = 0; at < piece.length && parts.length < maxParts; ) {
        const take = Math.min(piece.length - at, partSize - inPart);
        part.update(piece.subarray(at, at + take));
        at += take;
        inPart += take;
        if (inPart === partSize) {
          parts.push(part.digest('hex'));
          part = createHash('sha256');
          inPart = 0;
        }
      }
      onBytes?.(piece.length);
    }
    if ((inPart > 0 || parts.length === 0) && parts.length < maxParts) parts.push(part.digest('hex'));
    return { sha256: whole.digest('hex'), parts };
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}
